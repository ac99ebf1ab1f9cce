"""The kernel's skb tracepoints: which exist here, and where skb, location and drop reason sit in their arguments."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .probes import ProbeRole

log = logging.getLogger(__name__)

TRACEFS_ROOTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


@dataclass(frozen=True, slots=True)
class TracepointInfo:
    """A tracepoint we can attach as a raw tracepoint."""

    category: str
    event: str
    role: ProbeRole = ProbeRole.STEP
    from_data: bool = False  # the IP header is at skb->data here (receive entry points)

    @property
    def name(self) -> str:
        return f"{self.category}:{self.event}"


# The skb tracepoints worth following, in the order a packet meets them. Others can be added as they appear.
SKB_TRACEPOINTS: tuple[TracepointInfo, ...] = (
    TracepointInfo("net", "netif_rx", from_data=True),
    TracepointInfo("net", "napi_gro_receive_entry", from_data=True),
    TracepointInfo("net", "netif_receive_skb", from_data=True),
    TracepointInfo("skb", "skb_copy_datagram_iovec"),
    TracepointInfo("udp", "udp_fail_queue_rcv_skb"),
    TracepointInfo("net", "net_dev_queue"),
    TracepointInfo("net", "net_dev_start_xmit"),
    TracepointInfo("net", "net_dev_xmit"),
    TracepointInfo("tcp", "tcp_retransmit_skb"),
    TracepointInfo("skb", "consume_skb", role=ProbeRole.CONSUME),
    TracepointInfo("skb", "kfree_skb", role=ProbeRole.DROP),
)


class TracepointParams(Protocol):
    """The BTF reader's view of a raw tracepoint's TP_PROTO parameters."""

    def tracepoint_params(self, event: str) -> list[tuple[str, str]] | None: ...


@dataclass(frozen=True, slots=True)
class TracepointArgs:
    """0-based indices into a raw tracepoint's args (None when absent)."""

    skb: int
    location: int | None = None
    reason: int | None = None
    device: int | None = None  # a `struct net_device *` (net_dev_xmit: skb->dev may already be the veth peer)


def tracefs_root() -> str | None:
    """The mounted tracefs directory, or None."""
    for root in TRACEFS_ROOTS:
        if os.path.isdir(os.path.join(root, "events")):
            return root
    return None


def tracepoint_exists(info: TracepointInfo, root: str | None) -> bool:
    """True when tracefs lists this event (or, without tracefs, we cannot tell and assume BTF is right)."""
    if root is None:
        return True
    return os.path.isdir(os.path.join(root, "events", info.category, info.event))


def locate_args(params: Sequence[tuple[str, str]]) -> TracepointArgs | None:
    """Find skb, location, reason and device among TP_PROTO parameters; None when no struct sk_buff * is there. Without
    parameter names (BTF of older kernels, e.g. Debian's 5.10, has no `__bpf_trace_<event>` to take them from:
    `argN`), the location is the first `void *` after the skb and the reason an `enum skb_drop_reason`."""
    skb = location = reason = device = None
    for index, (name, type_text) in enumerate(params):
        compact = type_text.replace("const ", "").replace(" ", "")
        unnamed = name.startswith("arg") and name[3:].isdigit()
        if skb is None and compact == "structsk_buff*":
            skb = index
        elif name == "location" or (unnamed and skb is not None and location is None and compact == "void*"):
            location = index
        elif name == "reason" or (unnamed and reason is None and compact == "enumskb_drop_reason"):
            reason = index
        elif device is None and compact == "structnet_device*":
            device = index
    if skb is None:
        return None
    return TracepointArgs(skb, location, reason, device)


def available_tracepoints(
    btf: TracepointParams, wanted: Sequence[TracepointInfo] = SKB_TRACEPOINTS
) -> list[tuple[TracepointInfo, TracepointArgs]]:
    """The wanted tracepoints this kernel has, with their argument positions from BTF."""
    root = tracefs_root()
    found = []
    for info in wanted:
        if not tracepoint_exists(info, root):
            log.debug("tracepoint %s is not in this kernel", info.name)
            continue
        params = btf.tracepoint_params(info.event)
        args = locate_args(params) if params else None
        if args is None:
            log.debug("tracepoint %s has no struct sk_buff * argument in BTF", info.name)
            continue
        found.append((info, args))
    return found
