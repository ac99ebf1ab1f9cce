"""Kernel tests: root, real BPF, traffic only between the test's own namespaces (or loopback)."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from .netns import NetPair, create_pair, delete_pair

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
_indices = itertools.count(1)


def _why_no_bpf() -> str | None:
    if os.geteuid() != 0:
        return "kernel tests need root"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "no BTF at /sys/kernel/btf/vmlinux"
    if shutil.which("ip") is None:
        return "iproute2 is not installed"
    if not os.path.isdir("/sys/kernel/tracing/events") and not os.path.isdir("/sys/kernel/debug/tracing/events"):
        return "tracefs is not mounted"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _why_no_bpf()
    for item in items:
        if "tests/kernel" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.kernel)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def netpair() -> Iterator[NetPair]:
    """Two namespaces joined by veth, with 10.199.N.1/2 and fd00:199::N:1/2; deleted afterwards."""
    pair = create_pair(next(_indices) + (os.getpid() % 50) * 4)
    try:
        yield pair
    finally:
        delete_pair(pair)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One header cache for the whole run (the tree is built once)."""
    return os.environ.get("IPFTRACE_CACHE_DIR") or str(tmp_path_factory.mktemp("header-cache"))


class Running:
    """A tool started as a subprocess; stopped by PID (SIGINT, then SIGKILL) when the test ends."""

    def __init__(self, argv: Sequence[str], cache_dir: str, ready_file: Path, env: dict[str, str] | None = None):
        full_env = dict(os.environ, IPFTRACE_CACHE_DIR=cache_dir, PYTHONUNBUFFERED="1")
        full_env.update(env or {})
        self.argv = list(argv)
        self.ready_file = ready_file
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=full_env)

    def wait_ready(self, timeout: float = 90) -> None:
        """Wait for the ready file; fail with the tool's stderr if it exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                return
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise AssertionError(f"{self.argv[0]} exited with {self.proc.returncode} before ready:\n{err}\n{out}")
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"{self.argv[0]} not ready after {timeout}s")

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        """Wait for the tool to exit by itself; returns (code, stdout, stderr)."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            out, err = self.proc.communicate()
            raise AssertionError(f"{self.argv[0]} did not finish in {timeout}s:\n{err}\n{out}") from None
        return self.proc.returncode, out, err

    def stop(self, sig: int = 2, timeout: float = 20) -> tuple[int, str, str]:
        """Send `sig` (default SIGINT) and wait; SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                out, err = self.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate()
            return self.proc.returncode, out, err
        out, err = self.proc.communicate()
        return self.proc.returncode, out, err


@pytest.fixture
def start_tool(cache_dir: str, tmp_path: Path) -> Iterator:
    """start_tool("ipftrace", *args) -> Running, already ready (probes attached)."""
    started: list[Running] = []

    def start(tool: str, *args: str, env: dict[str, str] | None = None, wait: bool = True) -> Running:
        ready = tmp_path / f"ready-{len(started)}"
        at = args.index("--") if "--" in args else len(args)  # a pcap filter after `--` stays last
        running = Running([str(BIN / tool), *args[:at], "--ready-file", str(ready), *args[at:]], cache_dir, ready, env)
        started.append(running)
        if wait:
            running.wait_ready()
        return running

    try:
        yield start
    finally:
        for running in started:
            running.stop()
