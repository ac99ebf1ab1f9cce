"""The `ipftrace-exporter` main loop: kernel probes -> paths -> OTLP spans and path counts; /metrics reads the kernel's
counter maps at scrape time. Wiring only: every stage lives in its own module."""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .config import Config
from .errors import KernelError
from .fsutil import write_file_atomic
from .httpserver import Heartbeat, HttpServer
from .kernel.view import KernelView
from .metrics import ExporterMetrics, KernelCounters
from .modules import LoadedModule, ModuleContext, event_attributes, load_modules
from .otlp import DROP_REASONS, OtlpSettings, OtlpSink
from .paths import SkbPath
from .program import ProgramOptions
from .spans import SpanEncoder, WallClock, resource_attributes
from .tracer import Tracer, TraceRequest
from .webconfig import WebConfig

log = logging.getLogger(__name__)

POLL_MS = 100


def trace_request(config: Config, modules: tuple[LoadedModule, ...] = ()) -> TraceRequest:
    """The TraceRequest a config describes."""
    options = ProgramOptions(
        max_inflight=config.paths.max_inflight,
        ringbuf_pages=config.collector.ring_buffer_pages,
        sample_ratio=config.traces.sample_ratio,
    )
    return TraceRequest(flows=config.flows, backend=config.backend, manifest=config.manifest, options=options,
                        limits=config.paths, modules=tuple(m.code for m in modules))


def load_config_modules(config: Config, view: KernelView | None = None,
                        module_dirs: Sequence[Path] = ()) -> tuple[LoadedModule, ...]:
    """The config's modules, loaded (unknown names and bad options raise UsageError naming the module); module
    files come only from `module_dirs` (the command line's --module-dir)."""
    if not config.modules:
        return ()
    context = ModuleContext(btf=(lambda: view.btf) if view is not None else None)
    return tuple(load_modules(config.modules, context, module_dirs))


def otlp_settings(config: Config) -> OtlpSettings:
    """Where spans go: `traces.otlp` over the OTEL_* environment. ConfigError (one line) for a bad value, an
    unsupported OTEL_TRACES_EXPORTER or an unreadable TLS file: raised before anything attaches."""
    otlp = config.traces.otlp
    return OtlpSettings.resolve(otlp.endpoint, otlp.protocol, otlp.timeout_s, otlp.headers)


def config_tracer(config: Config, cache_dir: str | None = None, module_dirs: Sequence[Path] = ()) -> Tracer:
    """The tracer a config describes (its modules loaded), not started."""
    view = KernelView()
    modules = load_config_modules(config, view, module_dirs)
    return Tracer(trace_request(config, modules), view=view, cache_dir=cache_dir)


def check(config: Config, cache_dir: str | None = None, module_dirs: Sequence[Path] = ()) -> list[str]:
    """Validate, plan, compile, attach for real and detach: fails (AttachError, KernelError, OSError) where the real
    run would, e.g. a backend the kernel refuses or a metrics address in use. The lines to print."""
    settings = otlp_settings(config)
    tracer = config_tracer(config, cache_dir, module_dirs)
    check_address(config.metrics.host, config.metrics.port)
    try:
        report = tracer.start()
        plan = tracer.plan
    finally:
        tracer.close()
    if plan is None:
        raise KernelError("the tracer attached without a plan")
    lines = config.describe()
    if settings.enabled:
        lines.append(f"spans: OTLP {settings.protocol} to {settings.endpoint}, timeout {settings.timeout_s:g}s")
    else:
        lines.append(f"spans: not exported ({settings.off_reason})")
    lines.append(f"plan: backend {plan.backend} ({config.backend} requested), {len(plan.sources)} probes, "
                 f"{len(plan.missing)} manifest functions missing; {len(report.attached)} attached, "
                 f"{len(report.failed)} failed, then detached")
    lines += [f"  {source.probe.name} ({source.probe.kind.value}, skb arg {source.skb_arg + 1}, "
              f"{source.probe.role.value})" for source in plan.sources[:50]]
    if len(plan.sources) > 50:
        lines.append(f"  ... and {len(plan.sources) - 50} more")
    return lines


def check_address(host: str, port: int) -> None:
    """Raise OSError naming the address if the metrics server could not listen there (bound, then released)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise OSError(f"metrics.address {host}:{port}: {err.strerror}") from None


class Daemon:
    """Runs until stop() is called (the signal handlers call it)."""

    def __init__(self, config: Config, ready_file: Path | None = None, cache_dir: str | None = None,
                 module_dirs: Sequence[Path] = (), web: WebConfig | None = None) -> None:
        self.config = config
        self.ready_file = ready_file
        self.otlp = otlp_settings(config)
        view = KernelView()
        self.modules = load_config_modules(config, view, module_dirs)
        self.request = trace_request(config, self.modules)
        self.tracer = Tracer(self.request, view=view, cache_dir=cache_dir)
        self.sink: OtlpSink | None = None
        self.metrics = ExporterMetrics(config.flow_names, span_stats=self._span_stats,
                                       span_drop_reasons=DROP_REASONS, version=__version__,
                                       kernel=platform.release())
        self.heartbeat = Heartbeat()
        self.server = HttpServer(config.metrics.address, self.metrics.registry, health=self.heartbeat,
                                 ready=self.metrics.probes.ready, web=web)
        if web is not None:
            log.info("%s", web.describe())
        self._running = True

    def _span_stats(self) -> tuple[int, dict[str, int]]:
        if self.sink is None:
            return 0, dict.fromkeys(DROP_REASONS, 0)
        return self.sink.exported, dict(self.sink.dropped)

    def stop(self) -> None:
        """Ask the main loop to end (thread-safe)."""
        self._running = False

    def run(self) -> int:
        """Serve metrics, attach, then move paths to OTLP and path counters until stopped. Returns the exit code."""
        self.server.start()
        try:
            if not self._running:  # stopped before attaching
                return 0
            report = self.tracer.start()
            self.metrics.probes.record(self.tracer.backend, len(report.attached), len(report.failed))
            self.metrics.collector.set_kernel(
                KernelCounters(self.tracer.collector.counters(), self.tracer.names))
            self._start_sink()
            self._write_ready()
            while self._running:
                self.heartbeat.beat()
                self._deliver(self.tracer.poll(POLL_MS))
        finally:
            self._shutdown()
        return 0

    def _start_sink(self) -> None:
        if not self.otlp.enabled:
            log.info("%s: spans are not exported", self.otlp.off_reason)
            return
        encoder = SpanEncoder(self.tracer.names, WallClock(), resource_attributes(),
                              event_attributes=event_attributes(self.modules) if self.modules else None,
                              skb_address=self.config.traces.attributes.skb_address)
        self.sink = OtlpSink(encoder, settings=self.otlp)

    def _write_ready(self) -> None:
        if self.ready_file is not None:
            write_file_atomic(self.ready_file, b"ready\n")

    def _deliver(self, paths: list[SkbPath]) -> None:
        if not paths:
            return
        names = self.tracer.names
        for path in paths:
            if not path.starts_packet:  # a continuation or a lone clone: its packet was counted already
                continue
            self.metrics.paths.count(names.flow(path.flow_id), path.packet_outcome)
        if self.sink is not None:
            self.sink.submit(paths)

    def _shutdown(self) -> None:
        started = time.monotonic()
        try:
            remaining = self.tracer.flush()
            log.debug("shutdown: %d paths still held", len(remaining))
            self.tracer.close()
            self.metrics.probes.detached()
            self._deliver(remaining)
        except KernelError as err:  # pragma: no cover - detaching should not fail
            log.warning("while detaching: %s", err)
        finally:
            self.metrics.collector.set_kernel(None)
            if self.sink is not None:
                self.sink.shutdown()  # bounded by traces.otlp.timeout
                log.debug("spans exported %d, dropped %s", self.sink.exported, dict(self.sink.dropped))
            self.server.close()
        log.info("stopped: probes detached, spans flushed in %.1fs", time.monotonic() - started)
