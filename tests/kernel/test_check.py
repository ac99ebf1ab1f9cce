"""`ipftrace-exporter --check` attaches and detaches for real: it fails exactly where the real run would."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


def exporter(*args: str, cache_dir: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, IPFTRACE_CACHE_DIR=cache_dir)
    return subprocess.run([str(BIN / "ipftrace-exporter"), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)


def real_run_code(config: Path, cache_dir: str, tmp_path: Path) -> int:
    """0 if the real run attaches (it is then stopped), else its exit code."""
    ready = tmp_path / "ready"
    env = dict(os.environ, IPFTRACE_CACHE_DIR=cache_dir)
    proc = subprocess.Popen([str(BIN / "ipftrace-exporter"), "--config", str(config), "--ready-file", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None and not ready.exists():
            time.sleep(0.1)
        if ready.exists():
            return 0
        proc.wait(timeout=30)
        return proc.returncode
    finally:
        if proc.poll() is None:
            proc.send_signal(2)
            proc.communicate(timeout=30)


@pytest.mark.parametrize("backend", ["kfunc", "tracepoint"])
def test_check_fails_where_the_real_run_fails(backend: str, cache_dir: str, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"backend: {backend}\nmetrics: {{address: '127.0.0.1:0'}}\n")
    checked = exporter("--config", str(config), "--check", cache_dir=cache_dir)
    expected = real_run_code(config, cache_dir, tmp_path)
    assert checked.returncode == expected, checked.stderr
    if expected == 0:
        assert "attached" in checked.stdout and "then detached" in checked.stdout
    else:
        errors = [line for line in checked.stderr.splitlines() if ": error: " in line]
        assert len(errors) == 1 and f"backend {backend}" in errors[0], checked.stderr


def test_check_fails_on_a_metrics_address_in_use(cache_dir: str, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "config.yaml"
        config.write_text(f"backend: tracepoint\nmetrics: {{address: '127.0.0.1:{port}'}}\n")
        checked = exporter("--config", str(config), "--check", cache_dir=cache_dir)
    assert checked.returncode == 2
    assert f"metrics.address 127.0.0.1:{port}: Address already in use" in checked.stderr


def test_print_program_prints_the_configs_program_without_attaching(cache_dir: str, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("backend: tracepoint\nmodules: [tcp]\nmetrics: {address: '127.0.0.1:0'}\n"
                      "flows: [{name: web, l4proto: tcp, dport: 8443}]\n")
    printed = exporter("--config", str(config), "--print-program", cache_dir=cache_dir)
    assert printed.returncode == 0, printed.stderr
    assert "t->l4proto == 6 && t->has_ports && t->dport == 8443" in printed.stdout
    assert "/* module tcp:" in printed.stdout and "int ipft_tracepoint_0(" in printed.stdout
    assert "then detached" not in printed.stdout and "not loaded" in printed.stderr  # no --check plan
