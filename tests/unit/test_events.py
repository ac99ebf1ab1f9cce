from __future__ import annotations

import pytest

from ipftrace_exporter.events import RECORD_SIZE, decode, decode_many, encode, encode_many, format_address

from .helpers import RECEIVE, event


def test_record_size_matches_the_c_struct() -> None:
    # struct ipft_event: 3*u64 + 5*u32 + u16 + 2*u8 + 2*16 + 2*u16 + u32 + 64 + 2*u64 = 168
    assert RECORD_SIZE == 168


def test_decode_round_trips_every_field() -> None:
    original = event(123456789, RECEIVE, first=True, src="10.199.1.1", dst="10.199.1.2", proto=17, sport=5000,
                     dport=53, flow=3, cpu=1, reason=2, location=0xFFFFFFFF81000000, data=b"\x01\x02")
    decoded = decode(encode(original))
    assert decoded == original
    assert decoded.has_tuple
    assert format_address(decoded.ipversion, decoded.saddr) == "10.199.1.1"


def test_decode_many_reads_back_to_back_records_in_order() -> None:
    events = [event(ts, RECEIVE) for ts in (3, 1, 2)]
    assert list(decode_many(encode_many(events))) == events


def test_decode_rejects_a_record_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="168"):
        decode(b"\0" * 100)
    with pytest.raises(ValueError, match="whole number"):
        list(decode_many(b"\0" * (RECORD_SIZE + 1)))


def test_format_address_ipv6_and_unknown() -> None:
    import ipaddress

    raw = ipaddress.ip_address("fd00:199::1:2").packed
    assert format_address(6, raw) == "fd00:199::1:2"
    assert format_address(0, raw) == ""
