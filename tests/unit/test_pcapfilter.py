"""pcap-filter expressions: the C the translator writes agrees with tcpdump's own verdicts on the same packets.

The test writes a pcap of crafted raw-IP packets, asks `tcpdump -r` which match each expression, and runs the
very C text the BPF program would contain (compiled by the host C compiler, `bpf_probe_read_kernel` a memcpy)
on the same bytes."""

from __future__ import annotations

import ctypes
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from ipftrace_exporter.pcapfilter import Insn, PcapFilter, PcapFilterError, c_function, compile_filter

EXPRESSIONS = [
    "ip", "ip6", "tcp", "udp", "icmp", "icmp6",
    "tcp and dst port 443", "udp port 53", "src port 1234 or dst port 1234", "ip proto 17",
    "src host 10.199.0.1", "dst net 10.0.0.0/8", "net 10.0.0.0/8", "not net 10.0.0.0/8",
    "portrange 1000-2000", "tcp dst portrange 1-1023", "not tcp and not udp", "tcp or icmp",
    "(tcp and port 80) or (udp and not port 53)",
    "icmp[icmptype] == icmp-echo", "icmp[icmptype] != icmp-echo and icmp[icmptype] != icmp-echoreply",
    "icmp6 and ip6[40] == 128", "ip6 and udp", "ip6 and tcp and dst port 443", "ip6 host fd00:199::2",
    "ip6 net fd00:199::/64", "ip6 proto 58", "ip6[6] == 0", "udp and ip6 and port 4789",
    "greater 100", "less 60", "len > 80 and len < 200",
    "ip[6:2] & 0x1fff != 0", "ip[0] & 0xf > 5", "ip[8] < 64", "udp[4:2] > 20",
    "tcp[tcpflags] & (tcp-syn|tcp-fin) != 0", "tcp[tcpflags] == tcp-syn", "tcp[13] & 2 != 0 and dst port 80",
    "ip and (ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2)) > 0",
    "tcp[0:2] % 7 == 2", "tcp[0:2] ^ tcp[2:2] == 0x7b", "ip[2:2] * 2 > 200", "ip[2:2] / ip[8] > 1", "-ip[8] < 0",
    "ip[16:4] >> 24 == 10", "ip[12:4] << 8 != 0", "ip[2:2] - 1 > 99 or ip[2:2] + 1 < 30",
    "tcp[0:4] & 0xffff0000 = 0x04d20000", "tcp[20] == 0x7a", "udp[8:4] = 0xdeadbeef",
]


def _checksum_free_ipv4(proto: int, src: str, dst: str, payload: bytes, *, frag: int = 0, ttl: int = 64,
                        options: bytes = b"") -> bytes:
    ihl = 5 + len(options) // 4
    total = ihl * 4 + len(payload)
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 0x1234, frag, ttl, proto, 0,
                         bytes(int(x) for x in src.split(".")), bytes(int(x) for x in dst.split(".")))
    return header + options + payload


def _ipv6(next_header: int, src: str, dst: str, payload: bytes) -> bytes:
    import ipaddress

    return (struct.pack("!IHBB", 0x60000000, len(payload), next_header, 64)
            + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + payload)


def _tcp(sport: int, dport: int, flags: int, data: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 1024, 0, 0) + data


def _udp(sport: int, dport: int, data: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def _icmp(kind: int, code: int = 0, data: bytes = b"") -> bytes:
    return struct.pack("!BBHHH", kind, code, 0, 1, 1) + data


SYN, FIN, ACK = 0x02, 0x01, 0x10
PACKETS: list[tuple[bytes, int]] = [  # (bytes, how many of them the capture holds; 0 = all)
    (_checksum_free_ipv4(6, "10.199.0.1", "10.199.0.2", _tcp(1234, 443, SYN)), 0),
    (_checksum_free_ipv4(6, "10.199.0.2", "10.199.0.1", _tcp(443, 1234, SYN | ACK)), 0),
    (_checksum_free_ipv4(6, "192.168.1.5", "10.1.2.3", _tcp(40000, 80, ACK, b"GET / HTTP/1.0\r\n" * 8)), 0),
    (_checksum_free_ipv4(6, "10.199.0.1", "8.8.8.8", _tcp(1500, 22, FIN | ACK)), 0),
    (_checksum_free_ipv4(17, "10.199.0.1", "10.199.0.53", _udp(5353, 53, b"q" * 30)), 0),
    (_checksum_free_ipv4(17, "172.16.0.1", "10.199.0.2", _udp(53, 40001, b"a" * 200)), 0),
    (_checksum_free_ipv4(17, "10.199.0.1", "192.168.0.1", _udp(1234, 4789, b"\xde\xad\xbe\xef" + b"v" * 12)), 0),
    (_checksum_free_ipv4(1, "10.199.0.1", "10.199.0.2", _icmp(8, data=b"p" * 56)), 0),
    (_checksum_free_ipv4(1, "10.199.0.2", "10.199.0.1", _icmp(0, data=b"p" * 56)), 0),
    (_checksum_free_ipv4(1, "10.199.0.9", "10.199.0.1", _icmp(3, 3, b"x" * 28), ttl=3), 0),
    (_checksum_free_ipv4(17, "10.199.0.1", "10.199.0.2", b"fragment-tail" * 3, frag=0x0010), 0),
    (_checksum_free_ipv4(17, "10.199.0.1", "10.199.0.2", _udp(999, 1999), frag=0x2000), 0),
    (_checksum_free_ipv4(6, "10.199.0.1", "10.199.0.2", _tcp(1000, 2000, ACK), options=b"\x01\x01\x01\x00"), 0),
    (_checksum_free_ipv4(47, "10.5.0.1", "10.6.0.1", b"\x00" * 24), 0),
    (_checksum_free_ipv4(6, "10.199.0.1", "10.199.0.2", _tcp(1234, 80, SYN, b"z" * 100)), 40),  # truncated
    (_ipv6(6, "fd00:199::1", "fd00:199::2", _tcp(1234, 443, SYN)), 0),
    (_ipv6(17, "fd00:199::2", "fd00:199::1", _udp(53, 33333, b"r" * 64)), 0),
    (_ipv6(17, "2001:db8::1", "fd00:199::2", _udp(4000, 4789, b"\xde\xad\xbe\xef")), 0),
    (_ipv6(58, "fd00:199::1", "fd00:199::2", _icmp(128, data=b"p" * 56)), 0),
    (_ipv6(58, "fd00:199::2", "fd00:199::1", _icmp(129, data=b"p" * 56)), 0),
    (_ipv6(0, "fd00:199::1", "ff02::16", b"\x3a\x00\x05\x02\x00\x00\x01\x00" + _icmp(143)), 0),  # hop-by-hop
    (_ipv6(44, "fd00:199::1", "fd00:199::2", b"\x11\x00\x00\x01\x00\x00\x00\x07" + _udp(7, 8, b"f" * 8)), 0),
    (_ipv6(6, "2001:db8::5", "2001:db8::6", _tcp(1234, 80, ACK, b"y" * 300)), 0),
]
LINKTYPE_RAW = 101


def _write_pcap(path: Path) -> None:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW)]
    for index, (packet, caplen) in enumerate(PACKETS):
        kept = packet[:caplen] if caplen else packet
        out.append(struct.pack("<IIII", index + 1, 0, len(kept), len(packet)) + kept)
    path.write_bytes(b"".join(out))


def _tcpdump_verdicts(pcap: Path, expression: str) -> list[bool]:
    result = subprocess.run(["tcpdump", "-r", str(pcap), "-n", "-tt", "--", expression], capture_output=True,
                            text=True, check=True)
    matched = {int(line.split(".")[0]) - 1 for line in result.stdout.splitlines() if re.match(r"\d+\.\d{6} ", line)}
    return [index in matched for index in range(len(PACKETS))]


HARNESS = """#include <stdint.h>
#include <string.h>
typedef uint8_t u8; typedef uint16_t u16; typedef uint32_t u32; typedef uint64_t u64;
#undef __always_inline
#define __always_inline inline __attribute__((always_inline))
static long bpf_probe_read_kernel(void *dst, u32 size, const void *src) { memcpy(dst, src, size); return 0; }
"""


@pytest.fixture(scope="module")
def translated(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """Every expression's generated C, compiled by the host compiler with warnings as errors."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (scripts/setup.sh installs it)")
    directory = tmp_path_factory.mktemp("pcap")
    functions = [c_function(compile_filter(expression), f"ipft_pcap_{i}") for i, expression in enumerate(EXPRESSIONS)]
    wrappers = [f"int run_{i}(const unsigned char *p, u32 len, u32 caplen) {{ return ipft_pcap_{i}(p, len, caplen); }}"
                for i in range(len(EXPRESSIONS))]
    source = directory / "filters.c"
    source.write_text(HARNESS + "\n".join(functions + wrappers) + "\n")
    library = directory / "filters.so"
    subprocess.run(["gcc", "-O1", "-Wall", "-Wextra", "-Werror", "-Wno-unused-label", "-Wno-type-limits", "-shared", "-fPIC", "-o",
                    str(library), str(source)], check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(library))


@pytest.fixture(scope="module")
def pcap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump is not installed (scripts/setup.sh installs it)")
    path = tmp_path_factory.mktemp("pcap") / "packets.pcap"
    _write_pcap(path)
    return path


def test_enough_expressions_are_compared() -> None:
    assert len(EXPRESSIONS) >= 30 and len(set(EXPRESSIONS)) == len(EXPRESSIONS)


@pytest.mark.parametrize("index", range(len(EXPRESSIONS)), ids=EXPRESSIONS)
def test_translated_filter_agrees_with_tcpdump(index: int, translated: ctypes.CDLL, pcap: Path) -> None:
    expression = EXPRESSIONS[index]
    expected = _tcpdump_verdicts(pcap, expression)
    run = getattr(translated, f"run_{index}")
    got = []
    for packet, caplen in PACKETS:
        # The whole packet is in memory, as in the kernel: only caplen bounds what the filter may read.
        buffer = ctypes.create_string_buffer(packet, len(packet))
        got.append(bool(run(buffer, len(packet), caplen or len(packet))))
    assert got == expected, expression


def test_the_comparison_can_fail_on_a_wrong_translation(translated: ctypes.CDLL, pcap: Path) -> None:
    """tcpdump's verdicts distinguish the expressions: a filter swapped for another one would be caught."""
    verdicts = {tuple(_tcpdump_verdicts(pcap, expression)) for expression in EXPRESSIONS}
    assert len(verdicts) > len(EXPRESSIONS) * 3 // 4
    assert any(verdicts_row.count(True) not in (0, len(PACKETS)) for verdicts_row in verdicts)


@pytest.mark.parametrize(("expression", "message"), [
    ("ether host 01:02:03:04:05:06", "link-layer"),
    ("vlan 10", "no VLAN support"),
    ("arp", "rejects all packets"),
    ("mpls", "no MPLS support"),
    ("tcp and", "syntax error"),
    ("   ", "pcap filter is empty"),
    ("host ünïcode", "not ASCII"),
])
def test_expressions_that_cannot_apply_are_one_line_errors(expression: str, message: str) -> None:
    with pytest.raises(PcapFilterError, match=re.escape(message)) as caught:
        compile_filter(expression)
    assert "\n" not in str(caught.value)


def test_the_expression_text_never_reaches_the_c() -> None:
    text = c_function(compile_filter("host 10.199.0.1 and port 53"), "f")
    assert "10.199" not in text and "53U" in text and "host" not in text
    with pytest.raises(ValueError):
        c_function(compile_filter("tcp"), "f(); evil")


@pytest.mark.parametrize(("insns", "message"), [
    ((Insn(0x15, 5, 0, 1), Insn(0x06, 0, 0, 0)), "jump past the end"),
    ((Insn(0x00, 0, 0, 0),), "does not end with a return"),
    ((Insn(0x61, 0, 0, 16), Insn(0x06, 0, 0, 0)), "cannot be translated"),
    ((Insn(0xC7, 0, 0, 0), Insn(0x06, 0, 0, 0)), "cannot be translated"),
    ((Insn(0x06, 0, 0, 1),) * 513, "at most 512"),
])
def test_programs_the_translator_cannot_express_are_refused(insns: tuple[Insn, ...], message: str) -> None:
    with pytest.raises(PcapFilterError, match=message):
        PcapFilter("x", insns)
