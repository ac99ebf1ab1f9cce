"""Function backends on the running kernel: what can be checked here is checked for real.

kprobe programs load through the kernel verifier (load without attach); kfunc programs compile and the kernel's
refusal is told apart from a compile error; `auto` falls back to the tracepoint backend in milliseconds and says
why in one log line; `-b kprobe` / `-b kfunc` exit 3 with a one-line reason where the kernel refuses them;
manifests with absent functions warn and skip; `-l` reports per backend; `-l -o yaml` writes a manifest that
loads back. The only traffic is ping to 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipftrace_exporter import collector as collector_module
from ipftrace_exporter import manifest as manifests
from ipftrace_exporter.collector import LOADED, REFUSED, REJECTED, Collector, kfunc_refusal
from ipftrace_exporter.errors import AttachError, KernelError
from ipftrace_exporter.flows import FlowSpec
from ipftrace_exporter.kernel.view import KernelView, kprobes_unavailable
from ipftrace_exporter.plan import plan_probes
from ipftrace_exporter.probes import ProbeKind
from ipftrace_exporter.program import ModuleCode, ProgramOptions, render
from ipftrace_exporter.tracer import Tracer, TraceRequest

pytestmark = pytest.mark.kernel

BIN = Path(sys.executable).parent
FLOWS = (FlowSpec(name="loopback-icmp", ipversion=4, l4proto=1),)
DEFAULT_MANIFEST = manifests.default_manifest_path()


@pytest.fixture(scope="module")
def view() -> KernelView:
    return KernelView()


@pytest.fixture(scope="module")
def tracer(view: KernelView, cache_dir: str) -> Tracer:
    return Tracer(TraceRequest(flows=FLOWS, manifest=DEFAULT_MANIFEST), view, cache_dir)


@pytest.fixture(scope="module")
def headers(tracer: Tracer):  # type: ignore[no-untyped-def]
    return tracer.headers()


@pytest.fixture
def ping() -> Iterator[subprocess.Popen[bytes]]:
    """ping 127.0.0.1 five times a second for the test's duration; ended by its PID."""
    proc = subprocess.Popen(["ping", "-q", "-i", "0.2", "-w", "120", "127.0.0.1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run_ipftrace(*args: str, cache_dir: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, IPFTRACE_CACHE_DIR=cache_dir)
    return subprocess.run([str(BIN / "ipftrace"), *args], capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)


def log_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ipftrace: ")]


# ---- kprobe: the verifier --------------------------------------------------------------------------------------

def test_every_kprobe_program_of_the_default_manifest_loads_through_the_verifier(tracer: Tracer, headers) -> None:
    plan, report = tracer.verify("kprobe", headers)
    functions = [source for source in plan.sources if source.probe.kind is ProbeKind.KPROBE]
    reconciled = manifests.reconcile(manifests.load_manifest(DEFAULT_MANIFEST), tracer.view.btf,
                                     tracer.view.symbols)
    assert len(functions) >= len(reconciled.functions) - 4  # all but the skb free functions (tracepoints there)
    for source in plan.sources:
        check = report.for_source(source)
        assert check is not None, source.probe.name
        assert check.status == LOADED, f"{source.probe.name}: {check.reason}"
    # one shared entry point per skb position, not one per function
    kprobe_entries = report.by_kind(ProbeKind.KPROBE)
    assert len(kprobe_entries) == len({source.skb_arg for source in functions})


def test_kprobe_programs_for_every_btf_function_load_through_the_verifier(view: KernelView, headers) -> None:
    discovery = Tracer(TraceRequest(flows=FLOWS), view)
    plan, report = discovery.verify("kprobe", headers)
    assert len(plan.sources) > 500
    assert report.checks and all(check.status == LOADED for check in report.checks), report.rejected
    # what keeps this quick: the functions share one entry point per skb position instead of one program each
    functions = [source for source in plan.sources if source.probe.kind is ProbeKind.KPROBE]
    assert len(report.by_kind(ProbeKind.KPROBE)) == len({source.skb_arg for source in functions})


# ---- kfunc: compile, and the kernel's answer -------------------------------------------------------------------

def test_kfunc_programs_compile_and_the_kernel_answer_is_not_a_compile_error(tracer: Tracer, headers) -> None:
    _, report = tracer.verify("kfunc", headers)  # raises KernelError if it did not compile
    kfunc = report.by_kind(ProbeKind.KFUNC)
    assert kfunc, "no kfunc entry point"
    assert all(check.load_name.startswith("kfunc__") for check in kfunc)
    refusal = kfunc_refusal()
    for check in kfunc:
        if refusal is None:
            assert check.status == LOADED, check.reason
        else:
            assert check.status == REFUSED, check.reason
            assert "EPERM" in check.reason or "not support" in check.reason


def test_kfunc_entry_points_pass_the_verifier_as_tp_btf_programs(tracer: Tracer, headers) -> None:
    """fentry is refused here, tp_btf is not: same BTF-typed argument array, so the kfunc body meets the
    verifier with its sk_buff typed as on fentry (each role's copy, its probe patched in as on fentry)."""
    discovery = Tracer(TraceRequest(flows=FLOWS), tracer.view)
    plan, report = discovery.verify_kfunc_as_tp_btf(headers)
    stand_ins = tracer.view.tp_btf_stand_ins()
    assert {1, 2, 3} <= set(stand_ins)
    checked = 0
    for check in report.checks:
        position = check.sources[0].skb_arg + 1
        if position in stand_ins:
            assert check.status == LOADED, f"{check.entry} as {check.load_name}: {check.reason}"
            checked += len(check.sources)
    functions = [source for source in plan.sources if source.probe.kind is ProbeKind.KFUNC]
    assert checked >= 0.9 * len(functions)


def test_a_kfunc_body_reading_past_the_arguments_is_rejected_by_the_verifier(tracer: Tracer, headers) -> None:
    """The tp_btf check can fail: the skb-position-2 body on a one-argument tracepoint reads past its
    arguments."""
    plan = plan_probes(tracer.view, "kfunc", DEFAULT_MANIFEST)
    program = render(plan.sources, FLOWS)
    one_argument = tracer.view.tp_btf_stand_ins()[1]
    with Collector(program, headers) as collector:
        report = collector.verify_tp_btf({1: one_argument, 2: one_argument})
    by_position = {check.sources[0].skb_arg + 1: check for check in report.checks}
    assert by_position[1].status == LOADED, by_position[1].reason
    assert by_position[2].status == REJECTED
    assert "verifier rejected" in by_position[2].reason


def test_a_compile_error_is_raised_as_such_not_taken_for_a_refusal(tracer: Tracer, headers) -> None:
    plan = plan_probes(tracer.view, "kfunc", DEFAULT_MANIFEST)
    broken = ModuleCode(match_body="    this is not C;")
    program = render(plan.sources, FLOWS, ProgramOptions(func_ip=tracer.view.func_ip_mode), (broken,))
    with Collector(program, headers) as collector, pytest.raises(KernelError, match="did not compile"):
        collector.verify()


def test_kfunc_availability_is_decided_without_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    """A two-instruction program is loaded: the compiler (bcc.BPF) is never reached."""

    def no_compiler(*args: object, **kwargs: object) -> None:
        raise AssertionError("kfunc_refusal compiled a program")

    monkeypatch.setattr(collector_module._import_bcc(), "BPF", no_compiler)
    kfunc_refusal.cache_clear()
    refusal = kfunc_refusal()
    if refusal is not None:
        assert "kfunc" in refusal and "ip_rcv" in refusal


# ---- attach: per-function failures are counted, never fatal while something attached ----------------------------

@pytest.mark.parametrize("backend", ["kprobe", "kfunc"])
def test_function_probes_that_cannot_attach_are_counted_and_the_rest_attaches(backend: str, tracer: Tracer,
                                                                              headers) -> None:
    plan = plan_probes(tracer.view, backend, DEFAULT_MANIFEST)
    functions = [source for source in plan.sources if source.is_function]
    with tracer.collector_for(plan, headers) as collector:
        targets = {source.target for source in functions}
        if backend == "kprobe":
            assert set(collector.addresses) == targets  # kallsyms, as root
        else:  # each fentry copy is bound to its function's BTF id and carries its probe: no address needed
            assert set(collector.btf_ids) == targets and not collector.addresses
        report = collector.attach()
        failed = {source.target: why for source, why in report.failed}
        attached = [source for source in report.attached if source.is_function]
        assert len(attached) + len(failed) == len(functions)
        assert {source.probe.kind for source in report.attached} >= {ProbeKind.TRACEPOINT}
        refused = kprobes_unavailable() if backend == "kprobe" else kfunc_refusal()
        if refused:
            assert not attached and len(failed) == len(functions)
            assert all(why for why in failed.values())
            if backend == "kfunc":
                assert all("EPERM" in why for why in failed.values())


def test_a_function_without_a_kallsyms_address_is_a_counted_failure(tracer: Tracer, headers) -> None:
    plan = plan_probes(tracer.view, "kprobe", DEFAULT_MANIFEST)
    with Collector(tracer.program_for(plan), headers, addresses={}) as collector:
        report = collector.attach()
    reasons = {why for source, why in report.failed if source.is_function}
    assert reasons == {"no kallsyms address (symbol missing or addresses hidden)"}
    assert report.attached and all(source.probe.kind is ProbeKind.TRACEPOINT for source in report.attached)


# ---- auto and explicit backends ----------------------------------------------------------------------------------

@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The backends whose program a Tracer compiles during the test, in order."""
    backends: list[str] = []
    collector_for = Tracer.collector_for

    def counted(self: Tracer, plan, *args, **kwargs) -> Collector:  # type: ignore[no-untyped-def]
        backends.append(plan.backend)
        return collector_for(self, plan, *args, **kwargs)

    monkeypatch.setattr(Tracer, "collector_for", counted)
    return backends


def _refused_here() -> str | None:
    if kfunc_refusal() is None or kprobes_unavailable() is None:
        return "this kernel allows kfunc or kprobe: auto does not fall back to tracepoint here"
    return None


def test_auto_compiles_only_the_backend_it_runs(view: KernelView, cache_dir: str, headers,
                                                compiled: list[str]) -> None:
    """A function backend this kernel refuses is skipped before compiling: auto compiles one program, the
    tracepoint backend's (that is what keeps its start as quick as -b tracepoint's, without timing it)."""
    why = _refused_here()
    if why:
        pytest.skip(why)
    tracer = Tracer(TraceRequest(flows=FLOWS, manifest=DEFAULT_MANIFEST, backend="auto"), view, cache_dir)
    try:
        report = tracer.start()
    finally:
        tracer.close()
    assert compiled == ["tracepoint"]
    assert report.attached and not any(source.is_function for source in report.attached)
    assert set(tracer.fallback_reasons) == {"kfunc", "kprobe"}


def test_auto_falls_back_to_tracepoint_logs_why_and_traces(start_tool, ping) -> None:  # type: ignore[no-untyped-def]
    why = _refused_here()
    if why:
        pytest.skip(why)
    running = start_tool("ipftrace", "-b", "auto", "-iv", "4", "-l4", "ICMP", "-d4", "127.0.0.1", "--count", "1")
    code, out, err = running.finish()
    assert code == 0, err
    assert "ICMP\t127.0.0.1\t->\t127.0.0.1" in out
    chosen = [line for line in log_lines(err) if "backend tracepoint" in line]
    assert len(chosen) == 1, err
    assert "kfunc refused:" in chosen[0] and "EPERM" in chosen[0]
    assert "kprobe refused:" in chosen[0] and "no kprobes" in chosen[0]


def test_auto_with_a_manifest_where_only_tracepoints_work_warns_once_and_traces(start_tool, ping) -> None:  # type: ignore[no-untyped-def]
    why = _refused_here()
    if why:
        pytest.skip(why)
    running = start_tool("ipftrace", "-iv", "4", "-l4", "ICMP", "-d4", "127.0.0.1", "--count", "1", DEFAULT_MANIFEST)
    code, out, err = running.finish()
    assert code == 0, err
    assert "ICMP\t127.0.0.1\t->\t127.0.0.1" in out
    lines = [line for line in log_lines(err) if " INFO: " not in line]  # a cold header cache says it built one
    assert len(lines) == 1, err
    assert lines[0].startswith("ipftrace: WARNING: backend tracepoint (kfunc refused:")
    assert "function-level probing is unavailable on this kernel" in lines[0]


@pytest.mark.parametrize(("backend", "reason"), [("kprobe", "no kprobes"), ("kfunc", "EPERM")])
def test_a_refused_function_backend_exits_3_with_one_line(backend: str, reason: str, cache_dir: str) -> None:
    refused = kprobes_unavailable() if backend == "kprobe" else kfunc_refusal()
    if refused is None:
        pytest.skip(f"this kernel allows {backend} probes")
    result = run_ipftrace("-b", backend, "-l4", "ICMP", "-d4", "127.0.0.1", "--count", "1", cache_dir=cache_dir)
    assert result.returncode == 3, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"ipftrace: error: backend {backend}: ")
    assert reason in result.stderr


@pytest.mark.parametrize("backend", ["kprobe", "kfunc"])
def test_a_refused_function_backend_is_refused_before_compiling(backend: str, view: KernelView, cache_dir: str,
                                                                compiled: list[str]) -> None:
    refused = kprobes_unavailable() if backend == "kprobe" else kfunc_refusal()
    if refused is None:
        pytest.skip(f"this kernel allows {backend} probes")
    tracer = Tracer(TraceRequest(flows=FLOWS, manifest=DEFAULT_MANIFEST, backend=backend), view, cache_dir)
    try:
        with pytest.raises(AttachError, match=f"backend {backend}: "):
            tracer.start()
    finally:
        tracer.close()
    assert compiled == []


# ---- manifests ---------------------------------------------------------------------------------------------------

def test_a_manifest_function_missing_from_this_kernel_warns_once_and_is_skipped(tmp_path: Path, cache_dir: str,
                                                                                 view: KernelView) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("functions:\n  - {name: ip_rcv, skb_pos: 1}\n  - {name: ipft_no_such_function, skb_pos: 1}\n")
    plan = plan_probes(view, "kprobe", str(path))
    assert plan.missing == ["ipft_no_such_function"]
    assert [s.target for s in plan.sources if s.probe.kind is ProbeKind.KPROBE] == ["ip_rcv"]
    result = run_ipftrace("-l", str(path), cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in log_lines(result.stderr) if "ipft_no_such_function" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0] and "skipped" in warnings[0]
    assert re.search(r"^ipft_no_such_function\s+-\s+missing", result.stdout, re.MULTILINE)


# ---- -l --------------------------------------------------------------------------------------------------------

def test_list_shows_skb_positions_from_btf_and_each_backend_state(cache_dir: str, view: KernelView) -> None:
    result = run_ipftrace("-l", "--all", DEFAULT_MANIFEST, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()
            if line and not line.startswith(("#", "Name"))}
    skb = view.btf.skb_functions()
    for name in ("ip_rcv", "ip_output"):
        assert rows[name][1] == str(skb[name])
        kfunc, kprobe = rows[name][2], rows[name][3]
        assert kfunc == ("refused" if kfunc_refusal() else "attachable")
        assert kprobe == ("verified" if kprobes_unavailable() else "attachable")
    assert rows["skb:kfree_skb"][4] == "attachable"
    assert rows["skb:kfree_skb"][-1] == "drop"
    header = [line for line in result.stdout.splitlines() if line.startswith("# backend auto -> ")]
    assert len(header) == 1


def test_list_yaml_writes_a_manifest_for_this_kernel_that_loads_back(tmp_path: Path, cache_dir: str,
                                                                     view: KernelView) -> None:
    result = run_ipftrace("-l", "-o", "yaml", cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "my.yaml"
    path.write_text(result.stdout)
    loaded = manifests.load_manifest(path)
    discovered = manifests.discover(view.btf, view.symbols)
    assert [spec.name for spec in loaded.functions] == [spec.name for spec in discovered]
    plan = manifests.reconcile(loaded, view.btf, view.symbols)
    assert not plan.missing and not plan.corrected and not plan.skipped
    assert any(spec.egress for spec in loaded.functions)
