"""Paths as the seed's text table or as JSON lines."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

from .events import Event
from .paths import OUTCOME_CONSUMED, OUTCOME_DROPPED, OUTCOME_LEFT, SkbPath
from .probes import ProbeTable

DataText = Callable[[Event], str]
DataFields = Callable[[Event], Mapping[str, Mapping[str, object]]]


class PathFormatter:
    """Formats finished paths; `flow_names[path.flow_id]` names the flow; `data_text` renders module data as text
    and `data_fields` as {module: {field: value}} for JSON (taken from `data_text.fields` when it has one, as
    modules.data_text() gives)."""

    def __init__(self, probes: ProbeTable, flow_names: Sequence[str], data_text: DataText | None = None,
                 data_fields: DataFields | None = None) -> None:
        self.probes = probes
        self.flow_names = list(flow_names)
        self.data_text = data_text
        self.data_fields = data_fields if data_fields is not None else getattr(data_text, "fields", None)

    def _probe_name(self, event: Event) -> str:
        probe = self.probes.get(event.probe_id)
        return probe.name if probe is not None else f"probe#{event.probe_id}"

    def flow_name(self, path: SkbPath) -> str:
        """The configured name of the flow this path matched."""
        if 0 <= path.flow_id < len(self.flow_names):
            return self.flow_names[path.flow_id]
        return str(path.flow_id)

    def text(self, path: SkbPath) -> str:
        """The seed's shape: a flow line, a `Time Stamp  Function` table, and how the path ended."""
        described = path.describe()
        head = f"{described.protocol or '?'}\t{described.source or '?'}\t->\t{described.destination or '?'}"
        names = [self._probe_name(event) for event in path.events]
        lines = [head]
        if self.data_text is not None:
            width = max([len("Function"), *map(len, names)])
            lines.append(f"{'Time Stamp':>15}  {'Function':<{width}}  Custom Data")
            for event, name in zip(path.events, names):
                lines.append(f"{event.timestamp_ns:>15}  {name:<{width}}  {self.data_text(event)}".rstrip())
        else:
            lines.append(f"{'Time Stamp':>15}  Function")
            lines.extend(f"{event.timestamp_ns:>15}  {name}" for event, name in zip(path.events, names))
        if path.outcome == OUTCOME_DROPPED and path.drop is not None:
            lines.append(f"DROPPED at {path.drop.function}: {path.drop.reason} ({path.drop.probe})")
        elif path.outcome == OUTCOME_LEFT:
            lines.append("(left the host)")
        elif path.outcome != OUTCOME_CONSUMED:
            lines.append(f"({path.outcome})")
        if path.continued:
            lines.append("(continues an earlier path of this packet that timed out)")
        return "\n".join(lines) + "\n"

    def json(self, path: SkbPath) -> str:
        """One JSON object (one line) describing the path."""
        described = path.describe()
        events = []
        for event, name in zip(path.events, (self._probe_name(e) for e in path.events)):
            item: dict[str, object] = {
                "timestamp_ns": event.timestamp_ns,
                "function": name,
                "cpu": event.cpu,
                "len": event.length,
                "ifindex": event.ifindex,
            }
            if self.data_text is not None:
                item["data"] = self.data_text(event)
            if self.data_fields is not None:
                item["modules"] = self.data_fields(event)
            events.append(item)
        record = {
            "flow": self.flow_name(path),
            "skb": hex(path.skb),
            "outcome": path.outcome,
            "continued": path.continued,
            "protocol": described.protocol,
            "ipversion": described.ipversion,
            "saddr": described.saddr,
            "sport": described.sport or None,
            "daddr": described.daddr,
            "dport": described.dport or None,
            "drop": None if path.drop is None else {
                "reason": path.drop.reason, "function": path.drop.function, "probe": path.drop.probe},
            "events": events,
        }
        return json.dumps(record, separators=(",", ":"))

    def format(self, path: SkbPath, kind: str) -> str:
        """`text` (ends with a blank line between paths) or `json` (one line)."""
        if kind == "json":
            return self.json(path) + "\n"
        return self.text(path) + "\n"
