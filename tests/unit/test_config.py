"""Daemon config: YAML -> typed Config, one-line errors naming key and reason, the embedded default."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import textwrap

import pytest

from ipftrace_exporter.config import (
    BACKENDS,
    Config,
    ModuleSpec,
    apply_overrides,
    default_config,
    load_config,
    parse_address,
    parse_config,
    parse_duration_ns,
)
from ipftrace_exporter.errors import ConfigError, UsageError
from ipftrace_exporter.flows import MAX_FLOWS, FlowSpec
from ipftrace_exporter.manifest import default_manifest_path
from ipftrace_exporter.paths import PathLimits

DESIGN_EXAMPLE = """\
flows:                 # a packet is traced if it matches any flow; the flow's name labels metrics and spans
  - name: web
    ipversion: 4
    l4proto: TCP
    daddr: 10.96.0.0/12
    dport: 443
backend: auto
manifest: manifests/default.yaml     # omitted: BTF auto-discovery / tracepoints
modules: [gso]
paths: {idle_timeout: 2s, max_events: 256, max_inflight: 65536}
traces:
  sample_ratio: 1.0                  # per packet, decided in the kernel; metrics stay exact
  otlp: {endpoint: "http://jaeger:4317", protocol: grpc, timeout: 10s}
metrics: {address: "0.0.0.0:9436"}
"""


def error_of(text: str, source: str = "config.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), source)
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    return message


# ---- the embedded default -----------------------------------------------------------------------------


def test_embedded_default_traces_icmp_on_both_ip_versions_without_otlp():
    config = default_config()
    assert [(f.name, f.effective_ipversion, f.l4proto) for f in config.flows] == [
        ("icmp", 4, 1),
        ("icmpv6", 6, 58),
    ]
    assert config.traces.otlp.endpoint is None  # runs without Jaeger
    assert config.traces.otlp.protocol is None and config.traces.otlp.timeout_s is None
    assert 0 < config.traces.sample_ratio <= 1
    assert config.backend == "auto" and config.manifest == default_manifest_path() and config.modules == ()
    assert config.metrics.address == "0.0.0.0:9436"
    assert config.paths.max_inflight <= 65536 and config.paths.max_events <= 256
    assert config.source == "<default config>"


def test_empty_or_comment_only_config_is_the_default():
    assert parse_config("") == default_config()
    assert parse_config("# nothing here\n") == default_config()
    assert parse_config("flows: null\ntraces: null\n") == default_config()


def test_default_is_a_shared_immutable_object():
    config = default_config()
    assert default_config() is config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.backend = "kprobe"  # type: ignore[misc]


# ---- the DESIGN.md example --------------------------------------------------------------------------


def test_design_example_parses_to_typed_values():
    config = parse_config(DESIGN_EXAMPLE, "design.yaml")
    (web,) = config.flows
    assert web == FlowSpec(
        name="web", ipversion=4, l4proto=6, daddr=ipaddress.ip_network("10.96.0.0/12"), dport=443
    )
    assert config.backend == "auto"
    assert config.manifest == "manifests/default.yaml"
    assert config.modules == (ModuleSpec("gso", "gso", None),)
    assert config.paths == PathLimits(idle_timeout_ns=2_000_000_000, max_events=256, max_inflight=65536)
    assert config.traces.sample_ratio == 1.0
    assert config.traces.otlp.endpoint == "http://jaeger:4317"
    assert config.traces.otlp.protocol == "grpc"
    assert config.traces.otlp.timeout_s == 10.0
    assert config.traces.otlp.headers is None
    assert config.metrics.address == "0.0.0.0:9436"
    assert (config.metrics.host, config.metrics.port) == ("0.0.0.0", 9436)
    assert config.source == "design.yaml"
    assert config.flow_names == ("web",)


def test_left_out_keys_keep_the_default_and_mappings_merge_key_by_key():
    config = parse_config("paths: {max_events: 10}\ntraces: {otlp: {endpoint: 'http://127.0.0.1:4317'}}\n")
    default = default_config()
    assert config.paths.max_events == 10
    assert config.paths.idle_timeout_ns == default.paths.idle_timeout_ns
    assert config.paths.max_inflight == default.paths.max_inflight
    assert config.traces.sample_ratio == default.traces.sample_ratio
    assert config.traces.otlp.endpoint == "http://127.0.0.1:4317"
    assert config.flows == default.flows


def test_manifest_default_names_the_curated_manifest():
    assert parse_config("manifest: default\n").manifest == default_manifest_path()
    assert parse_config("manifest: null\n").manifest is None  # explicit: BTF discovery


def test_explicit_null_manifest_and_endpoint_mean_none():
    config = parse_config("manifest: null\ntraces: {otlp: {endpoint: null, headers: null}}\n")
    assert config.manifest is None
    assert config.traces.otlp.endpoint is None and config.traces.otlp.headers is None


def test_otlp_headers_are_an_immutable_lowercased_string_mapping():
    config = parse_config(
        "traces: {otlp: {protocol: HTTP/Protobuf, headers: {Authorization: 'Bearer x', X-Id: 7}}}"
    )
    headers = config.traces.otlp.headers
    assert headers == {"authorization": "Bearer x", "x-id": "7"}
    assert config.traces.otlp.protocol == "http/protobuf"
    with pytest.raises(TypeError):
        headers["authorization"] = "y"  # type: ignore[index]


def test_modules_keep_their_text_and_split_name_from_argument():
    config = parse_config("modules: [gso, 'mark=0x10/0xff', ' tcp-flags ']")
    assert config.modules == (
        ModuleSpec("gso", "gso", None),
        ModuleSpec("mark=0x10/0xff", "mark", "0x10/0xff"),
        ModuleSpec("tcp-flags", "tcp-flags", None),
    )


def test_backend_is_case_insensitive():
    for backend in BACKENDS:
        assert parse_config(f"backend: {backend.upper()}").backend == backend


def test_collector_ring_buffer_pages():
    assert parse_config("collector: {ring_buffer_pages: 1024}").collector.ring_buffer_pages == 1024
    assert default_config().collector.ring_buffer_pages == 1024


# ---- many flows ---------------------------------------------------------------------------------------


def test_eight_named_flows_keep_their_order_as_flow_ids():
    items = "\n".join(
        f"  - {{name: f{i}, ipversion: 4, l4proto: UDP, daddr: 10.199.{i}.0/24, dport: {5000 + i}}}"
        for i in range(8)
    )
    config = parse_config(f"flows:\n{items}\n")
    assert config.flow_names == tuple(f"f{i}" for i in range(8))
    assert [f.dport for f in config.flows] == [5000 + i for i in range(8)]
    assert config.flows[3].daddr == ipaddress.ip_network("10.199.3.0/24")


def test_up_to_max_flows_and_not_one_more():
    def flows(n: int) -> str:
        return "flows:\n" + "\n".join(f"  - {{name: f{i}, l4proto: ICMP}}" for i in range(n)) + "\n"

    assert len(parse_config(flows(MAX_FLOWS)).flows) == MAX_FLOWS
    assert (
        error_of(flows(MAX_FLOWS + 1))
        == f"config.yaml: flows: {MAX_FLOWS + 1} flows: at most {MAX_FLOWS} are supported"
    )


def test_unnamed_flows_get_distinct_names():
    assert parse_config("flows: [{l4proto: TCP}]").flow_names == ("default",)
    assert parse_config("flows: [{l4proto: TCP}, {l4proto: UDP}]").flow_names == ("flow0", "flow1")


# ---- errors: one line, source, key path, reason ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("trace: {}", 'config.yaml: unknown key "trace" (did you mean "traces"?)'),
        (
            "flows:\n - {name: a}\n - {name: b}\n - {name: c, l4proto: TCP, dport: 70000}",
            "config.yaml: flows[2].dport: 70000: must be 1-65535",
        ),
        (
            "paths: {idle_timeout: 2x}",
            'config.yaml: paths.idle_timeout: "2x": not a duration (e.g. 2s, 500ms, 1m or a number of seconds)',
        ),
        (
            "paths: {idle_timout: 2s}",
            'config.yaml: paths: unknown key "idle_timout" (did you mean "idle_timeout"?)',
        ),
        ("paths: {idle_timeout: 0}", "config.yaml: paths.idle_timeout: 0: must be positive"),
        ("paths: {max_events: 0}", "config.yaml: paths.max_events: 0: must be an integer from 1 to 65536"),
        (
            "paths: {max_inflight: many}",
            'config.yaml: paths.max_inflight: "many": must be an integer from 1 to 1048576',
        ),
        (
            "paths: [1]",
            "config.yaml: paths: [1]: must be a mapping with keys idle_timeout, max_events, max_inflight",
        ),
        ("backend: bpf", 'config.yaml: backend: "bpf": must be one of auto, kfunc, kprobe, tracepoint'),
        ("manifest: 3", ("config.yaml: manifest: 3: must be a file path, 'default' (the curated manifest) or null "
                        "(BTF auto-discovery)")),
        ("modules: [gso, 3]", "config.yaml: modules[1]: 3: must be a string (NAME or NAME=ARGUMENT)"),
        ("modules: {gso: 1}", 'config.yaml: modules: {"gso": 1}: must be a list of module names'),
        (
            "traces: {sample_ratio: 1.5}",
            "config.yaml: traces.sample_ratio: 1.5: must be a number between 0 and 1",
        ),
        (
            "traces: {sample_ratio: yes}",
            "config.yaml: traces.sample_ratio: true: must be a number between 0 and 1",
        ),
        (
            "traces: {otlp: {endpont: x}}",
            'config.yaml: traces.otlp: unknown key "endpont" (did you mean "endpoint"?)',
        ),
        (
            "traces: {otlp: {endpoint: 'jaeger:4317'}}",
            (
                'config.yaml: traces.otlp.endpoint: "jaeger:4317": must be an http:// or https:// URL with a host, '
                "e.g. http://jaeger:4317"
            ),
        ),
        (
            "traces: {otlp: {endpoint: 'http://jaeger:99999'}}",
            'config.yaml: traces.otlp.endpoint: "http://jaeger:99999": bad port',
        ),
        (
            "traces: {otlp: {protocol: http/json}}",
            'config.yaml: traces.otlp.protocol: "http/json": must be one of grpc, http/protobuf',
        ),
        (
            "traces: {otlp: {timeout: soon}}",
            'config.yaml: traces.otlp.timeout: "soon": not a duration (e.g. 2s, 500ms, 1m or a number of seconds)',
        ),
        (
            "traces: {otlp: {headers: {'a b': x}}}",
            'config.yaml: traces.otlp.headers: "a b": not an HTTP header name',
        ),
        (
            "traces: {otlp: {headers: {a: [x]}}}",
            'config.yaml: traces.otlp.headers.a: ["x"]: must be a string',
        ),
        (
            "metrics: {address: '::9436'}",
            'config.yaml: metrics.address: "::9436": put an IPv6 address in brackets, e.g. [::]:9436',
        ),
        (
            "metrics: {address: 'localhost'}",
            'config.yaml: metrics.address: "localhost": must be HOST:PORT, e.g. 0.0.0.0:9436 or [::]:9436',
        ),
        (
            "metrics: {address: '0.0.0.0:99999'}",
            "config.yaml: metrics.address: \"0.0.0.0:99999\": port '99999' must be 0-65535",
        ),
        ("metrics: {adress: x}", 'config.yaml: metrics: unknown key "adress" (did you mean "address"?)'),
        (
            "collector: {ring_buffer_pages: 3}",
            "config.yaml: collector.ring_buffer_pages: 3: must be a power of two from 1 to 65536",
        ),
        ("flows: []", "config.yaml: flows: no flow to trace"),
        ("flows: {name: a}", 'config.yaml: flows: {"name": "a"}: must be a list of flows'),
        (
            "flows: [web]",
            (
                'config.yaml: flows[0]: "web": must be a mapping of flow keys '
                "(name, ipversion, l4proto, saddr, daddr, sport, dport, filter, ifname, netns)"
            ),
        ),
        ("flows: [{name: a, port: 80}]", 'config.yaml: flows[0]: unknown key "port" (did you mean "sport"?)'),
        ("flows: [{name: a}, {name: a}]", "config.yaml: flows: flow name 'a' is used twice"),
        (
            "flows: [{name: 'a b'}]",
            "config.yaml: flows[0].name: \"a b\": use letters, digits, '-', '_' or '.'",
        ),
        ("flows: [{name: 7}]", "config.yaml: flows[0].name: 7: must be a string"),
        ("flows: [{ipversion: 5}]", "config.yaml: flows[0].ipversion: 5: must be any, 4 or 6"),
        (
            "flows: [{saddr: 10.0.0.1/8}]",
            'config.yaml: flows[0].saddr: "10.0.0.1/8": not an IP address or CIDR (10.0.0.1/8 has host bits set)',
        ),
        (
            "flows: [{l4proto: ICMP, sport: 7}]",
            "config.yaml: flows[0].sport: needs a protocol with ports (TCP, UDP, SCTP, UDPLITE), not ICMP",
        ),
        (
            "flows: [{ipversion: 4, daddr: 'fd00::/64'}]",
            "config.yaml: flows[0]: an IPv6 address cannot match ipversion 4",
        ),
        (
            "flows: [{saddr: 10.0.0.0/8, daddr: 'fd00::/8'}]",
            "config.yaml: flows[0]: saddr and daddr are of different IP versions",
        ),
        (
            "flows: [{name: web, filter: 'tcp and'}]",
            "config.yaml: flows[0].filter: \"tcp and\": can't parse filter expression: syntax error",
        ),
        ("flows: [{filter: 443}]", "config.yaml: flows[0].filter: 443: must be a pcap-filter expression (a string)"),
        ("flows: [{filter: ''}]", 'config.yaml: flows[0].filter: "": pcap filter is empty'),
        (
            "flows: [{ipversion: 6, l4proto: icmp}]",
            "config.yaml: flows[0].l4proto: ICMP never matches IPv6 packets",
        ),
        (
            "- flows",
            (
                "config.yaml: the document must be a mapping of keys "
                "(flows, backend, manifest, modules, paths, traces, metrics, collector), not a list"
            ),
        ),
        (
            "verbose: true",
            (
                'config.yaml: unknown key "verbose" (known: flows, backend, manifest, modules, paths, traces, '
                "metrics, collector)"
            ),
        ),
    ],
)
def test_bad_value_names_source_key_and_reason(text, expected):
    assert error_of(text) == expected


def test_unknown_protocol_names_key_value_and_the_known_names():
    message = error_of("flows: [{l4proto: foo}]")
    assert message.startswith('config.yaml: flows[0].l4proto: "foo": unknown protocol')
    assert "TCP" in message and "UDP" in message


def test_config_error_is_a_usage_error_for_exit_code_2():
    with pytest.raises(UsageError):
        parse_config("backend: nope")


def test_bad_yaml_names_line_and_column():
    message = error_of("flows:\n  - name: a\n  bad: [\n")
    assert message.startswith("config.yaml:"), message
    line, column = message.split(":")[1:3]
    assert (int(line), int(column)) >= (3, 1)
    assert "invalid YAML" in message


def test_duplicate_keys_are_refused_with_their_line():
    assert (
        error_of("backend: auto\nmetrics: {}\nbackend: kprobe\n")
        == 'config.yaml:3:1: invalid YAML: duplicate key "backend"'
    )


def test_yaml_anchors_and_merge_keys_may_override_without_counting_as_duplicates():
    config = parse_config(
        "flows:\n  - &web {name: web, l4proto: TCP, dport: 443}\n  - {<<: *web, name: web-alt}\n"
    )
    assert config.flow_names == ("web", "web-alt")
    assert config.flows[1].dport == 443 and config.flows[1].l4proto == 6


def test_load_config_names_the_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("flows: [{name: ping, l4proto: ICMP}]\nmetrics: {address: '[::]:9436'}\n")
    config = load_config(path)
    assert config.flow_names == ("ping",)
    assert (config.metrics.host, config.metrics.port) == ("::", 9436)
    assert config.source == str(path)
    path.write_text("paths: {max_events: -1}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: paths\.max_events: -1: must be an integer from 1 to 65536$"):
        load_config(path)


def test_load_config_of_a_missing_file():
    with pytest.raises(
        ConfigError, match=r"^/nonexistent/ipftrace\.yaml: cannot read: No such file or directory$"
    ):
        load_config("/nonexistent/ipftrace.yaml")


# ---- durations and addresses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ns"),
    [
        ("2s", 2_000_000_000),
        ("500ms", 500_000_000),
        ("1m", 60_000_000_000),
        ("1m30s", 90_000_000_000),
        ("1.5s", 1_500_000_000),
        ("100us", 100_000),
        ("250ns", 250),
        ("1h", 3_600_000_000_000),
        (2, 2_000_000_000),
        (0.25, 250_000_000),
        ("3", 3_000_000_000),
    ],
)
def test_durations(value, ns):
    assert parse_duration_ns(value) == ns
    assert (
        parse_config(
            f"paths: {{idle_timeout: {value!r}}}"
            if isinstance(value, str)
            else f"paths: {{idle_timeout: {value}}}"
        ).paths.idle_timeout_ns
        == ns
    )


@pytest.mark.parametrize("value", ["2x", "", "s", "-1s", "1 s", "1.2.3s", True, None, [1], float("inf")])
def test_not_durations(value):
    with pytest.raises(ValueError):
        parse_duration_ns(value)


def test_otlp_timeout_is_seconds():
    assert parse_config("traces: {otlp: {timeout: 1500ms}}").traces.otlp.timeout_s == 1.5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:9436", ("0.0.0.0", 9436)),
        ("[::]:9436", ("::", 9436)),
        ("[::1]:0", ("::1", 0)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("localhost:9436", ("localhost", 9436)),
        (":9436", ("0.0.0.0", 9436)),
    ],
)
def test_addresses(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("9436", "must be HOST:PORT"),
        ("::1:9436", "put an IPv6 address in brackets"),
        ("[::1]9436", "must be [IPV6]:PORT"),
        ("[nope]:1", "not an IPv6 address"),
        ("300.0.0.1:1", "not an IPv4 address"),
        ("a b:1", "not a host name"),
        ("host:http", "port 'http' must be 0-65535"),
        ("host:65536", "must be 0-65535"),
    ],
)
def test_bad_addresses(text, reason):
    with pytest.raises(ConfigError, match=r"^--metrics-address: ") as info:
        parse_address(text, "--metrics-address")
    assert reason in str(info.value)


# ---- overrides --------------------------------------------------------------------------------------


def test_overrides_replace_only_what_is_given():
    base = parse_config(DESIGN_EXAMPLE)
    assert apply_overrides(base) is base
    changed = apply_overrides(base, "127.0.0.1:0", backend="Tracepoint", manifest="other.yaml")
    assert (changed.metrics.host, changed.metrics.port) == ("127.0.0.1", 0)
    assert changed.backend == "tracepoint" and changed.manifest == "other.yaml"
    assert changed.flows == base.flows and changed.traces == base.traces and changed.paths == base.paths
    assert base.metrics.address == "0.0.0.0:9436"  # the original is untouched


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"metrics_address": "nowhere"}, '--metrics-address: "nowhere": must be HOST:PORT'),
        ({"backend": "ebpf"}, '--backend: "ebpf": must be one of auto, kfunc, kprobe, tracepoint'),
        ({"manifest": " "}, '--manifest: " ": must be a file path'),
    ],
)
def test_bad_overrides_name_the_flag(kwargs, expected):
    with pytest.raises(ConfigError) as info:
        apply_overrides(default_config(), **kwargs)
    assert str(info.value).startswith(expected)


def test_describe_lists_every_section():
    text = "\n".join(parse_config(DESIGN_EXAMPLE, "design.yaml").describe())
    for expected in (
        "config: design.yaml",
        "web: ipv4 TCP dst 10.96.0.0/12:443",
        "backend: auto",
        "manifest: manifests/default.yaml",
        "modules: gso",
        "idle_timeout 2s",
        "endpoint http://jaeger:4317",
        "metrics: 0.0.0.0:9436",
        "ring_buffer_pages 1024",
    ):
        assert expected in text


def test_config_checks_itself_when_built_directly():
    with pytest.raises(ConfigError, match="flows: no flow to trace"):
        Config(flows=())
    with pytest.raises(ConfigError, match="backend"):
        Config(flows=(FlowSpec(),), backend="ebpf")


def test_a_flow_filter_is_compiled_and_shown_in_the_plan():
    from ipftrace_exporter.config import parse_config

    config = parse_config("flows: [{name: web, l4proto: tcp, filter: 'dst port 443 and greater 100'}]", "config.yaml")
    (flow,) = config.flows
    assert flow.pcap is not None and flow.pcap.insns
    assert "  web: any-ip TCP filter 'dst port 443 and greater 100'" in config.describe()


def test_a_flow_can_name_its_device_and_namespace():
    import os

    from ipftrace_exporter.config import parse_config

    config = parse_config("flows: [{name: pod, ifname: eth0, netns: /proc/self/ns/net}]", "config.yaml")
    (flow,) = config.flows
    assert flow.ifname == "eth0" and flow.netns == os.stat("/proc/self/ns/net").st_ino
    assert error_of("flows: [{ifname: 'a/b'}]").startswith('config.yaml: flows[0].ifname: "a/b": not a device name')


def test_skb_address_attribute_is_off_by_default_and_on_when_asked() -> None:
    assert default_config().traces.attributes.skb_address is False
    assert parse_config("traces: {attributes: {skb_address: true}}\n").traces.attributes.skb_address is True
    with pytest.raises(ConfigError, match=r"traces\.attributes\.skb_address: \"yes please\": must be true or false"):
        parse_config("traces: {attributes: {skb_address: yes please}}\n", "config.yaml")


@pytest.mark.parametrize(("text", "key"), [
    ("paths: {max_events: 65537}", "paths.max_events"),
    ("paths: {max_inflight: 1048577}", "paths.max_inflight"),
    ("paths: {idle_timeout: 2h}", "paths.idle_timeout"),
    ("traces: {otlp: {timeout: 6m}}", "traces.otlp.timeout"),
    ("modules: [" + ", ".join(f"m{i}" for i in range(17)) + "]", "modules"),
])
def test_numbers_and_lists_past_their_key_range_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^config\.yaml: {re.escape(key)}: "):
        parse_config(text, "config.yaml")


def test_range_edges_are_accepted() -> None:
    config = parse_config("paths: {max_events: 65536, max_inflight: 1048576, idle_timeout: 1h}\n")
    assert (config.paths.max_events, config.paths.max_inflight) == (65536, 1048576)
