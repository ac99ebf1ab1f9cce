"""Run as an unprivileged user (setpriv): one line naming what is missing, before anything is compiled."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


@pytest.mark.parametrize("argv", [["ipftrace", "-l4", "icmp"], ["ipftrace", "-l"], ["ipftrace-exporter"],
                                  ["ipftrace-exporter", "--check"]])
def test_unprivileged_user_gets_one_line_naming_the_missing_capabilities(argv: list[str]) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    started = time.monotonic()
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                           str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 3, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"{argv[0]}: error: not permitted to load BPF programs: run as root")
    assert "CAP_BPF and CAP_PERFMON" in done.stderr
    assert time.monotonic() - started < 15  # refused before any compile
