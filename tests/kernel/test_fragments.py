"""IPv4 and IPv6 fragments are part of their datagram: one path per datagram with each later fragment as a child
path (`relation: fragment`), found though later fragments carry no ports; a datagram with a dropped fragment is
dropped. Counts are checked against the kernel's own counters (nstat: FragCreates at the sender, ReasmOKs at the
receiver)."""

from __future__ import annotations

import json
import re
import time

import pytest

from .netns import NetPair
from .test_identity import SERVER_PORT, nstat, udp_server

DATAGRAMS = 20
SIZE = 5000  # four fragments at the veth's MTU of 1500


class Family:
    """What differs between an IPv4 and an IPv6 run: the socket family, the receiver's address, the tool's address
    flag and the nstat counters' names."""

    def __init__(self, version: int, netpair: NetPair) -> None:
        self.version = version
        self.socket_family = "AF_INET" if version == 4 else "AF_INET6"
        self.address = netpair.addr_b4 if version == 4 else netpair.addr_b6
        self.address_flag = "-d4" if version == 4 else "-d6"
        self.suffix = "" if version == 4 else "6"

    def counter(self, counters: dict[str, int], name: str, protocol: str = "Ip") -> int:
        """nstat's `name` counter of `protocol` (Ip, Udp) for this family: IpReasmOKs, Ip6ReasmOKs..."""
        return counters.get(protocol + self.suffix + name, 0)


def send_large_datagrams(netpair: NetPair, family: Family, count: int) -> None:
    netpair.python_in(netpair.ns_a, (
        f"import socket, time\ns = socket.socket(socket.{family.socket_family}, socket.SOCK_DGRAM)\n"
        f"for i in range({count}):\n    s.sendto(b'%05d' % i + b'x' * {SIZE - 5}, ('{family.address}', {SERVER_PORT}))\n"
        "    time.sleep(0.05)\n"), timeout=60)


@pytest.mark.parametrize("neighbour", ["resolved", "new"])
@pytest.mark.parametrize("version", [4, 6])
def test_a_fragmented_datagram_is_one_packet_with_its_fragments_as_children(start_tool, netpair: NetPair,  # type: ignore[no-untyped-def]
                                                                           version: int, neighbour: str) -> None:
    """`new`: the first datagram goes to a neighbour not resolved yet, so its first fragment waits for ARP or ND,
    and the kernel's copy of it for the neighbour probe may be freed before the fragment is first seen (the
    datagram then adopts that copy, and its fragments are still its own)."""
    family = Family(version, netpair)
    with udp_server(netpair, family.socket_family, family.address):
        if neighbour == "resolved":
            netpair.ping_b(count=1, v6=version == 6)
        else:
            netpair.exec_in(netpair.ns_a, ["ip", "neigh", "flush", "dev", netpair.veth_a])
        tool = start_tool("ipftrace", "-b", "tracepoint", "-o", "json", "-l4", "UDP", family.address_flag,
                          family.address, "-dp", str(SERVER_PORT))
        sent, received = nstat(netpair.exec_in, netpair.ns_a), nstat(netpair.exec_in, netpair.ns_b)
        send_large_datagrams(netpair, family, DATAGRAMS)
        time.sleep(1.5)
        created = family.counter(nstat(netpair.exec_in, netpair.ns_a), "FragCreates") - family.counter(sent, "FragCreates")
        reassembled = (family.counter(nstat(netpair.exec_in, netpair.ns_b), "ReasmOKs")
                       - family.counter(received, "ReasmOKs"))
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
        # the reassembled datagram is the completing fragment's skb in the first one's buffer (skb_morph), freed
        # when the next datagram comes, when the first fragment's address often holds that next one's: it is this
        # datagram's clone all the same (the kernel names the parent's first event's time)
        reassembled_skbs = [child["skb"] for child in path["children"] if child["relation"] == "clone"
                            and child["events"][0]["timestamp_ns"] > path["events"][0]["timestamp_ns"]]
        assert set(reassembled_skbs) <= {child["skb"] for child in fragments}, path
        probe_copies = [child for child in path["children"] if child["relation"] == "clone"
                        and child["events"][0]["timestamp_ns"] < path["events"][0]["timestamp_ns"]]
        assert len(probe_copies) <= (neighbour == "new"), path  # the neighbour probe's copy, freed before
    assert sent_fragments == created


LAST_FRAGMENT_RULE = {  # the last fragment (IPv4: offset set, under 700 bytes; IPv6: offset set, no more fragments)
    4: "table ip ipft_frag {\n  chain raw { type filter hook prerouting priority -450; policy accept;\n"
       "    ip frag-off & 0x1fff != 0 meta length < 700 drop\n  }\n}\n",
    6: "table ip6 ipft_frag {\n  chain raw { type filter hook prerouting priority -450; policy accept;\n"
       "    frag frag-off != 0 frag more-fragments 0 drop\n  }\n}\n",
}


@pytest.mark.parametrize("version", [4, 6])
def test_a_datagram_whose_last_fragment_is_dropped_is_dropped(start_tool, netpair: NetPair,  # type: ignore[no-untyped-def]
                                                              version: int) -> None:
    family = Family(version, netpair)
    with udp_server(netpair, family.socket_family, family.address):
        netpair.exec_in(netpair.ns_b, ["nft", "-f", "-"], input=LAST_FRAGMENT_RULE[version])
        netpair.ping_b(count=1, v6=version == 6)
        tool = start_tool("ipftrace", "-b", "tracepoint", "-o", "json", "-l4", "UDP", family.address_flag,
                          family.address, "-dp", str(SERVER_PORT))
        before = nstat(netpair.exec_in, netpair.ns_b)
        send_large_datagrams(netpair, family, 5)
        time.sleep(1.5)
        delivered = (family.counter(nstat(netpair.exec_in, netpair.ns_b), "InDatagrams", "Udp")
                     - family.counter(before, "InDatagrams", "Udp"))
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
