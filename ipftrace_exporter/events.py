"""Ring-buffer record bytes <-> Event. The layout mirrors `struct ipft_event` in bpf/ipftrace.bpf.c."""

from __future__ import annotations

import functools
import ipaddress
import socket
import struct
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from .ringbuf import FRAME_HEADER_SIZE, frame_size

# struct ipft_event (little endian, natural alignment, 168 bytes):
#   u64 ts, skb, location; u32 probe_id, cpu, len, ifindex, reason; u16 flow_id; u8 ipversion, l4proto;
#   u8 saddr[16], daddr[16]; u16 sport, dport (host order); u32 flags; u8 data[64]; u64 parent, parent_ts
RECORD = struct.Struct("<QQQIIIIIHBB16s16sHHI64sQQ")
RECORD_SIZE = RECORD.size
MODULE_DATA_SIZE = 64
# A record as it sits in the BPF ring buffer: the ring's 8-byte header (length, page offset), then the record.
FRAME = struct.Struct(f"<{FRAME_HEADER_SIZE}x{RECORD.format[1:]}")
FRAME_SIZE = FRAME.size
assert FRAME_SIZE == frame_size(RECORD_SIZE), "struct ipft_event must be a multiple of 8 bytes"

FLAG_TUPLE = 1 << 0  # the packet's headers were parsed at this probe (addresses/ports are valid)
FLAG_SAMPLED = 1 << 1  # the packet was sampled for tracing when first matched
FLAG_GAP = 1 << 2  # an earlier event of this skb was lost (ring buffer full)
FLAG_PREV_LOST = 1 << 3  # first event: the previous packet traced at this skb address lost its end event
FLAG_LEFT = 1 << 4  # an egress probe where the device has a parent (hardware): the packet left the host
FLAG_REWRITE = 1 << 5  # the headers were rewritten (NAT) before this probe: the event carries the new ones
FLAG_CLONE = 1 << 6  # first event of an skb sharing its data buffer with a traced packet: `parent` is that skb
FLAG_ADOPT = 1 << 7  # first event of a packet whose clone (`parent`) ended before the packet was seen (neighbour probe)
FLAG_FRAGMENT = 1 << 8  # first event of an IPv4 or IPv6 fragment of a traced datagram: `parent` is its first seen skb
FLAG_SEGMENT = 1 << 10  # first event of a GSO segment of a traced TCP packet: `parent` is that packet's skb
FLAG_FOLLOWS = 1 << 11  # with FLAG_CLONE: another clone ending before its packet was seen; `parent` the one before it
FLAG_ENCAP = 1 << 9  # the packet was encapsulated (a tunnel's headers pushed) before this probe: the event has them
LOST_SHIFT = 16  # flags >> LOST_SHIFT: how many of this skb's events were lost before this one (at most 255)


class Event(NamedTuple):
    """One probe hit of one traced skb, as the kernel recorded it."""

    timestamp_ns: int  # kernel CLOCK_MONOTONIC
    skb: int  # struct sk_buff address
    location: int  # free location (kfree_skb/consume_skb), else 0
    probe_id: int
    cpu: int
    length: int  # skb->len
    ifindex: int
    reason: int  # drop reason number (kfree_skb), else 0
    flow_id: int  # index of the configured flow that matched
    ipversion: int  # 4, 6, or 0 when not parsed
    l4proto: int  # IP protocol number
    saddr: bytes  # 16 bytes; IPv4 in the first 4
    daddr: bytes
    sport: int
    dport: int
    flags: int
    data: bytes  # module data, MODULE_DATA_SIZE bytes
    # with FLAG_CLONE: the skb address of the packet this skb is a clone of (0: a packet not seen yet; with
    # FLAG_FOLLOWS, the earlier clone of that packet); with FLAG_ADOPT: the skb address of this packet's (last)
    # clone that ended before the packet was seen (both always with parent_ts); with FLAG_FRAGMENT:
    # the skb address where the fragment's datagram was first seen; with FLAG_SEGMENT: the GSO packet's skb
    parent: int = 0
    parent_ts: int = 0  # with `parent`: the timestamp of that skb's first event (0: unknown)

    @property
    def has_tuple(self) -> bool:
        """True when addresses and ports were parsed at this probe."""
        return bool(self.flags & FLAG_TUPLE)

    @property
    def rewritten(self) -> bool:
        """True when the packet's headers changed (NAT) before this probe; addresses and ports are the new ones."""
        return bool(self.flags & FLAG_REWRITE)

    @property
    def encapsulated(self) -> bool:
        """True when a tunnel's headers were pushed before this probe; addresses and ports are the outer ones."""
        return bool(self.flags & FLAG_ENCAP)


# Event from an unpacked record, all in C (Event._make adds a Python-level call and a length check per event; the
# struct always yields exactly the 19 fields).
_MAKE_EVENT = functools.partial(tuple.__new__, Event)


def decode(record: bytes) -> Event:
    """One record's bytes -> Event. Raises ValueError on a record of the wrong size."""
    if len(record) != RECORD_SIZE:
        raise ValueError(f"record is {len(record)} bytes, expected {RECORD_SIZE}")
    return Event._make(RECORD.unpack(record))


def decode_many(buffer: bytes) -> Iterator[Event]:
    """Back-to-back records -> Events (the buffer length must be a multiple of RECORD_SIZE)."""
    if len(buffer) % RECORD_SIZE:
        raise ValueError(f"buffer of {len(buffer)} bytes is not a whole number of {RECORD_SIZE}-byte records")
    return map(_MAKE_EVENT, RECORD.iter_unpack(buffer))


def decode_frames(buffer: bytes) -> Iterator[Event]:
    """Back-to-back ring-buffer frames (what Collector.poll returns) -> Events."""
    if len(buffer) % FRAME_SIZE:
        raise ValueError(f"buffer of {len(buffer)} bytes is not a whole number of {FRAME_SIZE}-byte frames")
    return map(_MAKE_EVENT, FRAME.iter_unpack(buffer))


def encode_frames(events: Iterable[Event]) -> bytes:
    """Events -> back-to-back ring-buffer frames (headers say: submitted, RECORD_SIZE bytes)."""
    header = RECORD_SIZE.to_bytes(4, "little") + bytes(4)
    return b"".join(header + RECORD.pack(*event) for event in events)


def encode(event: Event) -> bytes:
    """Event -> record bytes (for tests and benchmarks that synthesise ring-buffer input)."""
    return RECORD.pack(*event)


def encode_many(events: Iterable[Event]) -> bytes:
    """Events -> back-to-back records."""
    return b"".join(RECORD.pack(*event) for event in events)


def format_address(ipversion: int, raw: bytes) -> str:
    """Text form of a recorded address ('' when the version is unknown)."""
    if ipversion == 4:
        return socket.inet_ntoa(raw[:4])
    if ipversion == 6:
        return str(ipaddress.IPv6Address(raw[:16]))
    return ""


# Why a matching packet was not traced: the kernel's `untraced` counters, in the order of its IPFT_UNTRACED_* indices.
UNTRACED_REASONS = ("sampled_out", "ring_full")
