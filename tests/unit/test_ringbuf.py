from __future__ import annotations

import struct

import pytest

from ipftrace_exporter.events import FRAME_SIZE, RECORD_SIZE, decode_frames, encode_frames, encode_many
from ipftrace_exporter.ringbuf import BUSY_BIT, DISCARD_BIT, committed_count, frame_size, frames_have_size

from .helpers import RECEIVE, event


def frames(*lengths: int, stride: int = FRAME_SIZE) -> bytes:
    """Frames whose headers carry these length words (flags included), bodies filled with 0xAB."""
    return b"".join(struct.pack("<II", length, 0) + b"\xab" * (stride - 8) for length in lengths)


def test_frame_size_is_header_plus_record_rounded_to_8() -> None:
    assert frame_size(RECORD_SIZE) == FRAME_SIZE == 176
    assert frame_size(1) == 16
    assert frame_size(8) == 16
    assert frame_size(9) == 24


def test_committed_count_stops_at_the_first_record_still_being_written() -> None:
    window = frames(RECORD_SIZE, RECORD_SIZE, RECORD_SIZE | BUSY_BIT, RECORD_SIZE)
    assert committed_count(window[3::FRAME_SIZE]) == 2
    assert committed_count(frames(RECORD_SIZE | BUSY_BIT, RECORD_SIZE)[3::FRAME_SIZE]) == 0
    assert committed_count(frames(RECORD_SIZE, RECORD_SIZE)[3::FRAME_SIZE]) == 2
    assert committed_count(b"") == 0


def test_committed_count_hands_a_discarded_record_to_the_slow_walk() -> None:
    assert committed_count(frames(RECORD_SIZE, RECORD_SIZE | DISCARD_BIT)[3::FRAME_SIZE]) is None
    # behind a busy record a discarded one is not looked at yet
    assert committed_count(frames(RECORD_SIZE | BUSY_BIT, RECORD_SIZE | DISCARD_BIT)[3::FRAME_SIZE]) == 0


def test_frames_have_size_checks_every_header_length() -> None:
    assert frames_have_size(frames(RECORD_SIZE, RECORD_SIZE), FRAME_SIZE, RECORD_SIZE)
    assert not frames_have_size(frames(RECORD_SIZE, 24), FRAME_SIZE, RECORD_SIZE)
    assert not frames_have_size(frames(RECORD_SIZE + 256), FRAME_SIZE, RECORD_SIZE)  # differs in the second byte


def test_decode_frames_skips_the_ring_headers() -> None:
    events = [event(ts, RECEIVE, first=ts == 1) for ts in (1, 2, 3)]
    framed = encode_frames(events)
    assert len(framed) == 3 * FRAME_SIZE
    assert list(decode_frames(framed)) == events
    assert frames_have_size(framed, FRAME_SIZE, RECORD_SIZE)
    assert committed_count(framed[3::FRAME_SIZE]) == 3
    with pytest.raises(ValueError, match="whole number"):
        list(decode_frames(encode_many(events)[:FRAME_SIZE + 1]))
