"""The ring buffer readers against the real kernel: every record the BPF program submitted is read exactly once, in
order, also when the ring wraps around many times and the kernel wakes the reader rarely."""

from __future__ import annotations

import ipaddress
import subprocess
import time

import pytest

from ipftrace_exporter import collector as collector_module
from ipftrace_exporter.flows import FlowSpec
from ipftrace_exporter.program import ProgramOptions
from ipftrace_exporter.ringbuf import direct_read_supported
from ipftrace_exporter.tracer import Tracer, TraceRequest

from .netns import NetPair
from .test_segments import UDP_SEGMENT

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
    # 200 pings, ~13 events per round trip x 160 bytes: ~400 KiB through a 32 KiB ring (204 frames), which wraps
    # ~12 times; 15 round trips fit (150 ms of pings: a reader stalled that long on a busy machine still keeps up),
    # so nothing is lost.
    paths, totals = trace_pings(netpair, cache_dir, pages=8, count=200)
    read = sum(len(skb.events) for path in paths for skb in path.skb_paths)
    assert read == totals["events"], (read, totals)
    assert totals["events"] > 10 * 204
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


WAITING_PORT = 7201  # b's socket there reads its datagrams once the other traffic is sent


@pytest.mark.parametrize("reader", READERS)
def test_a_reader_that_fell_behind_splits_no_packet(
        netpair: NetPair, cache_dir: str, monkeypatch: pytest.MonkeyPatch, reader: str) -> None:
    """A UDP GSO packet's two segments wait in b's socket queue while 20 other datagrams pass, then b reads them
    (milliseconds later: the packet never idles in the kernel). The collector does not poll for longer than the
    idle timeout meanwhile (a stalled process), then reads the ring 16 records at a time: by the clock the
    segments are idle after the first batch, but their reads are among the records still waiting. The packet must
    come out as one path with its two segments, each with its read (one a tracepoint sees: segments are not
    linear), and no continuation."""
    use_reader(reader, monkeypatch)
    monkeypatch.setattr(collector_module, "MAX_RECORDS_PER_POLL", 16)
    flow = FlowSpec(name="udp", l4proto=17, daddr=ipaddress.ip_network(netpair.addr_b4))
    tracer = Tracer(TraceRequest(flows=(flow,), backend="tracepoint"), cache_dir=cache_dir)
    netpair.exec_in(netpair.ns_a, ["ethtool", "-K", netpair.veth_a, "tx-udp-segmentation", "off"], check=False)
    receiver = netpair.popen_in(netpair.ns_b, ["python3", "-c", (
        f"import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.bind(('{netpair.addr_b4}', {WAITING_PORT}))\nprint('bound', flush=True)\nsys.stdin.readline()\n"
        "s.settimeout(10)\nprint(len(s.recv(2000)) + len(s.recv(2000)), flush=True)\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    paths = []
    behind = 0
    try:
        assert receiver.stdout is not None and receiver.stdin is not None
        assert "bound" in receiver.stdout.readline()
        tracer.start()
        tracer.poll(0)
        netpair.python_in(netpair.ns_a, (
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.setsockopt(socket.IPPROTO_UDP, {UDP_SEGMENT}, 1000)\n"
            f"s.sendto(bytes(2000), ('{netpair.addr_b4}', {WAITING_PORT}))\ns.setsockopt(socket.IPPROTO_UDP, "
            f"{UDP_SEGMENT}, 0)\nfor _ in range(20): s.sendto(b'x', ('{netpair.addr_b4}', {WAITING_PORT + 1}))\n"))
        receiver.stdin.write("read\n")
        receiver.stdin.flush()
        assert receiver.stdout.readline().strip() == "2000"
        receiver.wait(timeout=10)
        time.sleep(tracer.request.limits.idle_timeout_ns / 1e9 + 1)  # no poll meanwhile: the collector fell behind
        for _ in range(100):  # (the ring holds some 150 records: 10 batches)
            paths.extend(tracer.poll(0))
            behind += tracer.collector.backlog
        paths.extend(tracer.flush())
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
        tracer.close()
        netpair.exec_in(netpair.ns_a, ["ethtool", "-K", netpair.veth_a, "tx-udp-segmentation", "on"], check=False)
    assert behind, "the reader never fell behind: the test proves nothing"
    waited = [path for path in paths if path.describe().dport == WAITING_PORT]
    functions = [(path.continued, [tracer.names.probe(event.probe_id) for event in skb.events])
                 for path in waited for skb in path.skb_paths]
    assert len(waited) == 1 and not waited[0].continued, functions
    segments = [child for child in waited[0].children if child.relation == "segment"]
    assert len(segments) == 2, functions
    for segment in segments:
        names = [tracer.names.probe(event.probe_id) for event in segment.events]
        # (read, a segment is freed where no tracepoint sees it: delivered once its skb is reused, else timeout)
        assert "skb:skb_copy_datagram_iovec" in names and segment.outcome != "dropped", functions
    assert not [path for path in paths if path.continued], functions
