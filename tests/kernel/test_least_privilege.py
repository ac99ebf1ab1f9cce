"""Least privilege, end to end: the tools running as root never write through a symlinked ready file, and never
run module code named by a path."""

from __future__ import annotations

from pathlib import Path

import pytest

from .netns import NetPair

TRACEPOINT = ["-b", "tracepoint"]


@pytest.mark.parametrize("tool", ["ipftrace", "ipftrace-exporter"])
def test_a_symlinked_ready_file_is_not_followed(tool: str, netpair: NetPair, start_tool, tmp_path: Path) -> None:
    victim = tmp_path / "victim"  # what a planted link points at: must never be created or written
    (tmp_path / "ready-0").symlink_to(victim)  # start_tool's first ready file
    (tmp_path / "ready-0.tmp").symlink_to(victim)  # and the predictable temporary name
    args = [*TRACEPOINT, "-l4", "ICMP", "-d4", netpair.addr_b4] if tool == "ipftrace" else [
        "--metrics-address", "127.0.0.1:0"]
    running = start_tool(tool, *args)  # waits until ready-0 exists as a file
    code, _out, err = running.stop()
    ready = tmp_path / "ready-0"
    assert not ready.is_symlink() and ready.read_text() == "ready\n"
    assert not victim.exists(), err
    assert code in (0, 130), err  # ipftrace exits 130 after SIGINT, the daemon 0


def test_ipftrace_refuses_a_module_path_without_running_it(start_tool, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    tool = start_tool("ipftrace", *TRACEPOINT, "-m", str(evil), "--timeout", "5", wait=False)
    code, _out, err = tool.finish(timeout=60)
    assert code == 2, err
    assert err.strip().splitlines()[-1].startswith(f"ipftrace: error: module '{evil}': module files are not "
                                                   "loaded from paths")
    assert not marker.exists()
