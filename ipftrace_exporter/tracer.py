"""The run loop both commands share: load a request's probes (trying backends in the order plan.py gives, falling
back when one attaches nothing) and turn ring-buffer records into finished paths (source -> decode -> paths).
Counting stays in the kernel; see metrics.py."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .collector import AttachReport, Collector, VerifyReport, compile_check
from .errors import AttachError, KernelError
from .events import decode_frames
from .flows import FlowSpec
from .kernel.headers import HeaderTree, HeaderTreeBuilder, choose_header_tree
from .kernel.view import KernelView, preload_symbols
from .names import Names
from .paths import PathAssembler, PathLimits, SkbPath
from .plan import (
    AUTO_ORDER,
    ProbePlan,
    attach_summary,
    auto_passes_over_kfunc,
    function_backend_unavailable,
    plan_probes,
)
from .probes import ProbeKind, ProbeTable
from .program import ModuleCode, Program, ProgramOptions, render

log = logging.getLogger(__name__)

SKB_LAYOUT_MEMBERS = ("head", "data", "len", "protocol", "network_header", "dev")


@dataclass(frozen=True)
class TraceRequest:
    """What to trace and how; validated where it was given (Config, the command line's options)."""

    flows: tuple[FlowSpec, ...]
    backend: str = "auto"
    manifest: str | None = None  # path; None = BTF discovery (function backends) / skb tracepoints
    options: ProgramOptions = field(default_factory=ProgramOptions)
    limits: PathLimits = field(default_factory=PathLimits)
    modules: tuple[ModuleCode, ...] = ()


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
        self._names: Names | None = None

    def headers(self) -> HeaderTree:
        """The header tree BCC compiles against (real headers only when their sk_buff matches BTF)."""
        builder = HeaderTreeBuilder(cache_dir=self.cache_dir, btf_path=self.view.btf_path)
        offsets = {m: self.view.btf.struct_member_offset("sk_buff", m) for m in SKB_LAYOUT_MEMBERS}
        known = {member: offset for member, offset in offsets.items() if offset is not None}
        return choose_header_tree(builder, lambda: known, compile_check)

    def candidates(self) -> tuple[str, ...]:
        """Backends to try, in order."""
        return AUTO_ORDER if self.request.backend == "auto" else (self.request.backend,)

    def program_options(self) -> ProgramOptions:
        """The request's program options with this kernel's facts: how kprobe entry points find their function,
        and where sk_buff's `cloned` bit sits."""
        return replace(self.request.options, func_ip=self.view.func_ip_mode,
                       cloned_bit=self.view.btf.struct_member_bit("sk_buff", "cloned"))

    def program_for(self, plan: ProbePlan) -> Program:
        """The program text of a plan, with this kernel's way for function probes to find their probe."""
        return render(plan.sources, self.request.flows, self.program_options(), self.request.modules)

    def collector_for(self, plan: ProbePlan, headers: HeaderTree, addresses: bool = True) -> Collector:
        """A collector for a plan: kprobes get their kallsyms addresses, kfunc probes their BTF ids."""
        functions = [source.target for source in plan.sources if source.probe.kind is ProbeKind.KPROBE]
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
        """Where fentry is refused: compile the kfunc plan's entry points and load each through the verifier as a
        tp_btf program on a tracepoint with its sk_buff at the same argument (same BTF-typed argument array as
        fentry). Raises KernelError if it does not compile."""
        plan = plan_probes(self.view, "kfunc", self.request.manifest)
        with Collector(self.program_for(plan), headers or self.headers()) as collector:
            return plan, collector.verify_tp_btf(self.view.tp_btf_stand_ins())


    def start(self) -> AttachReport:
        """Compile and attach; with `auto`, fall back kfunc -> kprobe -> tracepoint (a function backend the kernel
        refuses is skipped in milliseconds, before compiling). Logs one line naming the backend and why the
        others were not used. Raises AttachError."""
        headers = self.headers()
        auto = self.request.backend == "auto"
        # Free locations are named from kallsyms when the first drop ends a path: read it now, while BCC compiles
        # (which releases the GIL), not in the reader's loop, where half a second of parsing lets the ring overflow.
        symbols = self.view.symbols
        preload = (threading.Thread(target=preload_symbols, args=(symbols,), name="ipftrace-kallsyms", daemon=True)
                   if symbols is not None else None)
        if preload is not None:
            preload.start()
        try:
            return self._start(headers, auto)
        finally:
            if preload is not None:
                preload.join()

    def _start(self, headers: HeaderTree, auto: bool) -> AttachReport:
        plan_for = self._planner()
        for backend in self.candidates():
            known = self._not_tried(backend, auto, plan_for)
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
            self._names = self.view.names([flow.name for flow in self.request.flows], plan.probes)
            self._assembler = PathAssembler(plan.probes, self.request.limits, self._names)
            self._log_choice(backend, plan, report)
            return report
        reasons = "; ".join(f"{name}: {why}" for name, why in self.fallback_reasons.items())
        raise AttachError(f"no backend could attach ({reasons})")

    def _planner(self) -> Callable[[str], ProbePlan]:
        """plan_probes for this request, each backend planned once."""
        plans: dict[str, ProbePlan] = {}

        def plan_for(backend: str) -> ProbePlan:
            if backend not in plans:
                plans[backend] = plan_probes(self.view, backend, self.request.manifest)
            return plans[backend]

        return plan_for

    def _not_tried(self, backend: str, auto: bool, plan_for: Callable[[str], ProbePlan]) -> str | None:
        """Why start() does not try `backend`, decided before compiling: the kernel refuses it, or auto passes
        over kfunc for a large plan (recorded in passed_over). None when it is tried."""
        known = function_backend_unavailable(backend, self.view)
        if known is None and auto and backend == "kfunc":
            known = auto_passes_over_kfunc(self.view, lambda: plan_for("kprobe").function_count)
            if known is not None:
                self.passed_over.add(backend)
        return known

    def first_program(self) -> tuple[ProbePlan, Program]:
        """The plan and program start() tries first, rendered but neither compiled nor loaded: a requested backend
        as it is (the kernel is not asked), or auto's first backend the kernel does not refuse (kfunc's check loads
        a two-instruction trial program) and auto does not pass over (why is in fallback_reasons)."""
        plan_for = self._planner()
        backend = self.request.backend
        if backend == "auto":
            for candidate in AUTO_ORDER:
                backend = candidate
                known = self._not_tried(candidate, True, plan_for)
                if known is None:
                    break
                self.fallback_reasons[candidate] = known
        plan = plan_for(backend)
        return plan, self.program_for(plan)

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
    def names(self) -> Names:
        """Flow, probe, drop-reason and function names of the attached plan: what output, metrics and spans show."""
        if self._names is None:
            raise KernelError("the tracer is not started")
        return self._names

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
        return assembler.take(decode_frames(frames), behind=self._collector.backlog)

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
