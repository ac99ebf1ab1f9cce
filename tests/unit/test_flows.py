from __future__ import annotations

import re

import pytest

from ipftrace_exporter.errors import UsageError
from ipftrace_exporter.flows import (
    FlowSpec,
    filter_function,
    flow_condition,
    flow_from_mapping,
    parse_network,
)


def test_cidr_becomes_masked_word_comparisons() -> None:
    flow = flow_from_mapping({"name": "web", "l4proto": "tcp", "daddr": "10.96.0.0/12", "dport": "443"})
    assert flow.effective_ipversion == 4
    condition = flow_condition(flow)
    assert "t->ipversion == 4" in condition and "t->l4proto == 6" in condition
    assert "(t->daddr[0] & 0x0000f0ffU) == 0x0000600aU" in condition  # 10.96/12 as a little-endian load
    assert "t->dport == 443" in condition


def test_ipv6_prefix_compares_only_the_masked_words() -> None:
    condition = flow_condition(FlowSpec(name="v6", saddr=parse_network("fd00:199::/64", "saddr")))
    assert "t->ipversion == 6" in condition
    assert "saddr[0]" in condition and "saddr[1]" in condition and "saddr[2]" not in condition


def test_any_flow_matches_every_ip_packet() -> None:
    assert flow_condition(FlowSpec()) == "t->ipversion != 0"


def test_filter_returns_the_first_matching_flow_index() -> None:
    text = filter_function([FlowSpec(name="a", l4proto=1), FlowSpec(name="b", l4proto=17)])
    assert "return 0; /* flow 0 */" in text and "return 1; /* flow 1 */" in text and text.rstrip().endswith("}")


def test_flow_names_and_values_never_reach_the_c_text() -> None:
    flow = flow_from_mapping({"name": "evil.name-1", "l4proto": "udp", "dport": 53})
    text = filter_function([flow])
    assert "evil" not in text
    assert re.fullmatch(r"[\sa-z_0-9(){}\[\]&=<>!*;/,.:x-]+", text.replace("const struct ipft_tuple", "")), text


@pytest.mark.parametrize(("raw", "message"), [
    ({"daddr": "10.0.0.300"}, "daddr '10.0.0.300': not an IP address"),
    ({"daddr": "10.0.0.1/8"}, "has host bits set"),
    ({"l4proto": "bogus"}, "unknown protocol 'bogus'"),
    ({"l4proto": 300}, "out of range"),
    ({"dport": 70000}, "dport 70000: must be 1-65535"),
    ({"sport": "http"}, "sport 'http': must be a port number"),
    ({"ipversion": 4, "daddr": "fd00::1"}, "IPv6 address cannot match ipversion 4"),
    ({"saddr": "10.0.0.1", "daddr": "fd00::1"}, "different IP versions"),
    ({"l4proto": "icmp", "dport": 80}, "needs a protocol with ports"),
    ({"name": "has space"}, "flow name"),
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"ipversion": 5}, "must be any, 4 or 6"),
])
def test_bad_flow_values_raise_one_line_usage_errors(raw: dict, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        flow_from_mapping(raw)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_any_and_names_are_case_insensitive() -> None:
    flow = flow_from_mapping({"ipversion": "any", "l4proto": "IcMp", "sport": "any"})
    assert (flow.ipversion, flow.l4proto, flow.sport) == (0, 1, None)


def test_ifname_and_netns_become_name_words_and_an_inode_compared_at_first_match(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ipftrace_exporter.flows import where_function

    flow = flow_from_mapping({"name": "b", "ifname": "veth0", "netns": "net:[4026532177]"})
    assert flow.describe() == "b: any-ip any-l4 on veth0 in netns 4026532177"
    text = where_function([FlowSpec(name="any"), flow])
    assert "if (flow == 1) return dev != 0 && name[0] == 0x0000003068746576ULL && name[1] == 0x0000000000000000ULL" \
        " && inum == 4026532177U; /* flow 1 */" in text
    assert "flow == 0" not in text and text.rstrip().endswith("return 1;\n}")
    assert "veth0" not in text
    plain = where_function([FlowSpec()])
    assert "return 1;" in plain and "bpf_probe_read_kernel" not in plain


def test_netns_from_a_path_a_pid_or_an_inode() -> None:
    import os

    from ipftrace_exporter.flows import parse_netns

    own = os.stat("/proc/self/ns/net").st_ino
    assert parse_netns("/proc/self/ns/net") == own
    assert parse_netns(str(os.getpid())) == own
    assert parse_netns(own) == own and parse_netns(f"net:[{own}]") == own


@pytest.mark.parametrize(("raw", "message"), [
    ({"ifname": "a/b"}, "not a device name"),
    ({"ifname": "x" * 16}, "not a device name"),
    ({"ifname": ""}, "not a device name"),
    ({"ifname": 7}, "must be a device name"),
    ({"netns": "/nonexistent/ns"}, "cannot read /nonexistent/ns"),
    ({"netns": "99999999"}, "cannot read /proc/99999999/ns/net"),
    ({"netns": "/etc/hostname"}, "is not a namespace file"),
    ({"netns": 2**33}, "not a namespace inode number"),
    ({"netns": ""}, "netns is empty"),
])
def test_bad_device_and_namespace_values(raw: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        flow_from_mapping(raw)


def test_pcap_filters_and_devices_run_only_where_a_packet_is_first_matched() -> None:
    from ipftrace_exporter.flows import parse_filter

    flows = [FlowSpec(name="syn", l4proto=6, pcap=parse_filter("tcp[tcpflags] & tcp-syn != 0")),
             FlowSpec(name="rest", l4proto=6)]
    text = filter_function(flows)
    headers = text[text.index("int ipft_match_headers"):text.index("int ipft_flow_headers")]
    tracked = text[text.index("int ipft_flow_headers"):text.index("int ipft_match_first")]
    first = text[text.index("int ipft_match_first"):]
    assert "ipft_pcap_" not in headers and "ipft_pcap_" not in tracked and "ipft_match_where" not in headers
    assert "ipft_pcap_0(l3, len, caplen) && ipft_match_where(0, dev)) return 0;" in first
    assert "ipft_match_where(1, dev)) return 1;" in first  # the second flow still takes what the filter rejects
    assert "if (flow == 1) return t->ipversion != 0 && t->l4proto == 6; /* flow 1 */" in tracked
