"""Ctrl-C at any moment of `ipftrace`'s start: exit 130 at once, no traceback, no ready file, nothing attached."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import Running


def _orphan_ipft_programs(before: set[int]) -> list[dict]:
    """BPF programs named ipft_* loaded since `before` that no process holds any more (left attached)."""
    listed = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return [prog for prog in json.loads(listed or "[]")
            if prog["id"] not in before and str(prog.get("name", "")).startswith("ipft_") and not prog.get("pids")]


def _catches_sigint(pid: int) -> bool:
    """The process has a SIGINT handler (the interpreter installs Python's early in its start; before that, the
    kernel's default action ends the process by the signal, which is no part of the tool)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next((line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), "0")
    return bool(int(caught, 16) & (1 << (signal.SIGINT - 1)))


def _program_ids() -> set[int]:
    listed = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return {prog["id"] for prog in json.loads(listed or "[]")}


@pytest.mark.parametrize("delay", [0.05, 0.4, 1.2], ids=["during-imports", "early-compile", "compile"])
def test_sigint_during_start_exits_130_at_once_with_nothing_left(delay: float, cache_dir: str,
                                                                 tmp_path: Path) -> None:
    before = _program_ids()
    ready = tmp_path / "ready"
    tool = Running([str(Path(__file__).resolve().parents[2] / ".venv/bin/ipftrace"), "-b", "tracepoint",
                    "--timeout", "60", "--ready-file", str(ready)], cache_dir, ready)
    deadline = time.monotonic() + 10
    while not _catches_sigint(tool.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    assert not ready.exists(), "probes attached before the interrupt: the test did not hit the start"
    tool.proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    tool.proc.wait(timeout=20)
    out, err = tool.output()
    assert tool.proc.returncode == 130, err
    assert time.monotonic() - sent < 2.0
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert out == ""
    assert not ready.exists()
    deadline = time.monotonic() + 10  # the kernel frees a closed program's memory asynchronously
    while _orphan_ipft_programs(before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _orphan_ipft_programs(before) == []


def test_ready_file_is_removed_at_exit(cache_dir: str, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    tool = Running([str(Path(__file__).resolve().parents[2] / ".venv/bin/ipftrace"), "-b", "tracepoint",
                    "--timeout", "60", "--ready-file", str(ready)], cache_dir, ready)
    tool.wait_ready()
    code, _, err = tool.stop()
    assert code == 130, err
    assert not ready.exists()
