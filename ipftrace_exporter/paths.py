"""Per-skb path assembly: events grouped by skb address into time-ordered SkbPaths.

A path ends when its skb is freed (consume / drop), leaves the host (a manifest egress function on a device
with a parent: the kernel flags it FLAG_LEFT; on a virtual device such as veth or loopback the path goes on to
the receive side), goes idle, or grows past `max_events` (marked truncated). Ended paths wait `settle_ns` for stragglers from other CPUs
(an event whose timestamp is not after the end belongs to the ended path; a later one starts a new path,
so a freed address that is reused never merges two packets). At most `max_inflight` paths, holding at most
`max_held_events` events together, are kept: the least recently touched is evicted (emitted as truncated) and
counted.

Events lost in the kernel (ring buffer full) never merge packets and mark what they damage: a packet whose first
event is lost is not sent at all; a lost step flags the packet's next event (FLAG_GAP: the path ends truncated);
a lost end flags the first event of the next packet traced at the address (FLAG_PREV_LOST: the old path, still
open, ends truncated rather than timeout). An open path whose address the kernel reuses for a new packet was freed
where no probe sees it (UDP's and TCP's receive paths free read data so on some kernels): not by a drop, which
every kernel reports (skb:kfree_skb), so it ended delivered (`freed_unseen`).

A clone that ends before its packet is first seen (the copy a neighbour probe sends while the packet waits for
ARP/ND) waits up to the kernel's orphan window for the packet, which adopts it (FLAG_ADOPT) as a child. The
neighbour's next probe sends another copy (FLAG_FOLLOWS, naming the one before): the earlier copies wait with it,
and the packet adopts them all (also when it is first seen at its drop: a neighbour that never answered).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter

from .events import (
    FLAG_ADOPT,
    FLAG_CLONE,
    FLAG_FOLLOWS,
    FLAG_FRAGMENT,
    FLAG_GAP,
    FLAG_LEFT,
    FLAG_PREV_LOST,
    FLAG_SEGMENT,
    FLAG_TUPLE,
    LOST_SHIFT,
    Event,
    format_address,
)
from .names import Names
from .probes import ProbeRole, ProbeTable
from .protocols import ICMP_PROTOCOLS, PORT_PROTOCOLS, protocol_name

OUTCOME_DELIVERED = "delivered"  # freed normally (consume_skb): the stack or a socket took it
OUTCOME_DROPPED = "dropped"
OUTCOME_TIMEOUT = "timeout"
OUTCOME_TRUNCATED = "truncated"
OUTCOME_LEFT = "left"  # left the host through a hardware device
OUTCOMES = (OUTCOME_DELIVERED, OUTCOME_DROPPED, OUTCOME_LEFT, OUTCOME_TIMEOUT, OUTCOME_TRUNCATED)
RELATION_CLONE = "clone"  # an skb sharing the packet's data buffer (skb_clone)
RELATION_FRAGMENT = "fragment"  # an IP fragment of the packet's datagram (its own skb and buffer)
RELATION_SEGMENT = "segment"  # a GSO segment of a TCP packet (skb_segment: its own skb and buffer)
# How long a clone that ended before its packet was seen waits for it: the kernel's IPFT_ORPHAN_WINDOW_NS.
ORPHAN_WAIT_NS = 5_000_000_000
# A neighbour probe's copy on the function backends (the packet seen first): an skb of the packet, waiting for
# ARP/ND, last passed one of NEIGHBOUR_WAIT (skb_clone aside) before the copy and stood still since; the copy
# passes only a NEIGHBOUR_SOLICIT function (when probed) and its free (neigh_probe: skb_clone of the queued
# packet, ops->solicit, consume_skb). The neighbour probes every retrans_time (1 s by default) with a new copy.
NEIGHBOUR_WAIT = frozenset({"neigh_resolve_output", "__neigh_event_send"})
NEIGHBOUR_SOLICIT = frozenset({"arp_solicit", "ndisc_solicit"})
# How long a packet may wait in the neighbour's queue: its copies are the probes' within it, and a path last seen
# in NEIGHBOUR_WAIT stays open that long, past idle_timeout (the kernel's default wait, mcast_solicit 3 x
# retrans_time 1 s, is 3 s; then the packet is dropped, NEIGH_FAILED, or sent once the neighbour answered).
NEIGHBOUR_WAIT_NS = 10_000_000_000


@dataclass(frozen=True, slots=True)
class PathLimits:
    """Bounds of the assembler."""

    idle_timeout_ns: int = 2_000_000_000
    max_events: int = 256
    max_inflight: int = 65536
    settle_ns: int = 50_000_000
    # Events held in open paths, all together: beyond it the least recently touched paths are evicted (truncated).
    # max_inflight x max_events alone would allow 16M events (GBs) when paths never end; an event costs ~0.7 KB.
    max_held_events: int = 65536

    def __post_init__(self) -> None:
        for name in ("idle_timeout_ns", "max_events", "max_inflight", "max_held_events"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.settle_ns < 0:
            raise ValueError(f"settle_ns must not be negative, got {self.settle_ns}")


@dataclass(frozen=True, slots=True)
class Drop:
    """Where and why a packet was dropped."""

    reason: str  # drop-reason name without SKB_DROP_REASON_, e.g. NO_SOCKET
    function: str  # kernel function that freed the packet
    probe: str  # probe that saw the drop, e.g. skb:kfree_skb


@dataclass(slots=True)
class SkbPath:
    """One packet's journey: the time-ordered events of one skb from first match to its end."""

    skb: int
    flow_id: int
    events: list[Event] = field(default_factory=list)
    outcome: str = OUTCOME_TIMEOUT
    drop: Drop | None = None
    end_ts: int = 0  # timestamp of the ending event (free/egress), 0 while open or when it never ended
    gap: bool = False  # the kernel lost some of this skb's events (ring buffer full): the path is incomplete
    lost_events: int = 0  # how many (the kernel counts up to 255; a lost end counts one)
    # A path that went idle while the kernel kept tracking its skb (e.g. data waiting in a socket queue) continues
    # in a new path: that one inherits the headers of the first part and says so.
    header: Event | None = None
    continued: bool = False
    # A clone (an skb sharing this packet's data buffer) is a child path of the packet's path: it joins `children`
    # when it ends, and the packet's path waits for its open children before it is released.
    relation: str = ""  # RELATION_CLONE for a clone, else ""
    parent_skb: int = 0  # a clone's parent skb address
    children: list[SkbPath] = field(default_factory=list)
    parent_path: SkbPath | None = field(default=None, repr=False)
    open_children: int = 0
    released: bool = False
    freed_unseen: bool = False  # ended when the kernel reused its address: freed where no probe sees it, not dropped
    before_packet: bool = False  # a clone that ended before its packet was first seen (a neighbour probe's copy)
    neighbour_probe: bool = False  # a neighbour probe's copy of the packet (before_packet, or seen after it)
    # A clone waiting for its packet: the earlier copies of that packet, which wait with it (the neighbour probed
    # again) and go where it goes
    earlier_copies: tuple[SkbPath, ...] = field(default=(), repr=False)

    @property
    def starts_packet(self) -> bool:
        """True for a packet's own path: the kernel counted it matched once. Not a clone handed out alone (its
        packet's path was gone or never seen) nor a continuation of a path that timed out."""
        return not self.relation and not self.continued

    @property
    def skb_paths(self) -> list[SkbPath]:
        """This path and its clones' paths."""
        return [self, *self.children]

    @property
    def packet_outcome(self) -> str:
        """How the packet ended, over this path and its clones: delivered if any skb of it was (a raw socket's clone
        of a ping reply counts), else left if any left the host, dropped only if every one was dropped; otherwise how
        the first path that was not dropped ended (timeout, truncated). A datagram sent as fragments that was not
        delivered (its reassembled skb, a clone, was not) and did not leave is dropped when any of its fragments was:
        it can no longer be reassembled. (Once reassembled, old kernels free the fragments with kfree_skb.) A TCP
        packet cut into GSO segments ends as its segments (its own skb is freed once cut): dropped when any of them
        was, its data did not all go through. A neighbour probe's copy (neighbour_probe) is no part of how the
        packet ended: the kernel consumes it once the probe is sent, whatever becomes of the packet."""
        children = [(child.relation, child.packet_outcome) for child in self.children if not child.neighbour_probe]
        if not children:
            return self.outcome
        if any(relation == RELATION_SEGMENT for relation, _ in children):
            if (RELATION_SEGMENT, OUTCOME_DROPPED) in children:
                return OUTCOME_DROPPED
            outcomes = [outcome for _, outcome in children]
        else:
            outcomes = [self.outcome, *(outcome for _, outcome in children)]
        for outcome in (OUTCOME_DELIVERED, OUTCOME_LEFT):
            if outcome in outcomes:
                return outcome
        fragments = [child for child in self.children if child.relation == RELATION_FRAGMENT]
        if fragments and OUTCOME_DROPPED in (self.outcome, *(child.outcome for child in fragments)):
            return OUTCOME_DROPPED
        return next((outcome for outcome in outcomes if outcome != OUTCOME_DROPPED), OUTCOME_DROPPED)

    @property
    def tuple_event(self) -> Event | None:
        """The first event whose headers were parsed (carries addresses, ports, protocol)."""
        for event in self.events:
            if event.has_tuple:
                return event
        return self.header

    def describe(self) -> FlowTuple:
        """Addresses, ports and protocol of this path's packet (as first matched)."""
        event = self.tuple_event
        if event is None:
            return FlowTuple("", 0, "", 0, "", 0, 0)
        return FlowTuple.of(event)


@dataclass(frozen=True, slots=True)
class FlowTuple:
    """The text form of a path's packet headers."""

    protocol: str
    ipversion: int
    saddr: str
    sport: int
    daddr: str
    dport: int
    l4proto: int
    icmp: tuple[int, int] | None = None  # ICMP / ICMPv6 (type, code): the kernel sends them in the port fields

    @classmethod
    def of(cls, event: Event) -> FlowTuple:
        """The headers an event carries (a packet's first event, or one where they were rewritten)."""
        ports = event.l4proto in PORT_PROTOCOLS
        return cls(
            protocol_name(event.l4proto),
            event.ipversion,
            format_address(event.ipversion, event.saddr),
            event.sport if ports else 0,
            format_address(event.ipversion, event.daddr),
            event.dport if ports else 0,
            event.l4proto,
            (event.sport, event.dport) if event.l4proto in ICMP_PROTOCOLS else None,
        )

    @property
    def text(self) -> str:
        """'UDP 10.0.0.1:5000 -> 10.0.1.2:53'."""
        return f"{self.protocol or '?'} {self.source or '?'} -> {self.destination or '?'}"

    def endpoint(self, address: str, port: int) -> str:
        if not port:
            return address
        return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"

    @property
    def source(self) -> str:
        return self.endpoint(self.saddr, self.sport)

    @property
    def destination(self) -> str:
        return self.endpoint(self.daddr, self.dport)


class PathAssembler:
    """Events in, finished SkbPaths out. Not thread-safe: feed it from one thread."""

    def __init__(
        self,
        probes: ProbeTable,
        limits: PathLimits | None = None,
        names: Names | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.probes = probes
        self.limits = limits or PathLimits()
        self.names = names if names is not None else Names(probes=probes)
        self.clock = clock
        self._open: OrderedDict[int, SkbPath] = OrderedDict()  # skb -> path, least recently touched first
        self._settling: dict[int, tuple[SkbPath, int]] = {}  # skb -> (ended path, release deadline)
        # (skb, first event's time) -> (ended clone of a packet not seen yet, deadline): apart from `_settling`,
        # since its address is often reused by another packet while it waits, and by the time it was first seen,
        # since the next copy (of its packet, or of another packet waiting for the same neighbour) is often given
        # the skb it freed
        self._orphans: dict[tuple[int, int], tuple[SkbPath, int]] = {}
        # id(path) -> ended path whose address was reused while it waited for its open children (clones, fragments)
        self._parents: dict[int, SkbPath] = {}
        self._timed_out: OrderedDict[int, Event] = OrderedDict()  # skb -> headers of a path that went idle
        self.evicted = 0
        self.unknown_probe_events = 0
        self._held = 0  # events in open paths
        # by probe id; a release function (inside a free) is a step here: the kernel never starts a packet there
        self._roles = tuple(ProbeRole.STEP if probe.role in (ProbeRole.RELEASE, ProbeRole.PREPARE) else probe.role
                            for probe in probes)
        self._solicit_probed = any(probe.name in NEIGHBOUR_SOLICIT for probe in probes)
        self._neighbour_waits = frozenset(index for index, probe in enumerate(probes) if probe.name in NEIGHBOUR_WAIT)
        # the queued packet's own event when the neighbour probes (neigh_probe clones it): not the end of its wait
        self._clone_probes = frozenset(index for index, probe in enumerate(probes) if probe.name == "skb_clone")

    @property
    def inflight(self) -> int:
        """Paths currently open (not yet ended)."""
        return len(self._open)

    @property
    def held_events(self) -> int:
        """Events held in open paths (at most `limits.max_held_events`, or `max_events` if larger)."""
        return self._held

    def add(self, event: Event) -> list[SkbPath]:
        """Take one event; returns the paths this event forced out (evicted or truncated)."""
        return self.add_many((event,))

    def take(self, events: Iterable[Event], behind: bool = False) -> list[SkbPath]:
        """A poll's batch of events, then the paths complete by now (`expire`). `behind`: the batch stopped at the
        reader's limit, so older events may still wait unread; paths then go idle, and ended ones settle, by the
        newest event read rather than by the clock (otherwise a path whose next events wait unread would time out,
        its packet split in two)."""
        if not behind:
            done = self.add_many(events)
            done.extend(self.expire())
            return done
        batch = list(events)
        done = self.add_many(batch)
        if batch:
            done.extend(self.expire(min(self.clock(), max(event.timestamp_ns for event in batch))))
        return done

    def add_many(self, events: Iterable[Event]) -> list[SkbPath]:
        """Take a batch of events; returns the paths they forced out.

        The per-event work is one loop with everything it touches in locals (this runs for every event the kernel
        sends); ending a path, starting one and evicting are out of line."""
        done: list[SkbPath] = []
        roles = self._roles
        nprobes = len(roles)
        open_paths = self._open
        get_open = open_paths.get
        touch = open_paths.move_to_end
        settling = self._settling
        get_settling = settling.get
        max_events = self.limits.max_events
        max_held = max(self.limits.max_held_events, max_events)
        step, egress = ProbeRole.STEP, ProbeRole.EGRESS
        for event in events:
            probe_id = event.probe_id
            if not 0 <= probe_id < nprobes:
                self.unknown_probe_events += 1
                continue
            skb = event.skb
            if settling:
                ended = get_settling(skb)
                if ended is not None and event.timestamp_ns <= ended[0].end_ts:
                    ended[0].events.append(event)  # a straggler from another CPU
                    continue
            path = get_open(skb)
            flags = event.flags
            if path is None:
                path = self._open_path(skb, event.flow_id, done)
                if not self._relate(path, event) and not flags & FLAG_TUPLE and self._timed_out:
                    self._continue(path)
            elif flags & FLAG_TUPLE and (path.events[0].flags & FLAG_TUPLE or path.tuple_event is not None
                                         or event.timestamp_ns > path.events[0].timestamp_ns):
                # The kernel saw a new packet at this address (a TUPLE event is a packet's first, so an open path
                # holding a tuple or an earlier event is another packet, freed where no probe saw it or whose
                # first event was lost).
                del open_paths[skb]
                self._held -= len(path.events)
                if flags & FLAG_PREV_LOST:  # its end was lost
                    path.gap = True
                    path.lost_events += 1
                else:
                    path.freed_unseen = True
                done.append(self._finish(path, OUTCOME_TRUNCATED if flags & FLAG_PREV_LOST else OUTCOME_DELIVERED))
                path = self._open_path(skb, event.flow_id, done)
                self._relate(path, event)
            else:
                touch(skb)
            path_events = path.events
            path_events.append(event)
            self._held += 1
            if flags & FLAG_GAP:
                path.gap = True
                lost = flags >> LOST_SHIFT
                path.lost_events = max(path.lost_events, lost)
            role = roles[probe_id]
            if role is not step and (role is not egress or flags & FLAG_LEFT):
                self._end(path, event, role, done)
            elif len(path_events) >= max_events:
                del open_paths[skb]
                self._held -= len(path_events)
                done.append(self._finish(path, OUTCOME_TRUNCATED))
            if self._held > max_held:
                self._shed(max_held, done)
        return self._release(done)

    def _relate(self, path: SkbPath, event: Event) -> bool:
        """A new path whose first event names a related skb (clone, fragment, adopted clone) is linked to it; True
        when the event named one."""
        flags = event.flags
        if flags & FLAG_FOLLOWS:
            self._follow(path, event.parent, event.parent_ts)
        elif flags & FLAG_CLONE:
            self._adopt(path, event.parent, event.parent_ts)
        elif flags & FLAG_FRAGMENT:
            self._adopt(path, event.parent, event.parent_ts, RELATION_FRAGMENT)
        elif flags & FLAG_SEGMENT:
            self._adopt(path, event.parent, event.parent_ts, RELATION_SEGMENT)
        elif flags & FLAG_ADOPT:
            self._adopt_orphan(path, event.parent, event.parent_ts)
        else:
            return False
        return True

    def _adopt(self, child: SkbPath, parent_skb: int, parent_ts: int, relation: str = RELATION_CLONE) -> None:
        """A clone's (or fragment's) path: a child of its parent's path while that is still held (open, settling, or
        waiting for its children). A clone of a packet not seen yet (parent 0) waits for it (_adopt_orphan)."""
        child.relation, child.parent_skb = relation, parent_skb
        if not parent_skb:
            return
        parent = self._held_path(parent_skb, parent_ts)
        while parent is not None and parent.parent_path is not None:  # a clone of a clone: the packet's own path
            parent = parent.parent_path
        if parent is not None and not parent.released:
            child.parent_path = parent
            parent.open_children += 1

    def _held_path(self, skb: int, first_ts: int) -> SkbPath | None:
        """The held path of the skb at this address whose first event was at `first_ts` (0: unknown, the newest
        one): an address is often reused by a later packet while an earlier one's clones and fragments are still to
        come (a reassembled datagram freed when the next one arrives)."""
        settled = self._settling.get(skb)
        newest = (self._open.get(skb), settled[0] if settled is not None else None)
        if not first_ts:
            return newest[0] or newest[1]
        waiting = (path for path in self._parents.values() if path.skb == skb)
        return next((path for path in chain(newest, waiting)
                     if path is not None and path.events[0].timestamp_ns == first_ts), None)

    def _waiting_orphan(self, clone_skb: int, clone_ts: int) -> SkbPath | None:
        """The clone at `clone_skb` whose first event was at `clone_ts` (the kernel names it so), if it still waits
        for its packet; no longer waiting once returned."""
        waiting = self._orphans.pop((clone_skb, clone_ts), None)
        return waiting[0] if waiting is not None else None

    def _follow(self, clone: SkbPath, earlier_skb: int, earlier_ts: int) -> None:
        """Another clone of a packet not seen yet (the neighbour probed again): the earlier one, still waiting,
        waits with it (and its own earlier ones)."""
        clone.relation = RELATION_CLONE
        earlier = self._waiting_orphan(earlier_skb, earlier_ts)
        if earlier is not None:
            clone.earlier_copies = (*earlier.earlier_copies, earlier)
            earlier.earlier_copies = ()

    def _adopt_orphan(self, packet: SkbPath, clone_skb: int, clone_ts: int) -> None:
        """A packet first seen after its clone ended (a neighbour probe's copy): that clone, still waiting for it,
        becomes its child, with the copies that waited with it."""
        waiting = self._waiting_orphan(clone_skb, clone_ts)
        if waiting is None:
            return
        for clone in self._with_earlier(waiting):
            clone.parent_skb, clone.parent_path, clone.before_packet = packet.skb, packet, True
            clone.neighbour_probe = True
            packet.children.append(clone)  # it ended already: it joins its packet at once
            clone.released = True

    @staticmethod
    def _with_earlier(clone: SkbPath) -> list[SkbPath]:
        """A waiting clone and the earlier copies that waited with it, oldest first (no longer attached to it)."""
        copies = [*clone.earlier_copies, clone]
        clone.earlier_copies = ()
        return copies

    def _release(self, done: list[SkbPath]) -> list[SkbPath]:
        """The finished paths to hand out: a clone whose parent is still held joins its children instead (and
        one whose parent was already handed out goes on its own, naming its parent)."""
        if not done:
            return done
        out: list[SkbPath] = []
        for path in done:
            if path.earlier_copies:  # a clone that never met its packet: the copies that waited with it go too
                out.extend(self._with_earlier(path)[:-1])
            parent = path.parent_path
            if parent is not None and not parent.released:
                parent.children.append(path)
                parent.open_children -= 1
                path.released = True
                continue
            out.append(path)
        for path in out:
            path.released = True
            for child in path.children:
                if child.relation == RELATION_CLONE and not child.neighbour_probe and self._is_neighbour_probe(
                        child, path):
                    child.neighbour_probe = True
        return out

    def _is_neighbour_probe(self, clone: SkbPath, packet: SkbPath) -> bool:
        """A clone the neighbour layer made of its packet, waiting for ARP/ND, to send the probe with (function
        backends, where the packet is seen first): consumed after passing only frees and the solicitation (which
        it must pass when that is probed), within NEIGHBOUR_WAIT_NS after an skb of the packet (the packet, or for
        TCP its transmitted clone) was last seen in the neighbour layer, that skb standing still since; or (the
        tracepoint backend) of a packet first seen at its drop in the neighbour layer, having waited where no probe
        sees it (the neighbour's queue, dropped when the neighbour failed while the last probe's copy was still in
        flight)."""
        events = clone.events
        if clone.outcome != OUTCOME_DELIVERED or not events:
            return False
        name, probes = self.names.probe, self.probes
        solicited = False
        for event in events:
            if name(event.probe_id) in NEIGHBOUR_SOLICIT:
                solicited = True
            elif probes[event.probe_id].role not in (ProbeRole.CONSUME, ProbeRole.RELEASE):
                return False
        if not solicited and self._solicit_probed:
            return False
        first_event = min(packet.events, key=attrgetter("timestamp_ns"))
        if probes[first_event.probe_id].role is ProbeRole.DROP:
            drop = packet.drop
            return drop is not None and drop.function.lstrip("_").startswith("neigh_")
        first = min(event.timestamp_ns for event in events)
        last = max(event.timestamp_ns for event in events)
        for holder in packet.skb_paths:
            if holder is clone or any(first <= event.timestamp_ns <= last for event in holder.events):
                continue
            waited = self._neighbour_wait(holder.events, first)
            if waited is not None and first - waited.timestamp_ns < NEIGHBOUR_WAIT_NS:
                return True
        return False

    def _neighbour_wait(self, events: list[Event], before: int | None = None) -> Event | None:
        """The latest of `events` (before `before`), skb_clone aside (the neighbour copying a queued packet), when
        it is in NEIGHBOUR_WAIT: the packet has waited in the neighbour's queue since."""
        clones = self._clone_probes
        seen = [event for event in events
                if event.probe_id not in clones and (before is None or event.timestamp_ns < before)]
        if not seen:
            return None
        latest = max(seen, key=attrgetter("timestamp_ns"))
        return latest if latest.probe_id in self._neighbour_waits else None

    def _shed(self, max_held: int, done: list[SkbPath]) -> None:
        """Evict the least recently touched open paths (as truncated) until at most `max_held` events are held."""
        while self._held > max_held and self._open:
            _, oldest = self._open.popitem(last=False)
            self._held -= len(oldest.events)
            self.evicted += 1
            done.append(self._finish(oldest, OUTCOME_TRUNCATED))

    def _open_path(self, skb: int, flow_id: int, done: list[SkbPath]) -> SkbPath:
        """A new open path for `skb`, evicting the least recently touched one when at the limit."""
        if len(self._open) >= self.limits.max_inflight:
            _, oldest = self._open.popitem(last=False)
            self._held -= len(oldest.events)
            self.evicted += 1
            done.append(self._finish(oldest, OUTCOME_TRUNCATED))
        path = self._open[skb] = SkbPath(skb, flow_id)
        return path

    def _continue(self, path: SkbPath) -> None:
        """A path opened by an event without headers continues one that timed out at the same address."""
        header = self._timed_out.pop(path.skb, None)
        if header is not None and header.flow_id == path.flow_id:
            path.header = header
            path.continued = True

    def _end(self, path: SkbPath, event: Event, role: ProbeRole, done: list[SkbPath]) -> None:
        """The skb was freed or left: the path ends and settles (stragglers may still join it)."""
        skb = path.skb
        del self._open[skb]
        self._held -= len(path.events)
        path.end_ts = event.timestamp_ns
        if role is ProbeRole.DROP:
            path.outcome = OUTCOME_DROPPED
            path.drop = self._drop(event, self.probes[event.probe_id].name)
        elif role is ProbeRole.EGRESS:
            path.outcome = OUTCOME_LEFT
        else:
            path.outcome = OUTCOME_DELIVERED
        if path.gap:
            path.outcome = OUTCOME_TRUNCATED
        if path.relation and not path.parent_skb:  # a clone of a packet not seen yet: it waits for the packet
            if len(self._orphans) >= self.limits.max_inflight:
                done.append(self._orphans.pop(next(iter(self._orphans)))[0])
            self._orphans[(skb, path.events[0].timestamp_ns)] = (path, self.clock() + ORPHAN_WAIT_NS)
            return
        previous = self._settling.pop(skb, None)
        if previous is not None:
            if previous[0].open_children:  # it still waits for its children, at an address now reused
                self._parents[id(previous[0])] = previous[0]
            else:
                done.append(self._sorted(previous[0]))
        self._settling[skb] = (path, self.clock() + self.limits.settle_ns)

    def _drop(self, event: Event, probe_name: str) -> Drop:
        return Drop(self.names.reason(event.reason), self.names.function(event.location), probe_name)

    @staticmethod
    def _sorted(path: SkbPath) -> SkbPath:
        path.events.sort(key=lambda event: event.timestamp_ns)
        return path

    def _finish(self, path: SkbPath, outcome: str) -> SkbPath:
        path.outcome = OUTCOME_TRUNCATED if path.gap else outcome
        return self._sorted(path)

    def expire(self, now_ns: int | None = None) -> list[SkbPath]:
        """Paths that are complete by now: ended paths past their settle time (and whose clones have ended), open
        paths idle too long."""
        now = self.clock() if now_ns is None else now_ns
        done: list[SkbPath] = []
        idle_before = now - self.limits.idle_timeout_ns
        waiting_since, waits = now - NEIGHBOUR_WAIT_NS, self._neighbour_waits
        idle: list[int] = []
        for skb, path in self._open.items():  # least recently touched first
            last = path.events[-1]
            if last.timestamp_ns > idle_before:
                break
            waited = self._neighbour_wait(path.events) if waits else None
            if waited is not None and waited.timestamp_ns > waiting_since:
                continue  # in the neighbour's queue: it waits where it is (still the first evicted) until answered
            idle.append(skb)
        for skb in idle:
            path = self._open.pop(skb)
            self._held -= len(path.events)
            finished = self._finish(path, OUTCOME_TIMEOUT)
            if finished.open_children:  # its clones or fragments still to come (or to settle): it waits for them
                self._parents[id(finished)] = finished
            else:
                done.append(finished)
            header = path.tuple_event
            if header is not None:
                self._timed_out[skb] = header
                if len(self._timed_out) > self.limits.max_inflight:
                    self._timed_out.popitem(last=False)
        released = self._release(done)
        settling = self._settling
        if settling:
            due = [skb for skb, (_, deadline) in settling.items() if deadline <= now]
            clones = [skb for skb in due if settling[skb][0].parent_path is not None]  # they join their packets first
            released.extend(self._release([self._sorted(settling.pop(skb)[0]) for skb in clones]))
            ready = [skb for skb in due if skb in settling and not settling[skb][0].open_children]
            released.extend(self._release([self._sorted(settling.pop(skb)[0]) for skb in ready]))
        if self._parents:
            finished = [key for key, parent in self._parents.items() if not parent.open_children]
            released.extend(self._release([self._sorted(self._parents.pop(key)) for key in finished]))
        if self._orphans:  # clones whose packet never came: alone
            alone = [key for key, (_, deadline) in self._orphans.items() if deadline <= now]
            released.extend(self._release([self._orphans.pop(key)[0] for key in alone]))
        return released

    def flush(self) -> list[SkbPath]:
        """Every path still held, ended or not (on shutdown)."""
        done = [self._finish(path, OUTCOME_TIMEOUT) for path in self._open.values()]  # clones first: they join
        done.extend(self._sorted(path) for path, _ in self._settling.values())
        done.extend(path for path, _ in self._orphans.values())
        done.extend(self._sorted(path) for path in self._parents.values())
        self._settling.clear()
        self._orphans.clear()
        self._parents.clear()
        self._open.clear()
        self._held = 0
        return self._release(done)
