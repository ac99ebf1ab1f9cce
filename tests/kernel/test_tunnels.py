"""A packet sent through a tunnel stays one path: VXLAN pushes its outer headers into the same buffer, and the kernel
follows the packet under them (to its drop in the underlay, or through decapsulation to the overlay's receiver)
instead of taking it for a new packet. Checked against nftables' own counter of the underlay drops."""

from __future__ import annotations

import json
import time
from contextlib import nullcontext

import pytest

from .netns import NetPair, nft_counter
from .test_identity import packet_socket

OVERLAY = {4: ("10.197.0.1", "10.197.0.2"), 6: ("fd00:197::1", "fd00:197::2")}
VXLAN_PORT = 4789
PINGS = 3
# an overlay ping's underlay packet: ICMP (84 bytes) or ICMPv6 (104), with 14 of inner Ethernet, 8 of VXLAN, 8 of
# UDP and 20 of IPv4
UNDERLAY_LENGTH = {4: 134, 6: 154}


def vxlan_overlay(netpair: NetPair, version: int) -> None:
    """vx0 in each namespace, VNI 42 over the veth pair (IPv4), with the OVERLAY addresses of `version`."""
    for ns, local, remote, overlay in ((netpair.ns_a, netpair.addr_a4, netpair.addr_b4, OVERLAY[version][0]),
                                       (netpair.ns_b, netpair.addr_b4, netpair.addr_a4, OVERLAY[version][1])):
        netpair.exec_in(ns, ["ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "local", local,
                             "remote", remote, "dstport", str(VXLAN_PORT)])
        if version == 4:  # no IPv6 on the overlay: its link-local chatter would cross the underlay too
            netpair.exec_in(ns, ["sysctl", "-qw", "net.ipv6.conf.vx0.disable_ipv6=1"])
            netpair.exec_in(ns, ["ip", "addr", "add", f"{overlay}/24", "dev", "vx0"])
        else:  # no link-local address, router solicitations or duplicate address detection: the least chatter
            for setting in ("addr_gen_mode=1", "autoconf=0", "accept_ra=0", "accept_dad=0"):
                netpair.exec_in(ns, ["sysctl", "-qw", f"net.ipv6.conf.vx0.{setting}"])
            netpair.exec_in(ns, ["ip", "addr", "add", f"{overlay}/64", "dev", "vx0", "nodad"])
        netpair.exec_in(ns, ["ip", "link", "set", "vx0", "up"])
    # permanent overlay neighbours: no ARP or ND at all, so no neighbour probe or answer of its own (an ICMPv6 NA
    # from a to b matches the pings' flow) crosses the tunnel while the pings are traced, however long start-up takes
    mac = {ns: netpair.exec_in(ns, ["cat", "/sys/class/net/vx0/address"]).stdout.strip()
           for ns in (netpair.ns_a, netpair.ns_b)}
    for ns, peer, peer_overlay in ((netpair.ns_a, netpair.ns_b, OVERLAY[version][1]),
                                   (netpair.ns_b, netpair.ns_a, OVERLAY[version][0])):
        netpair.exec_in(ns, ["ip", "neigh", "replace", peer_overlay, "lladdr", mac[peer], "dev", "vx0",
                             "nud", "permanent"])
    netpair.exec_in(netpair.ns_a, ["ping", "-c", "1", "-W", "3", OVERLAY[version][1]])  # the tunnel works


def drop_underlay(netpair: NetPair, version: int) -> None:
    """nftables in b drops the overlay's underlay packets, counting the pings' (the rest: its ARP or ND probes)."""
    netpair.exec_in(netpair.ns_b, ["nft", "-f", "-"], input=(
        "table ip ipft_tunnel {\n  chain in { type filter hook input priority 0; policy accept;\n"
        f"    udp dport {VXLAN_PORT} ip length {UNDERLAY_LENGTH[version]} counter drop\n"
        f"    udp dport {VXLAN_PORT} drop\n  }}\n}}\n"))


def underlay_drops(netpair: NetPair) -> int:
    """The pings' underlay packets drop_underlay dropped, by nftables' own counter."""
    return nft_counter(netpair.ns_b, "ipft_tunnel")


def trace_pings(start_tool, netpair: NetPair, version: int) -> list[dict]:  # type: ignore[no-untyped-def]
    source, destination = OVERLAY[version]
    tool = start_tool("ipftrace", "-b", "tracepoint", "-o", "json", "-l4", "ICMP" if version == 4 else "ICMPv6",
                      f"-s{version}", source, f"-d{version}", destination)
    netpair.exec_in(netpair.ns_a, ["ping", "-c", str(PINGS), "-i", "0.2", "-W", "1", destination], check=False)
    time.sleep(0.3)
    code, out, err = tool.stop()
    assert code == 130, err
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize("tapped", [False, True], ids=["alone", "with-a-packet-socket"])
@pytest.mark.parametrize("version", [4, 6])
def test_a_packet_dropped_in_the_underlay_of_a_vxlan_tunnel_is_dropped(start_tool, netpair: NetPair,  # type: ignore[no-untyped-def]
                                                                      version: int, tapped: bool) -> None:
    # with a packet socket on the sender's vx0 holding its clone of each packet, VXLAN first moves the packet to a
    # new data buffer (skb_cow_head), then pushes the outer headers there: the same skb and packet elsewhere
    vxlan_overlay(netpair, version)
    drop_underlay(netpair, version)
    with packet_socket(netpair.ns_a, "vx0") if tapped else nullcontext():
        paths = trace_pings(start_tool, netpair, version)
    assert underlay_drops(netpair) == PINGS
    assert len(paths) == PINGS, [p["outcome"] for p in paths]
    for path in paths:
        assert path["outcome"] == "dropped" and path["drop"]["reason"] == "NETFILTER_DROP", path
        (encap,) = [event["encap"] for event in path["events"] if "encap" in event]
        assert (encap["saddr"], encap["daddr"], encap["dport"], encap["protocol"]) == (
            netpair.addr_a4, netpair.addr_b4, VXLAN_PORT, "UDP"), encap


@pytest.mark.parametrize("version", [4, 6])
def test_a_packet_through_a_vxlan_tunnel_is_one_path_to_the_overlay_receiver(start_tool, netpair: NetPair,  # type: ignore[no-untyped-def]
                                                                            version: int) -> None:
    vxlan_overlay(netpair, version)
    vx0_b = int(netpair.exec_in(netpair.ns_b, ["cat", "/sys/class/net/vx0/ifindex"]).stdout)
    paths = trace_pings(start_tool, netpair, version)
    assert len(paths) == PINGS, [p["outcome"] for p in paths]
    for path in paths:
        assert path["outcome"] == "delivered", path
        functions = [(event["function"], event["ifindex"]) for event in path["events"]]
        # encapsulated on the sender's underlay, decapsulated and received on the receiver's vx0
        assert sum("encap" in event for event in path["events"]) == 1, functions
        assert ("net:netif_receive_skb", vx0_b) in functions, functions
