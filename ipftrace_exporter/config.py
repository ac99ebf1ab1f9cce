"""Daemon config: typed, frozen, validated YAML (every key optional).

A key left out takes its value from the embedded default (`default-config.yaml`, also what runs without
`--config`): mappings (`paths`, `traces`, `traces.otlp`, `metrics`, `collector`) are merged key by key, every
other value (`flows`, `modules`, `traces.otlp.headers`, ...) is replaced whole. Every validation error is a
ConfigError of one line naming the source, the key path and the reason, e.g.
`config.yaml: flows[2].dport: 70000: must be 1-65535`. The OTEL_* environment is read in otlp.py, not here:
`traces.otlp.*` values are None when the YAML does not set them.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from os import PathLike
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from .errors import ConfigError, UsageError
from .flows import (
    FLOW_KEYS,
    FlowSpec,
    check_flows,
    flow_from_mapping,
    parse_filter,
    parse_ifname,
    parse_ipversion,
    parse_l4proto,
    parse_netns,
    parse_network,
    parse_port,
)
from .paths import PathLimits
from .probes import BACKENDS

OTLP_PROTOCOLS = ("grpc", "http/protobuf")
DEFAULT_CONFIG_RESOURCE = "default-config.yaml"
DEFAULT_SOURCE = "<default config>"
DEFAULT_METRICS_ADDRESS = "0.0.0.0:9436"
DEFAULT_RING_BUFFER_PAGES = 1024  # 4 MiB: ~200 ms of 20k traced packets/s with spans exported
MAX_RING_BUFFER_PAGES = 1 << 16  # 256 MiB with 4 KiB pages

# Bounds on the input itself (a config is small; anything past these is a mistake or an attack).
MAX_CONFIG_BYTES = 1 << 20  # 1 MiB
MAX_DEPTH = 32  # nesting of mappings and lists (the real shape needs 4)
MAX_NODES = 100_000  # values in the document with every alias expanded (billion laughs stops here)
# Per-key ranges: (smallest, largest).
MAX_EVENTS_RANGE = (1, 65536)  # events per path (PathLimits.max_held_events bounds all paths together)
MAX_INFLIGHT_RANGE = (1, 1 << 20)  # open paths = entries of the kernel's tracking LRU hash
IDLE_TIMEOUT_RANGE_NS = (1, 3_600_000_000_000)  # up to 1 h
OTLP_TIMEOUT_RANGE_NS = (1_000_000, 300_000_000_000)  # 1 ms to 5 min (the shutdown flush waits this long)
MAX_HEADERS = 64
MAX_MODULES = 16

TOP_KEYS = ("flows", "backend", "manifest", "modules", "paths", "traces", "metrics", "collector")
PATHS_KEYS = ("idle_timeout", "max_events", "max_inflight")
TRACES_KEYS = ("sample_ratio", "otlp", "attributes")
TRACE_ATTRIBUTE_KEYS = ("skb_address",)
OTLP_KEYS = ("endpoint", "protocol", "timeout", "headers")
METRICS_KEYS = ("address",)
COLLECTOR_KEYS = ("ring_buffer_pages",)

_T = TypeVar("_T")


class _Invalid(Exception):
    """A bad value at `path` (dotted key path; '' = the document); `message` is '<value>: <reason>'."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


# ---- typed config -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModuleSpec:
    """A custom module as written (`gso`, `mark=0x10/0xff`): its name and the argument after the first '='."""

    text: str
    name: str
    arg: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModuleSpec:
        """'mark=0x10/0xff' -> name 'mark', arg '0x10/0xff'; the name is checked for shape only."""
        name, sep, arg = text.strip().partition("=")
        name = name.strip()
        if "/" in name or name.endswith(".py"):
            raise ValueError("a path: module files load only from a directory given with --module-dir on the "
                             "command line, never from the config (name the module instead)")
        if not name or not re.fullmatch(r"[A-Za-z0-9_.:-]+", name):
            raise ValueError("not a module name (NAME or NAME=ARGUMENT)")
        return cls(text=text.strip(), name=name, arg=arg.strip() if sep else None)


@dataclass(frozen=True, slots=True)
class OtlpConfig:
    """`traces.otlp`: None where the YAML is silent, so otlp.py falls back to OTEL_*, then its defaults."""

    endpoint: str | None = None  # http:// or https:// URL
    protocol: str | None = None  # grpc | http/protobuf
    timeout_s: float | None = None
    headers: Mapping[str, str] | None = None  # header names lower-cased (gRPC metadata needs that)


@dataclass(frozen=True, slots=True)
class TraceAttributesConfig:
    """`traces.attributes`: optional span attributes. `skb_address` sends the skb's kernel address
    (`ipftrace.skb`): useful to match a path with other kernel tooling, but a heap pointer helps defeat KASLR
    for whoever can read the traces, so it is off by default."""

    skb_address: bool = False


@dataclass(frozen=True, slots=True)
class TracesConfig:
    """`traces`: the in-kernel per-packet sampling ratio, where spans go and which optional attributes they carry."""

    sample_ratio: float = 1.0
    otlp: OtlpConfig = field(default_factory=OtlpConfig)
    attributes: TraceAttributesConfig = field(default_factory=TraceAttributesConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_ratio <= 1.0:
            raise ConfigError(f"traces.sample_ratio: {_show(self.sample_ratio)}: must be a number between 0 and 1")


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """`metrics`: the one HTTP server's listen address (/metrics, /healthz, /readyz)."""

    address: str = DEFAULT_METRICS_ADDRESS

    def __post_init__(self) -> None:
        parse_address(self.address, "metrics.address")

    @property
    def host(self) -> str:
        """Host part, without IPv6 brackets."""
        return parse_address(self.address)[0]

    @property
    def port(self) -> int:
        """Port part (0 = any free port)."""
        return parse_address(self.address)[1]


@dataclass(frozen=True, slots=True)
class CollectorConfig:
    """`collector`: kernel-side sizes. `ring_buffer_pages` (power of two) sizes the BPF ring buffer."""

    ring_buffer_pages: int = DEFAULT_RING_BUFFER_PAGES

    def __post_init__(self) -> None:
        _check_pages(self.ring_buffer_pages, "collector.ring_buffer_pages")


@dataclass(frozen=True, slots=True)
class Config:
    """The daemon's whole config; build it with parse_config / load_config / default_config."""

    flows: tuple[FlowSpec, ...]
    backend: str = "auto"
    manifest: str | None = None  # as written; resolved by manifest.py
    modules: tuple[ModuleSpec, ...] = ()
    paths: PathLimits = field(default_factory=PathLimits)
    traces: TracesConfig = field(default_factory=TracesConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    source: str = field(default="<config>", compare=False)

    def __post_init__(self) -> None:
        try:
            check_flows(self.flows)
        except UsageError as err:
            raise ConfigError(f"flows: {err}") from None
        if self.backend not in BACKENDS:  # a Config built directly: the parser's own rule
            try:
                _backend(self.backend, "backend")
            except _Invalid as err:
                raise ConfigError(str(err)) from None
            raise ConfigError(f"backend: {_show(self.backend)}: must be written in lower case")

    @property
    def flow_names(self) -> tuple[str, ...]:
        """Flow names by flow id (the index the BPF filter returns)."""
        return tuple(flow.name for flow in self.flows)

    def describe(self) -> list[str]:
        """Human-readable lines of the effective config (for `--check` and the start-up log)."""
        otlp = self.traces.otlp
        lines = [f"config: {self.source}", f"flows ({len(self.flows)}):"]
        lines += [f"  {flow.describe()}" for flow in self.flows]
        lines.append(f"backend: {self.backend}")
        lines.append(f"manifest: {self.manifest or 'none (BTF auto-discovery: every function taking an skb)'}")
        lines.append(f"modules: {', '.join(m.text for m in self.modules) or 'none'}")
        lines.append(
            f"paths: idle_timeout {_format_ns(self.paths.idle_timeout_ns)}, "
            f"max_events {self.paths.max_events}, "
            f"max_inflight {self.paths.max_inflight}"
        )
        lines.append(f"traces: sample_ratio {self.traces.sample_ratio:g}, "
                     f"skb_address {'on' if self.traces.attributes.skb_address else 'off'}")
        lines.append(
            "traces.otlp: "
            + ", ".join(
                f"{name} {value}"
                for name, value in (
                    ("endpoint", otlp.endpoint or "from OTEL_EXPORTER_OTLP_ENDPOINT (unset: no export)"),
                    ("protocol", otlp.protocol or "from env / default"),
                    (
                        "timeout",
                        f"{otlp.timeout_s:g}s" if otlp.timeout_s is not None else "from env / default",
                    ),
                    ("headers", ", ".join(sorted(otlp.headers)) if otlp.headers else "none"),
                )
            )
        )
        lines.append(f"metrics: {self.metrics.address}")
        lines.append(f"collector: ring_buffer_pages {self.collector.ring_buffer_pages}")
        return lines


# ---- public entry points ----------------------------------------------------------------------------


def parse_config(text: str, source: str = "<config>") -> Config:
    """A Config from YAML text; keys left out take the embedded default's values. Raises ConfigError."""
    return _parse(text, source, default_config())


def load_config(path: str | PathLike[str]) -> Config:
    """parse_config of a file, the file's path naming the source in errors."""
    return parse_config(read_bounded_text(path), str(path))


def load_yaml_file(path: str | PathLike[str]) -> Any:
    """A small YAML file (e.g. --web.config.file) read and parsed with the config's bounds (size, depth,
    alias expansion, duplicate keys); ConfigError (one line, naming the file) otherwise."""
    return _load_yaml(read_bounded_text(path), str(path))


def read_bounded_text(path: str | PathLike[str]) -> str:
    """The UTF-8 text of a file of at most MAX_CONFIG_BYTES (never reading more); ConfigError otherwise."""
    source = str(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)  # never more: a 40 MB file costs 1 MiB
    except OSError as err:
        raise ConfigError(f"{source}: cannot read: {err.strerror or err}") from None
    _check_size(len(data), source)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{source}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def _check_size(size: int, source: str) -> None:
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_CONFIG_BYTES // 1024} KiB: not a config file")


@lru_cache(maxsize=1)
def default_config() -> Config:
    """The embedded default (ICMP and ICMPv6 flows, no OTLP endpoint): what runs without --config."""
    text = resources.files(__package__).joinpath(DEFAULT_CONFIG_RESOURCE).read_text(encoding="utf-8")
    return _parse(text, DEFAULT_SOURCE, Config(flows=(FlowSpec(),)))


def apply_overrides(
    config: Config,
    metrics_address: str | None = None,
    *,
    backend: str | None = None,
    manifest: str | None = None,
) -> Config:
    """The config with command-line values (None = keep) put over it; errors name the flag."""
    changes: dict[str, Any] = {}
    if metrics_address is not None:
        parse_address(metrics_address, "--metrics-address")
        changes["metrics"] = MetricsConfig(metrics_address.strip())
    try:
        if backend is not None:
            changes["backend"] = _backend(backend, "--backend")
        if manifest is not None:
            changes["manifest"] = _manifest(manifest, "--manifest")
    except _Invalid as err:
        raise ConfigError(str(err)) from None
    return dataclasses.replace(config, **changes) if changes else config


def parse_duration_ns(value: Any) -> int:
    """'2s' / '500ms' / '1m30s' / '100us' / 2 / 0.5 (seconds) -> nanoseconds (> 0). Raises ValueError."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        seconds = float(value.strip())
    elif isinstance(value, str) and _DURATION.fullmatch(value.strip()):
        seconds = sum(float(num) * _UNITS[unit] for num, unit in _DURATION_PART.findall(value.strip()))
    else:
        raise ValueError("not a duration (e.g. 2s, 500ms, 1m or a number of seconds)")
    if not math.isfinite(seconds):
        raise ValueError("must be finite")
    ns = round(seconds * 1e9)
    if ns <= 0:
        raise ValueError("must be positive")
    return ns


def parse_address(text: str, key: str = "address") -> tuple[str, int]:
    """'0.0.0.0:9436' / '[::]:9436' / 'localhost:0' / ':9436' -> (host, port); ConfigError names `key`."""
    try:
        return _address(text)
    except ValueError as err:
        raise ConfigError(f"{key}: {_show(text)}: {err}") from None


# ---- parsing ----------------------------------------------------------------------------------------

_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _parse(text: str, source: str, base: Config) -> Config:
    if len(text) > MAX_CONFIG_BYTES // 4:  # at most 4 bytes a character: only long texts need encoding
        _check_size(len(text) if len(text) > MAX_CONFIG_BYTES else len(text.encode(errors="surrogatepass")),
                    source)
    data = _load_yaml(text, source)
    try:
        return _config(data, base, source)
    except _Invalid as err:
        raise ConfigError(f"{source}: {err}") from None
    except ConfigError as err:  # raised by a dataclass's own check
        raise ConfigError(f"{source}: {err}") from None


def _config(data: Any, base: Config, source: str) -> Config:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise _Invalid(
            "", f"the document must be a mapping of keys ({', '.join(TOP_KEYS)}), not {_kind(data)}"
        )
    _check_keys(data, TOP_KEYS, "")
    changes: dict[str, Any] = {"source": source}
    if data.get("flows") is not None:
        changes["flows"] = _flows(data["flows"])
    if data.get("backend") is not None:
        changes["backend"] = _backend(data["backend"], "backend")
    if "manifest" in data:  # null = explicitly none
        changes["manifest"] = None if data["manifest"] is None else _manifest(data["manifest"], "manifest")
    if data.get("modules") is not None:
        changes["modules"] = _modules(data["modules"])
    if data.get("paths") is not None:
        changes["paths"] = _paths(data["paths"], base.paths)
    if data.get("traces") is not None:
        changes["traces"] = _traces(data["traces"], base.traces)
    if data.get("metrics") is not None:
        changes["metrics"] = _metrics(data["metrics"], base.metrics)
    if data.get("collector") is not None:
        changes["collector"] = _collector(data["collector"], base.collector)
    return dataclasses.replace(base, **changes)


def _flows(raw: Any) -> tuple[FlowSpec, ...]:
    if not isinstance(raw, list):
        raise _Invalid("flows", f"{_show(raw)}: must be a list of flows")
    return tuple(_flow(item, index, len(raw)) for index, item in enumerate(raw))  # Config checks them together


def _flow_name(value: Any) -> FlowSpec:
    if not isinstance(value, str):
        raise UsageError(f"name {value!r}: must be a string")
    return FlowSpec(name=value)


_FLOW_PARSERS: dict[str, Callable[[Any], object]] = {
    "name": _flow_name,
    "ipversion": parse_ipversion,
    "l4proto": parse_l4proto,
    "saddr": lambda value: parse_network(value, "saddr"),
    "daddr": lambda value: parse_network(value, "daddr"),
    "sport": lambda value: parse_port(value, "sport"),
    "dport": lambda value: parse_port(value, "dport"),
    "filter": parse_filter,
    "ifname": parse_ifname,
    "netns": parse_netns,
}


def _flow(raw: Any, index: int, count: int) -> FlowSpec:
    path = f"flows[{index}]"
    if not isinstance(raw, Mapping):
        raise _Invalid(path, f"{_show(raw)}: must be a mapping of flow keys ({', '.join(FLOW_KEYS)})")
    _check_keys(raw, FLOW_KEYS, path)
    try:
        return flow_from_mapping(raw, "default" if count == 1 else f"flow{index}")
    except UsageError as err:
        raise _flow_error(raw, path, err) from None


def _flow_error(raw: Mapping[str, Any], path: str, err: UsageError) -> _Invalid:
    """Attribute flows.py's error to the key that caused it: re-run each key's own parser."""
    for key in FLOW_KEYS:
        if key not in raw:
            continue
        try:
            _FLOW_PARSERS[key](raw[key])
        except UsageError as key_err:
            reason = str(key_err).split(": ", 1)[-1]
            return _Invalid(f"{path}.{key}", f"{_show(raw[key])}: {reason}")
    message = str(err)
    for key in FLOW_KEYS:  # a cross-key rule phrased "<key> ..." (e.g. "sport needs a protocol with ports")
        rest = message[len(key) + 1 :]
        if key in raw and message.startswith(key + " ") and not rest.startswith(("and ", "or ")):
            return _Invalid(f"{path}.{key}", rest)
    return _Invalid(path, message)


def _backend(raw: Any, path: str) -> str:
    """The backend as written (one of BACKENDS, any case), normalized; `path` names it in the error."""
    if isinstance(raw, str) and raw.strip().lower() in BACKENDS:
        return raw.strip().lower()
    raise _Invalid(path, f"{_show(raw)}: must be one of {', '.join(BACKENDS)}")


CURATED_MANIFEST = "default"  # `manifest: default`: the curated manifest shipped with the package


def _manifest(raw: Any, path: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise _Invalid(path, f"{_show(raw)}: must be a file path, {CURATED_MANIFEST!r} (the curated manifest) or null "
                             "(BTF auto-discovery)")
    text = raw.strip()
    if text == CURATED_MANIFEST:
        from .manifest import default_manifest_path  # here: manifest.py reads YAML with this module's loader

        return default_manifest_path()
    return text


def _modules(raw: Any) -> tuple[ModuleSpec, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise _Invalid("modules", f"{_show(raw)}: must be a list of module names")
    if len(raw) > MAX_MODULES:
        raise _Invalid("modules", f"{len(raw)} modules: at most {MAX_MODULES}")
    out = []
    for index, item in enumerate(raw):
        if not isinstance(item, str):
            raise _Invalid(f"modules[{index}]", f"{_show(item)}: must be a string (NAME or NAME=ARGUMENT)")
        try:
            out.append(ModuleSpec.parse(item))
        except ValueError as err:
            raise _Invalid(f"modules[{index}]", f"{_show(item)}: {err}") from None
    return tuple(out)


def _paths(raw: Any, base: PathLimits) -> PathLimits:
    section = _section(raw, "paths", PATHS_KEYS)
    changes: dict[str, int] = {}
    if section.get("idle_timeout") is not None:
        changes["idle_timeout_ns"] = _duration(section["idle_timeout"], "paths.idle_timeout",
                                               IDLE_TIMEOUT_RANGE_NS)
    for key, bounds in (("max_events", MAX_EVENTS_RANGE), ("max_inflight", MAX_INFLIGHT_RANGE)):
        if section.get(key) is not None:
            changes[key] = _int_in_range(section[key], f"paths.{key}", bounds)
    return dataclasses.replace(base, **changes)


def _traces(raw: Any, base: TracesConfig) -> TracesConfig:
    section = _section(raw, "traces", TRACES_KEYS)
    changes: dict[str, Any] = {}
    ratio = section.get("sample_ratio")
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
            raise _Invalid("traces.sample_ratio", f"{_show(ratio)}: must be a number between 0 and 1")
        changes["sample_ratio"] = float(ratio)  # TracesConfig checks the range
    if section.get("otlp") is not None:
        changes["otlp"] = _otlp(section["otlp"], base.otlp)
    if section.get("attributes") is not None:
        attributes = _section(section["attributes"], "traces.attributes", TRACE_ATTRIBUTE_KEYS)
        skb_address = attributes.get("skb_address", base.attributes.skb_address)
        if not isinstance(skb_address, bool):
            raise _Invalid("traces.attributes.skb_address", f"{_show(skb_address)}: must be true or false")
        changes["attributes"] = TraceAttributesConfig(skb_address=skb_address)
    return dataclasses.replace(base, **changes)


def _otlp(raw: Any, base: OtlpConfig) -> OtlpConfig:
    section = _section(raw, "traces.otlp", OTLP_KEYS)
    changes: dict[str, Any] = {}
    if "endpoint" in section:
        changes["endpoint"] = None if section["endpoint"] is None else _endpoint(section["endpoint"])
    protocol = section.get("protocol")
    if protocol is not None:
        if not isinstance(protocol, str) or protocol.strip().lower() not in OTLP_PROTOCOLS:
            raise _Invalid(
                "traces.otlp.protocol", f"{_show(protocol)}: must be one of {', '.join(OTLP_PROTOCOLS)}"
            )
        changes["protocol"] = protocol.strip().lower()
    if section.get("timeout") is not None:
        changes["timeout_s"] = _duration(section["timeout"], "traces.otlp.timeout", OTLP_TIMEOUT_RANGE_NS) / 1e9
    if "headers" in section:
        changes["headers"] = None if section["headers"] is None else _headers(section["headers"])
    return dataclasses.replace(base, **changes)


def _endpoint(raw: Any) -> str:
    path = "traces.otlp.endpoint"
    if not isinstance(raw, str):
        raise _Invalid(path, f"{_show(raw)}: must be an http:// or https:// URL")
    text = raw.strip()
    problem = url_problem(text)
    if problem is not None:
        raise _Invalid(path, f"{_show(raw)}: {problem}")
    return text


def url_problem(url: str) -> str | None:
    """Why `url` cannot be an OTLP endpoint (an http:// or https:// URL with a host and a valid port), or None; the
    one rule for `traces.otlp.endpoint` and the OTEL_* endpoint variables (otlp.py)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host, e.g. http://jaeger:4317"
    try:
        _ = parts.port
    except ValueError:
        return "bad port"
    return None


def _headers(raw: Any) -> Mapping[str, str]:
    if not isinstance(raw, Mapping):
        raise _Invalid("traces.otlp.headers", f"{_show(raw)}: must be a mapping of header name to value")
    if len(raw) > MAX_HEADERS:
        raise _Invalid("traces.otlp.headers", f"{len(raw)} headers: at most {MAX_HEADERS}")
    out: dict[str, str] = {}
    for name, value in raw.items():
        path = f"traces.otlp.headers.{name}"
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise _Invalid("traces.otlp.headers", f"{_show(name)}: not an HTTP header name")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise _Invalid(path, f"{_show(value)}: must be a string")
        text = str(value)
        if "\n" in text or "\r" in text:
            raise _Invalid(path, "must not contain line breaks")
        out[name.lower()] = text
    return MappingProxyType(out)


def _metrics(raw: Any, base: MetricsConfig) -> MetricsConfig:
    section = _section(raw, "metrics", METRICS_KEYS)
    address = section.get("address")
    if address is None:
        return base
    if not isinstance(address, str):
        raise _Invalid(
            "metrics.address", f"{_show(address)}: must be HOST:PORT, e.g. 0.0.0.0:9436 or [::]:9436"
        )
    return MetricsConfig(address.strip())  # which parses it


def _collector(raw: Any, base: CollectorConfig) -> CollectorConfig:
    section = _section(raw, "collector", COLLECTOR_KEYS)
    pages = section.get("ring_buffer_pages")
    if pages is None:
        return base
    return CollectorConfig(pages)  # which checks it


# ---- helpers ----------------------------------------------------------------------------------------


def _check_pages(pages: Any, key: str) -> None:
    if (
        isinstance(pages, bool)
        or not isinstance(pages, int)
        or not 1 <= pages <= MAX_RING_BUFFER_PAGES
        or pages & (pages - 1)
    ):
        raise ConfigError(f"{key}: {_show(pages)}: must be a power of two from 1 to {MAX_RING_BUFFER_PAGES}")


def _address(text: str) -> tuple[str, int]:
    """Parse HOST:PORT; raises ValueError with the reason."""
    text = text.strip() if isinstance(text, str) else text
    if not isinstance(text, str) or ":" not in text:
        raise ValueError("must be HOST:PORT, e.g. 0.0.0.0:9436 or [::]:9436")
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError("must be [IPV6]:PORT, e.g. [::]:9436")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, _, port_text = text.rpartition(":")
        if ":" in host:
            raise ValueError("put an IPv6 address in brackets, e.g. [::]:9436")
        if host == "":
            host = "0.0.0.0"
        elif re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"{host!r} is not an IPv4 address") from None
        elif not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{host!r} is not a host name or IPv4 address")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} must be 0-65535")
    return host, int(port_text)


def _section(raw: Any, path: str, keys: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise _Invalid(path, f"{_show(raw)}: must be a mapping with keys {', '.join(keys)}")
    _check_keys(raw, keys, path)
    return raw


def _check_keys(raw: Mapping[Any, Any], known: Iterable[str], path: str) -> None:
    known = tuple(known)
    for key in raw:
        if key in known:
            continue
        name = str(key)
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"did you mean {_show(close[0])}?" if close else f"known: {', '.join(known)}"
        raise _Invalid(path, f"unknown key {_show(name)} ({hint})")


def _checked(parse: Callable[[Any], _T], value: Any, path: str) -> _T:
    try:
        return parse(value)
    except ValueError as err:
        raise _Invalid(path, f"{_show(value)}: {err}") from None


def _int_in_range(value: Any, path: str, bounds: tuple[int, int]) -> int:
    low, high = bounds
    if isinstance(value, float) and value.is_integer() and low <= value <= high:
        return int(value)  # e.g. 1.0e4 (YAML 1.1 floats need the dot)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _Invalid(path, f"{_show(value)}: must be an integer from {low} to {high}")
    return value


def _duration(value: Any, path: str, bounds: tuple[int, int]) -> int:
    ns = _checked(parse_duration_ns, value, path)
    low, high = bounds
    if not low <= ns <= high:
        raise _Invalid(path, f"{_show(value)}: must be from {_format_ns(low)} to {_format_ns(high)}")
    return ns


def _show(value: Any) -> str:
    """A value as the error message shows it: strings double-quoted, YAML spelling for the rest."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int) and abs(value) >= 10**60:
        return f"{'-' if value < 0 else ''}a {len(str(abs(value)))}-digit number"
    if isinstance(value, (int, float)):
        return str(value)
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _format_ns(ns: int) -> str:
    for unit, size in (
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ):
        if ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns}ns"


# ---- YAML -------------------------------------------------------------------------------------------


class _DuplicateKey(yaml.MarkedYAMLError):
    """A mapping names the same key twice (PyYAML would silently keep the last)."""


class _TooLarge(yaml.MarkedYAMLError):
    """The document nests too deep, or expands (through aliases) to too many values."""


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses nesting past MAX_DEPTH and documents that expand past MAX_NODES (for every YAML
    file the tools read: configs, the web config, manifests).

    Depth is checked while composing (PyYAML's composer recurses once per level, so a deep document would hit
    Python's recursion limit); the expanded size is counted on the composed node graph before anything is
    constructed, each anchored node once (an alias costs what its anchor's node expands to)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooLarge(problem=f"nested deeper than {MAX_DEPTH} levels",
                                problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node)
        return node  # type: ignore[no-any-return]


class _Loader(BoundedLoader):
    """BoundedLoader that also refuses duplicate keys."""


def _expanded_size(root: yaml.Node) -> int:
    """Values in the document under `root` with aliases expanded; _TooLarge past MAX_NODES or on a cycle.
    Iterative (post-order with a stack) and memoized per node, so it costs one visit per distinct node."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if children_done:
            open_nodes.discard(key)
            size = 1 + sum(sizes[id(child)] for child in children)
            if size > MAX_NODES:
                raise _TooLarge(problem=f"expands to more than {MAX_NODES} values (YAML aliases?)",
                                problem_mark=node.start_mark)
            sizes[key] = size
            continue
        if key in open_nodes:
            raise _TooLarge(problem="an alias refers to a node that contains it", problem_mark=node.start_mark)
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:  # the node's own keys; values merged in by `<<` may be overridden
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # unhashable key: let construct_mapping report it
            break
        if duplicate:
            raise _DuplicateKey(problem=f"duplicate key {_show(key)}", problem_mark=key_node.start_mark)
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


def _load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = err.problem or err.context or "invalid YAML"
        raise ConfigError(f"{where}: invalid YAML: {_one_line(problem)}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: invalid YAML: {_one_line(str(err))}") from None
    except (ValueError, OverflowError) as err:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"{source}: invalid YAML: {_one_line(str(err))[:200]}") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())
