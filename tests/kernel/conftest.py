"""Kernel tests: root, real BPF, traffic only between the test's own namespaces (or loopback)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from .netns import NetChain, NetPair, create_chain, create_pair, delete_chain, delete_pair

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SUBNET_LOCKS = Path("/run/ipftrace-tests")  # one lock file per claimed 10.199.N subnet, shared by concurrent suites


class SubnetClaim:
    """`count` consecutive 10.199.N subnets held (flock) for this test, so suites running at once never share one."""

    def __init__(self, count: int) -> None:
        SUBNET_LOCKS.mkdir(mode=0o700, exist_ok=True)
        for first in range(1, 255 - count):
            held = [self._try(first + offset) for offset in range(count)]
            if all(fd is not None for fd in held):
                self.first, self._fds = first, held
                return
            for fd in held:
                if fd is not None:
                    os.close(fd)
        raise RuntimeError(f"no {count} free test subnets in 10.199.1-254 (locks in {SUBNET_LOCKS})")

    @staticmethod
    def _try(index: int) -> int | None:
        fd = os.open(SUBNET_LOCKS / f"{index}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def release(self) -> None:
        """Let other tests have the subnets again (the lock goes with the descriptor)."""
        for fd in self._fds:
            os.close(fd)


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
    claim = SubnetClaim(1)
    try:
        pair = create_pair(claim.first)
        try:
            yield pair
        finally:
            delete_pair(pair)
    finally:
        claim.release()


@pytest.fixture
def netchain() -> Iterator[NetChain]:
    """Client, router and server namespaces on two veth links (two subnets); deleted afterwards."""
    claim = SubnetClaim(2)  # the chain's two links
    try:
        chain = create_chain(claim.first)
        try:
            yield chain
        finally:
            delete_chain(chain)
    finally:
        claim.release()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One header cache for the whole run (the tree is built once)."""
    return os.environ.get("IPFTRACE_CACHE_DIR") or str(tmp_path_factory.mktemp("header-cache"))


class Running:
    """A tool started as a subprocess; stopped by PID (SIGINT, then SIGKILL) when the test ends. Its output goes to
    files, not pipes: a tracer printing every path fills a 64 KiB pipe long before a test reads it, and then
    stalls (its paths lost) until the test stops it."""

    def __init__(self, argv: Sequence[str], cache_dir: str, ready_file: Path, env: dict[str, str] | None = None):
        full_env = dict(os.environ, IPFTRACE_CACHE_DIR=cache_dir, PYTHONUNBUFFERED="1")
        full_env.update(env or {})
        self.argv = list(argv)
        self.ready_file = ready_file
        self._out = tempfile.TemporaryFile("w+")  # noqa: SIM115 - lives as long as the tool
        self._err = tempfile.TemporaryFile("w+")  # noqa: SIM115 - lives as long as the tool
        self.proc = subprocess.Popen(self.argv, stdout=self._out, stderr=self._err, text=True, env=full_env)

    def output(self) -> tuple[str, str]:
        """(stdout, stderr) so far."""
        texts = []
        for handle in (self._out, self._err):
            handle.seek(0)
            texts.append(handle.read())
        return texts[0], texts[1]

    def wait_ready(self, timeout: float = 90) -> None:
        """Wait for the ready file; fail with the tool's stderr if it exits first (exit 0 means it was ready and is
        already done: --count reached before the file was seen, which the tool removes at exit)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                return
            if self.proc.poll() is not None:
                if self.proc.returncode == 0:
                    return
                out, err = self.output()
                raise AssertionError(f"{self.argv[0]} exited with {self.proc.returncode} before ready:\n{err}\n{out}")
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"{self.argv[0]} not ready after {timeout}s:\n{self.output()[1][-3000:]}")

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        """Wait for the tool to exit by itself; returns (code, stdout, stderr)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _, out, err = self.stop()
            raise AssertionError(f"{self.argv[0]} did not finish in {timeout}s:\n{err}\n{out}") from None
        return self.proc.returncode, *self.output()

    def stop(self, sig: int = 2, timeout: float = 20) -> tuple[int, str, str]:
        """Send `sig` (default SIGINT) and wait; SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode, *self.output()


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
