"""GSO segments: a TCP packet the kernel cuts into segments in software (TSO off, GSO on: skb_segment makes new
skbs and buffers) is one path whose segments are its child paths (`relation: segment`). Counted against the
kernel's own count of segments sent (nstat TcpOutSegs and TcpRetransSegs in the sending namespace) and the
receiver's nftables drop counter."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.otlp_receiver import GrpcOtlpReceiver, attributes

from .netns import NetPair, nft_counter
from .test_exporter import free_port, sample, scrape, wait_for
from .test_identity import nstat

GSO_PORT = 7100
TRANSFER = 256 * 1024


def segmented_transfer(pair: NetPair, version: int = 4, size: int = TRANSFER) -> int:
    """`size` bytes over TCP (IPv4 or IPv6) from a to b:GSO_PORT, written 64 KiB at a time, with TSO off and GSO on at veth_a (so
    the kernel segments in software). Returns the TCP segments a sent meanwhile (nstat TcpOutSegs, which leaves out
    retransmissions, plus TcpRetransSegs): every packet of the connection from a, the SYN and the ACKs included."""
    address, family = (pair.addr_b4, "AF_INET") if version == 4 else (pair.addr_b6, "AF_INET6")
    pair.exec_in(pair.ns_a, ["ethtool", "-K", pair.veth_a, "tso", "off", "gso", "on"])
    server = pair.popen_in(pair.ns_b, ["python3", "-c", (
        f"import socket\ns = socket.socket(socket.{family})\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('{address}', {GSO_PORT}))\ns.listen(1)\nprint('listening', flush=True)\n"
        "c, _ = s.accept()\nn = 0\nwhile True:\n    d = c.recv(65536)\n    if not d: break\n    n += len(d)\n"
        "c.sendall(b'%d' % n)\nc.close()\n")], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None and "listening" in server.stdout.readline()
        before = _segments_sent(pair)
        pair.python_in(pair.ns_a, (
            f"import socket\nc = socket.create_connection(('{address}', {GSO_PORT}), timeout=20)\n"
            f"for _ in range({size // 65536}): c.sendall(b'x' * 65536)\n"
            f"c.shutdown(socket.SHUT_WR)\nassert c.recv(16) == b'{size}'\nc.close()\n"), timeout=120)
        server.wait(timeout=30)
        return _segments_sent(pair, settled=True) - before
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        pair.exec_in(pair.ns_a, ["ethtool", "-K", pair.veth_a, "tso", "on"])


def _segments_sent(pair: NetPair, settled: bool = False) -> int:
    """a's TCP segments sent so far; `settled`: once the count held for 0.2 s (a's ACK of b's FIN may still be on
    its way, when softirq work waits for ksoftirqd)."""
    counters = nstat(pair.exec_in, pair.ns_a)
    sent = counters.get("TcpOutSegs", 0) + counters.get("TcpRetransSegs", 0)
    for _ in range(10 if settled else 0):
        time.sleep(0.2)
        previous, sent = sent, _segments_sent(pair)
        if sent == previous:
            break
    return sent


def gso_packets(paths: list[dict]) -> list[dict]:
    """The paths that hold segment children."""
    return [path for path in paths if any(child["relation"] == "segment" for child in path["children"])]


def wire_packets(paths: list[dict]) -> int:
    """Packets on the wire: a path's segments, or the path itself when it was not cut. A continuation (the free
    of a packet whose path had timed out: a 6.1 matrix run had one) is no packet of its own."""
    return sum(sum(child["relation"] == "segment" for child in path["children"]) or 1 for path in paths
               if not path["continued"])


def traced_sends(start_tool, netpair: NetPair, version: int, protocol: str, port: int,  # type: ignore[no-untyped-def]
                 send: Callable[[], int]) -> tuple[int, list[dict], str]:
    """`send()` traced by ipftrace for `protocol` to b's address of `version` and `port`: what send() returned, the
    paths and the tool's stderr. Asserts that no segment or clone came without its packet."""
    address = netpair.addr_b4 if version == 4 else netpair.addr_b6
    tool = start_tool("ipftrace", "-b", "tracepoint", "-o", "json", "-l4", protocol, f"-d{version}", address,
                      "-dp", str(port))
    sent = send()
    code, out, err = tool.stop()
    assert code == 130, err
    paths = [json.loads(line) for line in out.splitlines()]
    alone = [(p["relation"], p["parent"], [e["function"] for e in p["events"]]) for p in paths if p.get("relation")]
    assert not alone, alone
    return sent, paths, err


@pytest.mark.parametrize("version", [4, 6], ids=["ipv4", "ipv6"])
def test_a_tcp_packet_cut_into_gso_segments_is_one_path_with_its_segments(start_tool, netpair: NetPair,  # type: ignore[no-untyped-def]
                                                                         version: int) -> None:
    sent, paths, err = traced_sends(start_tool, netpair, version, "TCP", GSO_PORT,
                                    lambda: segmented_transfer(netpair, version))
    cut = gso_packets(paths)
    assert len(cut) >= 3, [(len(p["children"]), [e["function"] for e in p["events"]]) for p in paths][:10]
    for path in cut:
        names = [event["function"] for event in path["events"]]
        assert names[0] == "net:net_dev_queue" and names[-1] == "skb:consume_skb", names  # cut, then freed
        for segment in path["children"]:
            assert segment["events"][0]["function"] == "net:net_dev_start_xmit", segment
            assert segment["events"][0]["len"] <= 1514 and segment["outcome"] != "dropped", segment
    assert wire_packets(paths) == sent, (wire_packets(paths), sent, len(paths))
    # the kernel counted each packet once, its segments not again
    summary = re.search(r"the kernel matched ([\d,]+) packets", err)
    assert summary and int(summary[1].replace(",", "")) == sum(not p["continued"] for p in paths), err


def drop_first_segments(pair: NetPair) -> None:
    """The receiver drops the first full-size segments to GSO_PORT (about 4 KB of them), and counts them."""
    pair.exec_in(pair.ns_b, ["nft", "-f", "-"], input=(
        "table ip ipft_gso {\n  chain in { type filter hook input priority 0; policy accept;\n"
        f"    tcp dport {GSO_PORT} ip length > 1000 quota until 4000 bytes counter drop\n  }}\n}}\n"))


def segments_dropped(pair: NetPair) -> int:
    """What drop_first_segments dropped, by nftables' counter."""
    return nft_counter(pair.ns_b, "ipft_gso")


def test_a_gso_packet_whose_segment_the_receiver_drops_is_dropped(start_tool, netpair: NetPair) -> None:  # type: ignore[no-untyped-def]
    drop_first_segments(netpair)
    tool = start_tool("ipftrace", "-b", "tracepoint", "-o", "json", "-l4", "TCP", "-d4", netpair.addr_b4,
                      "-dp", str(GSO_PORT))
    sent = segmented_transfer(netpair)
    code, out, err = tool.stop()
    assert code == 130, err
    dropped = segments_dropped(netpair)
    paths = [json.loads(line) for line in out.splitlines()]
    assert wire_packets(paths) == sent
    segments = [child for path in gso_packets(paths) for child in path["children"]]
    # every drop nftables made was of a segment (the first data is sent as GSO packets), each on its path (the
    # receiver's TCP may drop more: TCP_OFOMERGE, an out-of-order segment merged into the one before)
    lost = [segment for segment in segments if segment["outcome"] == "dropped"
            and segment["drop"]["reason"] == "NETFILTER_DROP"]
    assert dropped >= 2 and len(lost) == dropped, (dropped, [s["drop"] for s in segments if s["drop"]])
    for path in gso_packets(paths):
        cut_short = any(child["outcome"] == "dropped" for child in path["children"])
        assert (path["outcome"] == "dropped") == cut_short, (path["outcome"], [c["outcome"] for c in path["children"]])
        assert path["skb_outcome"] == "delivered"  # its own skb was freed once cut


def test_the_daemon_sends_a_gso_packet_as_one_trace_with_a_span_per_segment(start_tool, netpair: NetPair,  # type: ignore[no-untyped-def]
                                                                            tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"backend: tracepoint\nflows:\n  - {{name: bulk, l4proto: TCP, daddr: {netpair.addr_b4}, "
                      f"dport: {GSO_PORT}}}\n")
    port = free_port()
    drop_first_segments(netpair)
    with GrpcOtlpReceiver() as receiver:
        daemon = start_tool("ipftrace-exporter", "--config", str(config), "--metrics-address", f"127.0.0.1:{port}",
                            env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint})
        segmented_transfer(netpair)
        matched = lambda: sample(scrape(port), "ipftrace_packets_matched_total", flow="bulk")
        assert wait_for(lambda: sum(sample(scrape(port), "ipftrace_paths_total", flow="bulk", outcome=outcome)
                                    for outcome in ("delivered", "dropped", "timeout")) >= matched() > 0)
        metrics = scrape(port)
        code, _, err = daemon.stop(sig=15)
        assert code == 0, err
        spans = receiver.spans()
    dropped = segments_dropped(netpair)
    roots = [span for span in spans if not span.parent_span_id]
    assert len(roots) == sample(metrics, "ipftrace_packets_matched_total", flow="bulk")  # segments are no packets
    segment_spans = [span for span in spans if span.name == "segment"]
    assert all(attributes(span.attributes)["ipftrace.relation"] == "segment" for span in segment_spans)
    by_trace = {root.trace_id: root for root in roots}
    cut = {span.trace_id for span in segment_spans}
    assert len(cut) >= 3 and cut <= set(by_trace)  # each segment under its packet's root
    by_segment = {span.span_id: span for span in segment_spans}
    nft_drops = [span for span in spans if span.parent_span_id in by_segment
                 and attributes(span.attributes).get("ipftrace.drop.reason") == "NETFILTER_DROP"]
    assert len(nft_drops) == dropped >= 2
    # a packet with a dropped segment is an ERROR trace, and only such a packet
    dropped_roots = [root for root in roots if attributes(root.attributes)["ipftrace.outcome"] == "dropped"]
    assert {span.trace_id for span in nft_drops} <= {root.trace_id for root in dropped_roots}
    assert all(root.status.code == 2 for root in dropped_roots)
    assert not [root for root in roots if root.status.code == 2 and root not in dropped_roots]
    assert sample(metrics, "ipftrace_paths_total", flow="bulk", outcome="dropped") == len(dropped_roots)


UDP_GSO_PORT = 7101
UDP_GSO_SIZE = 1000  # payload bytes per segment (UDP_SEGMENT)
UDP_GSO_SENDS = 12
UDP_GSO_SEGMENTS = 8  # segments per send: the payload is UDP_GSO_SEGMENTS * UDP_GSO_SIZE bytes
UDP_SEGMENT = 103  # linux/udp.h: the socket option that makes each send a GSO packet


def udp_gso_sends(pair: NetPair, version: int = 4) -> int:
    """UDP_GSO_SENDS sends from a to b:UDP_GSO_PORT with UDP_SEGMENT, each a GSO packet of UDP_GSO_SEGMENTS
    segments, with UDP segmentation offload off at veth_a (so the kernel segments in software), read by a socket in
    b. Returns the datagrams b received meanwhile (nstat Udp(6)InDatagrams): one per segment."""
    address, family, counter = ((pair.addr_b4, "AF_INET", "UdpInDatagrams") if version == 4
                                else (pair.addr_b6, "AF_INET6", "Udp6InDatagrams"))
    expected = UDP_GSO_SENDS * UDP_GSO_SEGMENTS
    # (a kernel whose veth lacks UDP segmentation offload segments in software anyway)
    pair.exec_in(pair.ns_a, ["ethtool", "-K", pair.veth_a, "tx-udp-segmentation", "off", "gso", "on"], check=False)
    receiver = pair.popen_in(pair.ns_b, ["python3", "-c", (
        f"import socket\ns = socket.socket(socket.{family}, socket.SOCK_DGRAM)\ns.bind(('{address}', {UDP_GSO_PORT}))\n"
        "s.settimeout(10)\nprint('bound', flush=True)\n"
        f"for _ in range({expected}): assert len(s.recv(65536)) == {UDP_GSO_SIZE}\nprint('read', flush=True)\n")],
        stdout=subprocess.PIPE)
    try:
        assert receiver.stdout is not None and "bound" in receiver.stdout.readline()
        before = nstat(pair.exec_in, pair.ns_b).get(counter, 0)
        pair.python_in(pair.ns_a, (
            f"import socket, time\ns = socket.socket(socket.{family}, socket.SOCK_DGRAM)\n"
            f"s.setsockopt(socket.IPPROTO_UDP, {UDP_SEGMENT}, {UDP_GSO_SIZE})\n"
            f"for i in range({UDP_GSO_SENDS}):\n"
            f"    s.sendto(b''.join(b'%04d%04d' % (i, j) * {UDP_GSO_SIZE // 8} for j in range({UDP_GSO_SEGMENTS})),"
            f" ('{address}', {UDP_GSO_PORT}))\n"
            "    time.sleep(0.02)\n"), timeout=60)
        assert receiver.stdout.readline().strip() == "read"
        receiver.wait(timeout=30)
        return nstat(pair.exec_in, pair.ns_b).get(counter, 0) - before
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
        pair.exec_in(pair.ns_a, ["ethtool", "-K", pair.veth_a, "tx-udp-segmentation", "on"], check=False)


@pytest.mark.parametrize("version", [4, 6], ids=["ipv4", "ipv6"])
def test_a_udp_gso_packet_is_one_path_with_its_segments(start_tool, netpair: NetPair,  # type: ignore[no-untyped-def]
                                                        version: int) -> None:
    received, paths, err = traced_sends(start_tool, netpair, version, "UDP", UDP_GSO_PORT,
                                        lambda: udp_gso_sends(netpair, version))
    assert received == UDP_GSO_SENDS * UDP_GSO_SEGMENTS  # the kernel's count: every segment reached the socket
    # one path per send, each with a segment child per datagram the receiver counted (a segment that waited in b's
    # socket queue past the idle timeout timed out, and its read continues it: no packet of its own)
    continuations = [path for path in paths if path["continued"]]
    paths = [path for path in paths if not path["continued"]]
    assert len(paths) == UDP_GSO_SENDS, [(len(p["children"]), [e["function"] for e in p["events"]]) for p in paths]
    timed_out = [child for path in paths for child in path["children"] if child["outcome"] == "timeout"]
    assert len(continuations) <= len(timed_out), continuations
    assert wire_packets(paths) == received
    first_send = min(paths, key=lambda path: path["events"][0]["timestamp_ns"])
    for path in paths:
        names = [event["function"] for event in path["events"]]
        assert names[0] == "net:net_dev_queue" and names[-1] == "skb:consume_skb", names  # cut, then freed
        # read by recvmsg, a datagram is freed where no tracepoint sees it: delivered once its skb is reused (freed
        # unseen), timeout otherwise (README); never dropped before b's socket read it (after the read, the kernel
        # freed one with kfree_skb in a kernel-matrix run on this host: the notes on the issue "Packet identity")
        segments = [child for child in path["children"] if child["relation"] == "segment"]
        outcomes = [child["outcome"] for child in segments]
        assert all(child["outcome"] in ("delivered", "timeout") or "skb:skb_copy_datagram_iovec" in
                   [event["function"] for event in child["events"]] for child in segments), outcomes
        assert path["outcome"] in outcomes, (path["outcome"], outcomes)
        relations = [child["relation"] for child in path["children"]]
        # the first send to b (IPv6: its neighbour not resolved yet) may also hold the copy the kernel made of it
        # for the neighbour probe (a clone freed before the packet was seen, adopted by it)
        clones = relations.count("clone") if path is first_send else 0
        assert sorted(relations) == ["clone"] * min(clones, 1) + ["segment"] * UDP_GSO_SEGMENTS, relations
        for segment in (child for child in path["children"] if child["relation"] == "segment"):
            assert segment["events"][0]["function"] == "net:net_dev_start_xmit", segment
            assert segment["events"][0]["len"] == UDP_GSO_SIZE + 8 + (20 if version == 4 else 40) + 14, segment
    summary = re.search(r"the kernel matched ([\d,]+) packets", err)
    assert summary and int(summary[1].replace(",", "")) == UDP_GSO_SENDS, err
