"""FlowSpec: which packets to trace (ip version, L4 protocol, address CIDRs, ports), and its BPF filter text.

Only validated numbers ever reach the generated C: names, addresses and ports are parsed here into ints.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import UsageError
from .pcapfilter import PcapFilter, c_function, compile_filter
from .protocols import PORT_PROTOCOLS, parse_protocol, protocol_name

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_FLOWS = 64
FLOW_KEYS = ("name", "ipversion", "l4proto", "saddr", "daddr", "sport", "dport", "filter", "ifname", "netns")
IFNAMSIZ = 16
NETNS_INODE_FIRST = 0xE0000000  # below every namespace inode (init ones: 0xEFFFFFF9...); PIDs are far below


@dataclass(frozen=True, slots=True)
class FlowSpec:
    """One flow to trace; None / 0 fields match anything."""

    name: str = "default"
    ipversion: int = 0  # 0 = any, 4 or 6
    l4proto: int | None = None
    saddr: Network | None = None
    daddr: Network | None = None
    sport: int | None = None
    dport: int | None = None
    pcap: PcapFilter | None = None  # a pcap-filter expression, ANDed with the fields above
    ifname: str | None = None  # the device where the packet is first matched (the event's device)
    netns: int | None = None  # that device's network namespace, by inode number

    def __post_init__(self) -> None:
        if not self.name or not all(ch.isalnum() or ch in "-_." for ch in self.name):
            raise UsageError(f"flow name {self.name!r}: use letters, digits, '-', '_' or '.'")
        if self.ipversion not in (0, 4, 6):
            raise UsageError(f"ipversion {self.ipversion}: must be any, 4 or 6")
        versions = {net.version for net in (self.saddr, self.daddr) if net is not None}
        if len(versions) > 1:
            raise UsageError("saddr and daddr are of different IP versions")
        if versions and self.ipversion and versions != {self.ipversion}:
            (version,) = versions
            raise UsageError(f"an IPv{version} address cannot match ipversion {self.ipversion}")
        if self.l4proto is not None and not 0 <= self.l4proto <= 255:
            raise UsageError(f"l4proto {self.l4proto}: must be 0-255")
        if self.ifname is not None:
            check_ifname(self.ifname)
        if self.netns is not None and not NETNS_INODE_FIRST <= self.netns <= 0xFFFFFFFF:
            raise UsageError(f"netns {self.netns}: not a namespace inode number")
        version = self.effective_ipversion
        wrong_icmp = {4: (58, "ICMPv6"), 6: (1, "ICMP")}.get(version)
        if wrong_icmp and self.l4proto == wrong_icmp[0]:
            raise UsageError(f"l4proto {wrong_icmp[1]} never matches IPv{version} packets")
        for key in ("sport", "dport"):
            port = getattr(self, key)
            if port is not None:
                if not 1 <= port <= 65535:
                    raise UsageError(f"{key} {port}: must be 1-65535")
                if self.l4proto is not None and self.l4proto not in PORT_PROTOCOLS:
                    raise UsageError(f"{key} needs a protocol with ports (TCP, UDP, SCTP, UDPLITE), not {protocol_name(self.l4proto)}")

    @property
    def effective_ipversion(self) -> int:
        """The IP version this flow matches, implied by its addresses when not given (0 = both)."""
        if self.ipversion:
            return self.ipversion
        for net in (self.saddr, self.daddr):
            if net is not None:
                return net.version
        return 0

    def describe(self) -> str:
        """One line such as 'web: ipv4 TCP dst 10.96.0.0/12:443'."""
        parts = [f"ipv{self.effective_ipversion}" if self.effective_ipversion else "any-ip"]
        parts.append(protocol_name(self.l4proto) if self.l4proto is not None else "any-l4")
        for label, net, port in (("src", self.saddr, self.sport), ("dst", self.daddr, self.dport)):
            if net is not None or port is not None:
                parts.append(f"{label} {net if net is not None else '*'}{':' + str(port) if port else ''}")
        if self.pcap is not None:
            parts.append(f"filter {self.pcap.expression!r}")
        if self.ifname is not None:
            parts.append(f"on {self.ifname}")
        if self.netns is not None:
            parts.append(f"in netns {self.netns}")
        return f"{self.name}: {' '.join(parts)}"


def _is_any(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "any"))


def parse_ipversion(value: Any) -> int:
    """'any' / None -> 0, '4' / 4 -> 4, '6' / 6 -> 6."""
    if _is_any(value):
        return 0
    text = str(value).strip().lower().removeprefix("ipv")
    if text in ("4", "6"):
        return int(text)
    raise UsageError(f"ipversion {value!r}: must be any, 4 or 6")


def parse_l4proto(value: Any) -> int | None:
    """'any' / None -> None, 'tcp' / 'TCP' / 6 -> 6."""
    if _is_any(value):
        return None
    if isinstance(value, bool):
        raise UsageError(f"l4proto {value!r}: must be a protocol name or number")
    try:
        return parse_protocol(str(value))
    except ValueError as err:
        raise UsageError(f"l4proto: {err}") from None


def parse_network(value: Any, key: str, version: int | None = None) -> Network | None:
    """An address or CIDR ('10.0.0.1', '10.96.0.0/12', 'fd00::/64'); host bits must be zero."""
    if _is_any(value):
        return None
    text = str(value).strip()
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as err:
        raise UsageError(f"{key} {text!r}: not an IP address or CIDR ({err})") from None
    if version is not None and net.version != version:
        raise UsageError(f"{key} {text!r}: not an IPv{version} address")
    return net


def parse_port(value: Any, key: str) -> int | None:
    """'any' / None -> None, '443' / 443 -> 443 (1-65535)."""
    if _is_any(value):
        return None
    if isinstance(value, bool):
        raise UsageError(f"{key} {value!r}: must be a port number 1-65535")
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()):
        raise UsageError(f"{key} {value!r}: must be a port number 1-65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise UsageError(f"{key} {port}: must be 1-65535")
    return port


def parse_filter(value: Any, key: str = "filter") -> PcapFilter | None:
    """None -> None; a pcap-filter expression -> its compiled program (raises UsageError, also when empty)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise UsageError(f"{key} {value!r}: must be a pcap-filter expression (a string)")
    return compile_filter(value)


def check_ifname(name: str) -> None:
    """A device name the kernel could have: 1-15 printable ASCII characters, no '/', ':' or white space."""
    if not (0 < len(name) < IFNAMSIZ and name.isascii() and name.isprintable()
            and not any(ch in "/: \t" for ch in name)):
        raise UsageError(f"ifname {name!r}: not a device name (1-{IFNAMSIZ - 1} characters, no '/', ':' or spaces)")


def parse_ifname(value: Any, key: str = "ifname") -> str | None:
    """None -> None; 'eth0' -> 'eth0' (checked)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise UsageError(f"{key} {value!r}: must be a device name")
    check_ifname(value)
    return value


def parse_netns(value: Any, key: str = "netns") -> int | None:
    """A network namespace as its inode number, from a path (/run/netns/NAME, /proc/PID/ns/net), an inode
    number (4026531840 and up, also as 'net:[4026531840]') or a PID (whose namespace is read now)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise UsageError(f"{key} {value!r}: must be a path, an inode number or a PID")
    text = str(value).strip()
    if text.startswith("net:[") and text.endswith("]"):
        text = text[5:-1]
    if text.isascii() and text.isdigit():
        number = int(text)
        if number >= NETNS_INODE_FIRST:
            if number > 0xFFFFFFFF:
                raise UsageError(f"{key} {value!r}: not a namespace inode number")
            return number
        path = f"/proc/{number}/ns/net"
    elif text:
        path = text
    else:
        raise UsageError(f"{key} is empty: give a path, an inode number or a PID")
    try:
        inode = os.stat(path).st_ino
    except OSError as err:
        raise UsageError(f"{key} {value!r}: cannot read {path}: {err.strerror}") from None
    if not NETNS_INODE_FIRST <= inode <= 0xFFFFFFFF:
        raise UsageError(f"{key} {value!r}: {path} is not a namespace file")
    return inode


def flow_from_mapping(raw: Mapping[str, Any], default_name: str = "default") -> FlowSpec:
    """A FlowSpec from a config mapping (keys: FLOW_KEYS). Raises UsageError naming the key."""
    unknown = sorted(set(raw) - set(FLOW_KEYS))
    if unknown:
        raise UsageError(f"unknown key {unknown[0]!r} (known: {', '.join(FLOW_KEYS)})")
    name = raw.get("name", default_name)
    if not isinstance(name, str):
        raise UsageError(f"name {name!r}: must be a string")
    return FlowSpec(
        name=name,
        ipversion=parse_ipversion(raw.get("ipversion")),
        l4proto=parse_l4proto(raw.get("l4proto")),
        saddr=parse_network(raw.get("saddr"), "saddr"),
        daddr=parse_network(raw.get("daddr"), "daddr"),
        sport=parse_port(raw.get("sport"), "sport"),
        dport=parse_port(raw.get("dport"), "dport"),
        pcap=parse_filter(raw.get("filter")),
        ifname=parse_ifname(raw.get("ifname")),
        netns=parse_netns(raw.get("netns")),
    )


def check_flows(flows: Sequence[FlowSpec]) -> None:
    """At least one, at most MAX_FLOWS, unique names."""
    if not flows:
        raise UsageError("no flow to trace")
    if len(flows) > MAX_FLOWS:
        raise UsageError(f"{len(flows)} flows: at most {MAX_FLOWS} are supported")
    seen: set[str] = set()
    for flow in flows:
        if flow.name in seen:
            raise UsageError(f"flow name {flow.name!r} is used twice")
        seen.add(flow.name)


# ---- BPF filter text --------------------------------------------------------------------------------

def _word_masks(net: Network) -> list[tuple[int, int, int]]:
    """(word index, mask, value) triples comparing the address as u32 words in memory (little-endian load)."""
    packed = net.network_address.packed
    mask = net.netmask.packed
    out = []
    for index in range(len(packed) // 4):
        m = int.from_bytes(mask[index * 4:index * 4 + 4], "little")
        if m:
            v = int.from_bytes(packed[index * 4:index * 4 + 4], "little")
            out.append((index, m, v))
    return out


def flow_condition(flow: FlowSpec) -> str:
    """C boolean expression over `const struct ipft_tuple *t` matching this flow (numbers only)."""
    terms: list[str] = []
    version = flow.effective_ipversion
    if version:
        terms.append(f"t->ipversion == {int(version)}")
    else:
        terms.append("t->ipversion != 0")
    if flow.l4proto is not None:
        terms.append(f"t->l4proto == {int(flow.l4proto)}")
    for field, net in (("saddr", flow.saddr), ("daddr", flow.daddr)):
        if net is not None:
            for index, mask, value in _word_masks(net):
                terms.append(f"(t->{field}[{index}] & 0x{mask:08x}U) == 0x{value:08x}U")
    for field, port in (("sport", flow.sport), ("dport", flow.dport)):
        if port is not None:
            terms.append(f"t->has_ports && t->{field} == {int(port)}")
    return " && ".join(terms)


PCAP_LENGTHS = """static __always_inline void ipft_pcap_lengths(struct sk_buff *skb, const unsigned char *data,
                                              const unsigned char *l3, u32 *len, u32 *caplen)
{
    u32 skb_len = 0, data_len = 0;
    bpf_probe_read_kernel(&skb_len, sizeof(skb_len), (char *)skb + __builtin_offsetof(struct sk_buff, len));
    bpf_probe_read_kernel(&data_len, sizeof(data_len), (char *)skb + __builtin_offsetof(struct sk_buff, data_len));
    long total = (long)skb_len - (long)(l3 - data); /* skb->len counts from skb->data; the IP header may be before */
    long linear = total - (long)data_len; /* what is readable from l3 (paged data is not) */
    *len = total > 0 ? (u32)total : 0;
    *caplen = linear > 0 ? (u32)linear : 0;
}"""


def _name_words(name: str) -> tuple[int, int]:
    raw = name.encode("ascii").ljust(IFNAMSIZ, b"\0")
    return int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")


def where_function(flows: Sequence[FlowSpec]) -> str:
    """C function `ipft_match_where(flow, dev)`: 1 if the event's device (the tracepoint's device argument, else
    skb->dev) has the flow's ifname and is in its netns, run where a packet is first matched (so it is followed to
    other devices and namespaces)."""
    names = any(flow.ifname is not None for flow in flows)
    netns = any(flow.netns is not None for flow in flows)
    lines = ["static __always_inline int ipft_match_where(int flow, struct net_device *dev)", "{"]
    if not (names or netns):
        return "\n".join([*lines, "    (void)flow; (void)dev;", "    return 1;", "}"])
    if names:
        lines += ["    u64 name[2] = {};",
                  "    if (dev)",
                  "        bpf_probe_read_kernel(name, sizeof(name), (char *)dev + __builtin_offsetof(struct net_device, name));"]
    if netns:
        lines += ["    struct net *net = 0;",
                  "    u32 inum = 0;",
                  "    if (dev)",
                  "        bpf_probe_read_kernel(&net, sizeof(net), (char *)dev + __builtin_offsetof(struct net_device, nd_net));",
                  "    if (net)",
                  "        bpf_probe_read_kernel(&inum, sizeof(inum), (char *)net + __builtin_offsetof(struct net, ns.inum));"]
    for index, flow in enumerate(flows):
        terms = ["dev != 0"]
        if flow.ifname is not None:
            low, high = _name_words(flow.ifname)
            terms += [f"name[0] == 0x{low:016x}ULL", f"name[1] == 0x{high:016x}ULL"]
        if flow.netns is not None:
            terms.append(f"inum == {int(flow.netns)}U")
        if len(terms) > 1:
            lines.append(f"    if (flow == {index}) return {' && '.join(terms)}; /* flow {index} */")
    lines += ["    return 1;", "}"]
    return "\n".join(lines)


def filter_function(flows: Sequence[FlowSpec]) -> str:
    """The C flow filter, three functions (numbers only; `ipft_match_where` from where_function comes first):
    `ipft_match_headers(t)`, the first flow whose header keys match, or -1 (every probe: the cheap early exit for
    other flows); `ipft_flow_headers(flow, t)`, whether a tracked packet's headers still match its flow (a reused
    skb otherwise); and `ipft_match_first(t, skb, dev, data, l3)`, the first flow whose header keys, pcap filter
    (run on the packet from its IP header `l3`; `data` is skb->data) and device/netns (`dev`: the event's device)
    all match, or -1, run once per
    packet where it is first matched, so a packet is followed wherever its headers still match its flow."""
    check_flows(flows)
    filtered = [index for index, flow in enumerate(flows) if flow.pcap is not None]
    lines = [c_function(flows[index].pcap, f"ipft_pcap_{index}") for index in filtered]  # type: ignore[arg-type]
    if filtered:
        lines.append(PCAP_LENGTHS)
    conditions = [flow_condition(flow) for flow in flows]
    lines += ["static __always_inline int ipft_match_headers(const struct ipft_tuple *t)", "{"]
    lines += [f"    if ({condition}) return {index}; /* flow {index} */" for index, condition in enumerate(conditions)]
    lines += ["    return -1;", "}",
              "static __always_inline int ipft_flow_headers(u32 flow, const struct ipft_tuple *t)", "{"]
    lines += [f"    if (flow == {index}) return {condition}; /* flow {index} */"
              for index, condition in enumerate(conditions)]
    lines += ["    return 0;", "}",
              "static __always_inline int ipft_match_first(const struct ipft_tuple *t, struct sk_buff *skb,",
              "                                           struct net_device *dev, const unsigned char *data,",
              "                                           const unsigned char *l3)", "{",
              "    (void)dev;"]
    if filtered:
        lines += ["    u32 len = 0, caplen = 0;", "    ipft_pcap_lengths(skb, data, l3, &len, &caplen);"]
    else:
        lines += ["    (void)data; (void)l3;"]
    for index, (flow, condition) in enumerate(zip(flows, conditions)):
        pcap = f" && ipft_pcap_{index}(l3, len, caplen)" if flow.pcap is not None else ""
        lines.append(f"    if ({condition}{pcap} && ipft_match_where({index}, dev)) return {index}; /* flow {index} */")
    lines += ["    return -1;", "}"]
    return "\n".join(lines)
