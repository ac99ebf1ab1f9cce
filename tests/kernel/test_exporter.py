"""`ipftrace-exporter` end to end: real probes, a real HTTP scrape of /metrics and real OTLP receivers."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.otlp_receiver import GrpcOtlpReceiver, HttpOtlpReceiver, attributes

from .netns import NetPair

PINGS = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(tmp_path: Path, pair: NetPair, otlp: str = "", extra_flows: int = 6) -> Path:
    """Eight named flows: ping and UDP of the test pair, plus flows that must stay silent."""
    flows = [
        f"  - {{name: ping, l4proto: ICMP, daddr: {pair.addr_b4}}}",
        f"  - {{name: udp-closed, l4proto: UDP, daddr: {pair.addr_b4}, dport: 9999}}",
    ]
    flows += [f"  - {{name: silent{i}, l4proto: TCP, daddr: 10.199.250.{i}, dport: {1000 + i}}}"
              for i in range(extra_flows)]
    text = "backend: tracepoint\nflows:\n" + "\n".join(flows) + "\n"
    text += "paths: {idle_timeout: 1s}\n"
    if otlp:
        text += otlp
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one series (0 when absent)."""
    want = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in metrics.splitlines():
        if line.startswith((name + "{", name + " ")):
            series, value = line.rsplit(" ", 1)
            inside = series[len(name):].strip("{}")
            if ",".join(sorted(inside.split(","))) == want or (not labels and not inside):
                return float(value)
    return 0.0


def send_udp(pair: NetPair, count: int = 3) -> None:
    pair.python_in(pair.ns_a, "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                   f"[s.sendto(b'x', ('{pair.addr_b4}', 9999)) for _ in range({count})]\n")


def wait_for(check, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def test_metrics_count_hits_and_drops_exactly(netpair: NetPair, start_tool, tmp_path: Path) -> None:
    port = free_port()
    daemon = start_tool("ipftrace-exporter", "--config", str(write_config(tmp_path, netpair)),
                        "--metrics-address", f"127.0.0.1:{port}")
    netpair.ping_b(count=PINGS)
    send_udp(netpair, 3)
    assert wait_for(lambda: sample(scrape(port), "ipftrace_skb_drops_total", flow="udp-closed",
                                   function="__udp4_lib_rcv", reason="NO_SOCKET") >= 3)
    metrics = scrape(port)
    assert sample(metrics, "ipftrace_function_hits_total", flow="ping", function="net:netif_receive_skb") >= PINGS
    assert sample(metrics, "ipftrace_function_hits_total", flow="udp-closed", function="skb:kfree_skb") >= 3
    for i in range(6):
        assert f'flow="silent{i}",function=' not in metrics
    assert sample(metrics, "ipftrace_probes", backend="tracepoint", state="attached") > 0
    assert sample(metrics, "ipftrace_events_total") > 0
    assert wait_for(lambda: sample(scrape(port), "ipftrace_paths_total", flow="udp-closed", outcome="dropped") >= 3)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
        assert response.status == 200
    code, _, err = daemon.stop(sig=15)
    assert code == 0, err
    assert "probes detached" in err


@pytest.mark.parametrize("receiver_class,protocol", [(GrpcOtlpReceiver, "grpc"), (HttpOtlpReceiver, "http/protobuf")])
def test_one_trace_per_packet_reaches_a_real_otlp_receiver(receiver_class, protocol: str, netpair: NetPair,
                                                           start_tool, tmp_path: Path) -> None:
    with receiver_class() as receiver:
        config = write_config(tmp_path, netpair, otlp=f"traces: {{otlp: {{protocol: {protocol}}}}}\n")
        daemon = start_tool("ipftrace-exporter", "--config", str(config), "--metrics-address",
                            f"127.0.0.1:{free_port()}",
                            env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "NODE_NAME": "node-a",
                                 "OTEL_SERVICE_NAME": "ipft-test"})
        before = time.time_ns()
        netpair.ping_b(count=PINGS)
        send_udp(netpair, 1)
        code, _, err = daemon.stop(sig=15)  # flushes what it holds
        after = time.time_ns()
        assert code == 0, err
        spans = receiver.spans()
        resource = attributes(receiver.requests[0].resource_spans[0].resource.attributes)
    assert resource["host.name"] == resource["k8s.node.name"] == "node-a"
    assert resource["telemetry.sdk.language"] == "python" and resource["service.name"] == "ipft-test"
    roots = [span for span in spans if not span.parent_span_id]
    ping_roots = [r for r in roots if r.name == "ICMP ping"]  # `<L4> <flow name>`: no addresses in names
    assert len(ping_roots) == PINGS  # one trace per echo request
    assert len({r.trace_id for r in roots}) == len(roots)
    for root in ping_roots:
        children = [s for s in spans if s.trace_id == root.trace_id and s.parent_span_id == root.span_id]
        assert len(children) >= 3
        names = [c.name for c in sorted(children, key=lambda c: c.start_time_unix_nano)]
        assert "net:netif_receive_skb" in names
        attrs = attributes(root.attributes)
        assert attrs["ipftrace.flow"] == "ping"
        assert attrs["source.address"] == netpair.addr_a4 and attrs["destination.address"] == netpair.addr_b4
        assert attrs["network.type"] == "ipv4" and attrs["network.transport"] == "icmp"
        assert before - 5e9 < root.start_time_unix_nano < after + 5e9
        assert root.start_time_unix_nano <= root.end_time_unix_nano
    assert {r.name for r in roots} <= {"ICMP ping", "UDP udp-closed"}
    # the datagram's path (a continuation of it after an idle timeout would be a second, non-dropped root)
    dropped = [r for r in roots
               if r.name == "UDP udp-closed" and attributes(r.attributes)["ipftrace.outcome"] == "dropped"]
    assert len(dropped) == 1, sorted((r.name, attributes(r.attributes)["ipftrace.outcome"]) for r in roots)
    assert attributes(dropped[0].attributes)["destination.port"] == 9999
    assert "ipftrace.skb" not in attributes(dropped[0].attributes)  # a kernel pointer only when configured
    assert dropped[0].status.code == 2  # STATUS_CODE_ERROR
    assert attributes(dropped[0].attributes)["ipftrace.drop.reason"] == "NO_SOCKET"


def test_a_dead_otlp_endpoint_drops_and_counts_spans_and_keeps_serving(netpair: NetPair, start_tool,
                                                                     tmp_path: Path) -> None:
    dead = free_port()  # nothing listens here
    port = free_port()
    config = write_config(tmp_path, netpair, otlp=f"traces: {{otlp: {{endpoint: 'http://127.0.0.1:{dead}', "
                                                  "timeout: 1s}}\n")
    daemon = start_tool("ipftrace-exporter", "--config", str(config), "--metrics-address", f"127.0.0.1:{port}")
    netpair.ping_b(count=3)
    assert wait_for(lambda: sample(scrape(port), "ipftrace_spans_dropped_total", reason="export_failed") > 0,
                    timeout=30)
    metrics = scrape(port)
    assert sample(metrics, "ipftrace_spans_exported_total") == 0
    assert sample(metrics, "ipftrace_function_hits_total", flow="ping", function="net:netif_receive_skb") >= 3
    code, _, err = daemon.stop(sig=15)
    assert code == 0, err
    assert "Traceback" not in err
