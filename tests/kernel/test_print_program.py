"""`ipftrace --print-program` prints the C it would load (the flow's filter, the planned probes' entry points) and
loads nothing: traced with strace, the run makes no bpf() call that loads a program or creates a map."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ipftrace_exporter.kernel.view import KernelView
from ipftrace_exporter.plan import plan_probes

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
FLOW = ("-l4", "udp", "-d4", "10.199.77.2", "-dp", "7001")
FILTER = "t->ipversion == 4 && t->l4proto == 17 && (t->daddr[0] & 0xffffffffU) == 0x024dc70aU && t->dport == 7001"


def traced_run(tmp_path: Path, cache_dir: str, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str], float]:
    """Run ipftrace under `strace -f -e trace=bpf`: (the run, its bpf() calls, seconds it took)."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (scripts/setup.sh installs it)")
    calls = tmp_path / "bpf-calls"
    env = dict(os.environ, IPFTRACE_CACHE_DIR=cache_dir)
    started = time.monotonic()
    done = subprocess.run([strace, "-f", "-qq", "-e", "trace=bpf", "-o", str(calls), str(BIN / "ipftrace"), *args],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    return done, [line for line in calls.read_text().splitlines() if "bpf(" in line], time.monotonic() - started


def test_print_program_prints_the_flow_filter_and_every_entry_point_and_loads_nothing(tmp_path: Path,
                                                                                       cache_dir: str) -> None:
    done, calls, seconds = traced_run(tmp_path, cache_dir, "--print-program", "-b", "tracepoint", *FLOW)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert f"if (flow == 0) return {FILTER.replace(' && t->dport', ' && t->has_ports && t->dport')};" in text
    expected = [source.entry_name for source in plan_probes(KernelView(), "tracepoint", None).sources]
    assert re.findall(r"^int (\w+)\(struct bpf_raw_tracepoint_args \*ctx\)$", text, re.MULTILINE) == expected
    assert f"#define IPFT_NUM_PROBES {len(expected)}\n" in text and "@ipft:" not in text
    assert "not loaded" in done.stderr
    assert calls == [], calls  # no program loaded, no map created: nothing compiled either
    assert seconds < 60


def test_print_program_with_auto_loads_only_the_backend_trials(tmp_path: Path, cache_dir: str) -> None:
    done, calls, _ = traced_run(tmp_path, cache_dir, "--print-program", "-m", "mark=0x10/0xff", *FLOW)
    assert done.returncode == 0, done.stderr
    assert "/* module mark:" in done.stdout and re.search(r"^int ipft_\w+\(", done.stdout, re.MULTILINE)
    loads = [call for call in calls if "BPF_PROG_LOAD" in call]
    assert all("insn_cnt=2," in call for call in loads), loads  # auto's two-instruction kfunc trial, no more
    assert not [call for call in calls if "BPF_MAP_CREATE" in call], calls
