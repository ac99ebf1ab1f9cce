"""Property-based tests: whatever text or flags come in, the answer is a value or one line of error (exit 2), never a
traceback; and whatever strings a flow is given, only validated numbers reach the BPF program."""

from __future__ import annotations

import contextlib
import io
import re
import string

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ipftrace_exporter import cli
from ipftrace_exporter.config import COLLECTOR_KEYS, OTLP_KEYS, PATHS_KEYS, parse_config
from ipftrace_exporter.errors import ConfigError, UsageError
from ipftrace_exporter.events import FLAG_GAP, FLAG_PREV_LOST
from ipftrace_exporter.flows import (
    FLOW_KEYS,
    PCAP_LENGTHS,
    FlowSpec,
    filter_function,
    flow_from_mapping,
    where_function,
)
from ipftrace_exporter.manifest import parse_manifest
from ipftrace_exporter.paths import PathAssembler, PathLimits
from ipftrace_exporter.probes import Probe, ProbeKind, ProbeRole
from ipftrace_exporter.program import ProbeSource, render

from .helpers import CONSUME, IP_RCV, PROBES, RECEIVE, event

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- generators -----------------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=30),
    st.sampled_from(["any", "ANY", "tcp", "UDP", "icmp", "4", "6", "ipv6", "10.0.0.0/8", "fd00::/64", "10.0.0.1/33",
                     "443", "0", "65536", "-1", "²", "٣", "1e3", "0x10", "2s", "500ms", "1m30s", "-2s", "nan",
                     "http://jaeger:4317", "ftp://x", "http://[::1", "0.0.0.0:9436", "[::]:99999", "grpc",
                     "http/protobuf", "tracepoint", "auto", "gso", "mark=0x10/0xff", "a\nb", "\x00", "\u2028"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=10), st.sampled_from(FLOW_KEYS)), inner,
                                                 max_size=4)), max_leaves=12)


def _section(keys: tuple[str, ...]) -> st.SearchStrategy:
    return st.dictionaries(st.sampled_from(keys), values, max_size=len(keys))


flow_mappings = st.dictionaries(st.sampled_from(FLOW_KEYS), scalars, max_size=len(FLOW_KEYS))
config_docs = st.fixed_dictionaries({}, optional={
    "flows": st.one_of(values, st.lists(flow_mappings, max_size=4)),
    "backend": scalars,
    "manifest": scalars,
    "modules": values,
    "paths": st.one_of(values, _section(PATHS_KEYS)),
    "traces": st.one_of(values, st.fixed_dictionaries({}, optional={
        "sample_ratio": scalars, "otlp": st.one_of(values, _section(OTLP_KEYS))})),
    "metrics": st.one_of(values, st.fixed_dictionaries({}, optional={"address": scalars})),
    "collector": st.one_of(values, _section(COLLECTOR_KEYS)),
    "unknown": scalars,
})


def _dump(doc: object) -> str:
    return yaml.safe_dump(doc, allow_unicode=True)


yaml_ish = st.text(alphabet=string.printable + "ä²\u2028", max_size=200)

# ---- config and manifest text ---------------------------------------------------------------------------------


def _one_line_or_value(parse, text: str) -> None:  # type: ignore[no-untyped-def]
    try:
        parse(text)
    except UsageError as err:  # ConfigError is a UsageError
        message = str(err)
        assert message and "\n" not in message and "\r" not in message, repr(message)


@SETTINGS
@given(st.one_of(config_docs.map(_dump), yaml_ish))
@example("flows: [{l4proto: udp, dport: '²'}]")
def test_any_config_text_parses_or_fails_with_one_line(text: str) -> None:
    _one_line_or_value(parse_config, text)


@SETTINGS
@given(config_docs.map(_dump))
def test_config_errors_are_config_errors(text: str) -> None:
    try:
        parse_config(text, "c.yaml")
    except ConfigError as err:
        assert str(err).startswith("c.yaml"), str(err)


manifest_entries = st.lists(st.one_of(
    values,
    st.fixed_dictionaries({}, optional={"name": st.one_of(scalars, st.sampled_from(["ip_rcv", "ip_rcv\n", "a b"])),
                                        "skb_pos": scalars, "egress": scalars, "extra": scalars}),
), max_size=4)
manifest_docs = st.one_of(values, st.fixed_dictionaries({}, optional={"functions": st.one_of(values, manifest_entries),
                                                                      "other": scalars}))


@SETTINGS
@given(st.one_of(manifest_docs.map(_dump), yaml_ish))
@example("\x0c")
def test_any_manifest_text_parses_or_fails_with_one_line(text: str) -> None:
    _one_line_or_value(parse_manifest, text)


# ---- ipftrace flags -------------------------------------------------------------------------------------------

FLAG_VALUES = {
    "-iv": st.sampled_from(["any", "4", "6", "5", "x", ""]),
    "-l4": st.one_of(scalars.map(str), st.sampled_from(["tcp", "UDP", "256", "-1", "sctp"])),
    "-s4": st.sampled_from(["10.0.0.1", "10.0.0.0/8", "10.0.0.1/8", "fd00::1", "x", "", "any"]),
    "-d4": st.sampled_from(["10.0.0.1", "10.0.0.0/8", "300.1.1.1", "fd00::1", "any"]),
    "-s6": st.sampled_from(["fd00::1", "fd00::/64", "10.0.0.1", "::/0", "x"]),
    "-d6": st.sampled_from(["fd00::1", "fd00::1/64", "::1", "any"]),
    "-sp": st.one_of(scalars.map(str), st.sampled_from(["443", "0", "65536", "²", "٣"])),
    "-dp": st.one_of(scalars.map(str), st.sampled_from(["53", "70000", "-5", "1e3"])),
    "-m": st.sampled_from(["gso", "nope", "mark=0x10/0xff", "mark=zz", "", "../x"]),
    "-b": st.sampled_from(["auto", "tracepoint", "kfunc", "kprobe", "ebpf", ""]),
    "-n": st.sampled_from(["1", "0", "-3", "x"]),
    "-t": st.sampled_from(["1", "0.5", "-1", "x", "nan"]),
    "-o": st.sampled_from(["text", "json", "yaml", "xml"]),
    "--log-level": st.sampled_from(["info", "debug", "loud"]),
}
flag_args = st.lists(
    st.one_of(
        st.sampled_from(sorted(FLAG_VALUES)).flatmap(lambda flag: FLAG_VALUES[flag].map(lambda value: [flag, value])),
        st.sampled_from([["--bogus"], ["-x"], ["/nonexistent/manifest.yaml"], ["a", "b"], ["-sp"], ["--help"]]),
        st.text(max_size=12).map(lambda text: [text]),
    ),
    max_size=6,
).map(lambda groups: [part for group in groups for part in group if part not in ("-l", "--list")])


@pytest.fixture
def no_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever parses must not reach the kernel: tracing and listing are replaced by a success."""
    monkeypatch.setattr(cli, "trace", lambda *args, **kwargs: cli.EXIT_OK)
    monkeypatch.setattr(cli, "list_probes", lambda *args, **kwargs: cli.EXIT_OK)


@settings(SETTINGS, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(args=flag_args)
@example(args=["-sp", "²"])
def test_any_ipftrace_flags_succeed_or_fail_with_exit_2_and_one_line(no_kernel: None, args: list[str]) -> None:
    stderr, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        code = cli.run_command("ipftrace", cli.ipftrace_cli, args)
    err = stderr.getvalue()
    assert "Traceback" not in err
    if code != cli.EXIT_OK:
        assert code == cli.EXIT_USAGE, (args, code, err)
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("ipftrace: error: "), (args, err)


# ---- flow values never reach the BPF program as text ----------------------------------------------------------

# The only shapes of a flow condition term: fixed field names and operators around decimal or hex numbers.
_TERM = re.compile(
    r"t->ipversion (?:==|!=) \d+"
    r"|t->l4proto == \d+"
    r"|\(t->[sd]addr\[[0-3]\] & 0x[0-9a-f]{8}U\) == 0x[0-9a-f]{8}U"
    r"|t->has_ports && t->[sd]port == \d+"
)
_LINES = (  # most specific first: ipft_match_first, ipft_flow_headers, ipft_match_headers
    re.compile(r"    if \((?P<terms>.+?)(?: && ipft_pcap_\d+\(l3, len, caplen\))? && ipft_match_where\(\d+, dev\)\) "
               r"return \d+; /\* flow \d+ \*/"),
    re.compile(r"    if \(flow == \d+\) return (?P<terms>.+?); /\* flow \d+ \*/"),
    re.compile(r"    if \((?P<terms>.+?)\) return \d+; /\* flow \d+ \*/"),
)
_FIXED_LINES = ("static __always_inline int ipft_match_headers(const struct ipft_tuple *t)",
                "static __always_inline int ipft_flow_headers(u32 flow, const struct ipft_tuple *t)",
                "static __always_inline int ipft_match_first(const struct ipft_tuple *t, struct sk_buff *skb,",
                "                                           struct net_device *dev, const unsigned char *data,",
                "                                           const unsigned char *l3)",
                "{", "    (void)dev;", "    (void)data; (void)l3;", "    u32 len = 0, caplen = 0;",
                "    ipft_pcap_lengths(skb, data, l3, &len, &caplen);", "    return -1;", "    return 0;", "}")
# The translated pcap filter: fixed words of the translator around numbers, never the expression's text.
_PCAP_WORDS = {"static", "__always_inline", "int", "const", "unsigned", "char", "pkt", "u32", "len", "caplen", "A",
               "X", "M", "b", "u8", "u64", "return", "if", "goto", "bpf_probe_read_kernel", "void", "ULL", "U"}

hostile = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["²", "٣", "1; } evil(); {", "*/ x /*", "10.0.0.1/32 || 1", "6) || (1", "443\n#include <x>", "tcp\"",
                     "4 && 0", "::ffff:10.0.0.1", "10.0.0.0/8", "fd00::/64", "1", "65535", "icmp", "ICMPv6"]),
    st.integers(-(2**40), 2**40), st.none(), st.booleans(), st.floats(),
)


_WHERE = re.compile(r"    if \(flow == 0\) return dev != 0(?: && name\[[01]\] == 0x[0-9a-f]{16}ULL)*(?: && inum == \d+U)?;"
                    r" /\* flow 0 \*/")
_CONDITION = re.compile(rf"(?:{_TERM.pattern})(?: && (?:{_TERM.pattern}))*")


def _check_filter_text(text: str) -> None:
    if PCAP_LENGTHS in text:
        pcap, text = text.split(PCAP_LENGTHS)
        words = set(re.findall(r"[A-Za-z_][A-Za-z_0-9]*", re.sub(r"\b(?:0x)?[0-9a-f]+(?:ULL|U)?\b", " ", pcap)))
        assert words <= _PCAP_WORDS | {"ipft_pcap_0"} | {f"L{i}" for i in range(600)}, words - _PCAP_WORDS
        text = text.lstrip("\n")
    for line in text.splitlines():
        if line in _FIXED_LINES:
            continue
        match = next((m for m in (pattern.fullmatch(line) for pattern in _LINES) if m), None)
        assert match, repr(line)
        assert _CONDITION.fullmatch(match.group("terms")), repr(line)


@SETTINGS
@given(st.dictionaries(st.sampled_from(FLOW_KEYS), hostile, max_size=len(FLOW_KEYS)))
@example({"dport": "²"})
@example({"filter": "tcp and port 1", "l4proto": "tcp"})
@example({"ifname": "0", "netns": "4026531840"})
def test_flow_values_reach_the_bpf_filter_only_as_validated_numbers(raw: dict) -> None:
    try:
        flow = flow_from_mapping(raw)
    except UsageError:
        return
    text = filter_function([flow])
    _check_filter_text(text)
    source = ProbeSource(Probe(0, "net:netif_receive_skb", ProbeKind.TRACEPOINT, 1, ProbeRole.STEP),
                         "netif_receive_skb", 0)
    where = where_function([flow])
    for line in where.splitlines():  # fixed lines of where_function, or a comparison of numbers
        fixed = where_function([FlowSpec(ifname="x", netns=2**32 - 1)]) + where_function([FlowSpec()])
        assert line in fixed.splitlines() or _WHERE.fullmatch(line), line
    program = render([source], [flow]).text
    plain_flow = FlowSpec(name=flow.name)
    plain = render([source], [plain_flow]).text
    # The whole program differs from a match-everything flow's only inside the filter functions.
    assert program.replace(text, "").replace(where, "") == \
        plain.replace(filter_function([plain_flow]), "").replace(where_function([plain_flow]), "")


# ---- lost events never merge two packets into one path ---------------------------------------------------------


packets = st.lists(st.tuples(st.integers(0, 1), st.lists(st.booleans(), min_size=4, max_size=4)), min_size=1,
                   max_size=12)


@SETTINGS
@given(packets)
def test_lost_events_never_merge_two_packets_into_one_path(plan: list[tuple[int, list[bool]]]) -> None:
    """Packets one after another at two reused skb addresses (receive, ip_rcv, ip_rcv, consume); some events lost
    as the kernel loses them: a packet whose first event (the headers) is lost sends nothing more, and once a
    later step is lost the packet's next events carry FLAG_GAP."""
    assembler = PathAssembler(PROBES, PathLimits(settle_ns=0, idle_timeout_ns=10**12), clock=lambda: 0)
    done = []
    ts = 0
    lost_end = [False, False]  # per address: the last traced packet there lost its end (the kernel remembers)
    for packet, (address, kept) in enumerate(plan):
        skb = 0xFFFF888000001000 + address * 0x1000
        gap = False
        if not kept[0]:
            ts += 40
            continue
        for step, (probe, keep) in enumerate(zip((RECEIVE, IP_RCV, IP_RCV, CONSUME), kept)):
            ts += 10
            if not keep:
                gap = gap or probe != CONSUME
                continue
            flags = FLAG_GAP if gap else 0
            if step == 0 and lost_end[address]:
                flags |= FLAG_PREV_LOST
                lost_end[address] = False
            raw = event(ts, probe, skb, first=step == 0, dport=packet, proto=17)
            done += assembler.add(raw._replace(cpu=packet, flags=raw.flags | flags))
        lost_end[address] = not kept[3]
    done += assembler.flush()
    for path in done:
        assert len({e.cpu for e in path.events}) == 1, [(e.cpu, e.probe_id) for e in path.events]
        packet = path.events[0].cpu
        kept = plan[packet][1]
        if all(kept):
            assert path.outcome == "delivered" and len(path.events) == 4
        elif any(e.flags & FLAG_GAP for e in path.events):
            assert path.outcome == "truncated"
        elif not kept[3] and any(p > packet and plan[p][0] == plan[packet][0] and plan[p][1][0]
                                 for p in range(len(plan))):
            assert path.outcome == "truncated"  # its end was lost, and the next packet at the address said so
        if path.outcome == "delivered":
            assert all(kept)  # a path says it is complete only when it is


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 40), st.sampled_from([RECEIVE, IP_RCV, CONSUME]), st.booleans()),
                max_size=300),
       st.integers(1, 8), st.integers(1, 30))
def test_open_paths_never_hold_more_events_than_the_limit(stream: list[tuple[int, int, bool]], max_events: int,
                                                         max_held: int) -> None:
    limits = PathLimits(max_events=max_events, max_inflight=16, max_held_events=max_held, settle_ns=0)
    assembler = PathAssembler(PROBES, limits, clock=lambda: 0)
    emitted = 0
    for ts, (address, probe, first) in enumerate(stream, start=1):
        emitted += sum(len(p.events) for p in assembler.add(event(ts, probe, 0x1000 * (address + 1), first=first)))
        assert assembler.held_events == sum(len(p.events) for p in assembler._open.values())
        assert assembler.held_events <= max(max_held, max_events)
        assert assembler.inflight <= 16
    emitted += sum(len(p.events) for p in assembler.flush())
    assert emitted == len(stream)  # nothing is lost on the way: evicted paths come out (truncated)
