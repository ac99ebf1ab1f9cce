"""Paths as the seed's text table or as JSON lines."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TextIO

from .events import Event
from .names import Names
from .paths import (
    OUTCOME_DELIVERED,
    OUTCOME_DROPPED,
    OUTCOME_LEFT,
    OUTCOME_TRUNCATED,
    RELATION_FRAGMENT,
    RELATION_SEGMENT,
    FlowTuple,
    SkbPath,
)
from .protocols import icmp_type_name

DataText = Callable[[Event], str]
DataFields = Callable[[Event], Mapping[str, Mapping[str, object]]]


def device_text(event: Event) -> str:
    """The row's device without the netdev module: its ifindex (names are per namespace; netdev reads them)."""
    return str(event.ifindex) if event.ifindex else "-"


def use_colour(stream: TextIO) -> bool:
    """Colour on a terminal, unless NO_COLOR is set (https://no-color.org)."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


BOLD, RED, RESET = "\x1b[1m", "\x1b[31m", "\x1b[0m"


@dataclass(frozen=True, slots=True)
class TextStyle:
    """Extras of the text table over the seed's shape (the default is the seed's shape)."""

    delta: bool = False  # a `Δ µs` column: time since the previous step, next to the timestamp
    verbose: bool = False  # `Len` and `Device` columns
    wall_offset_ns: int | None = None  # timestamps as local time of day: kernel monotonic + this offset
    colour: bool = False
    device: Callable[[Event], str] = field(default=device_text)

    def stamp(self, monotonic_ns: int) -> str:
        if self.wall_offset_ns is None:
            return str(monotonic_ns)
        seconds, ns = divmod(monotonic_ns + self.wall_offset_ns, 10**9)
        return f"{datetime.fromtimestamp(seconds):%H:%M:%S}.{ns // 1000:06d}"


def icmp_text(flow: FlowTuple) -> str:
    """'echo-request (type 8 code 0)' for an ICMP / ICMPv6 packet, else ''."""
    if flow.icmp is None:
        return ""
    kind, code = flow.icmp
    name = icmp_type_name(flow.l4proto, kind)
    return f"{name} (type {kind} code {code})" if name else f"type {kind} code {code}"


def _child_words(child: SkbPath) -> str:
    """What a child path is, for the line above its table."""
    if child.relation == RELATION_FRAGMENT:
        return "a fragment of the packet's datagram"
    if child.relation == RELATION_SEGMENT:
        return "a GSO segment of the packet"
    if child.before_packet:
        note = "; ended before the packet was first seen: a neighbour probe's copy"
    elif child.neighbour_probe:
        note = "; a neighbour probe's copy, freed once the ARP/ND probe was sent"
    else:
        note = ""
    return f"shares the packet's data buffer{note}"


def _packet_line(path: SkbPath) -> str:
    """How the packet ended, when its child paths changed that: through a clone, or a fragment or segment of it."""
    outcome = path.packet_outcome
    if outcome == OUTCOME_DROPPED:
        for relation in (RELATION_SEGMENT, RELATION_FRAGMENT):
            if any(child.relation == relation and child.outcome == OUTCOME_DROPPED for child in path.children):
                return f"(packet dropped: a {relation} of it was)"
    if any(child.relation == RELATION_SEGMENT for child in path.children):
        return f"(packet {outcome}: as its segments)"
    return f"(packet {outcome}: through a clone)"


def _drop_json(path: SkbPath) -> dict[str, str] | None:
    """Where and why an skb was dropped, in JSON."""
    drop = path.drop
    return None if drop is None else {"reason": drop.reason, "function": drop.function, "probe": drop.probe}


def _headers_json(flow: FlowTuple) -> dict[str, object]:
    """A rewritten packet's new headers in JSON."""
    return {"protocol": flow.protocol, "saddr": flow.saddr, "sport": flow.sport or None,
            "daddr": flow.daddr, "dport": flow.dport or None}


class PathFormatter:
    """Formats finished paths, naming flows and probes with `names`; `data_text` renders module data as text and
    `data_fields` as {module: {field: value}} for JSON (taken from `data_text.fields` when it has one, as
    modules.data_text() gives)."""

    def __init__(self, names: Names, data_text: DataText | None = None, data_fields: DataFields | None = None,
                 style: TextStyle | None = None) -> None:
        self.names = names
        self.style = style or TextStyle()
        self.data_text = data_text
        self.data_fields = data_fields if data_fields is not None else getattr(data_text, "fields", None)

    def text(self, path: SkbPath) -> str:
        """The seed's shape: a flow line (with ICMP type and code), a `Time Stamp  Function` table (plus the
        style's columns), and how the path ended; then each clone of the packet as an indented table of its own,
        and how the packet ended when its clones changed that (a dropped reply whose raw-socket clone was read)."""
        style = self.style
        described = path.describe()
        head = f"{described.protocol or '?'}\t{described.source or '?'}\t->\t{described.destination or '?'}"
        icmp = icmp_text(described)
        if icmp:
            head += f"\t{icmp}"
        lines = [f"{BOLD}{head}{RESET}" if style.colour else head, *self._table(path)]
        for child in path.children:
            lines.append(f"  {child.relation} {child.skb:#x} ({_child_words(child)}):")
            lines.extend(f"  {line}" for line in self._table(child))
        if path.children and path.packet_outcome != path.outcome:
            lines.append(_packet_line(path))
        if path.relation and path.parent_path is None:
            lines.append(f"({path.relation} of skb {path.parent_skb:#x}, whose path was already printed)"
                         if path.parent_skb else
                         f"({path.relation} of a packet not seen: e.g. a neighbour probe's copy of a packet that "
                         "waited for ARP/ND)")
        return "\n".join(lines) + "\n"

    def _table(self, path: SkbPath) -> list[str]:
        """The table rows of one skb's path and the line saying how it ended."""
        style = self.style
        names = [self.names.probe(event.probe_id) for event in path.events]
        width = max([len("Function"), *map(len, names)])
        verbose = style.verbose
        with_data = self.data_text is not None

        def row(stamp: str, delta: str, name: str, length: str, device: str, data: str) -> str:
            cells = [f"{stamp:>15}"]
            if style.delta:
                cells.append(f"{delta:>10}")
            cells.append(f"{name:<{width}}" if verbose or with_data else name)
            if verbose:
                cells += [f"{length:>5}", f"{device:<12}" if with_data else device]
            if with_data:
                cells.append(data)
            return "  ".join(cells).rstrip()

        lines = [row("Time Stamp", "Δ µs", "Function", "Len", "Device", "Custom Data")]
        previous: int | None = None
        for event, name in zip(path.events, names):
            delta = "" if previous is None else f"+{(event.timestamp_ns - previous) / 1000:.3f}"
            previous = event.timestamp_ns
            lines.append(row(style.stamp(event.timestamp_ns), delta, name, str(event.length),
                             style.device(event) if verbose else "",
                             self.data_text(event) if self.data_text is not None else ""))
            if event.rewritten:
                lines.append(f"{'':>15}  headers rewritten (NAT): now {FlowTuple.of(event).text}")
            if event.encapsulated:
                lines.append(f"{'':>15}  encapsulated (tunnel): now {FlowTuple.of(event).text}")
        if path.outcome == OUTCOME_DROPPED and path.drop is not None:
            drop = f"DROPPED at {path.drop.function}: {path.drop.reason} ({path.drop.probe})"
            lines.append(f"{RED}{drop}{RESET}" if style.colour else drop)
        elif path.outcome == OUTCOME_LEFT:
            lines.append("(left the host)")
        elif path.outcome == OUTCOME_TRUNCATED and path.lost_events:
            lines.append(f"(truncated: {path.lost_events} event{'s' if path.lost_events != 1 else ''} of this skb lost)")
        elif path.freed_unseen:
            lines.append("(delivered: freed where no probe sees it; the kernel reused its skb for another packet)")
        elif path.outcome != OUTCOME_DELIVERED:
            lines.append(f"({path.outcome})")
        if path.continued:
            lines.append("(continues an earlier path of this packet that timed out)")
        return lines

    def json(self, path: SkbPath) -> str:
        """One JSON object (one line) describing the packet: `outcome` is the packet's (over its clones too),
        `skb_outcome` this skb's own; its clones are in `children`, each with its own skb, outcome and events."""
        described = path.describe()
        record = {
            "flow": self.names.flow(path.flow_id),
            "skb": hex(path.skb),
            "outcome": path.packet_outcome,
            "skb_outcome": path.outcome,
            "lost_events": path.lost_events,
            "freed_unseen": path.freed_unseen,
            "continued": path.continued,
            "protocol": described.protocol,
            "ipversion": described.ipversion,
            "saddr": described.saddr,
            "sport": described.sport or None,
            "daddr": described.daddr,
            "dport": described.dport or None,
            "icmp": None if described.icmp is None else {
                "type": described.icmp[0], "code": described.icmp[1],
                "name": icmp_type_name(described.l4proto, described.icmp[0])},
            "drop": _drop_json(path),
            "events": self._events_json(path),
            "children": [{"relation": child.relation, "skb": hex(child.skb), "outcome": child.outcome,
                          "before_packet": child.before_packet, "neighbour_probe": child.neighbour_probe,
                          "drop": _drop_json(child),
                          "events": self._events_json(child)} for child in path.children],
        }
        if path.relation:
            record.update(relation=path.relation, parent=hex(path.parent_skb) if path.parent_skb else None)
        return json.dumps(record, separators=(",", ":"))

    def _events_json(self, path: SkbPath) -> list[dict[str, object]]:
        events = []
        for event, name in zip(path.events, (self.names.probe(e.probe_id) for e in path.events)):
            item: dict[str, object] = {
                "timestamp_ns": event.timestamp_ns,
                "function": name,
                "cpu": event.cpu,
                "len": event.length,
                "ifindex": event.ifindex,
            }
            if event.rewritten:
                item["rewrite"] = _headers_json(FlowTuple.of(event))
            if event.encapsulated:
                item["encap"] = _headers_json(FlowTuple.of(event))
            if self.data_text is not None:
                item["data"] = self.data_text(event)
            if self.data_fields is not None:
                item["modules"] = self.data_fields(event)
            events.append(item)
        return events

    def format(self, path: SkbPath, kind: str) -> str:
        """`text` (ends with a blank line between paths) or `json` (one line)."""
        if kind == "json":
            return self.json(path) + "\n"
        return self.text(path) + "\n"
