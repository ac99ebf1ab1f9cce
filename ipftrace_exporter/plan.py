"""Probe planning and backend choice: which probes each backend would attach on this kernel (a manifest or BTF
discovery, less what the kernel cannot trace, plus the skb tracepoints), which backend a request resolves to and
why the others were refused or passed over, and the one start-up line that says so."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from . import manifest as manifests
from .collector import AttachReport, kfunc_refusal
from .errors import KernelError
from .kernel.view import KernelView, kprobes_unavailable
from .probes import Probe, ProbeKind, ProbeRole, ProbeTable
from .program import ProbeSource
from .tracepoints import SKB_TRACEPOINTS, TracepointInfo, available_tracepoints

log = logging.getLogger(__name__)

AUTO_ORDER = ("kfunc", "kprobe", "tracepoint")
FREE_TRACEPOINTS = tuple(info for info in SKB_TRACEPOINTS if info.role is not ProbeRole.STEP)
# Manifest egress functions and the tracepoint that marks the same moment (for the tracepoint fallback).
EGRESS_TRACEPOINTS = {
    "dev_hard_start_xmit": "net_dev_start_xmit",
    "xmit_one": "net_dev_start_xmit",
    "__dev_queue_xmit": "net_dev_queue",
    "dev_queue_xmit": "net_dev_queue",
}
# auto: above this many functions, kprobes (kprobe-multi where the kernel has it) are chosen over kfunc (fentry loads,
# attaches and detaches one program per function: minutes for thousands; bench/RESULTS.md, "Start-up on real kernels").
AUTO_KFUNC_MAX_FUNCTIONS = 200
# Functions that run inside a free, after its tracepoint (consume_skb, kfree_skb -> __kfree_skb -> skb_release_all
# -> skb_release_head_state (the skb's destructor) / skb_release_data (its frag list) -> kfree_skbmem), on the skb
# that free just ended: they never start a packet (ProbeRole.RELEASE). Some also run on live skbs
# (pskb_expand_head releases the old data, skb_orphan calls the destructor): there they are a tracked packet's steps.
RELEASE_FUNCTIONS = frozenset((
    "skb_release_all", "skb_release_head_state", "skb_release_data", "skb_free_head", "kfree_skbmem",
    "kfree_skb_list", "kfree_skb_list_reason", "napi_skb_cache_put", "skb_zcopy_clear",
    "sock_rfree", "sock_wfree", "__sock_wfree", "tcp_wfree", "sock_efree", "sock_edemux", "sock_pfree",
    "sock_ofree", "unix_destruct_scm", "netlink_skb_destructor", "tpacket_destruct_skb", "xsk_destruct_skb",
))

# Functions that write the L4 header of the skb they are given (udp_send_skb, its IPv6 twin): at their entry the
# header bytes are the buffer's leftovers, often the last datagram's of the same socket (the same ports and, for
# sends of one size, the same length), and the skb is not a GSO packet yet (gso_size is set there too). They never
# start a packet (ProbeRole.PREPARE): it starts at the next probe, headers and GSO fields written.
HEADER_WRITERS = frozenset(("udp_send_skb", "udp_v6_send_skb"))


@dataclass
class ProbePlan:
    """The probes one backend would attach on this kernel, and what it left out."""

    backend: str
    sources: list[ProbeSource]
    missing: list[str] = field(default_factory=list)  # manifest functions absent from this kernel
    untraceable: list[tuple[str, str]] = field(default_factory=list)  # (function, why) the kernel cannot trace

    @property
    def function_count(self) -> int:
        """Kernel functions planned (tracepoints not counted)."""
        return sum(1 for source in self.sources if source.is_function)

    @property
    def probes(self) -> ProbeTable:
        return ProbeTable([source.probe for source in self.sources])


def _tracepoint_sources(
    view: KernelView, wanted: Sequence[TracepointInfo], egress_events: frozenset[str], first_id: int = 0
) -> list[ProbeSource]:
    sources = []
    for info, args in available_tracepoints(view.btf, wanted):
        role = ProbeRole.EGRESS if info.event in egress_events and info.role is ProbeRole.STEP else info.role
        probe = Probe(first_id + len(sources), info.name, ProbeKind.TRACEPOINT, args.skb + 1, role)
        sources.append(ProbeSource(probe, info.event, args.skb, args.location, args.reason, info.from_data,
                                   args.device))
    return sources


def function_specs(view: KernelView, manifest_path: str | None) -> tuple[list[manifests.FunctionSpec], list[str]]:
    """The functions a manifest (reconciled with this kernel) or BTF discovery names, and those skipped."""
    if manifest_path is None:
        return manifests.discover(view.btf, view.symbols), []
    plan = manifests.reconcile(manifests.load_manifest(manifest_path), view.btf, view.symbols)
    return plan.functions, plan.missing + [name for name, _ in plan.skipped]


def plan_probes(view: KernelView, backend: str, manifest_path: str | None) -> ProbePlan:
    """The probes `backend` (not auto) would attach. Function backends add the free tracepoints, so drops keep
    their reason and location on every backend."""
    if backend == "tracepoint":
        egress: frozenset[str] = frozenset()
        if manifest_path is not None:
            loaded = manifests.load_manifest(manifest_path)
            egress = frozenset(EGRESS_TRACEPOINTS[spec.name] for spec in loaded.functions
                               if spec.egress and spec.name in EGRESS_TRACEPOINTS)
        sources = _tracepoint_sources(view, SKB_TRACEPOINTS, egress)
        if not sources:
            raise KernelError("no skb tracepoint is available (is tracefs mounted at /sys/kernel/tracing?)")
        return ProbePlan("tracepoint", sources)
    kind = ProbeKind(backend)
    functions, missing = function_specs(view, manifest_path)
    sources = []
    untraceable = []
    for spec in functions:
        if spec.name in ("kfree_skb_reason", "sk_skb_reason_drop", "consume_skb", "__kfree_skb"):
            continue  # the free tracepoints below carry reason and location
        why = view.untraceable(spec.name, kind)
        if why is not None:
            untraceable.append((spec.name, why))
            if manifest_path is not None:
                log.warning("manifest %s: %s cannot be traced on this kernel (%s); skipped", manifest_path, spec.name,
                            why)
            continue
        probe = Probe(len(sources), spec.name, kind, spec.skb_pos, function_role(spec.name, spec.egress))
        sources.append(ProbeSource(probe, spec.name, spec.skb_pos - 1))
    sources.extend(_tracepoint_sources(view, FREE_TRACEPOINTS, frozenset(), first_id=len(sources)))
    return ProbePlan(backend, sources, missing, untraceable)


def function_role(name: str, egress: bool) -> ProbeRole:
    """A kernel function's role: a manifest's egress function, a function inside a free, one that writes the
    headers it is given, or a step."""
    if egress:
        return ProbeRole.EGRESS
    base = name.split(".")[0]
    if base in RELEASE_FUNCTIONS:
        return ProbeRole.RELEASE
    return ProbeRole.PREPARE if base in HEADER_WRITERS else ProbeRole.STEP


def function_backend_unavailable(backend: str, view: KernelView | None = None) -> str | None:
    """Why a function backend cannot work here, decided in milliseconds: kprobe by the kernel's kprobe
    interfaces, kfunc by loading a two-instruction fentry program. None when it may work (or for tracepoint)."""
    if backend == "kprobe":
        return kprobes_unavailable()
    if backend == "kfunc":
        try:
            return kfunc_refusal()
        except KernelError as err:
            return str(err)
    return None


def choose_backend(requested: str, view: KernelView | None = None) -> tuple[str, dict[str, str]]:
    """The backend `requested` resolves to without compiling anything, and why earlier ones were refused.
    (Tracer.start() may still fall back further when a function backend attaches nothing.)"""
    reasons: dict[str, str] = {}
    for backend in AUTO_ORDER if requested == "auto" else (requested,):
        why = function_backend_unavailable(backend, view)
        if why is None:
            return backend, reasons
        reasons[backend] = why
    return ("tracepoint" if requested == "auto" else requested), reasons


def auto_passes_over_kfunc(view: KernelView, function_count: Callable[[], int]) -> str | None:
    """Why `auto` does not try kfunc for this plan, or None. fentry loads, verifies and attaches one program and
    trampoline per function: a plan above AUTO_KFUNC_MAX_FUNCTIONS gets ready far sooner as kprobes (one
    kprobe-multi link where the kernel has it, else one kprobe each, which attach faster than fentry)."""
    count = function_count()
    if count <= AUTO_KFUNC_MAX_FUNCTIONS:
        return None
    how = "kprobe-multi attaches all of them in one call" if view.has_kprobe_multi else \
        "kprobes attach faster one by one (no kprobe-multi on this kernel)"
    return f"{count} functions: fentry loads and attaches one program per function, {how}"


def attach_summary(backend: str, plan: ProbePlan, report: AttachReport, not_used: Mapping[str, str],
                   passed_over: Collection[str] = ()) -> str:
    """The one start-up line: backend, why the others were not used (refused by the kernel, or `passed_over` by
    auto), functions attached of planned, what could not be traced, and the first failure."""
    refused = "; ".join(f"{name} {'passed over' if name in passed_over else 'refused'}: {why}"
                        for name, why in not_used.items())
    head = f"backend {backend}{f' ({refused})' if refused else ''}"
    if backend == "tracepoint":
        body = f"{len(report.attached)} of {len(plan.sources)} tracepoints attached"
    else:
        attached = sum(1 for source in report.attached if source.is_function)
        planned = plan.function_count + len(plan.untraceable)
        how = f" ({report.multi_links} kprobe-multi link{'s' if report.multi_links != 1 else ''})" \
            if report.multi_links else ""
        body = f"{attached:,} of {planned:,} functions attached{how}"
        not_traceable = len(plan.untraceable) + sum(1 for source, _ in report.failed if source.is_function)
        if not_traceable:
            body += f"; {not_traceable:,} not traceable: see -l"
        tracepoints = sum(1 for source in report.attached if not source.is_function)
        body += f"; {tracepoints} free tracepoint{'s' if tracepoints != 1 else ''}"
    if report.failed:
        source, why = report.failed[0]
        body += f" (first failure: {source.probe.name}: {why})"
    return f"{head}: {body}"
