from __future__ import annotations

import pytest

from ipftrace_exporter.events import (
    FLAG_ADOPT,
    FLAG_CLONE,
    FLAG_FOLLOWS,
    FLAG_FRAGMENT,
    FLAG_GAP,
    FLAG_LEFT,
    FLAG_PREV_LOST,
    FLAG_SEGMENT,
    LOST_SHIFT,
)
from ipftrace_exporter.names import Names
from ipftrace_exporter.paths import NEIGHBOUR_WAIT_NS, ORPHAN_WAIT_NS, PathAssembler, PathLimits
from ipftrace_exporter.probes import Probe, ProbeKind, ProbeRole, ProbeTable

from .helpers import CONSUME, DROP, EGRESS, IP_RCV, PROBES, RECEIVE, RELEASE, event

SKB_A, SKB_B = 0xFFFF888000001000, 0xFFFF888000002000
SKB_C, SKB_D = 0xFFFF888000003000, 0xFFFF888000004000


class Clock:
    def __init__(self, now: int = 0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


NEIGH_INVALIDATE = 0xFFFF0002
FUNCTIONS = {0xFFFF0001: "__udp4_lib_rcv", NEIGH_INVALIDATE: "neigh_invalidate"}
NAMES = Names(["default"], PROBES, {3: "NO_SOCKET"}, lambda address: FUNCTIONS.get(address, hex(address)))


def assembler(clock: Clock, **limits: int) -> PathAssembler:
    return PathAssembler(PROBES, PathLimits(**{"settle_ns": 10, "idle_timeout_ns": 1000, **limits}), NAMES, clock)


def test_events_out_of_order_across_cpus_are_sorted_and_stragglers_join_the_ended_path() -> None:
    clock = Clock()
    paths = assembler(clock)
    paths.add_many([event(100, RECEIVE, first=True, cpu=0), event(300, CONSUME, cpu=1), event(200, IP_RCV, cpu=0)])
    clock.now = 5
    assert paths.expire() == []  # still settling: a straggler may come
    paths.add(event(250, IP_RCV, cpu=1))  # older than the end: belongs to the ended path
    clock.now = 20
    (path,) = paths.expire()
    assert [e.timestamp_ns for e in path.events] == [100, 200, 250, 300]
    assert path.outcome == "delivered"
    assert path.describe().saddr == "10.0.0.1"


def test_a_freed_address_reused_starts_a_new_path() -> None:
    clock = Clock()
    paths = assembler(clock)
    done = paths.add_many([event(1, RECEIVE, first=True), event(2, CONSUME),
                           event(3, RECEIVE, first=True, dst="10.0.0.9"), event(4, CONSUME)])
    clock.now = 100
    first, second = sorted(done + paths.expire(), key=lambda p: p.events[0].timestamp_ns)
    assert [e.timestamp_ns for e in first.events] == [1, 2]
    assert [e.timestamp_ns for e in second.events] == [3, 4]
    assert second.describe().daddr == "10.0.0.9"


def test_a_function_inside_a_free_is_a_step_of_the_path_it_does_not_end_it() -> None:
    clock = Clock()
    paths = assembler(clock)
    done = paths.add_many([event(1, RECEIVE, first=True), event(2, RELEASE), event(3, IP_RCV), event(4, CONSUME)])
    clock.now = 100
    (path,) = done + paths.expire()
    assert [e.probe_id for e in path.events] == [RECEIVE, RELEASE, IP_RCV, CONSUME]
    assert path.outcome == "delivered"


def test_a_new_packet_at_an_open_address_ends_the_old_path_delivered_as_freed_unseen() -> None:
    """The kernel reused the address, so the old skb was freed; not by a drop (skb:kfree_skb would have said)."""
    clock = Clock()
    paths = assembler(clock)
    paths.add(event(1, RECEIVE, first=True))
    done = paths.add(event(2, RECEIVE, first=True, dst="10.0.0.7"))
    assert [(p.outcome, p.freed_unseen, p.starts_packet) for p in done] == [("delivered", True, True)]
    assert paths.inflight == 1


def test_a_new_packet_at_an_address_whose_end_was_lost_ends_the_old_path_truncated() -> None:
    paths = assembler(Clock())
    paths.add(event(1, RECEIVE, first=True))
    (old,) = paths.add(event(2, RECEIVE, first=True, dst="10.0.0.7", flags=FLAG_PREV_LOST))
    assert (old.outcome, old.freed_unseen, old.lost_events) == ("truncated", False, 1)


def test_drop_records_reason_and_function_names() -> None:
    clock = Clock()
    paths = assembler(clock)
    paths.add_many([event(1, RECEIVE, first=True, proto=17, dport=9), event(2, DROP, reason=3, location=0xFFFF0001)])
    clock.now = 100
    (path,) = paths.expire()
    assert path.outcome == "dropped"
    assert (path.drop.reason, path.drop.function, path.drop.probe) == ("NO_SOCKET", "__udp4_lib_rcv", "skb:kfree_skb")


def test_egress_on_hardware_ends_the_path_as_left() -> None:
    clock = Clock()
    paths = assembler(clock)
    paths.add_many([event(1, IP_RCV, first=True), event(2, EGRESS, flags=FLAG_LEFT)])
    clock.now = 100
    assert [p.outcome for p in paths.expire()] == ["left"]


def test_egress_on_a_virtual_device_goes_on_to_the_receive_side() -> None:
    clock = Clock()
    paths = assembler(clock)
    paths.add_many([event(1, IP_RCV, first=True), event(2, EGRESS), event(3, RECEIVE), event(4, CONSUME)])
    clock.now = 100
    (path,) = paths.expire()
    assert path.outcome == "delivered"
    assert [e.probe_id for e in path.events] == [IP_RCV, EGRESS, RECEIVE, CONSUME]


def test_idle_paths_time_out() -> None:
    clock = Clock()
    paths = assembler(clock)
    paths.add(event(10, RECEIVE, first=True))
    clock.now = 500
    assert paths.expire() == []
    clock.now = 1011
    (path,) = paths.expire()
    assert path.outcome == "timeout"
    assert paths.inflight == 0


def test_max_events_truncates() -> None:
    paths = assembler(Clock(), max_events=3)
    done = paths.add_many([event(i, RECEIVE, first=i == 0) for i in range(4)])
    assert [(p.outcome, len(p.events)) for p in done] == [("truncated", 3)]
    assert paths.inflight == 1  # the 4th event opened a new path


def test_inflight_is_bounded_and_the_oldest_is_evicted() -> None:
    paths = assembler(Clock(), max_inflight=2)
    done = paths.add_many([event(1, RECEIVE, skb=1, first=True), event(2, RECEIVE, skb=2, first=True),
                           event(3, RECEIVE, skb=1), event(4, RECEIVE, skb=3, first=True)])
    assert [(p.skb, p.outcome) for p in done] == [(2, "truncated")]  # skb 1 was touched more recently
    assert paths.evicted == 1
    assert paths.inflight == 2


def test_a_lost_event_marks_the_path_truncated() -> None:
    clock = Clock()
    paths = assembler(clock)
    paths.add_many([event(1, RECEIVE, first=True), event(3, CONSUME, flags=FLAG_GAP)])
    clock.now = 100
    assert [p.outcome for p in paths.expire()] == ["truncated"]


def test_unknown_probe_ids_are_counted_not_fatal() -> None:
    paths = assembler(Clock())
    paths.add(event(1, 99, first=True))
    assert paths.unknown_probe_events == 1
    assert paths.inflight == 0


def test_flush_returns_everything() -> None:
    paths = assembler(Clock())
    paths.add_many([event(1, RECEIVE, skb=SKB_A, first=True), event(2, RECEIVE, skb=SKB_B, first=True),
                    event(3, CONSUME, skb=SKB_B)])
    assert sorted(p.outcome for p in paths.flush()) == ["delivered", "timeout"]
    assert paths.flush() == []


@pytest.mark.parametrize("field", ["idle_timeout_ns", "max_events", "max_inflight"])
def test_limits_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        PathLimits(**{field: 0})


def test_a_path_that_went_idle_continues_with_its_headers() -> None:
    clock = Clock()
    paths = assembler(clock)
    paths.add(event(10, RECEIVE, first=True, proto=6, sport=40000, dport=8080))
    clock.now = 2000
    (first,) = paths.expire()
    assert first.outcome == "timeout"
    paths.add_many([event(2100, IP_RCV), event(2200, CONSUME)])  # the kernel still tracked the skb
    clock.now = 3000
    (rest,) = paths.expire()
    assert rest.continued and rest.outcome == "delivered"
    assert rest.describe().dport == 8080
    assert not first.continued


def test_a_reader_that_fell_behind_times_out_no_path_whose_next_events_wait_unread() -> None:
    """The collector stalled (CPU starved) and its poll stopped at the batch limit: by the clock the packets read
    so far are idle, but their frees, soon after, are among the records still waiting. Each is one path,
    delivered."""
    clock = Clock()
    paths = assembler(clock)
    clock.now = 5000  # the batch read now holds events up to 100; the rest (from 300 on) wait in the ring
    assert paths.take([event(10, RECEIVE, first=True), event(100, IP_RCV, skb=SKB_B, first=True)], behind=True) == []
    clock.now = 5001
    done = paths.take([event(300, CONSUME), event(400, CONSUME, skb=SKB_B)], behind=False)
    clock.now = 6000
    done += paths.take([])
    assert sorted((path.skb, path.outcome, path.continued) for path in done) == [
        (SKB_A, "delivered", False), (SKB_B, "delivered", False)]


def test_a_batch_that_emptied_the_ring_expires_by_the_clock() -> None:
    clock = Clock()
    paths = assembler(clock)
    clock.now = 5000
    (path,) = paths.take([event(10, RECEIVE, first=True)], behind=False)
    assert path.outcome == "timeout"


def test_a_reader_behind_still_times_out_what_is_idle_by_the_newest_event_read() -> None:
    clock = Clock()
    paths = assembler(clock)
    clock.now = 9000
    (path,) = paths.take([event(10, RECEIVE, first=True), event(3000, RECEIVE, skb=SKB_B, first=True)], behind=True)
    assert (path.skb, path.outcome) == (SKB_A, "timeout")


# ---- clones: an skb sharing a traced packet's data buffer is a child path of that packet ----

def clone_event(ts: int, probe: int, parent: int = SKB_A, skb: int = SKB_B):  # type: ignore[no-untyped-def]
    """The first event of a clone, as the kernel sends it (headers, FLAG_CLONE, the parent's address)."""
    return event(ts, probe, skb=skb, first=True, flags=FLAG_CLONE)._replace(parent=parent)


def test_a_clone_of_a_dropped_reply_joins_it_and_the_packet_is_delivered() -> None:
    clock = Clock()
    paths = assembler(clock)
    done = paths.add_many([event(1, RECEIVE, first=True), event(2, DROP, reason=3),  # the original: no ping socket
                           clone_event(3, RECEIVE), event(4, CONSUME, skb=SKB_B)])  # the raw socket's clone, read
    clock.now = 100
    (packet,) = done + paths.expire()
    assert packet.skb == SKB_A and packet.outcome == "dropped" and packet.packet_outcome == "delivered"
    (clone,) = packet.children
    assert (clone.skb, clone.relation, clone.outcome) == (SKB_B, "clone", "delivered")


# the function backends see the first packet to a new neighbour before the neighbour probe copies it
NEIGHBOUR_PROBES = ProbeTable([
    Probe(0, "ip_output", ProbeKind.KPROBE),
    Probe(1, "neigh_resolve_output", ProbeKind.KPROBE),
    Probe(2, "skb:consume_skb", ProbeKind.TRACEPOINT, role=ProbeRole.CONSUME),
    Probe(3, "skb:kfree_skb", ProbeKind.TRACEPOINT, role=ProbeRole.DROP),
    Probe(4, "arp_solicit", ProbeKind.KPROBE),
    Probe(5, "__dev_queue_xmit", ProbeKind.KPROBE),
])
OUTPUT, NEIGH_OUTPUT, N_CONSUME, N_DROP, SOLICIT, QUEUE_XMIT = range(6)
# a curated manifest: no solicitation function probed (the copy is seen only at its free)
MANIFEST_PROBES = ProbeTable([probe if probe.id != SOLICIT else Probe(SOLICIT, "ip_finish_output2", ProbeKind.KPROBE)
                              for probe in NEIGHBOUR_PROBES])


def first_packet_to_a_neighbour(copy: list, after: list, probes: ProbeTable = NEIGHBOUR_PROBES):  # type: ignore[no-untyped-def]
    """The packet waits at neigh_resolve_output while the events `copy` (of SKB_B, the clone) happen; `after`: the
    packet's events once the neighbour answered. Returns the packet's path."""
    clock = Clock()
    names = Names(["default"], probes, {3: "NO_SOCKET"}, hex)
    paths = PathAssembler(probes, PathLimits(settle_ns=10, idle_timeout_ns=1000), names, clock)
    done = paths.add_many([event(10, OUTPUT, first=True), event(20, NEIGH_OUTPUT), *copy, *after])
    clock.now = 500
    (packet,) = done + paths.expire()
    return packet


def test_a_dropped_first_packet_to_a_neighbour_is_dropped_though_the_probe_copy_was_consumed() -> None:
    copy = [clone_event(30, N_CONSUME)]
    packet = first_packet_to_a_neighbour(copy, [event(100, NEIGH_OUTPUT), event(110, N_DROP, reason=3)],
                                         MANIFEST_PROBES)
    (clone,) = packet.children
    assert clone.neighbour_probe and not clone.before_packet and clone.outcome == "delivered"
    assert packet.packet_outcome == "dropped"


def test_the_probe_copy_through_the_solicitation_is_a_neighbour_probe_copy() -> None:
    copy = [clone_event(30, SOLICIT), event(40, N_CONSUME, skb=SKB_B)]
    packet = first_packet_to_a_neighbour(copy, [event(100, NEIGH_OUTPUT), event(105, QUEUE_XMIT),
                                                 event(110, N_CONSUME)])
    assert [child.neighbour_probe for child in packet.children] == [True] and packet.packet_outcome == "delivered"


@pytest.mark.parametrize("copy", [
    [clone_event(30, N_CONSUME)._replace(timestamp_ns=15)],  # before the packet reached the neighbour layer
    [clone_event(30, QUEUE_XMIT), event(40, N_CONSUME, skb=SKB_B)],  # the copy went somewhere
    [clone_event(30, SOLICIT), event(35, QUEUE_XMIT), event(40, N_CONSUME, skb=SKB_B)],  # the packet did not wait
    [clone_event(30, N_CONSUME)],  # the solicitation is probed and the clone did not pass it (a tap's clone)
    [clone_event(30, SOLICIT)._replace(timestamp_ns=20 + 200_000_000), event(200_000_040, N_CONSUME, skb=SKB_B)],
], ids=["before-the-wait", "copy-transmitted", "packet-moved", "not-solicited", "after-the-packet-was-dropped"])
def test_a_clone_that_is_no_neighbour_probe_copy_decides_the_outcome_with_its_packet(copy: list) -> None:
    packet = first_packet_to_a_neighbour(copy, [event(100, NEIGH_OUTPUT), event(110, N_DROP, reason=3)])
    (clone,) = packet.children
    assert not clone.neighbour_probe and packet.packet_outcome == "delivered"


def test_an_ended_packet_waits_for_its_open_clone() -> None:
    clock = Clock()
    paths = assembler(clock)
    paths.add_many([event(1, RECEIVE, first=True), clone_event(2, RECEIVE), event(3, DROP, reason=3)])
    clock.now = 50  # past the settle time, but the clone is still open
    assert paths.expire() == []
    paths.add(event(60, CONSUME, skb=SKB_B))
    clock.now = 100
    (packet,) = paths.expire()
    assert [child.skb for child in packet.children] == [SKB_B] and packet.packet_outcome == "delivered"


def test_a_clone_that_never_ends_times_out_and_then_releases_its_packet() -> None:
    clock = Clock()
    paths = assembler(clock)
    paths.add_many([event(1, RECEIVE, first=True), clone_event(2, RECEIVE), event(3, DROP, reason=3)])
    clock.now = 2000  # the clone went idle past the timeout
    (packet,) = paths.expire()
    assert packet.children[0].outcome == "timeout" and packet.packet_outcome == "timeout"


def test_a_clone_whose_packet_was_already_released_stands_alone_and_names_it() -> None:
    clock = Clock()
    paths = assembler(clock)
    paths.add_many([event(1, RECEIVE, first=True), event(2, CONSUME)])
    clock.now = 100
    (packet,) = paths.expire()
    done = paths.add_many([clone_event(150, RECEIVE), event(151, CONSUME, skb=SKB_B)])
    clock.now = 200
    (alone,) = done + paths.expire()
    assert (alone.relation, alone.parent_skb, alone.parent_path) == ("clone", SKB_A, None)
    assert not packet.children


def test_a_packet_is_dropped_only_when_every_skb_of_it_was() -> None:
    clock = Clock()
    paths = assembler(clock)
    paths.add_many([event(1, RECEIVE, first=True), clone_event(2, RECEIVE), event(3, DROP, reason=3),
                    event(4, DROP, skb=SKB_B, reason=3)])
    clock.now = 100
    (packet,) = paths.expire()
    assert packet.packet_outcome == "dropped"


def test_flush_hands_out_open_clones_inside_their_packet() -> None:
    paths = assembler(Clock())
    paths.add_many([event(1, RECEIVE, first=True), clone_event(2, RECEIVE)])
    (packet,) = paths.flush()
    assert packet.skb == SKB_A and [child.skb for child in packet.children] == [SKB_B]


def test_a_clone_of_a_clone_belongs_to_the_packet() -> None:
    clock = Clock()
    paths = assembler(clock)
    skb_c = 0xFFFF888000003000
    paths.add_many([event(1, RECEIVE, first=True), clone_event(2, RECEIVE),
                    clone_event(3, RECEIVE, parent=SKB_B, skb=skb_c), event(4, CONSUME, skb=skb_c),
                    event(5, CONSUME, skb=SKB_B), event(6, DROP, reason=3)])
    clock.now = 100
    (packet,) = paths.expire()
    assert sorted(child.skb for child in packet.children) == [SKB_B, skb_c]
    assert sum(len(skb.events) for skb in packet.skb_paths) == 6


def test_a_truncated_path_says_how_many_of_its_events_were_lost() -> None:
    clock = Clock()
    paths = assembler(clock)
    lost = lambda n: FLAG_GAP | n << LOST_SHIFT  # what the kernel sends after n lost events
    paths.add_many([event(1, RECEIVE, first=True), event(2, IP_RCV, flags=lost(1)), event(3, CONSUME, flags=lost(3))])
    clock.now = 100
    (path,) = paths.expire()
    assert (path.outcome, path.lost_events) == ("truncated", 3)


def test_a_lost_end_counts_one_lost_event() -> None:
    paths = assembler(Clock())
    done = paths.add_many([event(1, RECEIVE, first=True), event(5, RECEIVE, first=True, flags=FLAG_PREV_LOST)])
    (old,) = done
    assert (old.outcome, old.lost_events) == ("truncated", 1)


SECOND = 1_000_000_000


def test_a_packet_whose_neighbour_never_answers_waits_past_the_idle_timeout_with_every_probe_copy() -> None:
    """Function backends: the packet waits at neigh_resolve_output while the neighbour probes three times, a second
    apart (a copy each, consumed), then is dropped (NEIGH_FAILED) 3 s after it was last seen: one packet, dropped,
    not timed out at the 2 s idle timeout; every copy is the probe's."""
    clock = Clock()
    names = Names(["default"], MANIFEST_PROBES, {3: "NEIGH_FAILED"}, hex)
    paths = PathAssembler(MANIFEST_PROBES, PathLimits(idle_timeout_ns=2 * SECOND), names, clock)
    out = paths.add_many([event(10, OUTPUT, first=True), event(20, NEIGH_OUTPUT), clone_event(30, N_CONSUME)])
    other = 0xFFFF888000007000
    out += paths.add(event(40, OUTPUT, skb=other, first=True, dst="10.0.0.9"))  # idle behind it, times out
    for second, copy in ((1, SKB_C), (2, SKB_D)):
        clock.now = second * SECOND + 30
        out += paths.add(clone_event(clock.now, N_CONSUME, skb=copy))
        out += paths.expire()
    clock.now = 3 * SECOND
    out += paths.expire()
    assert [path.skb for path in out] == [other] and out[0].outcome == "timeout"
    out += paths.add(event(3 * SECOND + 20, N_DROP, reason=3))
    clock.now = 4 * SECOND
    (packet,) = out[1:] + paths.expire()
    assert packet.outcome == "dropped" and packet.drop.reason == "NEIGH_FAILED" and not packet.continued
    assert [(child.skb, child.neighbour_probe) for child in packet.children] == [
        (SKB_B, True), (SKB_C, True), (SKB_D, True)]
    assert packet.packet_outcome == "dropped"


def test_a_request_queued_behind_another_waits_though_each_probe_cloned_it() -> None:
    """Full discovery probes skb_clone, which the queued request passes whenever the neighbour copies it: its last
    event is then skb_clone, and it still waits in the neighbour's queue (not timed out at idle_timeout)."""
    probes = ProbeTable([*MANIFEST_PROBES, Probe(len(MANIFEST_PROBES), "skb_clone", ProbeKind.KPROBE)])
    clone_call = len(MANIFEST_PROBES)
    clock = Clock()
    paths = PathAssembler(probes, PathLimits(idle_timeout_ns=2 * SECOND), Names(["default"], probes, {}, hex), clock)
    paths.add_many([event(10, OUTPUT, first=True), event(20, NEIGH_OUTPUT), event(25, clone_call),
                    clone_event(30, N_CONSUME)])
    clock.now = 3 * SECOND
    assert paths.expire() == [] and paths.inflight == 1
    paths.add(event(3 * SECOND + 10, N_DROP, reason=3))
    clock.now = 4 * SECOND
    (packet,) = paths.expire()
    assert packet.outcome == "dropped" and [child.neighbour_probe for child in packet.children] == [True]


def test_a_packet_in_the_neighbours_queue_times_out_past_the_neighbour_wait() -> None:
    clock = Clock()
    names = Names(["default"], MANIFEST_PROBES, {}, hex)
    paths = PathAssembler(MANIFEST_PROBES, PathLimits(idle_timeout_ns=2 * SECOND), names, clock)
    paths.add_many([event(10, OUTPUT, first=True), event(20, NEIGH_OUTPUT)])
    clock.now = NEIGHBOUR_WAIT_NS
    assert paths.expire() == [] and paths.inflight == 1
    clock.now = NEIGHBOUR_WAIT_NS + 20
    (packet,) = paths.expire()
    assert packet.outcome == "timeout" and paths.inflight == 0


def test_a_copy_freed_after_its_packet_was_first_seen_at_its_drop_is_the_probes() -> None:
    """Tracepoints: the neighbour failed while its last probe's copy was in flight: the packet (first seen at its
    drop) is a packet, the copy freed after it its neighbour probe child, which has no say in the outcome."""
    clock = Clock()
    paths = assembler(clock)
    paths.add_many([event(10, DROP, first=True, reason=3, location=NEIGH_INVALIDATE), clone_event(12, CONSUME)])
    clock.now = 100
    (packet,) = paths.expire()
    assert packet.starts_packet and [child.neighbour_probe for child in packet.children] == [True]
    assert packet.packet_outcome == "dropped"


@pytest.mark.parametrize("packet_events", [
    [event(10, DROP, first=True, reason=3, location=0xFFFF0001)],  # first seen at a drop outside the neighbour layer
    [event(10, RECEIVE, first=True), event(11, DROP, reason=3, location=NEIGH_INVALIDATE)],  # seen before its drop
], ids=["drop-elsewhere", "seen-before-its-drop"])
def test_a_clone_freed_after_its_packet_was_dropped_is_otherwise_no_probe_copy(packet_events: list) -> None:
    clock = Clock()
    paths = assembler(clock)
    paths.add_many([*packet_events, clone_event(12, CONSUME)])
    clock.now = 100
    (packet,) = paths.expire()
    assert [child.neighbour_probe for child in packet.children] == [False] and packet.packet_outcome == "delivered"


def test_a_copy_past_the_neighbour_wait_is_no_probe_copy() -> None:
    clock = Clock()
    names = Names(["default"], MANIFEST_PROBES, {3: "NEIGH_FAILED"}, hex)
    paths = PathAssembler(MANIFEST_PROBES, PathLimits(idle_timeout_ns=2 * SECOND), names, clock)
    late = 20 + NEIGHBOUR_WAIT_NS + 10
    paths.add_many([event(10, OUTPUT, first=True), event(20, NEIGH_OUTPUT), clone_event(late, N_CONSUME),
                    event(late + 10, N_DROP, reason=3)])
    clock.now = late + SECOND
    (packet,) = paths.expire()
    assert [child.neighbour_probe for child in packet.children] == [False]


def test_a_path_waiting_for_its_neighbour_is_evicted_before_fresher_ones() -> None:
    """It keeps its place as the least recently touched path: under max_inflight it goes first."""
    clock = Clock()
    names = Names(["default"], MANIFEST_PROBES, {}, hex)
    paths = PathAssembler(MANIFEST_PROBES, PathLimits(idle_timeout_ns=2 * SECOND, max_inflight=2), names, clock)
    paths.add_many([event(10, OUTPUT, first=True), event(20, NEIGH_OUTPUT)])
    clock.now = 3 * SECOND
    assert paths.expire() == []
    paths.add(event(clock.now, OUTPUT, skb=SKB_C, first=True, dst="10.0.0.9"))
    (evicted,) = paths.add(event(clock.now + 10, OUTPUT, skb=SKB_D, first=True, dst="10.0.0.10"))
    assert evicted.skb == SKB_A and evicted.outcome == "truncated" and paths.evicted == 1


# ---- a clone that ends before its packet is seen (a neighbour probe's copy): the packet adopts it ----

def orphan_event(ts: int, skb: int = SKB_B):  # type: ignore[no-untyped-def]
    """The kernel's first event of a clone whose packet it has not seen: FLAG_CLONE, no parent."""
    return clone_event(ts, CONSUME, parent=0, skb=skb)


def test_a_packet_adopts_its_clone_that_ended_before_it_was_seen() -> None:
    clock = Clock()
    paths = assembler(clock)
    paths.add(orphan_event(1))
    clock.now = 500  # past the settle time: an orphan waits longer, for its packet
    assert paths.expire() == []
    adopting = event(600, RECEIVE, first=True, flags=FLAG_ADOPT)._replace(parent=SKB_B, parent_ts=1)
    paths.add_many([adopting, event(700, CONSUME)])
    clock.now = 800
    (packet,) = paths.expire()
    assert packet.skb == SKB_A and packet.starts_packet and packet.packet_outcome == "delivered"
    (clone,) = packet.children
    assert (clone.skb, clone.relation, clone.before_packet, clone.parent_skb) == (SKB_B, "clone", True, SKB_A)
    assert clone.neighbour_probe


def test_a_dropped_packet_that_adopted_its_neighbour_probe_copy_is_dropped() -> None:
    """The probe's copy is consumed once the probe is sent: no delivery of the packet."""
    clock = Clock()
    paths = assembler(clock)
    paths.add(orphan_event(1))
    paths.add_many([event(600, RECEIVE, first=True, flags=FLAG_ADOPT)._replace(parent=SKB_B, parent_ts=1),
                    event(700, DROP)])
    clock.now = 800
    (packet,) = paths.expire()
    assert [child.before_packet for child in packet.children] == [True]
    assert (packet.outcome, packet.packet_outcome) == ("dropped", "dropped")


def test_an_orphan_clone_whose_packet_never_comes_stands_alone_and_is_not_a_packet() -> None:
    clock = Clock()
    paths = assembler(clock)
    paths.add(orphan_event(1))
    clock.now = 1 + ORPHAN_WAIT_NS
    (alone,) = paths.expire()
    assert (alone.relation, alone.parent_skb, alone.before_packet, alone.starts_packet) == ("clone", 0, False, False)


def following_event(ts: int, skb: int, earlier: int, earlier_ts: int):  # type: ignore[no-untyped-def]
    """The kernel's first event of the next copy of a packet not seen yet: it names the copy before it."""
    return event(ts, CONSUME, skb=skb, first=True, flags=FLAG_CLONE | FLAG_FOLLOWS)._replace(parent=earlier,
                                                                                             parent_ts=earlier_ts)


def test_a_packet_dropped_after_three_neighbour_probes_adopts_all_three_copies() -> None:
    """A neighbour that never answers: a copy per probe, a second apart, then the packet's drop (its first event),
    which names the last copy. One packet, dropped, with the three copies as its neighbour probe children."""
    clock = Clock()
    paths = assembler(clock)
    second, third = 1_000_000_000, 2_000_000_000
    paths.add(orphan_event(1, skb=SKB_B))
    clock.now = second
    paths.add(following_event(second, SKB_C, SKB_B, 1))
    clock.now = third
    paths.add(following_event(third, SKB_D, SKB_C, second))
    clock.now = third + ORPHAN_WAIT_NS - 1  # the first copy is older than the wait, but waits with the last
    assert paths.expire() == []
    paths.add(event(third + 1_000_000_000, DROP, first=True, flags=FLAG_ADOPT)._replace(parent=SKB_D,
                                                                                      parent_ts=third))
    clock.now += 100
    (packet,) = paths.expire()
    assert packet.starts_packet and packet.packet_outcome == "dropped"
    assert [(child.skb, child.neighbour_probe, child.before_packet) for child in packet.children] == [
        (SKB_B, True, True), (SKB_C, True, True), (SKB_D, True, True)]


def test_a_copy_in_the_freed_skb_of_the_copy_before_it_follows_it() -> None:
    """The next probe's clone is often given the skb the last copy freed: it names itself as the one before."""
    clock = Clock()
    paths = assembler(clock)
    paths.add_many([orphan_event(1, skb=SKB_B), following_event(2, SKB_B, SKB_B, 1),
                    event(3, DROP, first=True, flags=FLAG_ADOPT)._replace(parent=SKB_B, parent_ts=2)])
    clock.now = 100
    (packet,) = paths.expire()
    assert [(child.skb, child.events[0].timestamp_ns) for child in packet.children] == [(SKB_B, 1), (SKB_B, 2)]


def test_two_packets_waiting_for_one_neighbour_each_adopt_their_own_copies_at_one_address() -> None:
    """Measured on 6.18 (ping -i 1 to an address nothing answers for): the first packet's two copies, then the
    second packet's copy in the skb the first packet's last copy freed; both packets dropped together."""
    clock = Clock()
    paths = assembler(clock)
    other = 0xFFFF888000005000
    done = paths.add_many([orphan_event(1, skb=SKB_B), following_event(2, SKB_C, SKB_B, 1),
                           orphan_event(3, skb=SKB_C),  # the second packet's copy, at the address of the last one
                           event(4, DROP, first=True, flags=FLAG_ADOPT)._replace(parent=SKB_C, parent_ts=2),
                           event(5, DROP, skb=other, first=True, flags=FLAG_ADOPT)._replace(parent=SKB_C,
                                                                                             parent_ts=3)])
    clock.now = 100
    first, second = sorted(done + paths.expire(), key=lambda path: path.events[0].timestamp_ns)
    assert [(copy.skb, copy.events[0].timestamp_ns) for copy in first.children] == [(SKB_B, 1), (SKB_C, 2)]
    assert [(copy.skb, copy.events[0].timestamp_ns) for copy in second.children] == [(SKB_C, 3)]
    assert first.starts_packet and second.starts_packet and paths.flush() == []


def test_copies_waiting_together_go_together_when_orphans_are_capped() -> None:
    paths = assembler(Clock(), max_inflight=1)
    done = paths.add_many([orphan_event(1, skb=SKB_B), following_event(2, SKB_C, SKB_B, 1),
                           orphan_event(3, skb=SKB_D)])
    assert sorted(path.skb for path in done) == [SKB_B, SKB_C]
    assert [path.skb for path in paths.flush()] == [SKB_D]


def test_copies_of_a_packet_that_never_comes_stand_alone_each() -> None:
    clock = Clock()
    paths = assembler(clock)
    paths.add_many([orphan_event(1, skb=SKB_B), following_event(2, SKB_C, SKB_B, 1)])
    clock.now = 2 + ORPHAN_WAIT_NS
    alone = paths.expire()
    assert sorted(path.skb for path in alone) == [SKB_B, SKB_C]
    assert all(path.relation == "clone" and not path.parent_skb and not path.starts_packet for path in alone)
    assert paths.flush() == []


def test_copies_waiting_together_are_all_handed_out_on_shutdown() -> None:
    paths = assembler(Clock())
    paths.add_many([orphan_event(1, skb=SKB_B), following_event(2, SKB_C, SKB_B, 1)])
    assert sorted(path.skb for path in paths.flush()) == [SKB_B, SKB_C]


def test_a_copy_naming_one_no_longer_waiting_waits_alone() -> None:
    """The earlier copy's first event was at another time: another clone at that address, not the one named."""
    clock = Clock()
    paths = assembler(clock)
    paths.add_many([orphan_event(1, skb=SKB_B), following_event(2, SKB_C, SKB_B, 999)])
    paths.add(event(3, RECEIVE, first=True, flags=FLAG_ADOPT)._replace(parent=SKB_C, parent_ts=2))
    paths.add(event(4, CONSUME))
    clock.now = 2 + ORPHAN_WAIT_NS
    out = paths.expire()
    packet = next(path for path in out if path.starts_packet)
    assert [child.skb for child in packet.children] == [SKB_C]
    assert [path.skb for path in out if not path.starts_packet] == [SKB_B]


def test_a_continuation_is_not_a_packet_of_its_own() -> None:
    clock = Clock()
    paths = assembler(clock)
    paths.add(event(10, RECEIVE, first=True))
    clock.now = 2000
    (first,) = paths.expire()
    paths.add(event(2100, CONSUME))
    clock.now = 3000
    (rest,) = paths.expire()
    assert first.starts_packet and rest.continued and not rest.starts_packet


def test_a_waiting_orphan_clone_is_adopted_though_another_packet_reused_its_address() -> None:
    clock = Clock()
    paths = assembler(clock)
    other = 0xFFFF888000003000
    adopting = event(40, RECEIVE, skb=other, first=True, flags=FLAG_ADOPT)._replace(parent=SKB_B, parent_ts=10)
    # the orphan's skb is freed and at once reused for an unrelated packet, which ends before the adopter comes
    done = paths.add_many([orphan_event(10), event(20, RECEIVE, skb=SKB_B, first=True, dst="10.0.0.9"),
                           event(30, CONSUME, skb=SKB_B), adopting, event(50, CONSUME, skb=other)])
    clock.now = 100
    out = done + paths.expire()
    packet = next(path for path in out if path.skb == other)
    assert [(child.skb, child.before_packet) for child in packet.children] == [(SKB_B, True)]
    unrelated = [path for path in out if path.skb == SKB_B]
    assert len(unrelated) == 1 and unrelated[0].describe().daddr == "10.0.0.9" and not unrelated[0].relation


def test_an_ended_packet_waits_for_its_open_clone_though_its_address_is_reused() -> None:
    clock = Clock()
    paths = assembler(clock)
    paths.add_many([event(1, RECEIVE, first=True), clone_event(2, RECEIVE), event(3, CONSUME),
                    event(4, RECEIVE, first=True, dst="10.0.0.9"), event(5, CONSUME)])  # SKB_A reused at once
    clock.now = 50
    done = paths.expire()
    assert [p.describe().daddr for p in done] == ["10.0.0.9"]  # the packet at the reused address, on its own
    paths.add(event(60, CONSUME, skb=SKB_B))
    clock.now = 100
    (packet,) = paths.expire()
    assert packet.skb == SKB_A and [child.skb for child in packet.children] == [SKB_B]


# ---- IPv4 fragments: child paths of their datagram ----

def fragment_event(ts: int, probe: int, skb: int, parent: int = SKB_A):  # type: ignore[no-untyped-def]
    return event(ts, probe, skb=skb, first=True, flags=FLAG_FRAGMENT)._replace(parent=parent)


def test_a_datagram_with_a_dropped_fragment_is_dropped_unless_it_was_delivered() -> None:
    clock = Clock()
    paths = assembler(clock)
    fragment = 0xFFFF888000003000
    paths.add_many([event(1, RECEIVE, first=True), fragment_event(2, RECEIVE, fragment),
                    event(3, DROP, skb=fragment, reason=3)])  # the first fragment waits for the dropped one
    clock.now = 2000
    (lost,) = paths.expire()
    assert [child.relation for child in lost.children] == ["fragment"] and lost.packet_outcome == "dropped"
    # reassembled and read: the datagram is delivered though the kernel frees its fragments with kfree_skb (5.10)
    paths.add_many([event(3000, RECEIVE, first=True), fragment_event(3001, RECEIVE, fragment),
                    clone_event(3002, RECEIVE), event(3003, CONSUME, skb=SKB_B), event(3004, DROP, skb=fragment),
                    event(3005, CONSUME)])
    clock.now = 4000
    (read,) = paths.expire()
    assert sorted(child.relation for child in read.children) == ["clone", "fragment"]
    assert read.packet_outcome == "delivered"


def test_a_late_clone_joins_the_packet_its_parent_timestamp_names_though_the_address_was_reused() -> None:
    # datagram 1 at SKB_A ends and waits for its open fragment; datagram 2 is then traced at SKB_A; datagram 1's
    # reassembled skb (a clone of its first fragment) is freed when datagram 2 arrives
    clock = Clock()
    paths = assembler(clock)
    fragment = 0xFFFF888000003000
    late_clone = clone_event(12, RECEIVE, skb=SKB_B)._replace(parent_ts=1)
    paths.add_many([event(1, RECEIVE, first=True), fragment_event(2, RECEIVE, fragment)._replace(parent_ts=1),
                    event(3, CONSUME), event(10, RECEIVE, first=True, dst="10.0.0.9"), late_clone,
                    event(13, CONSUME, skb=SKB_B), event(14, CONSUME, skb=fragment), event(15, CONSUME)])
    clock.now = 2000
    first, second = sorted(paths.expire(), key=lambda path: path.events[0].timestamp_ns)
    assert sorted((child.relation, child.skb) for child in first.children) == [("clone", SKB_B),
                                                                                ("fragment", fragment)]
    assert second.describe().daddr == "10.0.0.9" and second.children == []


def test_a_clone_whose_parent_timestamp_names_no_held_path_goes_alone() -> None:
    clock = Clock()
    paths = assembler(clock)
    paths.add_many([event(10, RECEIVE, first=True), clone_event(12, RECEIVE, skb=SKB_B)._replace(parent_ts=1),
                    event(13, CONSUME, skb=SKB_B), event(15, CONSUME)])
    clock.now = 2000
    done = paths.expire()
    assert sorted((path.skb, path.relation, path.parent_skb) for path in done) == [
        (SKB_A, "", 0), (SKB_B, "clone", SKB_A)]


# ---- GSO segments: child paths of their TCP packet ----

def segment_event(ts: int, probe: int, skb: int):  # type: ignore[no-untyped-def]
    return event(ts, probe, skb=skb, first=True, proto=6, flags=FLAG_SEGMENT)._replace(parent=SKB_A, parent_ts=1)


def test_a_gso_packet_ends_as_its_segments_dropped_when_any_of_them_was() -> None:
    clock = Clock()
    paths = assembler(clock)
    first, second = 0xFFFF888000003000, 0xFFFF888000004000
    # the GSO skb is freed once cut (consume_skb): that is not its delivery
    paths.add_many([event(1, RECEIVE, first=True, proto=6), event(2, CONSUME), segment_event(3, EGRESS, first),
                    segment_event(4, EGRESS, second), event(5, CONSUME, skb=first), event(6, DROP, skb=second)])
    clock.now = 100
    (packet,) = paths.expire()
    assert [(child.relation, child.skb) for child in packet.children] == [("segment", first), ("segment", second)]
    assert packet.outcome == "delivered" and packet.packet_outcome == "dropped"
    paths.add_many([event(200, RECEIVE, first=True, proto=6), event(201, CONSUME),
                    segment_event(202, EGRESS, first)._replace(parent_ts=200), event(203, CONSUME, skb=first)])
    clock.now = 300
    (whole,) = paths.expire()
    assert whole.starts_packet and whole.packet_outcome == "delivered"
    # a segment never seen to end: the packet is not delivered by its own skb's free
    paths.add_many([event(400, RECEIVE, first=True, proto=6), event(401, CONSUME),
                    segment_event(402, EGRESS, first)._replace(parent_ts=400)])
    clock.now = 5000
    (unknown,) = paths.expire()
    assert unknown.children[0].outcome == "timeout" and unknown.packet_outcome == "timeout"
