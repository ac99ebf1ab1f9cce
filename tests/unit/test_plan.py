"""Probe planning and backend choice (plan.py) against a fake kernel view: no root, no BCC, no kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipftrace_exporter import plan as plan_module
from ipftrace_exporter import tracepoints
from ipftrace_exporter.collector import AttachReport
from ipftrace_exporter.errors import KernelError
from ipftrace_exporter.plan import (
    AUTO_KFUNC_MAX_FUNCTIONS,
    FREE_TRACEPOINTS,
    ProbePlan,
    attach_summary,
    auto_passes_over_kfunc,
    choose_backend,
    function_role,
    plan_probes,
)
from ipftrace_exporter.probes import Probe, ProbeKind, ProbeRole
from ipftrace_exporter.program import ProbeSource

SKB = [("skb", "struct sk_buff *")]
DROP = [("skb", "struct sk_buff *"), ("location", "void *"), ("reason", "enum skb_drop_reason")]


class FakeBtf:
    """What planning reads from BTF: skb functions (discovery) and tracepoint prototypes."""

    def __init__(self, functions: dict[str, int], tracepoints: dict[str, list[tuple[str, str]]]) -> None:
        self.functions = functions
        self.tracepoints = tracepoints

    def skb_functions(self) -> dict[str, int]:
        return dict(self.functions)

    def tracepoint_params(self, event: str) -> list[tuple[str, str]] | None:
        return self.tracepoints.get(event)


class FakeView:
    """The parts of KernelView that plan.py uses."""

    def __init__(self, functions: dict[str, int] | None = None, tracepoints: dict[str, list[tuple[str, str]]] | None = None,
                 ftrace_functions: frozenset[str] | None = None, kprobe_blacklist: frozenset[str] = frozenset(),
                 has_kprobe_multi: bool = True) -> None:
        default_tracepoints = {"netif_receive_skb": SKB, "net_dev_start_xmit": SKB, "consume_skb": SKB,
                               "kfree_skb": DROP}
        self.btf = FakeBtf(functions or {}, default_tracepoints if tracepoints is None else tracepoints)
        self.symbols = None  # no kallsyms: discovery keeps every BTF function
        self.ftrace_functions = ftrace_functions
        self.kprobe_blacklist = kprobe_blacklist
        self.has_kprobe_multi = has_kprobe_multi
        self.func_ip_mode = "helper" if has_kprobe_multi else "regs"
        self.asked: list[tuple[str, ProbeKind]] = []

    def untraceable(self, name: str, kind: ProbeKind) -> str | None:
        self.asked.append((name, kind))
        if self.ftrace_functions is not None and name not in self.ftrace_functions:
            return "not in available_filter_functions (notrace, inlined or init code)"
        if kind is ProbeKind.KPROBE and name in self.kprobe_blacklist:
            return "on the kernel's kprobe blacklist"
        return None


@pytest.fixture(autouse=True)
def no_tracefs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tracepoints are judged by the fake BTF alone, not by this host's tracefs."""
    monkeypatch.setattr(tracepoints, "tracefs_root", lambda: None)


@pytest.fixture
def refusals(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """The kernel's answers to the millisecond checks: None (may work), a reason, or an exception to raise."""
    answers: dict[str, object] = {"kfunc": None, "kprobe": None}
    calls: list[str] = []

    def answer(backend: str) -> str | None:
        calls.append(backend)
        value = answers[backend]
        if isinstance(value, Exception):
            raise value
        return value  # type: ignore[return-value]

    monkeypatch.setattr(plan_module, "kfunc_refusal", lambda: answer("kfunc"))
    monkeypatch.setattr(plan_module, "kprobes_unavailable", lambda: answer("kprobe"))
    answers["calls"] = calls
    return answers


# ---- choose_backend --------------------------------------------------------------------------------


def test_auto_takes_kfunc_when_nothing_is_refused(refusals: dict[str, object]) -> None:
    assert choose_backend("auto", FakeView()) == ("kfunc", {})  # type: ignore[arg-type]
    assert refusals["calls"] == ["kfunc"]  # kprobe not even asked


def test_auto_falls_to_kprobe_and_records_why_kfunc_was_refused(refusals: dict[str, object]) -> None:
    refusals["kfunc"] = "fentry programs are refused (EPERM)"
    assert choose_backend("auto", FakeView()) == ("kprobe", {"kfunc": "fentry programs are refused (EPERM)"})  # type: ignore[arg-type]
    assert refusals["calls"] == ["kfunc", "kprobe"]


def test_auto_ends_on_tracepoint_with_both_refusals_in_order(refusals: dict[str, object]) -> None:
    refusals["kfunc"] = KernelError("bpf(BPF_PROG_LOAD): Invalid argument")
    refusals["kprobe"] = "this kernel has no kprobes"
    chosen, reasons = choose_backend("auto", FakeView())  # type: ignore[arg-type]
    assert chosen == "tracepoint"
    assert list(reasons.items()) == [("kfunc", "bpf(BPF_PROG_LOAD): Invalid argument"),
                                     ("kprobe", "this kernel has no kprobes")]


def test_an_explicit_backend_is_kept_even_when_refused(refusals: dict[str, object]) -> None:
    refusals["kprobe"] = "no kprobe PMU"
    refusals["kfunc"] = "never asked"
    assert choose_backend("kprobe", FakeView()) == ("kprobe", {"kprobe": "no kprobe PMU"})  # type: ignore[arg-type]
    assert refusals["calls"] == ["kprobe"]


def test_tracepoint_needs_no_check(refusals: dict[str, object]) -> None:
    refusals["kfunc"] = refusals["kprobe"] = AssertionError("no check for tracepoints")
    assert choose_backend("tracepoint", FakeView()) == ("tracepoint", {})  # type: ignore[arg-type]
    assert refusals["calls"] == []


# ---- auto and kfunc above AUTO_KFUNC_MAX_FUNCTIONS -------------------------------------------------


def test_auto_passes_over_kfunc_for_a_plan_above_the_limit() -> None:
    view = FakeView({f"fn_{i:04}": 1 for i in range(AUTO_KFUNC_MAX_FUNCTIONS + 1)})
    plan = plan_probes(view, "kprobe", None)  # type: ignore[arg-type]
    assert plan.function_count == AUTO_KFUNC_MAX_FUNCTIONS + 1
    why = auto_passes_over_kfunc(view, lambda: plan.function_count)  # type: ignore[arg-type]
    assert why == (f"{AUTO_KFUNC_MAX_FUNCTIONS + 1} functions: fentry loads and attaches one program per function, "
                   "kprobe-multi attaches all of them in one call")


def test_auto_keeps_kfunc_at_the_limit_and_untraceable_functions_do_not_count() -> None:
    names = [f"fn_{i:04}" for i in range(AUTO_KFUNC_MAX_FUNCTIONS + 5)]
    view = FakeView(dict.fromkeys(names, 1), ftrace_functions=frozenset(names[:AUTO_KFUNC_MAX_FUNCTIONS]))
    plan = plan_probes(view, "kprobe", None)  # type: ignore[arg-type]
    assert plan.function_count == AUTO_KFUNC_MAX_FUNCTIONS and len(plan.untraceable) == 5
    assert auto_passes_over_kfunc(view, lambda: plan.function_count) is None  # type: ignore[arg-type]


# ---- plan_probes -----------------------------------------------------------------------------------


def test_a_function_plan_leaves_out_what_the_view_cannot_trace_and_adds_the_free_tracepoints() -> None:
    view = FakeView({"ip_rcv": 1, "tcp_v4_rcv": 1, "inlined_fn": 2, "blacklisted_fn": 3, "kfree_skb_reason": 1,
                     "consume_skb": 1},
                    ftrace_functions=frozenset({"ip_rcv", "tcp_v4_rcv", "blacklisted_fn", "kfree_skb_reason",
                                                "consume_skb"}),
                    kprobe_blacklist=frozenset({"blacklisted_fn"}))
    plan = plan_probes(view, "kprobe", None)  # type: ignore[arg-type]
    assert plan.backend == "kprobe"
    assert [(s.probe.id, s.probe.name, s.probe.kind, s.skb_arg) for s in plan.sources if s.is_function] == [
        (0, "ip_rcv", ProbeKind.KPROBE, 0), (1, "tcp_v4_rcv", ProbeKind.KPROBE, 0)]
    assert plan.untraceable == [("blacklisted_fn", "on the kernel's kprobe blacklist"),
                                ("inlined_fn", "not in available_filter_functions (notrace, inlined or init code)")]
    # the free functions are left to the free tracepoints, which follow the functions' ids
    assert all(name not in ("kfree_skb_reason", "consume_skb") for name, _ in view.asked)
    tracepoint_rows = [(s.probe.id, s.probe.name, s.probe.role) for s in plan.sources if not s.is_function]
    assert tracepoint_rows == [(2, "skb:consume_skb", ProbeRole.CONSUME), (3, "skb:kfree_skb", ProbeRole.DROP)]
    assert {info.event for info in FREE_TRACEPOINTS} >= {"consume_skb", "kfree_skb"}
    drop = plan.sources[-1]
    assert (drop.location_arg, drop.reason_arg) == (1, 2)
    assert plan.function_count == 2 and plan.probes[0].name == "ip_rcv"


def test_the_kprobe_blacklist_does_not_bind_kfunc() -> None:
    view = FakeView({"ip_rcv": 1, "blacklisted_fn": 3}, kprobe_blacklist=frozenset({"blacklisted_fn"}))
    plan = plan_probes(view, "kfunc", None)  # type: ignore[arg-type]
    assert [(s.probe.name, s.probe.kind, s.skb_arg) for s in plan.sources if s.is_function] == [
        ("blacklisted_fn", ProbeKind.KFUNC, 2), ("ip_rcv", ProbeKind.KFUNC, 0)]
    assert plan.untraceable == []
    assert view.asked == [("blacklisted_fn", ProbeKind.KFUNC), ("ip_rcv", ProbeKind.KFUNC)]


def test_functions_inside_a_free_are_release_probes_and_egress_functions_stay_egress(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text("functions:\n  - name: ip_rcv\n    skb_pos: 1\n  - name: skb_release_data\n    skb_pos: 1\n"
                        "  - name: kfree_skbmem\n    skb_pos: 1\n  - name: sock_wfree.isra.0\n    skb_pos: 1\n"
                        "  - name: dev_hard_start_xmit\n    skb_pos: 1\n    egress: true\n")
    view = FakeView({"ip_rcv": 1, "skb_release_data": 1, "kfree_skbmem": 1, "sock_wfree.isra.0": 1,
                     "dev_hard_start_xmit": 1})
    plan = plan_probes(view, "kprobe", str(manifest))  # type: ignore[arg-type]
    roles = {s.probe.name: s.probe.role for s in plan.sources if s.is_function}
    assert roles == {"ip_rcv": ProbeRole.STEP, "skb_release_data": ProbeRole.RELEASE,
                     "kfree_skbmem": ProbeRole.RELEASE, "sock_wfree.isra.0": ProbeRole.RELEASE,
                     "dev_hard_start_xmit": ProbeRole.EGRESS}


def test_functions_that_write_the_udp_header_are_prepare_probes() -> None:
    """At udp_send_skb's entry the UDP header is the buffer's leftovers and gso_size is not set: no packet starts."""
    assert [function_role(name, egress=False) for name in ("udp_send_skb", "udp_v6_send_skb", "udp_rcv")] == [
        ProbeRole.PREPARE, ProbeRole.PREPARE, ProbeRole.STEP]
    assert function_role("udp_send_skb", egress=True) is ProbeRole.EGRESS


def test_a_tracepoint_plan_holds_the_skb_tracepoints_the_kernel_has() -> None:
    plan = plan_probes(FakeView({"ip_rcv": 1}), "tracepoint", None)  # type: ignore[arg-type]
    assert plan.backend == "tracepoint" and plan.function_count == 0
    assert [(s.probe.name, s.probe.kind, s.probe.role) for s in plan.sources] == [
        ("net:netif_receive_skb", ProbeKind.TRACEPOINT, ProbeRole.STEP),
        ("net:net_dev_start_xmit", ProbeKind.TRACEPOINT, ProbeRole.STEP),
        ("skb:consume_skb", ProbeKind.TRACEPOINT, ProbeRole.CONSUME),
        ("skb:kfree_skb", ProbeKind.TRACEPOINT, ProbeRole.DROP)]


def test_a_manifests_egress_function_makes_its_tracepoint_end_the_path(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text("functions:\n  - name: ip_rcv\n    skb_pos: 1\n"
                        "  - name: dev_hard_start_xmit\n    skb_pos: 1\n    egress: true\n")
    plan = plan_probes(FakeView(), "tracepoint", str(manifest))  # type: ignore[arg-type]
    roles = {s.probe.name: s.probe.role for s in plan.sources}
    assert roles["net:net_dev_start_xmit"] is ProbeRole.EGRESS
    assert roles["net:netif_receive_skb"] is ProbeRole.STEP


def test_no_skb_tracepoint_is_a_kernel_error() -> None:
    with pytest.raises(KernelError, match="no skb tracepoint"):
        plan_probes(FakeView(tracepoints={}), "tracepoint", None)  # type: ignore[arg-type]


# ---- attach_summary --------------------------------------------------------------------------------


def _source(index: int, name: str, kind: ProbeKind = ProbeKind.KPROBE) -> ProbeSource:
    return ProbeSource(Probe(index, name, kind, 1, ProbeRole.STEP), name, 0)


def test_the_summary_says_refused_for_the_kernels_no_and_passed_over_for_autos_choice() -> None:
    sources = [_source(0, "ip_rcv"), _source(1, "skb:kfree_skb", ProbeKind.TRACEPOINT)]
    plan = ProbePlan("kprobe", sources)
    report = AttachReport(attached=sources)
    not_used = {"kfunc": "201 functions"}
    assert attach_summary("kprobe", plan, report, not_used, {"kfunc"}) == (
        "backend kprobe (kfunc passed over: 201 functions): 1 of 1 functions attached; 1 free tracepoint")
    assert attach_summary("kprobe", plan, report, not_used) == (
        "backend kprobe (kfunc refused: 201 functions): 1 of 1 functions attached; 1 free tracepoint")
    assert attach_summary("kprobe", plan, report, {}) == "backend kprobe: 1 of 1 functions attached; 1 free tracepoint"
