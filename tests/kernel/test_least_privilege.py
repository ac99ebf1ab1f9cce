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
    ready = tmp_path / "ready-0"
    assert not ready.is_symlink() and ready.read_text() == "ready\n"
    code, _out, err = running.stop()  # ipftrace removes its ready file at exit; the daemon keeps it
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


def test_without_cap_syslog_drop_locations_are_unknown_never_a_kernel_address(tmp_path: Path) -> None:
    """kallsyms hides addresses from a process without CAP_SYSLOG (kptr_restrict, or perf_event_paranoid > 1 with
    kptr_restrict 0): one warning, and the drop's function is `unknown`, not the raw pointer the probe read."""
    import json
    import os
    import shutil
    import socket
    import subprocess
    import sys
    import time

    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is missing"
    probe = subprocess.run([setpriv, "--bounding-set=-all,+bpf,+perfmon", "--inh-caps=-all", "--no-new-privs", "--",
                            "head", "-1", "/proc/kallsyms"], capture_output=True, text=True, check=True)
    if not probe.stdout.startswith("0000000000000000"):
        pytest.skip("this kernel shows kallsyms addresses without CAP_SYSLOG (kptr_restrict 0, paranoid <= 1)")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]  # closed once the block ends
    ready = tmp_path / "ready"
    tool = Path(sys.executable).with_name("ipftrace")
    proc = subprocess.Popen([setpriv, "--bounding-set=-all,+bpf,+perfmon", "--inh-caps=-all", "--no-new-privs", "--",
                             str(tool), *TRACEPOINT, "-l4", "UDP", "-d4", "127.0.0.1", "-dp", str(closed_port),
                             "--count", "1", "-o", "json", "--timeout", "60", "--ready-file", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        deadline = time.monotonic() + 90
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.2)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(3):
                sender.sendto(b"x", ("127.0.0.1", closed_port))
                time.sleep(0.2)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    (path,) = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert path["outcome"] == "dropped", path
    assert path["drop"]["function"] == "unknown" and path["drop"]["reason"] == "NO_SOCKET", path
    assert not any(event.get("function", "").startswith("0x") for event in path["events"])
    assert err.count("CAP_SYSLOG") == 1, err
