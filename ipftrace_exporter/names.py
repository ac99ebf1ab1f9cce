"""The one names object: the numbers the kernel records (flow id, probe id, drop reason, free location) -> the
names metrics, spans and output show, each kind with one fallback for a number it does not know."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from .probes import ProbeTable


@dataclass(frozen=True, slots=True, eq=False)
class Names:
    """Names by number, built once when the probes are attached (Tracer.names; KernelView.names reads the kernel's).

    An unknown flow or probe id becomes `flow#N` / `probe#N` (no configured flow or probe name has a `#`), an unknown
    drop reason its number, a free location without kallsyms its address in hex."""

    flows: Sequence[str] = ()  # flow names by flow id (Config.flow_names)
    probes: ProbeTable = field(default_factory=lambda: ProbeTable([]))
    reasons: Mapping[int, str] = field(default_factory=dict)  # skb_drop_reason value -> name, no SKB_DROP_REASON_
    functions: Callable[[int], str] | None = None  # address -> kernel function (kallsyms); None: the address

    def __post_init__(self) -> None:
        object.__setattr__(self, "flows", tuple(self.flows))
        object.__setattr__(self, "reasons", MappingProxyType(dict(self.reasons)))

    def flow(self, flow_id: int) -> str:
        """The configured name of a flow id."""
        flows = self.flows
        return flows[flow_id] if 0 <= flow_id < len(flows) else f"flow#{flow_id}"

    def probe(self, probe_id: int) -> str:
        """The name of a probe id (a function or `category:tracepoint`)."""
        probe = self.probes.get(probe_id)
        return probe.name if probe is not None else f"probe#{probe_id}"

    def reason(self, reason: int) -> str:
        """A drop reason's name without SKB_DROP_REASON_ (3 -> NO_SOCKET)."""
        return self.reasons.get(reason, str(reason))

    def function(self, address: int) -> str:
        """The kernel function containing a free location."""
        return self.functions(address) if self.functions is not None else hex(address)
