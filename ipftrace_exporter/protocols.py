"""IP protocol names <-> numbers (the names the seed accepted, case-insensitive)."""

from __future__ import annotations

PROTOCOL_NUMBERS: dict[str, int] = {
    "ICMP": 1,
    "IGMP": 2,
    "IPIP": 4,
    "TCP": 6,
    "UDP": 17,
    "IPV6": 41,
    "GRE": 47,
    "ESP": 50,
    "AH": 51,
    "ICMPV6": 58,
    "ICMP6": 58,
    "SCTP": 132,
    "UDPLITE": 136,
}
PROTOCOL_NAMES: dict[int, str] = {}
for _name, _number in PROTOCOL_NUMBERS.items():
    PROTOCOL_NAMES.setdefault(_number, _name)

PORT_PROTOCOLS = frozenset({6, 17, 132, 136})  # protocols whose header starts with 16-bit source/destination ports
ICMP_PROTOCOLS = frozenset({1, 58})  # their type and code travel in the record's port fields (IPFT_IS_ICMP in C)
ICMP_TYPES: dict[int, dict[int, str]] = {
    1: {0: "echo-reply", 3: "dest-unreachable", 4: "source-quench", 5: "redirect", 8: "echo-request",
        9: "router-advertisement", 10: "router-solicitation", 11: "time-exceeded", 12: "parameter-problem",
        13: "timestamp", 14: "timestamp-reply"},
    58: {1: "dest-unreachable", 2: "packet-too-big", 3: "time-exceeded", 4: "parameter-problem",
         128: "echo-request", 129: "echo-reply", 130: "mld-query", 131: "mld-report", 133: "router-solicitation",
         134: "router-advertisement", 135: "neighbor-solicitation", 136: "neighbor-advertisement", 137: "redirect",
         143: "mld2-report"},
}


def protocol_name(number: int) -> str:
    """'TCP' for 6; the number as text for protocols without a name."""
    return PROTOCOL_NAMES.get(number, str(number))


def parse_protocol(text: str) -> int:
    """'tcp' / 'TCP' / '6' -> 6. Raises ValueError naming the bad value."""
    value = text.strip()
    if value.isdigit():
        number = int(value)
        if 0 <= number <= 255:
            return number
        raise ValueError(f"protocol number {number} is out of range 0-255")
    try:
        return PROTOCOL_NUMBERS[value.upper()]
    except KeyError:
        known = ", ".join(sorted(PROTOCOL_NUMBERS))
        raise ValueError(f"unknown protocol {text!r} (known: {known}, or a number 0-255)") from None


def icmp_type_name(l4proto: int, kind: int) -> str | None:
    """'echo-request' for ICMP type 8 (or ICMPv6 type 128); None when the type has no common name."""
    return ICMP_TYPES.get(l4proto, {}).get(kind)
