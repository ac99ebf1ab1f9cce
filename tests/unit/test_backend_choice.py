"""How `auto` weighs the backends and what the one start-up line says (no kernel: a fake view)."""

from __future__ import annotations

from ipftrace_exporter.collector import AttachReport
from ipftrace_exporter.kernel.view import KernelView
from ipftrace_exporter.plan import (
    AUTO_KFUNC_MAX_FUNCTIONS,
    ProbePlan,
    attach_summary,
    auto_passes_over_kfunc,
)
from ipftrace_exporter.probes import Probe, ProbeKind, ProbeRole
from ipftrace_exporter.program import ProbeSource


class FakeView:
    def __init__(self, func_ip_mode: str = "helper", has_kprobe_multi: bool = True) -> None:
        self.func_ip_mode = func_ip_mode
        self.has_kprobe_multi = has_kprobe_multi


def test_auto_keeps_kfunc_for_a_small_plan() -> None:
    assert auto_passes_over_kfunc(FakeView(), lambda: 88) is None  # type: ignore[arg-type]


def test_auto_prefers_kprobe_multi_for_thousands_of_functions() -> None:
    why = auto_passes_over_kfunc(FakeView(), lambda: 2281)  # type: ignore[arg-type]
    assert why is not None and "2281 functions" in why and "kprobe-multi" in why


def test_auto_prefers_kprobes_for_many_functions_even_without_kprobe_multi() -> None:
    why = auto_passes_over_kfunc(FakeView(has_kprobe_multi=False, func_ip_mode="regs"), lambda: 1500)  # type: ignore[arg-type]
    assert why is not None and "no kprobe-multi" in why
    assert auto_passes_over_kfunc(FakeView(has_kprobe_multi=False, func_ip_mode="regs"), lambda: 88) is None  # type: ignore[arg-type]


def test_the_limit_is_a_count_of_functions() -> None:
    assert auto_passes_over_kfunc(FakeView(), lambda: AUTO_KFUNC_MAX_FUNCTIONS) is None  # type: ignore[arg-type]
    assert auto_passes_over_kfunc(FakeView(), lambda: AUTO_KFUNC_MAX_FUNCTIONS + 1) is not None  # type: ignore[arg-type]


def _source(index: int, name: str, kind: ProbeKind = ProbeKind.KPROBE) -> ProbeSource:
    return ProbeSource(Probe(index, name, kind, 1, ProbeRole.STEP), name, 0)


def test_summary_counts_functions_attached_of_planned_and_what_could_not_be_traced() -> None:
    sources = [_source(i, f"f{i}") for i in range(3)] + [_source(3, "skb:kfree_skb", ProbeKind.TRACEPOINT)]
    plan = ProbePlan("kprobe", sources, untraceable=[("g", "not in available_filter_functions")])
    report = AttachReport(attached=[sources[0], sources[1], sources[3]], failed=[(sources[2], "EINVAL")],
                          multi_links=1)
    line = attach_summary("kprobe", plan, report, {"kfunc": "too many"}, {"kfunc"})
    assert line == ("backend kprobe (kfunc passed over: too many): 2 of 4 functions attached (1 kprobe-multi link); "
                    "2 not traceable: see -l; 1 free tracepoint (first failure: f2: EINVAL)")


def test_summary_for_tracepoints_counts_tracepoints_and_says_what_the_kernel_refused() -> None:
    sources = [_source(0, "net:netif_rx", ProbeKind.TRACEPOINT)]
    line = attach_summary("tracepoint", ProbePlan("tracepoint", sources), AttachReport(attached=sources),
                          {"kfunc": "EPERM"})
    assert line == "backend tracepoint (kfunc refused: EPERM): 1 of 1 tracepoints attached"


def test_untraceable_functions_come_from_ftrace_and_the_kprobe_blacklist() -> None:
    view = KernelView()
    view.ftrace_functions = frozenset({"ip_rcv", "kprobe_only_blacklisted"})  # type: ignore[misc]
    view.kprobe_blacklist = frozenset({"kprobe_only_blacklisted"})  # type: ignore[misc]
    assert view.untraceable("ip_rcv", ProbeKind.KPROBE) is None
    assert "available_filter_functions" in (view.untraceable("inlined_fn", ProbeKind.KFUNC) or "")
    assert "blacklist" in (view.untraceable("kprobe_only_blacklisted", ProbeKind.KPROBE) or "")
    assert view.untraceable("kprobe_only_blacklisted", ProbeKind.KFUNC) is None
    view.ftrace_functions = None  # type: ignore[misc]  # unreadable list: nothing filtered
    assert view.untraceable("anything", ProbeKind.KFUNC) is None


class FakeBtf:
    def struct_member_bit(self, struct: str, member: str) -> int:
        return 1016


def test_first_program_is_autos_first_backend_not_refused_rendered_without_compiling(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from ipftrace_exporter import tracer as tracer_module
    from ipftrace_exporter.flows import FlowSpec

    planned: list[str] = []

    def plan(view: object, backend: str, manifest: str | None) -> ProbePlan:
        planned.append(backend)
        kind = ProbeKind(backend)
        return ProbePlan(backend, [_source(0, "ip_rcv", kind), _source(1, "skb:kfree_skb", ProbeKind.TRACEPOINT)])

    monkeypatch.setattr(tracer_module, "function_backend_unavailable",
                        lambda backend, view: "EPERM" if backend == "kfunc" else None)
    monkeypatch.setattr(tracer_module, "plan_probes", plan)
    view = FakeView()
    view.btf = FakeBtf()  # type: ignore[attr-defined]
    tracer = tracer_module.Tracer(tracer_module.TraceRequest(flows=(FlowSpec(name="any"),)), view)  # type: ignore[arg-type]
    chosen, program = tracer.first_program()
    assert chosen.backend == "kprobe" and planned == ["kprobe"] and tracer.fallback_reasons == {"kfunc": "EPERM"}
    assert list(program.entries()) == ["ipft_kprobe_arg1", "ipft_tracepoint_1"]
    assert "#define IPFT_CLONED_BIT 1016\n" in program.text and "#define IPFT_HAS_FUNCTIONS 1\n" in program.text
