"""What a probe is: one attach point (tracepoint or kernel function) with its id in the BPF records."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

# `auto` and the probe kinds, in the order they are listed (auto's own order is plan.AUTO_ORDER).
BACKENDS = ("auto", "kfunc", "kprobe", "tracepoint")


class ProbeKind(str, Enum):
    """How a probe is attached."""

    TRACEPOINT = "tracepoint"
    KPROBE = "kprobe"
    KFUNC = "kfunc"


class ProbeRole(str, Enum):
    """What seeing this probe means for the packet's path."""

    STEP = "step"  # an ordinary step along the path
    CONSUME = "consume"  # the skb was freed normally: the path ends, consumed
    DROP = "drop"  # the skb was freed with a drop reason: the path ends, dropped
    EGRESS = "egress"  # a manifest egress function: the packet left the host, the path ends
    RELEASE = "release"  # a function that runs inside a free: a step of a tracked packet, never a packet's start
    PREPARE = "prepare"  # a function that writes the headers it is given: a step of a tracked packet, never its start


@dataclass(frozen=True, slots=True)
class Probe:
    """One attach point; `id` is the number carried in each BPF record."""

    id: int
    name: str  # span / metric name: "net:netif_receive_skb" or a kernel function name "ip_rcv"
    kind: ProbeKind
    skb_pos: int = 1  # 1-based argument position of the struct sk_buff * (function or TP_PROTO argument)
    role: ProbeRole = ProbeRole.STEP


class ProbeTable:
    """Probes by id; ids are dense, 0-based, in attach order."""

    def __init__(self, probes: list[Probe]) -> None:
        for index, probe in enumerate(probes):
            if probe.id != index:
                raise ValueError(f"probe ids must be dense and ordered: {probe.name} has id {probe.id}, expected {index}")
        self._probes = tuple(probes)

    def __getitem__(self, probe_id: int) -> Probe:
        return self._probes[probe_id]

    def __len__(self) -> int:
        return len(self._probes)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._probes)

    def get(self, probe_id: int) -> Probe | None:
        """The probe with this id, or None for an id this table does not know."""
        if 0 <= probe_id < len(self._probes):
            return self._probes[probe_id]
        return None
