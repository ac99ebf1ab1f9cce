"""`tcp`: TCP flags, sequence and acknowledgment numbers and window of TCP packets, at every event.

The core parser reads headers only when a packet is first matched, so the data hook finds the TCP header itself on
each event: the IP header at skb->head + network_header (else at skb->data, as the core parser does), then the TCP
header after it (IPv4 options skipped; IPv6 only without extension headers). Non-TCP packets carry nothing."""

from __future__ import annotations

import struct

from .base import Fields, Module, flag_names

# data[0] = 1 when a TCP header was found; data[4..16] = bytes 4..15 of the TCP header as on the wire.
_LAYOUT = struct.Struct(">B3xIIBBH")
TCP_FLAGS = {
    0x01: "FIN", 0x02: "SYN", 0x04: "RST", 0x08: "PSH", 0x10: "ACK", 0x20: "URG", 0x40: "ECE", 0x80: "CWR",
    0x100: "AE",
}

C_FIND_TCP_HEADER = """\
/* The TCP header of skb, or 0 when it is not a (first-fragment) TCP packet over IPv4/IPv6. */
static __always_inline unsigned char *ipft_tcp_header(struct sk_buff *skb)
{
    unsigned char *head = 0, *start = 0;
    u16 network_header = 0, protocol = 0;
    IPFT_MOD_MEMBER(head, skb, struct sk_buff, head);
    IPFT_MOD_MEMBER(start, skb, struct sk_buff, data);
    IPFT_MOD_MEMBER(network_header, skb, struct sk_buff, network_header);
    IPFT_MOD_MEMBER(protocol, skb, struct sk_buff, protocol);
    protocol = bpf_ntohs(protocol);
    unsigned char *first = start, *second = 0;
    if (network_header != (u16)~0U && network_header != 0) {
        first = head + network_header;
        second = start;
    }
#pragma unroll
    for (int attempt = 0; attempt < 2; attempt++) {
        unsigned char *l3 = attempt == 0 ? first : second;
        u8 version_byte = 0;
        if (!l3 || IPFT_MOD_READ(version_byte, l3) < 0)
            return 0;
        u8 version = version_byte >> 4;
        if (version == 4 && (protocol == 0x0800 || protocol == 0)) {
            struct iphdr iph = {};
            if (IPFT_MOD_READ(iph, l3) < 0 || iph.ihl < 5 || iph.protocol != 6)
                return 0;
            if (bpf_ntohs(iph.frag_off) & 0x1fff)
                return 0;
            return l3 + iph.ihl * 4;
        }
        if (version == 6 && (protocol == 0x86DD || protocol == 0)) {
            struct ipv6hdr ip6 = {};
            if (IPFT_MOD_READ(ip6, l3) < 0 || ip6.nexthdr != 6)
                return 0;
            return l3 + sizeof(ip6);
        }
    }
    return 0;
}
"""


class TcpModule(Module):
    """flags (e.g. `SYN|ACK`), seq, ack and window of TCP packets."""

    name = "tcp"
    data_size = _LAYOUT.size
    description = "TCP flags, seq, ack and window"

    def c_declarations(self) -> str:
        return C_FIND_TCP_HEADER

    def c_data(self) -> str:
        return """\
unsigned char *tcp = ipft_tcp_header(skb);
if (tcp && bpf_probe_read_kernel(data + 4, 12, tcp + 4) == 0)
    data[0] = 1;
"""

    def decode(self, data: bytes) -> Fields:
        found, seq, ack, offset_byte, flags_byte, window = _LAYOUT.unpack(data)
        if not found:
            return {}
        flags = flags_byte | ((offset_byte & 0x01) << 8)
        return {"flags": flag_names(flags, TCP_FLAGS), "seq": seq, "ack": ack, "window": window}

    def text(self, fields: Fields) -> str:
        if not fields:
            return ""
        return f"(flags: {fields['flags']} seq: {fields['seq']} ack: {fields['ack']} win: {fields['window']})"
