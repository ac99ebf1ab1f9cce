"""The one HTTP server: real GETs on 127.0.0.1 for /metrics, /healthz, /readyz and anything else."""

from __future__ import annotations

import gzip
import http.client
import socket

import pytest

from ipftrace_exporter.errors import ConfigError
from ipftrace_exporter.httpserver import Heartbeat, HttpServer, parse_address
from ipftrace_exporter.metrics import ExporterMetrics, KernelCounters
from ipftrace_exporter.names import Names
from ipftrace_exporter.probes import Probe, ProbeKind, ProbeTable


class OneHitReader:
    def hits(self):
        return [(0, 0, 3)]

    def drops(self):
        raise OSError("drops map unreadable")

    def matched(self):
        return []

    def untraced(self):
        return []

    def totals(self):
        return {"events": 3, "lost": 0}


def get(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None):
    """(status, headers, body) of one request to 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.fixture
def metrics() -> ExporterMetrics:
    return ExporterMetrics(["icmp"], version="0.0.1", kernel="test")


@pytest.fixture
def server(metrics):
    srv = HttpServer("127.0.0.1:0", metrics.registry, ready=metrics.probes.ready)
    srv.start()
    yield srv
    srv.close()


def test_start_returns_the_bound_port(server):
    assert server.port > 0
    assert server.start() == server.port  # starting twice is harmless
    assert server.url == f"http://127.0.0.1:{server.port}"


def test_metrics_endpoint_serves_prometheus_text(server, metrics):
    metrics.collector.set_kernel(
        KernelCounters(
            OneHitReader(), Names(["icmp"], ProbeTable([Probe(0, "net:netif_receive_skb", ProbeKind.TRACEPOINT)]))
        )
    )
    status, headers, body = get(server.port, "/metrics")
    text = body.decode()
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert 'ipftrace_function_hits_total{flow="icmp",function="net:netif_receive_skb"} 3.0' in text
    assert 'ipftrace_build_info{backend="none",kernel="test",version="0.0.1"} 1.0' in text
    assert 'ipftrace_scrape_errors_total{source="drops"} 1.0' in text  # a broken map is not a 500
    assert "Traceback" not in text


def test_metrics_content_negotiation_and_gzip(server):
    status, headers, body = get(server.port, "/metrics", headers={"Accept": "application/openmetrics-text"})
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.decode().endswith("# EOF\n")
    status, headers, body = get(server.port, "/metrics", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert b"ipftrace_paths_total" in gzip.decompress(body)


def test_metrics_name_filter(server):
    _, _, body = get(server.port, "/metrics?name[]=ipftrace_events_total")
    assert body.decode().strip().splitlines()[-1] == "ipftrace_events_total 0.0"
    assert b"ipftrace_paths_total" not in body


def test_healthz_is_ok_without_a_heartbeat(server):
    assert get(server.port, "/healthz")[::2] == (200, b"ok\n")


def test_readyz_flips_when_probes_attach_and_detach(server, metrics):
    status, _, body = get(server.port, "/readyz")
    assert (status, body) == (503, b"probes not attached yet\n")
    metrics.probes.record("tracepoint", attached=5)
    assert get(server.port, "/readyz")[::2] == (200, b"ok\n")
    metrics.probes.detached()
    assert get(server.port, "/readyz")[::2] == (503, b"probes detached (shutting down)\n")


def test_unknown_paths_are_404(server):
    status, _, body = get(server.port, "/nope")
    assert status == 404 and b"/metrics" in body
    assert get(server.port, "/metrics/extra")[0] == 404


def test_head_sends_headers_only(server):
    status, headers, body = get(server.port, "/healthz", method="HEAD")
    assert (status, body, headers["Content-Length"]) == (200, b"", "3")


def test_healthz_fails_when_the_main_loop_stops_beating(metrics):
    now = [100.0]
    heartbeat = Heartbeat(max_age_s=5, clock=lambda: now[0])
    with HttpServer("127.0.0.1:0", metrics.registry, health=heartbeat) as srv:
        assert get(srv.port, "/healthz")[0] == 200
        now[0] += 6
        status, _, body = get(srv.port, "/healthz")
        assert status == 503 and body == b"main loop stalled: no heartbeat for 6.0s (limit 5s)\n"
        heartbeat.beat()
        assert get(srv.port, "/healthz")[0] == 200


def test_a_check_that_raises_is_a_one_line_503(metrics):
    def broken() -> tuple[bool, str]:
        raise RuntimeError("state\nlost")

    with HttpServer("127.0.0.1:0", metrics.registry, ready=broken) as srv:
        status, _, body = get(srv.port, "/readyz")
    assert status == 503 and body == b"readiness check failed: RuntimeError: state lost\n"


def test_port_in_use_is_a_one_line_error_naming_the_address(metrics):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(ConfigError) as info:
            HttpServer(address, metrics.registry).start()
    assert str(info.value) == f"metrics address {address}: cannot listen: address already in use"


def test_close_releases_the_port(metrics):
    srv = HttpServer("127.0.0.1:0", metrics.registry)
    port = srv.start()
    srv.close()
    srv.close()  # idempotent
    with pytest.raises(OSError):
        get(port, "/healthz")
    again = HttpServer(f"127.0.0.1:{port}", metrics.registry)
    assert again.start() == port
    again.close()


def test_ipv6_any_address_also_serves_ipv4(metrics):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    try:
        srv = HttpServer("[::]:0", metrics.registry)
        srv.start()
    except ConfigError as err:
        pytest.skip(f"cannot bind [::]: {err}")
    try:
        assert get(srv.port, "/healthz")[0] == 200  # over 127.0.0.1
        assert srv.url == f"http://[::1]:{srv.port}"
    finally:
        srv.close()


def test_bad_address_is_refused_before_binding(metrics):
    with pytest.raises(ConfigError, match=r'^metrics address: "9436": must be HOST:PORT'):
        HttpServer("9436", metrics.registry)
    assert parse_address("[::]:9436") == ("::", 9436)
