"""Prometheus metrics: a collector that reads the kernel's counter maps at scrape time, plus the self-metrics.

Counting happens in the kernel; this module only reads the maps through a CounterReader (BPF maps in
production, a dict in tests) and names what it reads: probe ids become function / tracepoint names, free
locations and drop-reason numbers become names through the tracer's names.Names. Every scrape renders whatever
could be read: a reader that raises is logged once and counted in `ipftrace_scrape_errors_total`.
"""

from __future__ import annotations

import logging
import platform
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from . import __version__
from .events import UNTRACED_REASONS
from .names import Names
from .paths import OUTCOMES

log = logging.getLogger(__name__)

PROBE_STATES = ("attached", "failed")
SCRAPE_SOURCES = ("hits", "drops", "totals", "spans")

SpanStats = Callable[[], tuple[int, Mapping[str, int]]]
"""Returns (spans exported, {drop reason: spans dropped}) so far; provided by the OTLP sink."""


class CounterReader(Protocol):
    """Reads the kernel's counter maps; every count is already summed over CPUs."""

    def hits(self) -> Iterable[tuple[int, int, int]]:
        """(flow_id, probe_id, count) per probe hit by a matching packet."""
        ...

    def drops(self) -> Iterable[tuple[int, int, int, int]]:
        """(flow_id, free location address, drop reason number, count)."""
        ...

    def matched(self) -> Iterable[tuple[int, int]]:
        """(flow_id, count) of packets that matched a flow (each packet once, where first matched)."""
        ...

    def untraced(self) -> Iterable[tuple[int, str, int]]:
        """(flow_id, reason, count) of matching packets not traced (sampled out, or their first record lost)."""
        ...

    def totals(self) -> Mapping[str, int]:
        """{"events": records written to the ring buffer, "lost": records lost because it was full}."""
        ...


@dataclass(frozen=True, slots=True)
class KernelCounters:
    """What the collector needs once probes are attached: the map reader and the names of its numbers."""

    reader: CounterReader
    names: Names


class PathStats:
    """Thread-safe count of finished paths by flow name and outcome (`ipftrace_paths_total`)."""

    def __init__(self, flow_names: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {
            (flow, outcome): 0 for flow in flow_names for outcome in OUTCOMES
        }

    def count(self, flow_name: str, outcome: str, n: int = 1) -> None:
        """Add n paths of this flow that ended with this outcome (one of paths.OUTCOMES)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown path outcome {outcome!r} (known: {', '.join(OUTCOMES)})")
        key = (flow_name, outcome)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + n

    def snapshot(self) -> dict[tuple[str, str], int]:
        """A copy of the counts, {(flow, outcome): n}."""
        with self._lock:
            return dict(self._counts)


class ProbeStatus:
    """Thread-safe attach results per backend (`ipftrace_probes`), the backend in use, and readiness."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, int]] = {}
        self._active: str | None = None
        self._detached = False

    def record(self, backend: str, attached: int, failed: int = 0) -> None:
        """Set one backend's attach result; a backend with attached probes becomes the one in use."""
        with self._lock:
            self._counts[backend] = (attached, failed)
            if attached > 0:
                self._active = backend
                self._detached = False
            elif self._active == backend:
                self._active = None

    def detached(self) -> None:
        """Every probe was detached (shutdown): attached counts drop to 0, not ready any more."""
        with self._lock:
            self._counts = {backend: (0, failed) for backend, (_, failed) in self._counts.items()}
            self._active = None
            self._detached = True

    @property
    def active(self) -> str | None:
        """The backend whose probes are attached, or None."""
        with self._lock:
            return self._active

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """{backend: (attached, failed)}."""
        with self._lock:
            return dict(self._counts)

    def ready(self) -> tuple[bool, str]:
        """(True, summary) while probes are attached, else (False, why): the /readyz check."""
        with self._lock:
            if self._active is not None:
                attached, failed = self._counts[self._active]
                return True, f"{attached} probes attached ({self._active}), {failed} failed"
            if self._detached:
                return False, "probes detached (shutting down)"
            if self._counts:
                tried = ", ".join(f"{b} {a} attached / {f} failed" for b, (a, f) in self._counts.items())
                return False, f"no probe attached ({tried})"
            return False, "probes not attached yet"


class IpftraceCollector:
    """prometheus_client collector of the metric contract (README, Metrics); reads the kernel maps on each scrape."""

    def __init__(
        self,
        flow_names: Sequence[str],
        path_stats: PathStats | None = None,
        probe_status: ProbeStatus | None = None,
        span_stats: SpanStats | None = None,
        span_drop_reasons: Sequence[str] = (),
        version: str = __version__,
        kernel: str | None = None,
    ) -> None:
        self.flow_names = tuple(flow_names)
        self.path_stats = path_stats if path_stats is not None else PathStats(self.flow_names)
        self.probe_status = probe_status if probe_status is not None else ProbeStatus()
        self.span_drop_reasons = tuple(span_drop_reasons)
        self.version = version
        self.kernel = kernel if kernel is not None else platform.release()
        self._kernel: KernelCounters | None = None
        self._span_stats = span_stats
        self._lock = threading.Lock()
        self._scrape_errors = dict.fromkeys(SCRAPE_SOURCES, 0)

    def set_kernel(self, counters: KernelCounters | None) -> None:
        """Start (or, with None, stop) reading the kernel's maps: call after attaching / before detaching."""
        self._kernel = counters

    def set_span_stats(self, span_stats: SpanStats | None) -> None:
        """Set where span export counts come from (the OTLP sink)."""
        self._span_stats = span_stats

    @property
    def scrape_errors(self) -> dict[str, int]:
        """Failed reads so far by source (hits, drops, totals, spans)."""
        with self._lock:
            return dict(self._scrape_errors)

    def describe(self) -> Iterator[Metric]:
        """The metric families, without samples (lets the registry check names without reading maps)."""
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        """Every metric family with this scrape's samples; never raises because of a reader."""
        kernel = self._kernel
        (hits, drops, matched, untraced, events, lost, paths, exported, dropped, probes, build,
         errors) = self._families()
        ok = {"hits": True, "drops": True, "matched": True, "untraced": True, "totals": True}
        if kernel is not None:
            ok["hits"] = self._read("hits", lambda: self._hits(kernel, hits))
            ok["drops"] = self._read("drops", lambda: self._drops(kernel, drops))
            ok["matched"] = self._read("matched", lambda: self._matched(kernel, matched))
            ok["untraced"] = self._read("untraced", lambda: self._untraced(kernel, untraced))
            ok["totals"] = self._read("totals", lambda: self._totals(kernel, events, lost))
        else:  # not attached (yet): nothing was counted
            events.add_metric([], 0)
            lost.add_metric([], 0)
        ok["spans"] = self._read("spans", lambda: self._spans(exported, dropped))
        for (flow, outcome), n in sorted(self.path_stats.snapshot().items()):
            paths.add_metric([flow, outcome], n)
        for backend, counts in sorted(self.probe_status.snapshot().items()):
            for state, n in zip(PROBE_STATES, counts):
                probes.add_metric([backend, state], n)
        build.add_metric([self.version, self.probe_status.active or "none", self.kernel], 1)
        for source, n in self.scrape_errors.items():
            errors.add_metric([source], n)
        # a family whose read failed is left out: no sample rather than a wrong one
        for source, families in (("hits", (hits,)), ("drops", (drops,)), ("matched", (matched,)), ("untraced", (untraced,)),
                                 ("totals", (events, lost))):
            if ok[source]:
                yield from families
        yield paths
        if ok["spans"]:
            yield from (exported, dropped)
        yield from (probes, build, errors)

    # ---- internals ----

    @staticmethod
    def _families() -> tuple[
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        CounterMetricFamily,
    ]:
        return (
            CounterMetricFamily(
                "ipftrace_function_hits",
                "Matching packets seen at each kernel function or tracepoint, counted in the kernel.",
                labels=["flow", "function"],
            ),
            CounterMetricFamily(
                "ipftrace_skb_drops",
                "Matching packets dropped, by the kernel function that freed "
                "them and the drop reason, counted in the kernel.",
                labels=["flow", "function", "reason"],
            ),
            CounterMetricFamily(
                "ipftrace_packets_matched",
                "Packets that matched a flow, counted in the kernel once each where first matched (clones and "
                "rewritten headers are the same packet); they are traced (ipftrace_paths_total) or untraced "
                "(ipftrace_packets_untraced_total).",
                labels=["flow"],
            ),
            CounterMetricFamily(
                "ipftrace_packets_untraced",
                "Matching packets that were not traced, counted in the kernel: sampled_out "
                "(traces.sample_ratio) or ring_full (their first record found the ring buffer full).",
                labels=["flow", "reason"],
            ),
            CounterMetricFamily("ipftrace_events", "Event records written to the ring buffer."),
            CounterMetricFamily(
                "ipftrace_events_lost", "Event records lost because the ring buffer was full."
            ),
            CounterMetricFamily(
                "ipftrace_paths",
                "Packet paths assembled in user space, by how they ended.",
                labels=["flow", "outcome"],
            ),
            CounterMetricFamily("ipftrace_spans_exported", "Spans the OTLP endpoint accepted."),
            CounterMetricFamily(
                "ipftrace_spans_dropped", "Spans not exported, by reason.", labels=["reason"]
            ),
            GaugeMetricFamily(
                "ipftrace_probes", "Probes by backend and attach state.", labels=["backend", "state"]
            ),
            GaugeMetricFamily(
                "ipftrace_build_info",
                "Version, backend in use and kernel release; always 1.",
                labels=["version", "backend", "kernel"],
            ),
            CounterMetricFamily(
                "ipftrace_scrape_errors", "Reads that failed during a scrape, by source.", labels=["source"]
            ),
        )

    def _read(self, source: str, read: Callable[[], None]) -> bool:
        try:
            read()
            return True
        except Exception as err:
            with self._lock:
                self._scrape_errors[source] = self._scrape_errors.get(source, 0) + 1
                first = self._scrape_errors[source] == 1
            if first:
                log.warning(
                    "metrics: reading %s failed: %s: %s (logged once; counted in "
                    "ipftrace_scrape_errors_total)",
                    source,
                    type(err).__name__,
                    err,
                )
            else:
                log.debug("metrics: reading %s failed", source, exc_info=True)
            return False

    @staticmethod
    def _hits(kernel: KernelCounters, family: CounterMetricFamily) -> None:
        names = kernel.names
        sums: dict[tuple[str, str], int] = {}
        for flow_id, probe_id, count in list(kernel.reader.hits()):
            key = (names.flow(flow_id), names.probe(probe_id))
            sums[key] = sums.get(key, 0) + count
        for (flow, function), n in sorted(sums.items()):
            family.add_metric([flow, function], n)

    @staticmethod
    def _drops(kernel: KernelCounters, family: CounterMetricFamily) -> None:
        names = kernel.names
        sums: dict[tuple[str, str, str], int] = {}
        for flow_id, location, reason, count in list(kernel.reader.drops()):
            key = (names.flow(flow_id), names.function(location), names.reason(reason))
            sums[key] = sums.get(key, 0) + count
        for labels, n in sorted(sums.items()):
            family.add_metric(list(labels), n)

    def _matched(self, kernel: KernelCounters, family: CounterMetricFamily) -> None:
        sums = dict.fromkeys(self.flow_names, 0)  # zero series too
        for flow_id, count in list(kernel.reader.matched()):
            flow = kernel.names.flow(flow_id)
            sums[flow] = sums.get(flow, 0) + count
        for flow, n in sorted(sums.items()):
            family.add_metric([flow], n)

    def _untraced(self, kernel: KernelCounters, family: CounterMetricFamily) -> None:
        sums = {(flow, reason): 0 for flow in self.flow_names for reason in UNTRACED_REASONS}  # zero series too
        for flow_id, reason, count in list(kernel.reader.untraced()):
            key = (kernel.names.flow(flow_id), reason)
            sums[key] = sums.get(key, 0) + count
        for labels, n in sorted(sums.items()):
            family.add_metric(list(labels), n)

    @staticmethod
    def _totals(kernel: KernelCounters, events: CounterMetricFamily, lost: CounterMetricFamily) -> None:
        totals = kernel.reader.totals()
        n_events, n_lost = int(totals.get("events", 0)), int(totals.get("lost", 0))
        events.add_metric([], n_events)
        lost.add_metric([], n_lost)

    def _spans(self, exported: CounterMetricFamily, dropped: CounterMetricFamily) -> None:
        reasons = dict.fromkeys(self.span_drop_reasons, 0)
        n_exported = 0
        if self._span_stats is not None:
            n_exported, by_reason = self._span_stats()
            reasons.update(by_reason)
        exported.add_metric([], n_exported)
        for reason, n in sorted(reasons.items()):
            dropped.add_metric([reason], n)


class ExporterMetrics:
    """The daemon's metrics in one place: path and probe state, the collector, and its own registry."""

    def __init__(
        self,
        flow_names: Sequence[str],
        span_stats: SpanStats | None = None,
        span_drop_reasons: Sequence[str] = (),
        version: str = __version__,
        kernel: str | None = None,
        procfs: str = "/proc",
    ) -> None:
        self.paths = PathStats(flow_names)
        self.probes = ProbeStatus()
        self.collector = IpftraceCollector(
            flow_names, self.paths, self.probes, span_stats, span_drop_reasons, version, kernel
        )
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        # process_* (CPU seconds, resident and virtual memory, open and max fds, start time) of this process
        self.process = ProcessCollector(registry=self.registry, proc=procfs)
