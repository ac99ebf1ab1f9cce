"""The ring buffer readers against the real kernel: every record the BPF program submitted is read exactly once, in
order, also when the ring wraps around hundreds of times and the kernel wakes the reader rarely."""

from __future__ import annotations

import time

import pytest

from ipftrace_exporter import collector as collector_module
from ipftrace_exporter.flows import FlowSpec
from ipftrace_exporter.program import ProgramOptions
from ipftrace_exporter.ringbuf import direct_read_supported
from ipftrace_exporter.tracer import Tracer, TraceRequest

from .netns import NetPair

READERS = ["mapped", "libbpf"]


def trace_pings(netpair: NetPair, cache_dir: str, pages: int, count: int) -> tuple[list, dict[str, int]]:
    """Trace `count` pings between the pair with a ring of `pages` pages: (paths, the kernel's counters)."""
    flow = FlowSpec(name="icmp", l4proto=1)
    tracer = Tracer(TraceRequest(flows=(flow,), backend="tracepoint", options=ProgramOptions(ringbuf_pages=pages)),
                    cache_dir=cache_dir)
    paths = []
    try:
        tracer.start()
        tracer.poll(0)
        pinger = netpair.popen_in(netpair.ns_a, ["ping", "-4", "-c", str(count), "-i", "0.01", "-W", "2",
                                                 netpair.addr_b4])
        while pinger.poll() is None:
            paths.extend(tracer.poll(20))
        time.sleep(0.2)
        paths.extend(tracer.poll(0))
        paths.extend(tracer.flush())
        totals = dict(tracer.collector.counters().totals())
    finally:
        tracer.close()
    assert pinger.returncode == 0
    return paths, totals


def use_reader(reader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if reader == "mapped" and not direct_read_supported():
        pytest.skip("this CPU reads the ring buffer through libbpf only")
    if reader == "libbpf":
        monkeypatch.setattr(collector_module, "direct_read_supported", lambda: False)


@pytest.mark.parametrize("reader", READERS)
def test_every_submitted_record_is_read_once_through_a_wrapping_ring(
        netpair: NetPair, cache_dir: str, monkeypatch: pytest.MonkeyPatch, reader: str) -> None:
    use_reader(reader, monkeypatch)
    # 200 pings, ~13 events per round trip x 160 bytes: ~400 KiB through a 16 KiB ring (102 frames), which wraps
    # ~25 times; a round trip's burst fits and at 10 ms between pings the reader keeps up, so nothing is lost.
    paths, totals = trace_pings(netpair, cache_dir, pages=4, count=200)
    read = sum(len(skb.events) for path in paths for skb in path.skb_paths)
    assert read == totals["events"], (read, totals)
    assert totals["events"] > 10 * 102
    assert totals["lost"] == 0, totals
    for path in paths:
        stamps = [event.timestamp_ns for event in path.events]
        assert stamps == sorted(stamps)
        assert not path.gap
    packets = [path for path in paths if path.tuple_event and path.tuple_event.l4proto == 1
               and path.packet_outcome == "delivered"]
    assert len(packets) >= 2 * 200 * 0.95  # echo requests, and replies read through ping's raw-socket clone


@pytest.mark.parametrize("reader", READERS)
def test_a_quiet_ring_is_read_within_the_poll_interval_without_a_wakeup(
        netpair: NetPair, cache_dir: str, monkeypatch: pytest.MonkeyPatch, reader: str) -> None:
    use_reader(reader, monkeypatch)
    # One ping into a 4 MiB ring is far below the wake-up interval: the reader must find it by its own timeout.
    paths, totals = trace_pings(netpair, cache_dir, pages=1024, count=1)
    assert totals["events"] > 0
    assert sum(len(skb.events) for path in paths for skb in path.skb_paths) == totals["events"]
