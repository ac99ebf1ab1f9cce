"""Builders for hand-made events and probe tables."""

from __future__ import annotations

import ipaddress

from ipftrace_exporter.events import FLAG_SAMPLED, FLAG_TUPLE, MODULE_DATA_SIZE, Event
from ipftrace_exporter.probes import Probe, ProbeKind, ProbeRole, ProbeTable

PROBES = ProbeTable([
    Probe(0, "net:netif_receive_skb", ProbeKind.TRACEPOINT),
    Probe(1, "ip_rcv", ProbeKind.KPROBE),
    Probe(2, "skb:consume_skb", ProbeKind.TRACEPOINT, role=ProbeRole.CONSUME),
    Probe(3, "skb:kfree_skb", ProbeKind.TRACEPOINT, role=ProbeRole.DROP),
    Probe(4, "dev_hard_start_xmit", ProbeKind.KFUNC, role=ProbeRole.EGRESS),
    Probe(5, "skb_release_data", ProbeKind.KPROBE, role=ProbeRole.RELEASE),
])
RECEIVE, IP_RCV, CONSUME, DROP, EGRESS, RELEASE = range(6)


def event(ts: int, probe: int, skb: int = 0xFFFF888000001000, *, first: bool = False, src: str = "10.0.0.1",
          dst: str = "10.0.0.2", proto: int = 1, sport: int = 0, dport: int = 0, flow: int = 0, cpu: int = 0,
          reason: int = 0, location: int = 0, flags: int = 0, data: bytes = b"") -> Event:
    """An event; `first=True` carries the parsed headers, as the kernel's first event of a packet does."""
    source, destination = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    return Event(
        timestamp_ns=ts, skb=skb, location=location, probe_id=probe, cpu=cpu, length=84, ifindex=2,
        reason=reason, flow_id=flow, ipversion=source.version if first else 0, l4proto=proto if first else 0,
        saddr=source.packed.ljust(16, b"\0") if first else bytes(16),
        daddr=destination.packed.ljust(16, b"\0") if first else bytes(16),
        sport=sport if first else 0, dport=dport if first else 0,
        flags=FLAG_SAMPLED | (FLAG_TUPLE if first else 0) | flags, data=data.ljust(MODULE_DATA_SIZE, b"\0"),
    )
