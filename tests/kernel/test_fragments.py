"""IPv4 fragments are part of their datagram: one path per datagram with each later fragment as a child path
(`relation: fragment`), found though later fragments carry no ports; a datagram with a dropped fragment is dropped.
Counts are checked against the kernel's own counters (nstat: FragCreates at the sender, ReasmOKs at the receiver)."""

from __future__ import annotations

import json
import re
import time

from .netns import NetPair
from .test_identity import SERVER_PORT, nstat, udp_server

DATAGRAMS = 20
SIZE = 5000  # four fragments at the veth's MTU of 1500


def send_large_datagrams(netpair: NetPair, count: int) -> None:
    netpair.python_in(netpair.ns_a, (
        "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"for i in range({count}):\n    s.sendto(b'%05d' % i + b'x' * {SIZE - 5}, ('{netpair.addr_b4}', {SERVER_PORT}))\n"
        "    time.sleep(0.05)\n"), timeout=60)


def test_a_fragmented_datagram_is_one_packet_with_its_fragments_as_children(start_tool, netpair: NetPair) -> None:  # type: ignore[no-untyped-def]
    with udp_server(netpair, "AF_INET", netpair.addr_b4):
        netpair.ping_b(count=1)
        tool = start_tool("ipftrace", "-b", "tracepoint", "-o", "json", "-l4", "UDP", "-d4", netpair.addr_b4,
                          "-dp", str(SERVER_PORT))
        sent, received = nstat(netpair.exec_in, netpair.ns_a), nstat(netpair.exec_in, netpair.ns_b)
        send_large_datagrams(netpair, DATAGRAMS)
        time.sleep(1.5)
        created = nstat(netpair.exec_in, netpair.ns_a)["IpFragCreates"] - sent.get("IpFragCreates", 0)
        reassembled = nstat(netpair.exec_in, netpair.ns_b)["IpReasmOKs"] - received.get("IpReasmOKs", 0)
        code, out, err = tool.stop()
    assert code == 130, err
    assert (created, reassembled) == (4 * DATAGRAMS, DATAGRAMS)
    summary = re.search(r"INFO: ([\d,]+) paths? printed(?: \([^)]*\))?; the kernel matched ([\d,]+) packets", err)
    alone = [(p.get("relation"), p["skb"], p.get("parent"), [(e["function"], e["timestamp_ns"]) for e in p["events"]]) for p in map(json.loads, out.splitlines()) if p.get("relation")]
    assert summary and summary[1] == summary[2] == str(DATAGRAMS), "\n".join(map(str, alone[:4]))  # a fragment is not a packet of its own
    paths = [json.loads(line) for line in out.splitlines()]
    sent_fragments = 0
    for path in paths:
        assert path["dport"] == SERVER_PORT and path["outcome"] == "delivered", path
        fragments = [child for child in path["children"] if child["relation"] == "fragment"]
        # each fragment the sender created is a path from its own transmit, the first being the packet's own
        sent_fragments += 1 + sum(child["events"][0]["function"] == "net:net_dev_queue" for child in fragments)
        assert all(child["outcome"] != "dropped" for child in fragments), path
    assert sent_fragments == created


def test_a_datagram_whose_last_fragment_is_dropped_is_dropped(start_tool, netpair: NetPair) -> None:  # type: ignore[no-untyped-def]
    rules = ("table ip ipft_frag {\n  chain raw { type filter hook prerouting priority -450; policy accept;\n"
             "    ip frag-off & 0x1fff != 0 meta length < 700 drop\n  }\n}\n")
    with udp_server(netpair, "AF_INET", netpair.addr_b4):
        netpair.exec_in(netpair.ns_b, ["nft", "-f", "-"], input=rules)
        netpair.ping_b(count=1)
        tool = start_tool("ipftrace", "-b", "tracepoint", "-o", "json", "-l4", "UDP", "-d4", netpair.addr_b4,
                          "-dp", str(SERVER_PORT))
        before = nstat(netpair.exec_in, netpair.ns_b)
        send_large_datagrams(netpair, 5)
        time.sleep(1.5)
        delivered = nstat(netpair.exec_in, netpair.ns_b).get("UdpInDatagrams", 0) - before.get("UdpInDatagrams", 0)
        code, out, err = tool.stop()
    assert code == 130, err
    assert delivered == 0
    paths = [json.loads(line) for line in out.splitlines()]
    datagrams = [p for p in paths if any(child["relation"] == "fragment" for child in p["children"])]
    # (once in about ten runs under load one more, delivered, path came: left for the notes)
    assert len(datagrams) == 5, [(p["outcome"], p.get("relation"), p["dport"], p["continued"],
                                  [e["function"] for e in p["events"]]) for p in paths]
    for path in datagrams:
        # the others wait in the reassembly queue (30 s); the datagram can no longer be delivered
        assert path["outcome"] == "dropped", path
        (dropped,) = [child for child in path["children"] if child["outcome"] == "dropped"]
        assert dropped["relation"] == "fragment" and dropped["drop"]["reason"] == "NETFILTER_DROP", dropped
