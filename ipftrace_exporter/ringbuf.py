"""Reads a BPF ring buffer (BPF_MAP_TYPE_RINGBUF) through its memory mapping, many records per copy.

The kernel maps a ring buffer as: one writable page holding the consumer position, one read-only page holding the
producer position, then the data pages mapped twice in a row, so a run of records that wraps around the end of the
ring is still contiguous in memory. Each record is an 8-byte header (u32 length with the BUSY and DISCARD flags
in its top bits, u32 page offset) followed by the record, padded to 8 bytes. libbpf hands records to a callback
one by one; from Python that is a ctypes call per record. Here the records between the two positions are copied
out with one slice and handed on as *frames* (header + record), which `events.decode_frames` unpacks in C.

Ordering: the kernel publishes a record by an atomic exchange of its header after writing it, and the producer
position before that. Loads are not reordered with other loads on x86 (TSO), so a header read as committed
guarantees the record's bytes read after it. Weakly ordered CPUs (arm64) need acquire loads, which Python cannot
issue: `direct_read_supported()` is False there and the collector uses libbpf's reader instead.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
import select
import struct

FRAME_HEADER_SIZE = 8
BUSY_BIT = 1 << 31  # the record is reserved but not yet submitted
DISCARD_BIT = 1 << 30  # the record was discarded: skip it
_POSITION = struct.Struct("<Q")
_HEADER = struct.Struct("<II")
# CPUs whose loads are ordered (no load-load reordering), so plain reads of the mapping are enough.
DIRECT_READ_MACHINES = frozenset({"x86_64", "AMD64", "i686", "i386"})


def direct_read_supported() -> bool:
    """True when this CPU's memory ordering lets Python read the ring buffer mapping without barriers."""
    return platform.machine() in DIRECT_READ_MACHINES


def frame_size(record_size: int) -> int:
    """Bytes one record of `record_size` occupies in the ring (header + record, rounded up to 8)."""
    return (FRAME_HEADER_SIZE + record_size + 7) & ~7


def committed_count(flag_bytes: bytes) -> int | None:
    """How many leading records are submitted, given byte 3 of each record's header (little endian: the BUSY and
    DISCARD bits). Records are submitted out of order across CPUs but consumed in order, so counting stops at
    the first record still being written. None when a discarded record comes first (the caller walks the
    records one by one)."""
    ready = len(flag_bytes) - len(flag_bytes.lstrip(b"\0"))
    if ready < len(flag_bytes) and flag_bytes[ready] & (DISCARD_BIT >> 24):
        return None
    return ready


def frames_have_size(frames: bytes, stride: int, record_size: int) -> bool:
    """True when every frame in `frames` (back-to-back, `stride` bytes each) holds a record of `record_size`."""
    count = len(frames) // stride
    expected = record_size.to_bytes(3, "little")  # header bytes 0-2: the length (bounded by the ring size)
    return all(frames[index::stride] == expected[index:index + 1] * count for index in range(3))


class RingReader:
    """Consumer side of one BPF ring buffer map: `read()` returns the submitted records as frames and releases
    their space to the kernel; `wait()` sleeps until the kernel signals data (epoll on the map fd).

    Only records of `record_size` bytes are returned; others (none are written by our program) are skipped and
    counted in `skipped`.
    """

    def __init__(self, map_fd: int, ring_size: int, record_size: int) -> None:
        if ring_size <= 0 or ring_size & (ring_size - 1):
            raise ValueError(f"ring buffer size {ring_size} is not a power of two")
        page = mmap.PAGESIZE
        self.ring_size = ring_size
        self.record_size = record_size
        self.stride = frame_size(record_size)
        self.skipped = 0
        self._mask = ring_size - 1
        self._consumer_map = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            self._data = mmap.mmap(map_fd, page + 2 * ring_size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        except OSError:
            self._consumer_map.close()
            raise
        # One aligned 8-byte store publishes the consumer position (the kernel reads it to find free space).
        self._consumer = ctypes.c_uint64.from_buffer(self._consumer_map)
        self._epoll = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN)
        self._closed = False

    def available(self) -> int:
        """Bytes written by the kernel and not yet consumed (records still being written included)."""
        return _POSITION.unpack_from(self._data, 0)[0] - self._consumer.value

    def wait(self, timeout_ms: int) -> bool:
        """Sleep until the kernel signals new records or timeout_ms pass; True when data is waiting. The kernel
        signals only when asked to (see the program's wake-up threshold), so a timeout with data is normal."""
        if self.available():
            return True
        self._epoll.poll(max(timeout_ms, 0) / 1000.0)
        return self.available() > 0

    def read(self, max_records: int) -> bytes:
        """Up to `max_records` submitted records as back-to-back frames of `stride` bytes (b"" when none)."""
        consumer = self._consumer.value
        producer = _POSITION.unpack_from(self._data, 0)[0]
        count = min((producer - consumer) // self.stride, max_records)
        if count <= 0:
            return self._read_slow(consumer, producer, max_records) if producer > consumer else b""
        start = mmap.PAGESIZE + (consumer & self._mask)
        # Headers first, then the records they vouch for: the copy's loads come after the header loads.
        ready = committed_count(self._data[start + 3:start + count * self.stride:self.stride])
        if ready is None:
            return self._read_slow(consumer, producer, max_records)
        if not ready:
            return b""
        frames = self._data[start:start + ready * self.stride]
        if not frames_have_size(frames, self.stride, self.record_size):
            return self._read_slow(consumer, producer, max_records)
        self._consumer.value = consumer + ready * self.stride
        return frames

    def _read_slow(self, consumer: int, producer: int, max_records: int) -> bytes:
        """Walk the records one header at a time (discarded or differently sized records)."""
        frames: list[bytes] = []
        base = mmap.PAGESIZE
        while consumer < producer and len(frames) < max_records:
            offset = base + (consumer & self._mask)
            length, _ = _HEADER.unpack_from(self._data, offset)
            if length & BUSY_BIT:
                break
            size = length & ~(BUSY_BIT | DISCARD_BIT)
            if not length & DISCARD_BIT:
                if size == self.record_size:
                    frames.append(self._data[offset:offset + self.stride])
                else:
                    self.skipped += 1
            consumer += frame_size(size)
        self._consumer.value = consumer
        return b"".join(frames)

    def close(self) -> None:
        """Unmap the ring buffer (idempotent); the map itself belongs to the BPF module."""
        if self._closed:
            return
        self._closed = True
        self._epoll.close()
        del self._consumer
        self._consumer_map.close()
        self._data.close()
