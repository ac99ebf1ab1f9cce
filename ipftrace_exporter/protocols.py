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
