"""OtlpSink and OtlpSettings against real OTLP receivers on loopback (gRPC and HTTP), dead and hung endpoints."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from ipftrace_exporter.errors import ConfigError
from ipftrace_exporter.events import FLAG_TUPLE, MODULE_DATA_SIZE, Event
from ipftrace_exporter.names import Names
from ipftrace_exporter.otlp import ENV, UPSTREAM_LOGGERS, OtlpSettings, OtlpSink
from ipftrace_exporter.paths import OUTCOME_DELIVERED, SkbPath
from ipftrace_exporter.probes import Probe, ProbeKind, ProbeRole, ProbeTable
from ipftrace_exporter.spans import SpanEncoder, WallClock
from tests.support.otlp_receiver import GrpcOtlpReceiver, HttpOtlpReceiver, attributes

PROBES = ProbeTable(
    [
        Probe(0, "net:netif_receive_skb", ProbeKind.TRACEPOINT),
        Probe(1, "skb:consume_skb", ProbeKind.TRACEPOINT, role=ProbeRole.CONSUME),
    ]
)
FAST = {"linger_s": 0.02}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    for names in ENV.values():
        for name in names:
            monkeypatch.delenv(name, raising=False)
    for name in ("OTEL_EXPORTER_OTLP_INSECURE", "OTEL_EXPORTER_OTLP_TRACES_INSECURE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def encoder() -> SpanEncoder:
    return SpanEncoder(Names(["ping"], PROBES), WallClock(), {"service.name": "otlp-test"})


@pytest.fixture
def dead_endpoint() -> str:
    """A loopback port nobody listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def hung_endpoint() -> Iterator[str]:
    """A loopback port that completes TCP handshakes but never answers (nobody calls accept)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def make_paths(count: int, events: int = 2, start: int = 0) -> list[SkbPath]:
    src = ipaddress.IPv4Address("10.199.0.1").packed + bytes(12)
    dst = ipaddress.IPv4Address("10.199.0.2").packed + bytes(12)
    paths = []
    for index in range(start, start + count):
        skb = 0xFFFF_8880_0000_0000 + index * 0x100
        evs = [
            Event(1_000 + i, skb, 0, min(i, 1), 0, 84, 2, 0, 0, 4, 1, src, dst, 0, 0, FLAG_TUPLE,
                  bytes(MODULE_DATA_SIZE))
            for i in range(events)
        ]  # fmt: skip
        paths.append(SkbPath(skb, 0, evs, OUTCOME_DELIVERED))
    return paths


def wait_until(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


# ---- settings ---------------------------------------------------------------------------------------------------


def test_no_endpoint_means_disabled() -> None:
    settings = OtlpSettings.resolve(environ={})
    assert not settings.enabled
    assert settings.protocol == "grpc"
    assert settings.timeout_s == 10.0


def test_environment_is_read_per_spec() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",  # milliseconds
        "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20abc,x-tenant=t1",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
    }
    settings = OtlpSettings.resolve(environ=env)
    assert settings.endpoint == "http://collector:4318/v1/traces"  # generic endpoint: base URL + signal path
    assert settings.protocol == "http/protobuf"
    assert settings.timeout_s == 2.5
    assert settings.headers == {"authorization": "Bearer abc", "x-tenant": "t1"}
    assert settings.compression == "gzip"


def test_signal_specific_environment_wins_and_is_used_as_is() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:9999/custom/path",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1000",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "3000",
    }
    settings = OtlpSettings.resolve(environ=env)
    assert settings.endpoint == "http://traces:9999/custom/path"
    assert settings.protocol == "http/protobuf"
    assert settings.timeout_s == 3.0


def test_arguments_win_over_environment() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4317",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1000",
        "OTEL_EXPORTER_OTLP_HEADERS": "a=env,b=env",
    }
    settings = OtlpSettings.resolve(
        endpoint="http://yaml:4318", protocol="http/protobuf", timeout_s=7, headers={"A": "yaml"}, environ=env
    )
    assert settings.endpoint == "http://yaml:4318/v1/traces"
    assert settings.protocol == "http/protobuf"
    assert settings.timeout_s == 7.0
    assert settings.headers == {"a": "yaml", "b": "env"}


def test_grpc_endpoint_without_scheme_is_plaintext() -> None:
    assert OtlpSettings.resolve(endpoint="jaeger:4317", environ={}).endpoint == "http://jaeger:4317"
    assert OtlpSettings.resolve(endpoint="https://jaeger:4317", environ={}).endpoint == "https://jaeger:4317"
    http = OtlpSettings.resolve(endpoint="http://c:4318/v1/traces", protocol="http/protobuf", environ={})
    assert http.endpoint == "http://c:4318/v1/traces"


@pytest.mark.parametrize(
    ("kwargs", "env", "named"),
    [
        ({"protocol": "http/json"}, {}, "traces.otlp.protocol"),
        ({}, {"OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({}, {"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "soon"}, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"),
        ({"timeout_s": 0}, {}, "traces.otlp.timeout"),
        ({"timeout_s": float("inf")}, {}, "traces.otlp.timeout"),
        ({}, {"OTEL_EXPORTER_OTLP_TIMEOUT": "-5"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
        ({"compression": "zstd"}, {}, "traces.otlp.compression"),
        ({"compression": "deflate"}, {}, "traces.otlp.compression"),  # gRPC has no deflate
        ({"endpoint": "ftp://x:1"}, {}, "traces.otlp.endpoint"),
        ({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://:99999"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_key(kwargs: dict, env: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        OtlpSettings.resolve(**kwargs, environ=env)


# ---- export to real receivers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("receiver_type", "protocol"), [(GrpcOtlpReceiver, "grpc"), (HttpOtlpReceiver, "http/protobuf")]
)
def test_spans_arrive_at_a_real_receiver(encoder: SpanEncoder, receiver_type: type, protocol: str) -> None:
    with receiver_type() as receiver:
        sink = OtlpSink(encoder, receiver.endpoint, protocol, timeout_s=5, headers={"X-Tenant": "t1"}, **FAST)
        try:
            sink.submit(make_paths(10, events=3))
            spans = receiver.wait_for_spans(40)
        finally:
            sink.shutdown(5)
        assert len(spans) == 40
        assert sink.exported == 40
        assert sink.dropped == {"queue_full": 0, "export_failed": 0, "shutdown": 0}
        assert len({span.trace_id for span in spans}) == 10
        roots = [span for span in spans if not span.parent_span_id]
        assert {root.name for root in roots} == {"ICMP ping"}
        request = receiver.requests[0]
        assert attributes(request.resource_spans[0].resource.attributes) == {"service.name": "otlp-test"}
        assert receiver.headers[0]["x-tenant"] == "t1"
        if protocol == "http/protobuf":
            assert receiver.paths == ["/v1/traces"] * len(receiver.requests)
            assert receiver.headers[0]["content-type"] == "application/x-protobuf"


@pytest.mark.parametrize(
    ("receiver_type", "protocol"), [(GrpcOtlpReceiver, "grpc"), (HttpOtlpReceiver, "http/protobuf")]
)
def test_environment_alone_configures_the_export(
    monkeypatch: pytest.MonkeyPatch, encoder: SpanEncoder, receiver_type: type, protocol: str
) -> None:
    with receiver_type() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-from-env=yes")
        sink = OtlpSink(encoder, **FAST)
        try:
            assert sink.enabled
            sink.submit(make_paths(2))
            assert len(receiver.wait_for_spans(6)) == 6
        finally:
            sink.shutdown(5)
        assert receiver.headers[0]["x-from-env"] == "yes"


def test_constructor_endpoint_wins_over_environment(
    monkeypatch: pytest.MonkeyPatch, encoder: SpanEncoder, dead_endpoint: str
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", dead_endpoint)
    with GrpcOtlpReceiver() as receiver:
        sink = OtlpSink(encoder, endpoint=receiver.endpoint, **FAST)
        try:
            sink.submit(make_paths(1))
            assert len(receiver.wait_for_spans(3)) == 3
        finally:
            sink.shutdown(5)


@pytest.mark.parametrize(
    ("receiver_type", "protocol"), [(GrpcOtlpReceiver, "grpc"), (HttpOtlpReceiver, "http/protobuf")]
)
def test_gzip_compression_reaches_the_receiver(
    encoder: SpanEncoder, receiver_type: type, protocol: str
) -> None:
    with receiver_type() as receiver:
        sink = OtlpSink(encoder, receiver.endpoint, protocol, compression="gzip", **FAST)
        try:
            sink.submit(make_paths(3))
            assert len(receiver.wait_for_spans(9)) == 9
        finally:
            sink.shutdown(5)
        if protocol == "http/protobuf":
            assert receiver.headers[0]["content-encoding"] == "gzip"
        else:  # gRPC carries it below the metadata the servicer sees: check what the channel was given
            import grpc

            assert sink._transport._compression == grpc.Compression.Gzip  # type: ignore[union-attr]


def test_batches_respect_the_span_limit(encoder: SpanEncoder) -> None:
    with GrpcOtlpReceiver() as receiver:
        sink = OtlpSink(encoder, receiver.endpoint, max_batch_spans=30, linger_s=0.5)
        try:
            sink.submit(make_paths(50, events=2))  # 150 spans, 3 per path
            assert len(receiver.wait_for_spans(150)) == 150
        finally:
            sink.shutdown(5)
        sizes = [
            sum(len(s.spans) for r in req.resource_spans for s in r.scope_spans) for req in receiver.requests
        ]
        assert max(sizes) <= 30
        assert sum(sizes) == 150


def test_shutdown_flushes_what_is_queued(encoder: SpanEncoder) -> None:
    with HttpOtlpReceiver() as receiver:
        sink = OtlpSink(encoder, receiver.endpoint, "http/protobuf", linger_s=60)  # would wait a minute
        sink.submit(make_paths(5))
        started = time.monotonic()
        sink.shutdown(5)
        assert time.monotonic() - started < 5
        assert receiver.span_count() == 15
        assert sink.exported == 15


def test_disabled_sink_does_nothing() -> None:
    enc = SpanEncoder(Names(probes=PROBES), WallClock(), {})
    sink = OtlpSink(enc)
    assert not sink.enabled
    sink.submit(make_paths(3))
    sink.shutdown(1)
    assert sink.exported == 0
    assert sink.dropped == {"queue_full": 0, "export_failed": 0, "shutdown": 0}
    assert not any(t.name == "ipftrace-otlp" and t.is_alive() for t in threading.enumerate())


# ---- failures ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_dead_endpoint_drops_and_counts_with_one_warning(
    encoder: SpanEncoder, dead_endpoint: str, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sink = OtlpSink(encoder, dead_endpoint, protocol, timeout_s=0.5, **FAST)
    for batch in range(3):
        started = time.monotonic()
        sink.submit(make_paths(4, start=batch * 4))  # never raises, never blocks
        assert time.monotonic() - started < 0.25
        assert wait_until(lambda b=batch: sink.dropped["export_failed"] == 12 * (b + 1))
    started = time.monotonic()
    sink.shutdown(2)
    assert time.monotonic() - started < 3
    assert sink.exported == 0
    assert sink.dropped == {"queue_full": 0, "export_failed": 36, "shutdown": 0}
    warnings = [
        r for r in caplog.records if r.name == "ipftrace_exporter.otlp" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    assert "export_failed" in warnings[0].getMessage()
    assert not [
        r for r in caplog.records if r.name in UPSTREAM_LOGGERS
    ]  # their per-attempt noise is kept out


def test_recovery_after_a_failure_streak_is_logged_and_counted(
    encoder: SpanEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ipftrace_exporter.otlp")
    with HttpOtlpReceiver() as receiver:
        receiver.status = 400  # not retryable: fails at once
        sink = OtlpSink(encoder, receiver.endpoint, "http/protobuf", timeout_s=2, **FAST)
        try:
            sink.submit(make_paths(2))
            assert wait_until(lambda: sink.dropped["export_failed"] == 6)
            sink.submit(make_paths(2))
            assert wait_until(lambda: sink.dropped["export_failed"] == 12)
            receiver.status = 200
            sink.submit(make_paths(3))
            assert len(receiver.wait_for_spans(9)) == 9
        finally:
            sink.shutdown(5)
    assert sink.exported == 9
    ours = [r for r in caplog.records if r.name == "ipftrace_exporter.otlp"]
    assert len([r for r in ours if r.levelno == logging.WARNING]) == 1
    messages = [r.getMessage() for r in ours]
    assert any("recovered after 2 failed batches" in m for m in messages)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_shutdown_is_bounded_while_the_endpoint_hangs(
    encoder: SpanEncoder, hung_endpoint: str, protocol: str
) -> None:
    sink = OtlpSink(encoder, hung_endpoint, protocol, timeout_s=30, max_batch_spans=6, **FAST)
    sink.submit(make_paths(10))  # 30 spans: one 6-span batch in flight, the rest queued
    assert wait_until(lambda: sink.queued_spans == 24)
    started = time.monotonic()
    sink.shutdown(0.5)
    assert time.monotonic() - started < 2  # the transport's own timeout is 30 s
    assert sink.dropped["shutdown"] == 30
    assert sink.exported == 0
    sink.submit(make_paths(1))  # after shutdown: counted, not raised
    assert sink.dropped["shutdown"] == 33


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_hung_endpoint_costs_one_timeout_per_batch(
    encoder: SpanEncoder, hung_endpoint: str, protocol: str
) -> None:
    sink = OtlpSink(encoder, hung_endpoint, protocol, timeout_s=0.5, **FAST)
    try:
        started = time.monotonic()
        sink.submit(make_paths(2))
        assert wait_until(lambda: sink.dropped["export_failed"] == 6, timeout=5)
        assert time.monotonic() - started < 3  # one 0.5 s timeout, not the hang
    finally:
        sink.shutdown(1)


def test_queue_full_drops_whole_paths_and_counts_them(encoder: SpanEncoder, hung_endpoint: str) -> None:
    sink = OtlpSink(encoder, hung_endpoint, timeout_s=30, max_queued_spans=30, linger_s=60)
    try:
        sink.submit(make_paths(25))  # 75 spans of 3: 10 paths fit
        assert sink.queued_spans == 30
        assert sink.dropped["queue_full"] == 45
        sink.submit(make_paths(1, events=1))  # 2 spans: still full
        assert sink.dropped["queue_full"] == 47
    finally:
        sink.shutdown(0.5)
    assert sink.dropped["shutdown"] == 30


def test_memory_stays_bounded_while_the_endpoint_hangs(encoder: SpanEncoder, hung_endpoint: str) -> None:
    limit = 300
    sink = OtlpSink(encoder, hung_endpoint, timeout_s=30, max_queued_spans=limit, max_batch_spans=30, **FAST)
    submitted = 0
    try:
        for round_ in range(200):
            sink.submit(make_paths(20, start=round_ * 20))
            submitted += 60
            assert sink.queued_spans <= limit
        dropped = sink.dropped
        held = sink.queued_spans
        in_flight = submitted - held - dropped["queue_full"] - dropped["export_failed"] - sink.exported
        assert 0 <= in_flight <= 30  # at most one batch is with the transport
        assert dropped["queue_full"] >= submitted - limit - 30
    finally:
        sink.shutdown(0.5)
    assert sum(sink.dropped.values()) + sink.exported == submitted


def test_a_failing_module_costs_one_batch_not_the_sender() -> None:
    calls = {"n": 0}

    def flaky(event: Event) -> dict[str, int]:
        calls["n"] += 1
        if calls["n"] == 1:  # the first event of the first batch
            raise RuntimeError("module bug")
        return {"ipftrace.test.n": calls["n"]}

    enc = SpanEncoder(Names(["ping"], PROBES), WallClock(), {}, event_attributes=flaky)
    with GrpcOtlpReceiver() as receiver:
        sink = OtlpSink(enc, receiver.endpoint, **FAST)
        try:
            sink.submit(make_paths(1))
            assert wait_until(lambda: sink.dropped["export_failed"] == 3)
            sink.submit(make_paths(1))
            assert len(receiver.wait_for_spans(3)) == 3
        finally:
            sink.shutdown(5)
    assert sink.exported == 3


def test_upstream_hooks_this_module_relies_on_exist() -> None:
    """The private parts of opentelemetry-exporter-otlp 1.45.2 that otlp.py overrides or calls."""
    from opentelemetry.exporter.otlp.common.http import _OTLPHTTPClient
    from opentelemetry.exporter.otlp.proto.grpc.exporter import OTLPExporterMixin
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    for name in ("_export", "_translate_data", "_count_data", "shutdown"):
        assert hasattr(OTLPExporterMixin, name), name
    assert hasattr(_OTLPHTTPClient, "export")
    exporter = HttpExporter(endpoint="http://127.0.0.1:9/v1/traces")
    assert isinstance(exporter._client, _OTLPHTTPClient)
    assert exporter._shutdown is False
    exporter.shutdown()


# ---- OTEL_SDK_DISABLED, OTEL_TRACES_EXPORTER, TLS files, the shutdown bound ----------------------------------------

ENDPOINT_ENV = {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4317"}


@pytest.mark.parametrize(("env", "by"), [
    ({"OTEL_SDK_DISABLED": "true"}, "OTEL_SDK_DISABLED=true"),
    ({"OTEL_SDK_DISABLED": "TRUE"}, "OTEL_SDK_DISABLED=true"),
    ({"OTEL_TRACES_EXPORTER": "none"}, "OTEL_TRACES_EXPORTER=none"),
    ({"OTEL_TRACES_EXPORTER": " None "}, "OTEL_TRACES_EXPORTER=None"),
])
def test_sdk_disabled_and_exporter_none_turn_export_off(env: dict, by: str) -> None:
    settings = OtlpSettings.resolve(environ={**ENDPOINT_ENV, **env})
    assert not settings.enabled
    assert settings.disabled_by == by and by in settings.off_reason


@pytest.mark.parametrize("env", [
    {"OTEL_SDK_DISABLED": "false"}, {"OTEL_SDK_DISABLED": "1"},  # only "true" disables (spec)
    {"OTEL_TRACES_EXPORTER": "otlp"}, {"OTEL_TRACES_EXPORTER": ""},
])
def test_other_values_leave_otlp_export_on(env: dict) -> None:
    assert OtlpSettings.resolve(environ={**ENDPOINT_ENV, **env}).enabled


@pytest.mark.parametrize("value", ["zipkin", "console", "otlp,jaeger"])
def test_an_exporter_this_package_lacks_is_a_one_line_error(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^OTEL_TRACES_EXPORTER: '\w+' is not supported \(use otlp or none\)$"):
        OtlpSettings.resolve(environ={**ENDPOINT_ENV, "OTEL_TRACES_EXPORTER": value})


def test_a_missing_ca_file_is_a_one_line_error_naming_the_variable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "ca.pem"
    with pytest.raises(ConfigError, match=rf"^OTEL_EXPORTER_OTLP_CERTIFICATE: cannot read '{missing}': "
                                          r"No such file or directory$"):
        OtlpSettings.resolve(environ={**ENDPOINT_ENV, "OTEL_EXPORTER_OTLP_CERTIFICATE": str(missing)})
    with pytest.raises(ConfigError, match=r"^OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE: cannot read"):
        OtlpSettings.resolve(environ={**ENDPOINT_ENV, "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE": str(missing)})
    # export off: the file does not matter
    assert not OtlpSettings.resolve(environ={"OTEL_EXPORTER_OTLP_CERTIFICATE": str(missing)}).enabled


def test_tls_files_are_checked_and_a_client_key_needs_its_certificate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for name in ("ca.pem", "client.key", "client.pem"):
        (tmp_path / name).write_text("-----BEGIN X-----\n")
    env = {**ENDPOINT_ENV, "OTEL_EXPORTER_OTLP_CERTIFICATE": str(tmp_path / "ca.pem"),
           "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(tmp_path / "client.key")}
    with pytest.raises(ConfigError, match="^OTEL_EXPORTER_OTLP_CLIENT_KEY: set OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"):
        OtlpSettings.resolve(environ=env)
    env["OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"] = str(tmp_path / "client.pem")
    assert OtlpSettings.resolve(environ=env).tls_files == {
        "certificate": str(tmp_path / "ca.pem"), "client_key": str(tmp_path / "client.key"),
        "client_certificate": str(tmp_path / "client.pem")}


def test_shutdown_waits_at_most_the_export_timeout_by_default(encoder: SpanEncoder, hung_endpoint: str) -> None:
    sink = OtlpSink(encoder, hung_endpoint, "grpc", timeout_s=0.5, max_batch_spans=6, **FAST)
    sink.submit(make_paths(10))
    assert wait_until(lambda: sink.queued_spans == 24)
    started = time.monotonic()
    sink.shutdown()  # no argument: traces.otlp.timeout
    took = time.monotonic() - started
    assert 0.3 < took < 2, took
    assert sink.dropped["shutdown"] + sink.dropped["export_failed"] == 30
