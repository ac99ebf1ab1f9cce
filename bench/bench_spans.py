"""Span encoding throughput: SpanEncoder (protobuf pieces) vs a naive SDK baseline (one SDK span per event).

    .venv/bin/python bench/bench_spans.py [--paths 10000] [--events 20] [--batch 200] [--seed 1]

Both sides turn the same synthetic SkbPaths into serialized OTLP ExportTraceServiceRequest bytes, batch by batch
(`--batch` paths per request, like the exporter's sender thread), with the same names, times and attributes:
- ours: `SpanEncoder.encode(batch).SerializeToString()`;
- baseline: opentelemetry-sdk TracerProvider + SimpleSpanProcessor + InMemorySpanExporter, a root span and one child
  span per event created through the tracer, then the OTLP exporter's own encoder
  (`opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans`) and SerializeToString.
Prints both rates and their ratio, measured in this one run.
"""

from __future__ import annotations

import argparse
import ipaddress
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource as SdkResource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from ipftrace_exporter import __version__
from ipftrace_exporter.events import FLAG_TUPLE, MODULE_DATA_SIZE, Event
from ipftrace_exporter.names import Names
from ipftrace_exporter.paths import OUTCOME_DELIVERED, OUTCOME_DROPPED, Drop, SkbPath
from ipftrace_exporter.probes import Probe, ProbeKind, ProbeRole, ProbeTable
from ipftrace_exporter.protocols import PORT_PROTOCOLS
from ipftrace_exporter.spans import SpanEncoder, WallClock

FLOWS = ["web", "dns", "ping", "other"]
RESOURCE = {"service.name": "ipftrace-exporter", "host.name": "bench", "k8s.node.name": "node-1"}
FUNCTIONS = [
    "net:netif_receive_skb", "__netif_receive_skb_core", "ip_rcv", "ip_rcv_core", "ip_rcv_finish",
    "ip_route_input_noref", "ip_local_deliver", "ip_local_deliver_finish", "ip_protocol_deliver_rcu", "udp_rcv",
    "__udp4_lib_rcv", "udp_unicast_rcv_skb", "udp_queue_rcv_skb", "tcp_v4_rcv", "tcp_v4_do_rcv", "icmp_rcv",
    "ip_output", "ip_finish_output2", "__dev_queue_xmit", "dev_hard_start_xmit",
]  # fmt: skip


def make_probes() -> ProbeTable:
    probes = [
        Probe(i, name, ProbeKind.TRACEPOINT if ":" in name else ProbeKind.KFUNC)
        for i, name in enumerate(FUNCTIONS)
    ]
    base = len(probes)
    probes.append(Probe(base, "skb:kfree_skb", ProbeKind.TRACEPOINT, role=ProbeRole.DROP))
    probes.append(Probe(base + 1, "skb:consume_skb", ProbeKind.TRACEPOINT, role=ProbeRole.CONSUME))
    return ProbeTable(probes)


def make_paths(count: int, events: int, probes: ProbeTable, rng: random.Random) -> list[SkbPath]:
    """Realistic-looking paths: mixed protocols and families, a few drops, varying cpus and lengths."""
    paths = []
    steps = len(FUNCTIONS)
    for index in range(count):
        skb = 0xFFFF_8880_0000_0000 + index * 0x100
        l4proto = (1, 6, 17, 17)[index % 4]
        v6 = index % 5 == 0
        if v6:
            ipversion, saddr, daddr = (
                6,
                ipaddress.IPv6Address("fd00:199::1"),
                ipaddress.IPv6Address("fd00:199::2"),
            )
            l4proto = 58 if l4proto == 1 else l4proto
        else:
            ipversion = 4
            saddr = ipaddress.IPv4Address(0x0AC70000 + rng.randrange(1, 250))
            daddr = ipaddress.IPv4Address("10.199.0.2")
        raw_s, raw_d = saddr.packed.ljust(16, b"\0"), daddr.packed.ljust(16, b"\0")
        sport, dport = (rng.randrange(1024, 65535), 443) if l4proto in PORT_PROTOCOLS else (0, 0)
        dropped = index % 10 == 0
        end_probe = len(probes) - 2 if dropped else len(probes) - 1
        ts = 1_000_000_000 + index * 10_000
        cpu, length = rng.randrange(8), rng.choice((84, 98, 1500, 60))
        evs = []
        for step in range(events):
            probe_id = end_probe if step == events - 1 else step % steps
            ts += rng.randrange(200, 3_000)
            evs.append(Event(ts, skb, 0, probe_id, cpu, length, 2, 0, index % len(FLOWS), ipversion, l4proto,
                             raw_s, raw_d, sport, dport, FLAG_TUPLE, bytes(MODULE_DATA_SIZE)))  # fmt: skip
        drop = Drop("NO_SOCKET", "__udp4_lib_rcv", "skb:kfree_skb") if dropped else None
        outcome = OUTCOME_DROPPED if dropped else OUTCOME_DELIVERED
        paths.append(SkbPath(skb, index % len(FLOWS), evs, outcome, drop, ts))
    return paths


class NaiveEncoder:
    """The baseline: the same spans made with the OpenTelemetry SDK, one SDK span per event."""

    def __init__(self, probes: ProbeTable, clock: WallClock) -> None:
        self.probes = probes
        self.clock = clock
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider(resource=SdkResource.create(RESOURCE))
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = provider.get_tracer("ipftrace-exporter", __version__)

    def encode(self, paths: Sequence[SkbPath]) -> bytes:
        tracer, offset = self.tracer, self.clock.offset_ns
        for path in paths:
            flow = path.describe()
            attrs: dict[str, str | int] = {
                "network.transport": flow.protocol.lower(),
                "network.type": f"ipv{flow.ipversion}",
                "source.address": flow.saddr,
                "destination.address": flow.daddr,
                "ipftrace.skb": f"{path.skb:#x}",
                "ipftrace.flow": FLOWS[path.flow_id],
                "ipftrace.outcome": path.outcome,
            }
            if flow.l4proto in PORT_PROTOCOLS:
                attrs["source.port"], attrs["destination.port"] = flow.sport, flow.dport
            if path.drop:
                attrs["ipftrace.drop.reason"], attrs["ipftrace.drop.function"] = (
                    path.drop.reason,
                    path.drop.function,
                )
            root = tracer.start_span(
                f"{flow.protocol} {FLOWS[path.flow_id]}",  # as spans.root_span_name: addresses are attributes
                kind=trace.SpanKind.INTERNAL,
                attributes=attrs,
                start_time=path.events[0].timestamp_ns + offset,
            )
            if path.drop:
                root.set_status(Status(StatusCode.ERROR, f"{path.drop.reason} at {path.drop.function}"))
            context = trace.set_span_in_context(root)
            events = path.events
            for index, event in enumerate(events):
                probe = self.probes[event.probe_id]
                start = event.timestamp_ns + offset
                end = events[index + 1].timestamp_ns + offset if index + 1 < len(events) else start
                child = tracer.start_span(
                    probe.name,
                    context=context,
                    kind=trace.SpanKind.INTERNAL,
                    start_time=start,
                    attributes={
                        "code.function": probe.name,
                        "ipftrace.probe": probe.kind.value,
                        "ipftrace.cpu": event.cpu,
                        "ipftrace.len": event.length,
                        "ipftrace.ifindex": event.ifindex,
                    },
                )
                child.end(end_time=end)
            root.end(end_time=events[-1].timestamp_ns + offset)
        data = encode_spans(self.exporter.get_finished_spans()).SerializeToString()
        self.exporter.clear()
        return data


def measure(
    encode: Callable[[Sequence[SkbPath]], bytes], paths: list[SkbPath], batch: int
) -> tuple[float, int]:
    """Seconds to encode every batch, and the bytes produced."""
    size = 0
    started = time.perf_counter()
    for first in range(0, len(paths), batch):
        size += len(encode(paths[first : first + batch]))
    return time.perf_counter() - started, size


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--batch", type=int, default=200, help="paths per request")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    probes = make_probes()
    clock = WallClock()
    paths = make_paths(args.paths, args.events, probes, random.Random(args.seed))
    spans = SpanEncoder.span_count(paths)
    ours = SpanEncoder(Names(FLOWS, probes), clock, RESOURCE, seed=args.seed)
    naive = NaiveEncoder(probes, clock)

    # sanity: both produce the same spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    def names(data: bytes) -> list[str]:
        request = ExportTraceServiceRequest.FromString(data)
        return sorted(s.name for r in request.resource_spans for ss in r.scope_spans for s in ss.spans)

    sample = paths[:10]
    assert names(ours.encode(sample).SerializeToString()) == names(naive.encode(sample)), "encoders disagree"

    ours_s, ours_bytes = measure(lambda batch: ours.encode(batch).SerializeToString(), paths, args.batch)
    naive_s, naive_bytes = measure(naive.encode, paths, args.batch)

    print(f"python {platform.python_version()} on {platform.machine()}, {platform.node()}")
    print(f"{args.paths} paths x {args.events} events = {spans} spans, {args.batch} paths per request")
    print(f"SpanEncoder.encode+serialize : {spans / ours_s:12,.0f} spans/s  {ours_s / spans * 1e6:6.2f} us/span"
          f"  {args.paths / ours_s:10,.0f} paths/s  {ours_bytes / spans:.0f} B/span")  # fmt: skip
    print(f"SDK span per event (baseline): {spans / naive_s:12,.0f} spans/s  {naive_s / spans * 1e6:6.2f} us/span"
          f"  {args.paths / naive_s:10,.0f} paths/s  {naive_bytes / spans:.0f} B/span")  # fmt: skip
    print(f"speed-up: {naive_s / ours_s:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
