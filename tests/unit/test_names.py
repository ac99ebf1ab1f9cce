"""Names: one fallback per kind for a number it does not know."""

from __future__ import annotations

from ipftrace_exporter.names import Names
from ipftrace_exporter.probes import Probe, ProbeKind, ProbeTable

PROBES = ProbeTable([Probe(0, "ip_rcv", ProbeKind.KFUNC), Probe(1, "skb:kfree_skb", ProbeKind.TRACEPOINT)])


def test_known_numbers_get_their_names() -> None:
    names = Names(["icmp", "web"], PROBES, {2: "NO_SOCKET"}, lambda address: "udp_rcv")
    assert (names.flow(1), names.probe(1), names.reason(2), names.function(0xFFFF0001)) == (
        "web", "skb:kfree_skb", "NO_SOCKET", "udp_rcv")


def test_unknown_numbers_fall_back_the_same_way_everywhere() -> None:
    names = Names(["icmp"], PROBES)
    assert names.flow(9) == "flow#9" and names.flow(-1) == "flow#-1"
    assert names.probe(42) == "probe#42"
    assert names.reason(99) == "99"
    assert names.function(0xDEAD) == "0xdead"  # no kallsyms: the address


def test_it_keeps_copies_of_what_it_was_given() -> None:
    flows, reasons = ["icmp"], {2: "NO_SOCKET"}
    names = Names(flows, PROBES, reasons)
    flows.append("web")
    reasons[3] = "x"
    assert names.flow(1) == "flow#1" and names.reason(3) == "3"
