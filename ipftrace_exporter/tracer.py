"""The pipeline both commands share: pick a backend, plan its probes, load them, and turn ring-buffer records
into finished paths (source -> decode -> paths). Counting stays in the kernel; see metrics.py."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

from . import manifest as manifests
from .collector import (
    ATTACHED,
    LOADED,
    REFUSED,
    AttachReport,
    Collector,
    VerifyReport,
    compile_check,
    kfunc_refusal,
    kprobe_multi_refusal,
)
from .errors import AttachError, KernelError, UsageError
from .events import decode_frames
from .flows import FlowSpec, check_flows
from .kernel.btf import KIND_FUNC, KIND_TYPEDEF, Btf
from .kernel.headers import HeaderTree, HeaderTreeBuilder, choose_header_tree
from .kernel.symbols import KernelSymbols
from .paths import PathAssembler, PathLimits, SkbPath
from .probes import Probe, ProbeKind, ProbeRole, ProbeTable
from .program import ModuleCode, ProbeSource, Program, ProgramOptions, render
from .tracepoints import SKB_TRACEPOINTS, TracepointInfo, available_tracepoints, tracefs_root

log = logging.getLogger(__name__)

BACKENDS = ("auto", "kfunc", "kprobe", "tracepoint")
AUTO_ORDER = ("kfunc", "kprobe", "tracepoint")
FREE_TRACEPOINTS = tuple(info for info in SKB_TRACEPOINTS if info.role is not ProbeRole.STEP)
# Manifest egress functions and the tracepoint that marks the same moment (for the tracepoint fallback).
EGRESS_TRACEPOINTS = {
    "dev_hard_start_xmit": "net_dev_start_xmit",
    "xmit_one": "net_dev_start_xmit",
    "__dev_queue_xmit": "net_dev_queue",
    "dev_queue_xmit": "net_dev_queue",
}
SKB_LAYOUT_MEMBERS = ("head", "data", "len", "protocol", "network_header", "dev")
KPROBE_PMU = "/sys/bus/event_source/devices/kprobe/type"
KPROBE_BLACKLIST = "/sys/kernel/debug/kprobes/blacklist"
# auto: above this many functions, kprobes (kprobe-multi where the kernel has it) are chosen over kfunc (fentry loads,
# attaches and detaches one program per function: minutes for thousands; bench/RESULTS.md, "Start-up on real kernels").
AUTO_KFUNC_MAX_FUNCTIONS = 200
# Tracepoints whose TP_PROTO has a struct sk_buff * at argument N: kfunc entry points for skb position N are
# verifier-checked as tp_btf programs on them where fentry is refused (Tracer.verify_kfunc_as_tp_btf).
TP_BTF_STAND_INS = {
    1: ("netif_receive_skb", "consume_skb", "kfree_skb"),
    2: ("tcp_retransmit_skb", "sock_rcvqueue_full"),
    3: ("udp_fail_queue_rcv_skb",),
    4: ("qdisc_dequeue",),
}
_TEXT_SYMBOL_TYPES = frozenset("tTwW")


@dataclass(frozen=True)
class TraceRequest:
    """What to trace and how."""

    flows: tuple[FlowSpec, ...]
    backend: str = "auto"
    manifest: str | None = None  # path; None = BTF discovery (function backends) / skb tracepoints
    options: ProgramOptions = field(default_factory=ProgramOptions)
    limits: PathLimits = field(default_factory=PathLimits)
    modules: tuple[ModuleCode, ...] = ()

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UsageError(f"backend {self.backend!r}: must be one of {', '.join(BACKENDS)}")
        check_flows(self.flows)


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


class KernelNames:
    """Drop-reason names from BTF and free locations from kallsyms (paths.DropNames)."""

    def __init__(self, btf: Btf, symbols: KernelSymbols | None) -> None:
        self._reasons = btf.drop_reasons()
        self._symbols = symbols

    def reason_name(self, reason: int) -> str:
        return self._reasons.get(reason, str(reason))

    def function_name(self, address: int) -> str:
        if self._symbols is None:
            return hex(address)
        return self._symbols.function_name(address)


_NO_SYMBOLS = "%s: drop locations will be shown as addresses"


def _preload(symbols: KernelSymbols) -> None:
    try:
        symbols.load()
    except KernelError as err:
        log.warning(_NO_SYMBOLS, err)


class KernelView:
    """BTF, kallsyms and tracefs of the running kernel, loaded once and on demand."""

    def __init__(self, btf_path: str = "/sys/kernel/btf/vmlinux", kallsyms_path: str = "/proc/kallsyms") -> None:
        self.btf_path = btf_path
        self.kallsyms_path = kallsyms_path

    @cached_property
    def btf(self) -> Btf:
        return Btf.load(self.btf_path)

    @cached_property
    def symbols(self) -> KernelSymbols | None:
        try:
            return KernelSymbols(self.kallsyms_path)
        except KernelError as err:
            log.warning(_NO_SYMBOLS, err)
            return None

    @cached_property
    def names(self) -> KernelNames:
        return KernelNames(self.btf, self.symbols)

    @cached_property
    def func_ip_mode(self) -> str:
        """How shared function entry points learn the traced function: "helper" (bpf_get_func_ip, Linux 5.15+)
        or "regs" (kprobe: the instruction pointer; kfunc: an address patched into each function's copy)."""
        return "helper" if "BPF_FUNC_get_func_ip" in self.btf.enum("bpf_func_id") else "regs"

    @cached_property
    def ftrace_functions(self) -> frozenset[str] | None:
        """Functions ftrace can hook (tracefs `available_filter_functions`): fentry and kprobe-multi attach only
        to these, and a kprobe elsewhere is refused or unsafe. None when the list is unreadable (then nothing is
        filtered out)."""
        root = tracefs_root()
        if root is None:
            return None
        names: set[str] = set()
        try:
            with open(os.path.join(root, "available_filter_functions"), encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    names.add(line.split(None, 1)[0] if line.strip() else "")
        except OSError as err:
            log.debug("available_filter_functions is unreadable (%s): functions are not filtered", err.strerror)
            return None
        names.discard("")
        return frozenset(names)

    @cached_property
    def kprobe_blacklist(self) -> frozenset[str]:
        """Functions the kernel forbids kprobes on (debugfs kprobes/blacklist; empty when unreadable)."""
        try:
            with open(KPROBE_BLACKLIST, encoding="utf-8", errors="replace") as handle:
                return frozenset(line.split()[-1] for line in handle if line.strip())
        except OSError:
            return frozenset()

    @cached_property
    def kprobe_multi_refusal(self) -> str | None:
        """Why kprobe-multi links cannot be used here, or None: the kernel must know them (5.18+), have fprobe
        (CONFIG_FPROBE, a trial link tells) and bpf_get_func_ip (how the shared entry points find their function)."""
        if "BPF_TRACE_KPROBE_MULTI" not in self.btf.enum("bpf_attach_type"):
            return "this kernel has no kprobe-multi links (Linux 5.18+)"
        if self.func_ip_mode != "helper":
            return "no bpf_get_func_ip on this kernel"
        missing = kprobes_unavailable()
        if missing is not None:
            return missing
        try:
            return kprobe_multi_refusal()
        except KernelError as err:
            return str(err)

    @property
    def has_kprobe_multi(self) -> bool:
        """Whether kprobe probes are attached with one kprobe-multi link per entry point (else one by one)."""
        return self.kprobe_multi_refusal is None

    def untraceable(self, name: str, kind: ProbeKind) -> str | None:
        """Why `kind` cannot probe function `name` on this kernel, or None."""
        ftrace = self.ftrace_functions
        if ftrace is not None and name not in ftrace:
            return "not in available_filter_functions (notrace, inlined or init code)"
        if kind is ProbeKind.KPROBE and name in self.kprobe_blacklist:
            return "on the kernel's kprobe blacklist"
        return None

    def function_btf_ids(self, names: Collection[str]) -> dict[str, int]:
        """vmlinux BTF FUNC type ids of `names` (the ids fentry programs attach to); absent names left out."""
        found = {}
        for name in names:
            ids = self.btf.find(name, KIND_FUNC)
            if ids:
                found[name] = ids[0]
        return found

    def tp_btf_stand_ins(self) -> dict[int, tuple[str, int]]:
        """skb position -> (tracepoint, btf_trace_* typedef id) of a tracepoint with an sk_buff there."""
        found: dict[int, tuple[str, int]] = {}
        for position, events in TP_BTF_STAND_INS.items():
            for event in events:
                params = self.btf.tracepoint_params(event)
                ids = self.btf.find(f"btf_trace_{event}", KIND_TYPEDEF)
                if params and ids and len(params) >= position and "struct sk_buff *" in params[position - 1][1]:
                    found[position] = (event, ids[0])
                    break
        return found

    def function_addresses(self, names: Collection[str]) -> dict[str, list[int]]:
        """kallsyms text addresses of `names` (a static function name can have several); hidden addresses
        (zeros, when not root) are left out."""
        wanted = set(names)
        found: dict[str, list[int]] = {}
        try:
            with open(self.kallsyms_path, encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    parts = line.split(None, 3)
                    if len(parts) >= 3 and parts[2] in wanted and parts[1] in _TEXT_SYMBOL_TYPES:
                        address = int(parts[0], 16)
                        if address:
                            found.setdefault(parts[2], []).append(address)
        except (OSError, ValueError) as err:
            log.warning("cannot read function addresses from %s: %s", self.kallsyms_path, err)
        return found


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
        role = ProbeRole.EGRESS if spec.egress else ProbeRole.STEP
        sources.append(ProbeSource(Probe(len(sources), spec.name, kind, spec.skb_pos, role), spec.name, spec.skb_pos - 1))
    sources.extend(_tracepoint_sources(view, FREE_TRACEPOINTS, frozenset(), first_id=len(sources)))
    return ProbePlan(backend, sources, missing, untraceable)


def kprobes_unavailable() -> str | None:
    """Why kprobes cannot be attached on this kernel (no kprobe PMU and no kprobe_events), or None."""
    if os.path.exists(KPROBE_PMU):
        return None
    root = tracefs_root()
    if root is not None and os.path.exists(os.path.join(root, "kprobe_events")):
        return None
    if root is None:
        return "no kprobe PMU and tracefs is not mounted (no kprobe_events)"
    return "this kernel has no kprobes (CONFIG_KPROBES is off: no kprobe PMU, no kprobe_events in tracefs)"


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


ATTACHABLE, VERIFIED, UNTESTED = "attachable", "verified", "untested"


@dataclass
class Survey:
    """What each backend can do with each planned probe on this kernel (what `ipftrace -l` prints).

    States: "attachable" (loaded through the verifier, and this kernel has the attach interface; tracepoints:
    a trial attach worked), "verified" (loaded through the verifier, but this kernel cannot attach it),
    "refused" (compiled; the kernel refuses the program type), "rejected" (the verifier rejected it),
    "untested" (not checked)."""

    chosen: str  # the backend the request resolves to
    reasons: dict[str, str]  # backends passed over, and why
    functions: list[ProbeSource]  # kernel-function probes, in plan order (as kprobes)
    tracepoints: list[ProbeSource]
    missing: list[str]  # manifest functions this kernel lacks
    states: dict[str, dict[str, str]]  # backend -> probe name -> state
    notes: dict[str, str]  # backend -> one line on what was checked and what the kernel said


class Tracer:
    """Loads probes for a TraceRequest and yields finished SkbPaths."""

    def __init__(self, request: TraceRequest, view: KernelView | None = None, cache_dir: str | None = None) -> None:
        self.request = request
        self.view = view or KernelView()
        self.cache_dir = cache_dir
        self.plan: ProbePlan | None = None
        self.report: AttachReport | None = None
        self.fallback_reasons: dict[str, str] = {}  # backends not used, and why
        self.passed_over: set[str] = set()  # of those, the ones auto chose against (the others were refused)
        self._collector: Collector | None = None
        self._assembler: PathAssembler | None = None

    def headers(self) -> HeaderTree:
        """The header tree BCC compiles against (real headers only when their sk_buff matches BTF)."""
        builder = HeaderTreeBuilder(cache_dir=self.cache_dir, btf_path=self.view.btf_path)
        offsets = {m: self.view.btf.struct_member_offset("sk_buff", m) for m in SKB_LAYOUT_MEMBERS}
        known = {member: offset for member, offset in offsets.items() if offset is not None}
        return choose_header_tree(builder, lambda: known, compile_check)

    def candidates(self) -> tuple[str, ...]:
        """Backends to try, in order."""
        return AUTO_ORDER if self.request.backend == "auto" else (self.request.backend,)

    def program_for(self, plan: ProbePlan) -> Program:
        """The program text of a plan, with this kernel's way for function probes to find their probe."""
        options = replace(self.request.options, func_ip=self.view.func_ip_mode,
                          cloned_bit=self.view.btf.struct_member_bit("sk_buff", "cloned"))
        return render(plan.sources, self.request.flows, options, self.request.modules)

    def collector_for(self, plan: ProbePlan, headers: HeaderTree, addresses: bool = True) -> Collector:
        """A collector for a plan: function probes get their kallsyms addresses, kfunc probes their BTF ids."""
        functions = [source.target for source in plan.sources if source.is_function]
        found = self.view.function_addresses(functions) if functions and addresses else {}
        kfuncs = [source.target for source in plan.sources if source.probe.kind is ProbeKind.KFUNC]
        multi = plan.backend == "kprobe" and self.view.has_kprobe_multi
        return Collector(self.program_for(plan), headers, found, self.view.function_btf_ids(kfuncs), kprobe_multi=multi)

    def verify(self, backend: str, headers: HeaderTree | None = None) -> tuple[ProbePlan, VerifyReport]:
        """Plan `backend` (not auto), compile its program and load every entry point through the kernel verifier
        without attaching (kfunc: as the first function's fentry program). Raises KernelError if it does not
        compile."""
        plan = plan_probes(self.view, backend, self.request.manifest)
        with self.collector_for(plan, headers or self.headers(), addresses=False) as collector:
            return plan, collector.verify()

    def verify_kfunc_as_tp_btf(self, headers: HeaderTree | None = None) -> tuple[ProbePlan, VerifyReport]:
        """Where fentry is refused: compile the kfunc plan's entry points with a stand-in for bpf_get_func_ip and
        load each through the verifier as a tp_btf program on a tracepoint with its sk_buff at the same argument
        (same BTF-typed argument array as fentry). Raises KernelError if it does not compile."""
        plan = plan_probes(self.view, "kfunc", self.request.manifest)
        options = replace(self.request.options, func_ip="verify")
        program = render(plan.sources, self.request.flows, options, self.request.modules)
        with Collector(program, headers or self.headers()) as collector:
            return plan, collector.verify_tp_btf(self.view.tp_btf_stand_ins())

    def survey(self, headers: HeaderTree | None = None, with_functions: bool = True) -> Survey:
        """Compile one program holding every planned function probe (as kprobe and as kfunc) and the skb
        tracepoints, load each entry point through the verifier, trial-attach the tracepoints, and tell per probe
        and backend what this kernel allows (`with_functions=False`: tracepoints only). Raises KernelError if it
        does not compile."""
        chosen, reasons = choose_backend(self.request.backend, self.view)
        manifest = self.request.manifest
        function_plan = plan_probes(self.view, "kprobe", manifest) if with_functions else ProbePlan("kprobe", [])
        functions = [source for source in function_plan.sources if source.is_function]
        tracepoints = plan_probes(self.view, "tracepoint", manifest).sources
        sources: list[ProbeSource] = []

        def add(source: ProbeSource, kind: ProbeKind | None = None) -> None:
            probe = replace(source.probe, id=len(sources), kind=kind or source.probe.kind)
            sources.append(replace(source, probe=probe))

        for source in functions:
            add(source)
        for source in functions:
            add(source, ProbeKind.KFUNC)
        for source in tracepoints:
            add(source)
        options = replace(self.request.options, func_ip=self.view.func_ip_mode,
                          cloned_bit=self.view.btf.struct_member_bit("sk_buff", "cloned"))
        program = render(sources, self.request.flows, options, self.request.modules)
        with Collector(program, headers or self.headers()) as collector:
            report = collector.verify(try_tracepoints=True)
        kprobes_missing = kprobes_unavailable()
        refusal = function_backend_unavailable("kfunc", self.view)
        states: dict[str, dict[str, str]] = {"kprobe": {}, "kfunc": {}, "tracepoint": {}}
        for source in program.sources:
            check = report.for_source(source)
            status = check.status if check is not None else ""
            kind = source.probe.kind
            if kind is ProbeKind.TRACEPOINT:
                state = {ATTACHED: ATTACHABLE, LOADED: VERIFIED}.get(status, status or UNTESTED)
            elif kind is ProbeKind.KPROBE:
                state = {LOADED: VERIFIED if kprobes_missing else ATTACHABLE}.get(status, status or UNTESTED)
            else:
                state = {LOADED: ATTACHABLE}.get(status, status or UNTESTED)
            states[kind.value][source.probe.name] = state
        notes: dict[str, str] = {}
        if functions:
            kfunc_states = set(states["kfunc"].values())
            kprobe_ok = sum(1 for state in states["kprobe"].values() if state in (VERIFIED, ATTACHABLE))
            notes["kfunc"] = ("compiled"
                              + (f"; not attachable: {refusal}" if refusal and REFUSED in kfunc_states
                                 else "; the kernel loads kfunc programs" if ATTACHABLE in kfunc_states else ""))
            notes["kprobe"] = (f"{kprobe_ok} of {len(functions)} loaded through the verifier; "
                               + (f"not attachable: {kprobes_missing}" if kprobes_missing else "kprobes are available"))
        notes["tracepoint"] = (f"{sum(1 for state in states['tracepoint'].values() if state == ATTACHABLE)} of "
                               f"{len(tracepoints)} raw tracepoints attached in a trial")
        rejected = report.rejected
        if rejected:
            notes["rejected"] = f"{rejected[0].entry}: {rejected[0].reason}"
        return Survey(chosen, reasons, functions, list(tracepoints), function_plan.missing, states, notes)

    def start(self) -> AttachReport:
        """Compile and attach; with `auto`, fall back kfunc -> kprobe -> tracepoint (a function backend the kernel
        refuses is skipped in milliseconds, before compiling). Logs one line naming the backend and why the
        others were not used. Raises AttachError."""
        headers = self.headers()
        auto = self.request.backend == "auto"
        # Free locations are named from kallsyms when the first drop ends a path: read it now, while BCC compiles
        # (which releases the GIL), not in the reader's loop, where half a second of parsing lets the ring overflow.
        symbols = self.view.symbols
        preload = (threading.Thread(target=_preload, args=(symbols,), name="ipftrace-kallsyms", daemon=True)
                   if symbols is not None else None)
        if preload is not None:
            preload.start()
        try:
            return self._start(headers, auto)
        finally:
            if preload is not None:
                preload.join()

    def _start(self, headers: HeaderTree, auto: bool) -> AttachReport:
        plans: dict[str, ProbePlan] = {}

        def plan_for(backend: str) -> ProbePlan:
            if backend not in plans:
                plans[backend] = plan_probes(self.view, backend, self.request.manifest)
            return plans[backend]

        for backend in self.candidates():
            known = function_backend_unavailable(backend, self.view)
            if known is None and auto and backend == "kfunc":
                known = auto_passes_over_kfunc(self.view, lambda: plan_for("kprobe").function_count)
                if known is not None:
                    self.passed_over.add(backend)
            if known is not None:
                self.fallback_reasons[backend] = known
                if not auto:
                    raise AttachError(f"backend {backend}: {known}")
                continue
            collector: Collector | None = None
            try:
                plan = plan_for(backend)
                collector = self.collector_for(plan, headers)
                report = collector.attach()
                if backend != "tracepoint" and not any(s.probe.kind.value == backend for s in report.attached):
                    first = next((f"{s.target}: {why}" for s, why in report.failed if s.probe.kind.value == backend),
                                 "no function planned")
                    raise AttachError(f"no {backend} probe attached (first failure: {first})")
            except (AttachError, KernelError) as err:
                if collector is not None:
                    collector.close()
                self.fallback_reasons[backend] = str(err)
                if not auto:
                    raise AttachError(f"backend {backend}: {err}") from None
                continue
            self.plan, self.report, self._collector = plan, report, collector
            self._assembler = PathAssembler(plan.probes, self.request.limits, self.view.names)
            self._log_choice(backend, plan, report)
            return report
        reasons = "; ".join(f"{name}: {why}" for name, why in self.fallback_reasons.items())
        raise AttachError(f"no backend could attach ({reasons})")

    def _log_choice(self, backend: str, plan: ProbePlan, report: AttachReport) -> None:
        """One line: the backend, why earlier ones were passed over, how many functions attached of how many, and
        the first failure (for a manifest traced with tracepoints, that function-level probing is unavailable:
        then at warning level). Per-probe details are at debug level."""
        line = attach_summary(backend, plan, report, self.fallback_reasons, self.passed_over)
        if self.request.manifest and backend == "tracepoint" and self.request.backend == "auto":
            log.warning("%s; function-level probing is unavailable on this kernel, so the manifest's flows are "
                        "traced with skb tracepoints (its egress functions end paths where a tracepoint marks the "
                        "same moment)", line)
        else:
            log.info("%s", line)

    @property
    def backend(self) -> str:
        return self.plan.backend if self.plan else self.request.backend

    @property
    def probes(self) -> ProbeTable:
        if self.plan is None:
            raise KernelError("the tracer is not started")
        return self.plan.probes

    @property
    def collector(self) -> Collector:
        if self._collector is None:
            raise KernelError("the tracer is not started")
        return self._collector

    def poll(self, timeout_ms: int = 100) -> list[SkbPath]:
        """Read what the kernel sent (waiting up to timeout_ms) and return the paths that are complete."""
        assembler = self._assembler
        if assembler is None or self._collector is None:
            return []
        frames = self._collector.poll(timeout_ms)
        done: list[SkbPath] = []
        if frames:
            done.extend(assembler.add_many(decode_frames(frames)))
        done.extend(assembler.expire())
        return done

    def flush(self) -> list[SkbPath]:
        """Drain the ring buffer, then return every path still held (on shutdown, before close())."""
        if self._assembler is None:
            return []
        done: list[SkbPath] = []
        if self._collector is not None and not self._collector.closed:
            for _ in range(64):  # bounded: each drain takes at most MAX_RECORDS_PER_POLL records
                frames = self._collector.drain()
                if not frames:
                    break
                done.extend(self._assembler.add_many(decode_frames(frames)))
        done.extend(self._assembler.flush())
        return done

    def close(self) -> None:
        """Detach every probe."""
        if self._collector is not None:
            self._collector.close()
