"""OTLP transport: a bounded queue of finished paths and a sender thread that encodes and exports them in batches.

Transport choice: the requests are sent by opentelemetry-exporter-otlp's own `OTLPSpanExporter`s (gRPC and
http/protobuf), subclassed only to skip their SDK-span translation, because `spans.py` already produced the protobuf
request. That keeps their TLS / certificate / insecure / credential-provider handling, channel reconnection, retry
with backoff inside one deadline, compression and User-Agent, none of which is worth re-implementing. The price is
three private hooks of the pinned 1.45.2 release, each covered by tests/unit/test_otlp.py so an upgrade that moves them
fails loudly: gRPC `OTLPExporterMixin._export(data)` calling `_translate_data` / `_count_data`, and http
`OTLPSpanExporter._client.export(bytes)` returning a result with `.success`. The gRPC exporter's client is also
rebuilt from `_stub(_channel)` (a stub without a request serializer), so the request goes out as the bytes
`SpanEncoder.encode_bytes` made, never parsed into a message and serialized again.

What this module decides itself (all OTEL_* names it reads are in `ENV` below): whether tracing is on (an endpoint
is configured), the protocol, endpoint, timeout, headers and compression, with precedence constructor argument
(our YAML `traces.otlp`) > signal-specific env (`OTEL_EXPORTER_OTLP_TRACES_*`) > generic env > default. Differences
from opentelemetry-python 1.45.2, on purpose: OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT is read in milliseconds as the
specification says (the Python SDK reads seconds, opentelemetry-python#4044); an endpoint without a scheme means
`http://` (plaintext), where the gRPC exporter would silently switch to TLS; the default protocol is grpc (the
Python distro's default exporter; the spec's default is http/protobuf). `OTEL_SDK_DISABLED=true` and
`OTEL_TRACES_EXPORTER=none` turn export off; any exporter but `otlp` or `none` is a one-line error (this package
has no other). The TLS files (`OTEL_EXPORTER_OTLP[_TRACES]_CERTIFICATE`, `_CLIENT_KEY`, `_CLIENT_CERTIFICATE`)
are read by the upstream exporters; here they are only checked at start, so a missing or unreadable file is a
one-line error before anything attaches instead of a traceback and an exporter without TLS.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import types
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from .config import OTLP_PROTOCOLS, url_problem
from .errors import ConfigError
from .paths import SkbPath
from .spans import SpanEncoder

log = logging.getLogger(__name__)

PROTOCOLS = OTLP_PROTOCOLS  # the config's list: one for `traces.otlp.protocol` and OTEL_*_PROTOCOL
PROTOCOL_GRPC, PROTOCOL_HTTP = PROTOCOLS
DEFAULT_PROTOCOL = PROTOCOL_GRPC
DEFAULT_TIMEOUT_S = 10.0
HTTP_TRACES_PATH = "/v1/traces"
COMPRESSIONS = {PROTOCOL_GRPC: ("none", "gzip"), PROTOCOL_HTTP: ("none", "gzip", "deflate")}

# Every environment variable this module reads: setting -> (signal-specific, generic), the first one set wins.
ENV: dict[str, tuple[str, str]] = {
    "endpoint": ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
    "protocol": ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
    "timeout": ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"),  # milliseconds
    "headers": ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"),
    "compression": ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"),
    "certificate": ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"),
    "client_key": ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY"),
    "client_certificate": ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"),
}
ENV_SDK_DISABLED = "OTEL_SDK_DISABLED"
ENV_TRACES_EXPORTER = "OTEL_TRACES_EXPORTER"
TRACES_EXPORTERS = ("otlp", "none")
CONFIG_KEY = "traces.otlp"  # how constructor arguments are named in error messages

DROP_QUEUE_FULL = "queue_full"
DROP_EXPORT_FAILED = "export_failed"
DROP_SHUTDOWN = "shutdown"
DROP_REASONS = (DROP_QUEUE_FULL, DROP_EXPORT_FAILED, DROP_SHUTDOWN)

# Loggers of the upstream exporters; their per-attempt messages from our sender thread are replaced by one warning
# per failure streak (see _QuietSender).
UPSTREAM_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.common.http",
)


def _env(environ: Mapping[str, str], setting: str) -> tuple[str, str] | None:
    """(variable name, value) of the first non-empty variable for this setting."""
    for name in ENV[setting]:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def _with_scheme(endpoint: str) -> str:
    return endpoint if "://" in endpoint else f"http://{endpoint}"


@dataclass(frozen=True, slots=True)
class OtlpSettings:
    """Where and how spans are sent; `endpoint` None means tracing export is off."""

    endpoint: str | None  # gRPC: scheme://host:port; http/protobuf: the full URL of the traces resource
    protocol: str = DEFAULT_PROTOCOL
    timeout_s: float = DEFAULT_TIMEOUT_S
    headers: dict[str, str] = field(default_factory=dict)
    compression: str = "none"
    tls_files: dict[str, str] = field(default_factory=dict)  # certificate / client_key / client_certificate
    disabled_by: str | None = None  # the variable that turned export off (endpoint is then None)

    @property
    def enabled(self) -> bool:
        """True when an endpoint is configured."""
        return self.endpoint is not None

    @property
    def off_reason(self) -> str:
        """Why spans are not exported (for the one log line), '' when they are."""
        if self.enabled:
            return ""
        if self.disabled_by:
            return f"{self.disabled_by} turns span export off"
        return "no OTLP endpoint (traces.otlp.endpoint / OTEL_EXPORTER_OTLP_ENDPOINT)"

    @classmethod
    def resolve(
        cls,
        endpoint: str | None = None,
        protocol: str | None = None,
        timeout_s: float | None = None,
        headers: Mapping[str, str] | None = None,
        compression: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> OtlpSettings:
        """Arguments > OTEL_EXPORTER_OTLP_TRACES_* > OTEL_EXPORTER_OTLP_* > defaults; ConfigError names the bad key."""
        env = os.environ if environ is None else environ
        protocol_value = _resolve_protocol(protocol, env)
        disabled_by = _disabled_by(env)
        url = None if disabled_by else _resolve_endpoint(endpoint, protocol_value, env)
        return cls(
            url,
            protocol_value,
            _resolve_timeout(timeout_s, env),
            _resolve_headers(headers, env),
            _resolve_compression(compression, protocol_value, env),
            _resolve_tls_files(env) if url is not None else {},
            disabled_by,
        )


def _disabled_by(environ: Mapping[str, str]) -> str | None:
    """`OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` (as `NAME=value`), else None; ConfigError for an
    exporter this package does not have."""
    if environ.get(ENV_SDK_DISABLED, "").strip().lower() == "true":  # spec: only "true" disables
        return f"{ENV_SDK_DISABLED}=true"
    raw = environ.get(ENV_TRACES_EXPORTER, "").strip()
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    unknown = [name for name in names if name not in TRACES_EXPORTERS]
    if unknown:
        raise ConfigError(f"{ENV_TRACES_EXPORTER}: {unknown[0]!r} is not supported (use otlp or none)")
    if names and all(name == "none" for name in names):
        return f"{ENV_TRACES_EXPORTER}={raw}"
    return None


def _resolve_tls_files(environ: Mapping[str, str]) -> dict[str, str]:
    """The TLS files named in the environment, each checked readable now; ConfigError names the variable."""
    files: dict[str, str] = {}
    for setting in ("certificate", "client_key", "client_certificate"):
        found = _env(environ, setting)
        if found is None:
            continue
        name, path = found
        try:
            with open(path, "rb") as handle:
                handle.read(1)
        except OSError as error:
            raise ConfigError(f"{name}: cannot read {path!r}: {error.strerror or error}") from None
        files[setting] = path
    if ("client_key" in files) != ("client_certificate" in files):
        given, missing = ("client_key", "client_certificate") if "client_key" in files else (
            "client_certificate", "client_key")
        raise ConfigError(f"{ENV[given][1]}: set {ENV[missing][1]} too (a client key needs its certificate)")
    return files


def _setting(argument: str | None, setting: str, environ: Mapping[str, str], default: str) -> tuple[str, str]:
    """(where it came from, lower-cased value) of a plain string setting."""
    if argument is not None and argument.strip():
        return f"{CONFIG_KEY}.{setting}", argument.strip().lower()
    found = _env(environ, setting)
    if found is not None:
        return found[0], found[1].lower()
    return "default", default


def _resolve_protocol(argument: str | None, environ: Mapping[str, str]) -> str:
    key, value = _setting(argument, "protocol", environ, DEFAULT_PROTOCOL)
    if value not in PROTOCOLS:
        raise ConfigError(f"{key}: protocol {value!r} is not supported (use {' or '.join(PROTOCOLS)})")
    return value


def _resolve_endpoint(argument: str | None, protocol: str, environ: Mapping[str, str]) -> str | None:
    """The URL to send to, or None (export off). A base URL gets /v1/traces appended for http/protobuf."""
    if argument is not None and argument.strip():
        key, url = f"{CONFIG_KEY}.endpoint", _with_scheme(argument.strip())
        is_base = not urlsplit(url).path.rstrip("/").endswith(HTTP_TRACES_PATH)
    else:
        found = _env(environ, "endpoint")
        if found is None:
            return None
        key, url = found[0], _with_scheme(found[1])
        is_base = key == ENV["endpoint"][1]  # the signal-specific variable is used as is (spec)
    problem = url_problem(url)
    if problem is not None:
        raise ConfigError(f"{key}: {url!r}: {problem}")
    if protocol == PROTOCOL_HTTP and is_base:
        url = url.rstrip("/") + HTTP_TRACES_PATH
    return url


def _resolve_timeout(argument: float | None, environ: Mapping[str, str]) -> float:
    """Seconds; the environment variables hold milliseconds (spec)."""
    if argument is not None:
        key, raw, scale = f"{CONFIG_KEY}.timeout", argument, 1.0
    elif (found := _env(environ, "timeout")) is not None:
        key, raw, scale = found[0], found[1], 1000.0
    else:
        return DEFAULT_TIMEOUT_S
    try:
        timeout = float(raw) / scale
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: {raw!r} is not a number") from None
    if not 0 < timeout < float("inf"):
        raise ConfigError(f"{key}: the export timeout must be a positive, finite number, got {raw!r}")
    return timeout


def _resolve_headers(argument: Mapping[str, str] | None, environ: Mapping[str, str]) -> dict[str, str]:
    """Environment headers (percent-decoded), then the argument's on top; keys lower case (gRPC metadata)."""
    merged: dict[str, str] = {}
    found = _env(environ, "headers")
    if found is not None:
        from opentelemetry.util.re import parse_env_headers

        merged.update(parse_env_headers(found[1], liberal=True))
    for key, value in (argument or {}).items():
        merged[str(key).strip().lower()] = str(value)
    return merged


def _resolve_compression(argument: str | None, protocol: str, environ: Mapping[str, str]) -> str:
    key, value = _setting(argument, "compression", environ, "none")
    if value not in COMPRESSIONS[protocol]:
        raise ConfigError(f"{key}: compression {value!r} is not one of {', '.join(COMPRESSIONS[protocol])}")
    return value


# ---- transports ---------------------------------------------------------------------------------------------------

GRPC_EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class Transport(Protocol):
    """Sends one encoded request; True on success. Never raises for network trouble.

    A transport may also have `export_bytes(data, spans) -> bool`, taking the request already serialized (what
    `SpanEncoder.encode_bytes` makes) and its span count: the sink then skips parsing the request into a message
    only for the transport to serialize it again (both upstream exporters below have it)."""

    def export_request(self, request: ExportTraceServiceRequest) -> bool: ...

    def shutdown(self) -> None: ...


def make_transport(settings: OtlpSettings) -> Transport:
    """The upstream exporter for these settings, fed protobuf requests. Raises ConfigError if it cannot be built."""
    if settings.endpoint is None:
        raise ConfigError("endpoint: no OTLP endpoint configured")
    try:
        if settings.protocol == PROTOCOL_GRPC:
            return _grpc_transport(settings)
        return _http_transport(settings)
    except ConfigError:
        raise
    except Exception as error:  # TLS files, credential providers: whatever the upstream constructor rejects
        raise ConfigError(f"{CONFIG_KEY}: cannot set up the {settings.protocol} exporter: {error}") from error


def _grpc_transport(settings: OtlpSettings) -> Transport:
    import grpc
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    def raw_stub(channel):  # type: ignore[no-untyped-def]
        """The TraceService stub with the request sent as the bytes it is given (no serializer)."""
        stub = types.SimpleNamespace()
        stub.Export = channel.unary_unary(GRPC_EXPORT_METHOD, request_serializer=None,
                                          response_deserializer=ExportTraceServiceResponse.FromString)
        return stub

    class GrpcRequestExporter(OTLPSpanExporter):
        """The upstream gRPC span exporter with its SDK-span translation bypassed: it sends (request bytes, span
        count) pairs through a stub that does not serialize (also after the upstream reconnects, which rebuilds the
        client from `_stub`)."""

        def __init__(self, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__(**kwargs)
            self._stub = raw_stub
            if self._channel is not None:
                self._client = raw_stub(self._channel)

        def _translate_data(self, data):  # type: ignore[no-untyped-def, override]
            return data[0]  # already serialized

        def _count_data(self, data):  # type: ignore[no-untyped-def, override]
            return data[1]

        def export_bytes(self, data: bytes, spans: int) -> bool:
            return self._export((data, spans)) is SpanExportResult.SUCCESS  # type: ignore[arg-type]

        def export_request(self, request: ExportTraceServiceRequest) -> bool:
            spans = sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)
            return self.export_bytes(request.SerializeToString(), spans)

    compression = grpc.Compression.Gzip if settings.compression == "gzip" else grpc.Compression.NoCompression
    return GrpcRequestExporter(
        endpoint=settings.endpoint,
        headers=tuple(settings.headers.items()),
        timeout=settings.timeout_s,
        compression=compression,
    )


def _http_transport(settings: OtlpSettings) -> Transport:
    from opentelemetry.exporter.otlp.common.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    class HttpRequestExporter(OTLPSpanExporter):
        """The upstream http/protobuf span exporter, posting our serialized request."""

        def export_bytes(self, data: bytes, spans: int) -> bool:
            if self._shutdown:
                return False
            return bool(self._client.export(data).success)

        def export_request(self, request: ExportTraceServiceRequest) -> bool:
            return self.export_bytes(request.SerializeToString(), 0)

    return HttpRequestExporter(
        endpoint=settings.endpoint,
        headers=settings.headers,
        timeout=settings.timeout_s,
        compression=Compression.from_str(settings.compression),
    )


class _QuietSender(logging.Filter):
    """Drops the upstream exporters' log records emitted by one thread, keeping the first warning of each export."""

    def __init__(self) -> None:
        super().__init__()
        self.thread_id: int | None = None
        self.message = ""  # first warning (or worse) since reset(): the root cause, e.g. "Connection refused"

    def reset(self) -> None:
        self.message = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.thread_id:
            return True
        if record.levelno >= logging.WARNING and not self.message:
            try:
                self.message = record.getMessage()
            except (TypeError, ValueError):  # a malformed upstream record must not break logging
                self.message = str(record.msg)
        return False


# ---- the sink -----------------------------------------------------------------------------------------------------


class OtlpSink:
    """Takes finished paths without blocking; a background thread encodes and exports them over OTLP.

    Bounded: at most `max_queued_spans` wait in the queue (whole paths beyond that are dropped and counted as
    `queue_full`); a batch holds at most `max_batch_spans` (or one larger path); a failed export (after the upstream
    retries, all within `timeout`) drops its spans as `export_failed`. Disabled (a no-op) when no endpoint is set.
    """

    def __init__(
        self,
        encoder: SpanEncoder,
        endpoint: str | None = None,
        protocol: str | None = None,
        timeout_s: float | None = None,
        headers: Mapping[str, str] | None = None,
        compression: str | None = None,
        *,
        max_queued_spans: int = 65536,
        max_batch_spans: int = 4096,
        linger_s: float = 0.5,
        environ: Mapping[str, str] | None = None,
        transport: Transport | None = None,
        settings: OtlpSettings | None = None,
    ) -> None:
        if max_queued_spans <= 0 or max_batch_spans <= 0:
            raise ConfigError(f"{CONFIG_KEY}: queue and batch sizes must be positive")
        if linger_s < 0:
            raise ConfigError(f"{CONFIG_KEY}: linger must not be negative")
        self.settings = settings if settings is not None else OtlpSettings.resolve(
            endpoint, protocol, timeout_s, headers, compression, environ)
        self.encoder = encoder
        self.max_queued_spans = max_queued_spans
        self.max_batch_spans = max_batch_spans
        self.linger_s = linger_s
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[tuple[SkbPath, int]] = deque()
        self._queued = 0  # spans in the queue
        self._inflight = 0  # spans in the batch being sent
        self._exported = 0
        self._dropped = dict.fromkeys(DROP_REASONS, 0)
        self._stopping = False
        self._abandoned = False  # shutdown gave up waiting: the sender's late results are not counted
        self._failed_batches = 0  # of the current failure streak
        self._thread: threading.Thread | None = None
        self._quiet = _QuietSender()
        self._transport: Transport | None = None
        if not self.settings.enabled:
            return
        self._transport = transport if transport is not None else make_transport(self.settings)
        self._thread = threading.Thread(target=self._run, name="ipftrace-otlp", daemon=True)
        for name in UPSTREAM_LOGGERS:
            logging.getLogger(name).addFilter(self._quiet)
        self._thread.start()
        log.info("exporting spans over OTLP %s to %s", self.settings.protocol, self.settings.endpoint)

    # -- state, for metrics ---------------------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """False when no endpoint is configured: submit() does nothing."""
        return self._thread is not None

    @property
    def exported(self) -> int:
        """Spans the endpoint accepted."""
        with self._cond:
            return self._exported

    @property
    def dropped(self) -> dict[str, int]:
        """Spans lost, by reason: queue_full, export_failed, shutdown."""
        with self._cond:
            return dict(self._dropped)

    @property
    def queued_spans(self) -> int:
        """Spans waiting in the queue (not counting the batch being sent)."""
        with self._cond:
            return self._queued

    # -- producer side ---------------------------------------------------------------------------------------------

    def submit(self, paths: Sequence[SkbPath]) -> None:
        """Queue finished paths for export; never blocks beyond a lock, never raises."""
        if self._thread is None or not paths:
            return
        try:
            with self._cond:
                was_empty = not self._queue
                if self._stopping:
                    self._dropped[DROP_SHUTDOWN] += SpanEncoder.span_count(paths)
                    return
                room = self.max_queued_spans - self._queued
                rejected = 0
                append = self._queue.append
                for path in paths:
                    spans = SpanEncoder.span_count((path,))
                    if spans == 0:
                        continue
                    if spans <= room:
                        append((path, spans))
                        room -= spans
                    else:
                        rejected += spans
                self._queued = self.max_queued_spans - room
                self._dropped[DROP_QUEUE_FULL] += rejected
                if was_empty or self._queued >= self.max_batch_spans:
                    self._cond.notify()
        except Exception:  # never into the caller's event loop
            log.debug("submit failed", exc_info=True)

    # -- sender thread ---------------------------------------------------------------------------------------------

    def _next_batch(self) -> list[SkbPath] | None:
        """Waits for a full batch, the linger time, or shutdown; None when stopping with nothing left."""
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            deadline = time.monotonic() + self.linger_s
            while not self._stopping and self._queued < self.max_batch_spans:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._abandoned:
                return None
            batch: list[SkbPath] = []
            spans = 0
            queue = self._queue
            while queue and (not batch or spans + queue[0][1] <= self.max_batch_spans):
                path, count = queue.popleft()
                batch.append(path)
                spans += count
            self._queued -= spans
            self._inflight = spans
            return batch

    def _run(self) -> None:
        self._quiet.thread_id = threading.get_ident()
        try:
            while (batch := self._next_batch()) is not None:
                try:
                    ok = self._export(batch)
                except Exception:  # the sender must survive anything
                    log.debug("OTLP export raised", exc_info=True)
                    ok = False
                self._account(ok)
        finally:
            for name in UPSTREAM_LOGGERS:
                logging.getLogger(name).removeFilter(self._quiet)
            self._quiet.thread_id = None  # thread ids are reused once a thread ends

    def _export(self, batch: list[SkbPath]) -> bool:
        assert self._transport is not None
        self._quiet.reset()
        export_bytes = getattr(self._transport, "export_bytes", None)
        try:
            if export_bytes is not None:
                data = self.encoder.encode_bytes(batch)
            else:
                request = self.encoder.encode(batch)
        except Exception as error:  # e.g. a module's event_attributes raised
            self._quiet.message = f"encoding failed: {error!r}"
            log.debug("encoding %d paths failed", len(batch), exc_info=True)
            return False
        if export_bytes is not None:
            return bool(export_bytes(data, SpanEncoder.span_count(batch)))
        return self._transport.export_request(request)

    def _account(self, ok: bool) -> None:
        with self._cond:
            spans, self._inflight = self._inflight, 0
            if self._abandoned:
                return
            if ok:
                self._exported += spans
            else:
                self._dropped[DROP_EXPORT_FAILED] += spans
        if ok and self._failed_batches:
            log.info(
                "OTLP export to %s recovered after %d failed batches",
                self.settings.endpoint,
                self._failed_batches,
            )
            self._failed_batches = 0
        elif not ok:
            if not self._failed_batches:
                log.warning(
                    "OTLP export to %s failed (%s); dropping spans until it recovers (counted as %s)",
                    self.settings.endpoint,
                    self._quiet.message or "no detail",
                    DROP_EXPORT_FAILED,
                )
            self._failed_batches += 1

    # -- shutdown --------------------------------------------------------------------------------------------------

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Flush what is queued, waiting at most `timeout_s` (default: the export timeout, `traces.otlp.timeout`);
        whatever is left is dropped as `shutdown`."""
        timeout_s = self.settings.timeout_s if timeout_s is None else timeout_s
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify_all()
        thread.join(max(timeout_s, 0.0))
        if thread.is_alive():
            with self._cond:
                self._abandoned = True
                left = self._queued + self._inflight
                self._queue.clear()
                self._queued = self._inflight = 0
                self._dropped[DROP_SHUTDOWN] += left
            log.warning("OTLP flush did not finish in %.1fs; dropped %d spans", timeout_s, left)
        try:
            assert self._transport is not None
            self._transport.shutdown()  # aborts upstream retry waits and closes the channel / session
        except Exception:
            log.debug("closing the OTLP exporter failed", exc_info=True)
