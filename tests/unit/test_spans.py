"""SpanEncoder: SkbPath -> OTLP protobuf, checked field by field on hand-built paths."""

from __future__ import annotations

import ipaddress
import logging

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from ipftrace_exporter import __version__
from ipftrace_exporter.events import FLAG_ENCAP, FLAG_REWRITE, FLAG_TUPLE, MODULE_DATA_SIZE, Event
from ipftrace_exporter.names import Names
from ipftrace_exporter.paths import OUTCOME_DELIVERED, OUTCOME_DROPPED, OUTCOME_TIMEOUT, Drop, SkbPath
from ipftrace_exporter.probes import Probe, ProbeKind, ProbeRole, ProbeTable
from ipftrace_exporter.spans import (
    SCHEMA_URL,
    SpanEncoder,
    WallClock,
    host_name,
    parse_resource_attributes,
    resource_attributes,
)
from tests.support.otlp_receiver import attributes

OFFSET = 1_700_000_000_000_000_000  # injected monotonic -> unix offset
SKB = 0xFFFF888012345600

PROBES = ProbeTable(
    [
        Probe(0, "net:netif_receive_skb", ProbeKind.TRACEPOINT),
        Probe(1, "ip_rcv", ProbeKind.KFUNC, skb_pos=1),
        Probe(2, "__udp4_lib_rcv", ProbeKind.KPROBE, skb_pos=1),
        Probe(3, "skb:kfree_skb", ProbeKind.TRACEPOINT, role=ProbeRole.DROP),
        Probe(4, "skb:consume_skb", ProbeKind.TRACEPOINT, role=ProbeRole.CONSUME),
    ]
)
FLOWS = ["web", "dns"]


def event(
    ts: int,
    probe_id: int,
    *,
    ipversion: int = 4,
    l4proto: int = 1,
    saddr: str = "10.0.1.10",
    daddr: str = "10.0.1.20",
    sport: int = 0,
    dport: int = 0,
    tuple_: bool = True,
    cpu: int = 1,
    length: int = 84,
    ifindex: int = 2,
    data: bytes = bytes(MODULE_DATA_SIZE),
) -> Event:
    raw_s = ipaddress.ip_address(saddr).packed.ljust(16, b"\0")
    raw_d = ipaddress.ip_address(daddr).packed.ljust(16, b"\0")
    flags = FLAG_TUPLE if tuple_ else 0
    return Event(ts, SKB, 0, probe_id, cpu, length, ifindex, 0, 1, ipversion, l4proto, raw_s, raw_d, sport, dport,
                 flags, data)  # fmt: skip


def encoder(**kwargs: object) -> SpanEncoder:
    resource = kwargs.pop("resource", {"service.name": "test"})
    return SpanEncoder(Names(FLOWS, PROBES), WallClock(OFFSET), resource, **kwargs)  # type: ignore[arg-type]


def spans_of(request: ExportTraceServiceRequest) -> list[Span]:
    assert len(request.resource_spans) == 1
    assert len(request.resource_spans[0].scope_spans) == 1
    return list(request.resource_spans[0].scope_spans[0].spans)


def split(spans: list[Span]) -> tuple[Span, list[Span]]:
    roots = [span for span in spans if not span.parent_span_id]
    assert len(roots) == 1
    children = sorted(
        (span for span in spans if span.parent_span_id), key=lambda span: span.start_time_unix_nano
    )
    return roots[0], children


def icmp_path() -> SkbPath:
    return SkbPath(
        SKB,
        flow_id=1,
        events=[event(1_000, 0), event(1_250, 1), event(1_600, 2), event(2_000, 4)],
        outcome=OUTCOME_DELIVERED,
        end_ts=2_000,
    )


def test_one_trace_per_path_with_a_root_and_one_child_per_event() -> None:
    paths = [icmp_path(), icmp_path()]
    spans = spans_of(encoder().encode(paths))
    assert len(spans) == 10 == SpanEncoder.span_count(paths)
    trace_ids = {span.trace_id for span in spans}
    assert len(trace_ids) == 2
    for trace_id in trace_ids:
        root, children = split([span for span in spans if span.trace_id == trace_id])
        assert len(children) == 4
        assert all(child.parent_span_id == root.span_id for child in children)
    assert all(len(span.trace_id) == 16 and any(span.trace_id) for span in spans)
    assert all(len(span.span_id) == 8 and any(span.span_id) for span in spans)
    assert len({span.span_id for span in spans}) == 10


def test_child_spans_are_named_after_their_probe_and_carry_event_attributes() -> None:
    root, children = split(spans_of(encoder().encode([icmp_path()])))
    assert [child.name for child in children] == [
        "net:netif_receive_skb",
        "ip_rcv",
        "__udp4_lib_rcv",
        "skb:consume_skb",
    ]
    assert all(span.kind == Span.SPAN_KIND_INTERNAL for span in [root, *children])
    first = attributes(children[0].attributes)
    assert first == {  # a tracepoint is not a function: no code.function.name
        "ipftrace.probe": "tracepoint:net:netif_receive_skb",
        "ipftrace.cpu": 1,
        "ipftrace.len": 84,
        "ipftrace.ifindex": 2,
    }
    assert attributes(children[1].attributes)["code.function.name"] == "ip_rcv"
    assert attributes(children[1].attributes)["ipftrace.probe"] == "kfunc:ip_rcv"
    assert attributes(children[2].attributes)["code.function.name"] == "__udp4_lib_rcv"
    assert attributes(children[2].attributes)["ipftrace.probe"] == "kprobe:__udp4_lib_rcv"
    assert not any("code.function" in attributes(child.attributes) for child in children)  # deprecated name


def test_times_are_wall_clock_start_at_the_event_and_end_at_the_next() -> None:
    root, children = split(spans_of(encoder().encode([icmp_path()])))
    assert [(c.start_time_unix_nano - OFFSET, c.end_time_unix_nano - OFFSET) for c in children] == [
        (1_000, 1_250),
        (1_250, 1_600),
        (1_600, 2_000),
        (2_000, 2_000),
    ]
    assert (root.start_time_unix_nano, root.end_time_unix_nano) == (OFFSET + 1_000, OFFSET + 2_000)


def test_root_is_named_after_the_flow_and_has_network_attributes() -> None:
    root, _ = split(spans_of(encoder().encode([icmp_path()])))
    assert root.name == "ICMP dns"
    assert root.status.code == Status.STATUS_CODE_UNSET
    assert attributes(root.attributes) == {  # no ipftrace.skb: a kernel pointer is sent only when asked for
        "network.transport": "icmp",
        "network.type": "ipv4",
        "source.address": "10.0.1.10",
        "destination.address": "10.0.1.20",
        "ipftrace.flow": "dns",
        "ipftrace.outcome": "delivered",
    }


def test_the_skb_address_is_an_attribute_only_when_asked_for() -> None:
    root, _ = split(spans_of(encoder(skb_address=True).encode([icmp_path()])))
    assert attributes(root.attributes)["ipftrace.skb"] == "0xffff888012345600"
    root, _ = split(spans_of(encoder(skb_address=False).encode([icmp_path()])))
    assert "ipftrace.skb" not in attributes(root.attributes)


def test_tcp_and_udp_roots_carry_ports() -> None:
    path = SkbPath(SKB, 0, [event(10, 0, l4proto=6, sport=40000, dport=443)], OUTCOME_TIMEOUT)
    root, _ = split(spans_of(encoder().encode([path])))
    assert root.name == "TCP web"
    attrs = attributes(root.attributes)
    assert (attrs["network.transport"], attrs["source.port"], attrs["destination.port"]) == (
        "tcp",
        40000,
        443,
    )
    assert attrs["ipftrace.flow"] == "web"
    assert attrs["ipftrace.outcome"] == "timeout"


def test_ipv6_addresses_are_bracketed_when_a_port_follows() -> None:
    path = SkbPath(
        SKB, 0, [event(10, 0, ipversion=6, l4proto=17, saddr="fd00:199::1", daddr="fd00:199::2", sport=5353,
                       dport=53)], OUTCOME_DELIVERED
    )  # fmt: skip
    root, _ = split(spans_of(encoder().encode([path])))
    assert root.name == "UDP web"
    attrs = attributes(root.attributes)
    assert attrs["network.type"] == "ipv6"
    assert attrs["source.address"] == "fd00:199::1"
    assert attrs["destination.address"] == "fd00:199::2"


def test_ipv6_without_ports_keeps_plain_addresses() -> None:
    path = SkbPath(SKB, 0, [event(10, 0, ipversion=6, l4proto=58, saddr="fd00::1", daddr="fd00::2")])
    root, _ = split(spans_of(encoder().encode([path])))
    assert root.name == "ICMPV6 web"
    assert "source.port" not in attributes(root.attributes)
    assert attributes(root.attributes)["network.transport"] == "icmpv6"


def test_addresses_come_from_the_first_event_with_parsed_headers() -> None:
    path = SkbPath(SKB, 0, [event(10, 0, tuple_=False, saddr="1.1.1.1"), event(20, 1)])
    root, _ = split(spans_of(encoder().encode([path])))
    assert attributes(root.attributes)["source.address"] == "10.0.1.10"


def test_a_path_without_parsed_headers_is_named_after_its_flow_only() -> None:
    path = SkbPath(SKB, 0, [event(10, 0, tuple_=False)])
    root, _ = split(spans_of(encoder().encode([path])))
    assert root.name == "packet web"
    assert "network.transport" not in attributes(root.attributes)


def test_a_dropped_path_has_error_status_with_reason_and_function() -> None:
    path = SkbPath(
        SKB,
        0,
        [event(100, 0, l4proto=17, sport=4000, dport=9), event(200, 2), event(300, 3)],
        OUTCOME_DROPPED,
        Drop("NO_SOCKET", "__udp4_lib_rcv", "skb:kfree_skb"),
        300,
    )
    root, children = split(spans_of(encoder().encode([path])))
    assert root.status.code == Status.STATUS_CODE_ERROR
    assert root.status.message == "NO_SOCKET at __udp4_lib_rcv"
    attrs = attributes(root.attributes)
    assert attrs["ipftrace.outcome"] == "dropped"
    assert attrs["ipftrace.drop.reason"] == "NO_SOCKET"
    assert attrs["ipftrace.drop.function"] == "__udp4_lib_rcv"
    # the span of the freeing event says the same; the others are not errors
    assert children[-1].name == "skb:kfree_skb"
    assert children[-1].status.code == Status.STATUS_CODE_ERROR
    assert attributes(children[-1].attributes)["ipftrace.drop.reason"] == "NO_SOCKET"
    assert all(child.status.code == Status.STATUS_CODE_UNSET for child in children[:-1])


def test_module_attributes_are_added_to_child_spans_with_their_types() -> None:
    def gso(ev: Event) -> dict[str, str | int | float | bool]:
        return {"ipftrace.gso.size": ev.length * 10, "ipftrace.gso.segs": 2.5, "ipftrace.gso.ok": True,
                "ipftrace.gso.kind": "tcpv4"}  # fmt: skip

    _, children = split(spans_of(encoder(event_attributes=gso).encode([icmp_path()])))
    attrs = attributes(children[0].attributes)
    assert attrs["ipftrace.gso.size"] == 840
    assert attrs["ipftrace.gso.segs"] == 2.5
    assert attrs["ipftrace.gso.ok"] is True
    assert attrs["ipftrace.gso.kind"] == "tcpv4"
    # True and 1 are different values even though they hash alike
    one = encoder(event_attributes=lambda ev: {"x": 1 if ev.timestamp_ns == 1_000 else True})
    _, children = split(spans_of(one.encode([icmp_path()])))
    assert children[0].attributes[-1].value.WhichOneof("value") == "int_value"
    assert children[1].attributes[-1].value.WhichOneof("value") == "bool_value"


def test_a_path_with_lost_events_is_marked() -> None:
    path = icmp_path()
    path.gap, path.lost_events = True, 3
    root, _ = split(spans_of(encoder().encode([path])))
    assert attributes(root.attributes)["ipftrace.gap"] is True
    assert attributes(root.attributes)["ipftrace.lost_events"] == 3
    assert "ipftrace.gap" not in attributes(split(spans_of(encoder().encode([icmp_path()])))[0].attributes)


def test_unknown_flow_ids_and_probe_ids_still_encode() -> None:
    path = SkbPath(SKB, 7, [event(10, 0), event(20, 42)])
    root, children = split(spans_of(encoder().encode([path])))
    assert attributes(root.attributes)["ipftrace.flow"] == "flow#7"
    assert children[1].name == "probe#42"
    assert attributes(children[1].attributes)["ipftrace.probe"] == "probe#42"


def test_empty_paths_are_skipped() -> None:
    paths = [SkbPath(SKB, 0, []), icmp_path()]
    assert SpanEncoder.span_count(paths) == 5
    assert len(spans_of(encoder().encode(paths))) == 5
    assert len(spans_of(encoder().encode([]))) == 0


def test_encode_bytes_is_the_serialized_request() -> None:
    enc = encoder(seed=7)
    data = enc.encode_bytes([icmp_path()])
    again = encoder(seed=7).encode([icmp_path()])
    assert ExportTraceServiceRequest.FromString(data) == again


def test_resource_and_scope_are_set_once_per_request() -> None:
    request = encoder(resource={"service.name": "svc", "k8s.node.name": "node-1"}).encode([icmp_path()] * 3)
    resource_spans = request.resource_spans[0]
    assert attributes(resource_spans.resource.attributes) == {
        "service.name": "svc",
        "k8s.node.name": "node-1",
    }
    scope = resource_spans.scope_spans[0].scope
    assert (scope.name, scope.version) == ("ipftrace-exporter", __version__)


def test_wall_clock_offset_is_measured_once() -> None:
    import time

    clock = WallClock()
    now = time.monotonic_ns()
    assert abs(clock.to_unix_ns(now) - time.time_ns()) < 50_000_000
    assert WallClock(5).to_unix_ns(10) == 15
    offset = clock.offset_ns
    time.sleep(0.001)
    assert clock.offset_ns == offset


def test_resource_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "NODE_NAME"):
        monkeypatch.delenv(name, raising=False)
    attrs = resource_attributes(hostname="host-a")
    assert attrs == {
        "service.name": "ipftrace-exporter",
        "service.version": __version__,
        "host.name": "host-a",
        "telemetry.sdk.name": "ipftrace-exporter",
        "telemetry.sdk.language": "python",
        "telemetry.sdk.version": __version__,
    }


def test_host_name_is_the_node_name_else_the_kernel_host_name(tmp_path) -> None:  # type: ignore[no-untyped-def]
    hostname = tmp_path / "hostname"
    hostname.write_text("node-from-kernel\n")
    assert host_name({"NODE_NAME": "node-7"}, str(hostname)) == "node-7"
    assert host_name({}, str(hostname)) == "node-from-kernel"
    assert resource_attributes({}, None)["host.name"] == host_name({})
    import socket

    assert host_name({}, str(tmp_path / "missing")) == socket.gethostname()


def test_requests_carry_the_semantic_conventions_schema_url() -> None:
    from opentelemetry.semconv.schemas import Schemas

    request = encoder().encode([icmp_path()])
    assert request.resource_spans[0].schema_url == SCHEMA_URL
    assert request.resource_spans[0].scope_spans[0].schema_url == SCHEMA_URL
    assert SCHEMA_URL in {schema.value for schema in Schemas}  # a version the pinned semconv package knows


def test_root_span_names_stay_few_under_mixed_traffic() -> None:
    """Span-name cardinality: thousands of packets with random addresses, ports, protocols and both IP
    versions give at most one root name per (protocol, flow), and never an address."""
    import random

    rng = random.Random(16)
    paths = []
    for index in range(3000):
        version = rng.choice((4, 6))
        proto = rng.choice((1, 6, 17)) if version == 4 else rng.choice((58, 6, 17))
        if version == 4:
            saddr, daddr = (str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(2))
        else:
            saddr, daddr = (str(ipaddress.IPv6Address(rng.getrandbits(128))) for _ in range(2))
        ports = {"sport": rng.randrange(1, 65536), "dport": rng.randrange(1, 65536)} if proto in (6, 17) else {}
        paths.append(SkbPath(SKB + index, rng.randrange(len(FLOWS)),
                             [event(10, 0, ipversion=version, l4proto=proto, saddr=saddr, daddr=daddr, **ports),
                              event(20, 4)], OUTCOME_DELIVERED))
    spans = spans_of(encoder().encode(paths))
    roots = [span for span in spans if not span.parent_span_id]
    assert len(roots) == 3000
    names = {root.name for root in roots}
    assert names <= {f"{proto} {flow}" for proto in ("ICMP", "ICMPV6", "TCP", "UDP") for flow in FLOWS}
    assert len(names) <= 8
    assert len({span.name for span in spans}) <= 8 + len(PROBES)
    assert len({attributes(root.attributes)["source.address"] for root in roots}) > 2900  # they are attributes


def test_resource_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "node-7")
    monkeypatch.setenv(
        "OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod, team=net%2Cops ,k8s.cluster.name=c%201"
    )
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    attrs = resource_attributes(hostname="host-a")
    assert attrs["k8s.node.name"] == "node-7"
    assert attrs["deployment.environment"] == "prod"
    assert attrs["team"] == "net,ops"
    assert attrs["k8s.cluster.name"] == "c 1"
    assert attrs["service.name"] == "ipftrace-exporter"


def test_service_name_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs,host.name=override")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    assert resource_attributes(hostname="h")["service.name"] == "from-attrs"
    assert resource_attributes(hostname="h")["host.name"] == "override"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-service-name")
    assert resource_attributes(hostname="h")["service.name"] == "from-service-name"


def test_malformed_resource_attributes_are_discarded_as_a_whole(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "good=1,bad%zz=x,novalue")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    with caplog.at_level(logging.WARNING):
        attrs = resource_attributes(hostname="h")
    assert "good" not in attrs
    assert "OTEL_RESOURCE_ATTRIBUTES" in caplog.text


@pytest.mark.parametrize("text", ["novalue", "=x", "k=%zz", "k=%ff%fe"])
def test_parse_resource_attributes_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_resource_attributes(text)


def test_parse_resource_attributes_accepts_empty_items_and_equals_in_values() -> None:
    assert parse_resource_attributes(",a=b=c,, d = %E2%9C%93 ,") == {"a": "b=c", "d": "✓"}


def test_encoder_reuses_resource_across_encodes_and_ids_differ() -> None:
    enc = encoder()
    first = spans_of(enc.encode([icmp_path()]))
    second = spans_of(enc.encode([icmp_path()]))
    assert first[0].trace_id != second[0].trace_id


@pytest.mark.parametrize("value", ["", "0xffff888012345600", "ünïcode ✓", "x" * 300])
def test_the_hand_encoded_string_attribute_matches_the_message_encoding(value: str) -> None:
    from opentelemetry.proto.common.v1.common_pb2 import KeyValue

    from ipftrace_exporter.spans import _attribute_field, _string_attribute

    key_field = KeyValue(key="ipftrace.skb").SerializeToString()
    assert _string_attribute(key_field, value) == _attribute_field("ipftrace.skb", value)


def test_one_encoder_keeps_flows_apart() -> None:
    enc = encoder()
    tcp = SkbPath(SKB, 0, [event(10, 0, l4proto=6, sport=1, dport=2)])
    udp = SkbPath(SKB + 1, 0, [event(10, 0, l4proto=17, sport=1, dport=2)])
    tcp_again = SkbPath(SKB + 2, 0, [event(10, 0, l4proto=6, sport=1, dport=2)])
    other_port = SkbPath(SKB + 3, 0, [event(10, 0, l4proto=6, sport=1, dport=3)])
    dns = SkbPath(SKB + 4, 1, [event(10, 0, l4proto=6, sport=1, dport=2)])
    spans = spans_of(enc.encode([tcp, udp, tcp_again, other_port, dns]))
    roots = [s for s in spans if not s.parent_span_id]
    assert [root.name for root in roots] == ["TCP web", "UDP web", "TCP web", "TCP web", "TCP dns"]
    assert [attributes(root.attributes)["destination.port"] for root in roots] == [2, 2, 2, 3, 2]


@pytest.mark.parametrize(("flag", "relation", "prefix"), [(FLAG_REWRITE, "nat", "ipftrace.rewrite"),
                                                      (FLAG_ENCAP, "encap", "ipftrace.encap")])
def test_new_headers_mark_their_span_with_the_relation_and_the_headers(flag: int, relation: str, prefix: str) -> None:
    """NAT: the rewritten headers; a tunnel: the outer headers pushed before the packet."""
    changed = event(1_250, 1, l4proto=17, saddr="10.0.1.1", daddr="10.0.2.2", sport=61000, dport=7001,
                    tuple_=False)._replace(flags=flag)
    path = SkbPath(SKB, flow_id=1, events=[event(1_000, 0, l4proto=17, sport=40000, dport=7000), changed,
                                           event(2_000, 4, tuple_=False)], outcome=OUTCOME_DELIVERED, end_ts=2_000)
    root, children = split(spans_of(encoder().encode([path])))
    assert attributes(root.attributes)["destination.port"] == 7000  # the packet as first matched
    marked = attributes(children[1].attributes)
    assert {key: value for key, value in marked.items() if key.startswith(prefix) or "relation" in key} == {
        "ipftrace.relation": relation, f"{prefix}.source.address": "10.0.1.1",
        f"{prefix}.source.port": 61000, f"{prefix}.destination.address": "10.0.2.2",
        f"{prefix}.destination.port": 7001}
    assert not any("relation" in attributes(child.attributes) for child in (children[0], children[2]))


def test_a_packet_dropped_through_its_segment_is_an_error_trace_naming_that_drop() -> None:
    packet = SkbPath(SKB, flow_id=1, events=[event(1_000, 0, l4proto=6), event(1_100, 4, tuple_=False)],
                     outcome=OUTCOME_DELIVERED, end_ts=1_100)  # freed once cut into segments
    segment = SkbPath(SKB + 0x100, flow_id=1, events=[event(1_200, 0, l4proto=6), event(1_300, 3, tuple_=False)],
                      outcome=OUTCOME_DROPPED, drop=Drop("NETFILTER_DROP", "nf_hook_slow", "skb:kfree_skb"),
                      end_ts=1_300, relation="segment", parent_skb=SKB)
    packet.children.append(segment)
    spans = spans_of(encoder().encode([packet]))
    root = next(span for span in spans if not span.parent_span_id)
    assert attributes(root.attributes)["ipftrace.outcome"] == "dropped"
    assert root.status.code == Status.STATUS_CODE_ERROR and root.status.message == "NETFILTER_DROP at nf_hook_slow"
    (segment_span,) = [span for span in spans if span.name == "segment"]
    assert attributes(segment_span.attributes)["ipftrace.relation"] == "segment"


def test_a_dropped_packet_with_its_neighbour_probe_copy_is_an_error_trace_naming_the_copy() -> None:
    packet = SkbPath(SKB, flow_id=1, events=[event(1_000, 0), event(1_500, 3, tuple_=False)],
                     outcome=OUTCOME_DROPPED, drop=Drop("NEIGH_FAILED", "neigh_invalidate", "skb:kfree_skb"),
                     end_ts=1_500)
    copy = SkbPath(SKB + 0x100, flow_id=1, events=[event(1_100, 4)], outcome=OUTCOME_DELIVERED, end_ts=1_100,
                   relation="clone", parent_skb=SKB, neighbour_probe=True)
    packet.children.append(copy)
    spans = spans_of(encoder().encode([packet]))
    root = next(span for span in spans if not span.parent_span_id)
    assert attributes(root.attributes)["ipftrace.outcome"] == "dropped"
    assert root.status.code == Status.STATUS_CODE_ERROR  # the copy's free is no delivery
    (copy_span,) = [span for span in spans if span.name == "clone"]
    assert attributes(copy_span.attributes) == {"ipftrace.relation": "clone", "ipftrace.outcome": "delivered",
                                                "ipftrace.neighbour_probe": True}


def test_a_packet_delivered_through_a_clone_is_one_trace_without_error() -> None:
    original = SkbPath(SKB, flow_id=1, events=[event(1_000, 0), event(1_500, 3, tuple_=False)],
                       outcome=OUTCOME_DROPPED, drop=Drop("NO_SOCKET", "ping_rcv", "skb:kfree_skb"), end_ts=1_500)
    clone = SkbPath(SKB + 0x100, flow_id=1, events=[event(1_600, 0), event(1_700, 4, tuple_=False)],
                    outcome=OUTCOME_DELIVERED, end_ts=1_700, relation="clone", parent_skb=SKB)
    original.children.append(clone)
    spans = spans_of(encoder().encode([original]))
    assert len(spans) == SpanEncoder.span_count([original]) == 6  # root, 2 events, the clone, its 2 events
    assert len({span.trace_id for span in spans}) == 1
    root = next(span for span in spans if not span.parent_span_id)
    assert attributes(root.attributes)["ipftrace.outcome"] == "delivered"
    assert root.status.code != Status.STATUS_CODE_ERROR
    (clone_span,) = [span for span in spans if span.name == "clone"]
    assert clone_span.parent_span_id == root.span_id
    assert attributes(clone_span.attributes) == {"ipftrace.relation": "clone", "ipftrace.outcome": "delivered"}
    under_clone = [span for span in spans if span.parent_span_id == clone_span.span_id]
    assert [span.start_time_unix_nano - OFFSET for span in under_clone] == [1_600, 1_700]
    dropping = next(span for span in spans if span.parent_span_id == root.span_id and span.name != "clone"
                    and span.start_time_unix_nano - OFFSET == 1_500)
    assert attributes(dropping.attributes)["ipftrace.drop.reason"] == "NO_SOCKET"
    assert dropping.status.code != Status.STATUS_CODE_ERROR  # the skb was dropped, the packet was not
