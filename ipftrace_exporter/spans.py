"""SkbPath -> OTLP trace protobuf, purely (no network): one trace per path, a root span and one child per event.

The contract (README, Traces): the root span is named `<L4> <flow name>` (e.g. `ICMP icmp`,
`TCP web`: a bounded set, whatever the traffic; addresses and ports are attributes), covers the first to the last
event, and has status ERROR when the packet was dropped; each event becomes a child span named after its probe,
from its timestamp to the next event's (the last one is an instant). Kernel CLOCK_MONOTONIC times become wall-clock
times through a `WallClock` whose offset is measured once.

Attributes follow the semantic conventions of `SCHEMA_URL`: a child span of a kernel-function probe (kprobe,
kfunc) has `code.function.name` = that function; a tracepoint is not a function (and the function it fires in is
not known), so its span has no `code.function.name`. Every child has `ipftrace.probe`, the attach point in
bpftrace's notation (`tracepoint:net:netif_receive_skb`, `kprobe:ip_rcv`, `kfunc:ip_rcv`). The skb's address
(`ipftrace.skb`) is a kernel heap pointer, which helps defeat KASLR: it is sent only when asked for
(`traces.attributes.skb_address: true`).

How it is fast: nothing goes through the SDK tracer, and almost nothing through per-field protobuf calls. Every
constant piece of a span is built once with the opentelemetry-proto message classes and kept in serialized form (per
probe: name, kind, `code.function.name`, `ipftrace.probe`; per attribute value: its `KeyValue`; the resource and
scope); field tags are taken from the generated classes, not written by hand. Per event only the ids, the two
timestamps and a few cached attribute pieces are joined. Protobuf allows a message to be written as concatenated
fields, so the joined bytes are one valid `ExportTraceServiceRequest`, which `encode` parses once (in C) into the
message.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import re
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from urllib.parse import unquote

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from . import __version__
from .cache import BoundedCache
from .events import FLAG_ENCAP, FLAG_REWRITE, Event
from .names import Names
from .paths import OUTCOME_DROPPED, FlowTuple, SkbPath
from .probes import Probe, ProbeKind, ProbeRole
from .protocols import PORT_PROTOCOLS

log = logging.getLogger(__name__)

SCOPE_NAME = "ipftrace-exporter"
DEFAULT_SERVICE_NAME = "ipftrace-exporter"
# The semantic-conventions version the attribute names follow (code.function.name, network.*, source.*, ...).
SCHEMA_URL = "https://opentelemetry.io/schemas/1.44.0"
# Spans are encoded here, not by the OpenTelemetry SDK: telemetry.sdk.name names this encoder (as the
# specification asks of an implementation other than the official SDK).
TELEMETRY_SDK = {"telemetry.sdk.name": "ipftrace-exporter", "telemetry.sdk.language": "python"}
HOSTNAME_PATH = "/proc/sys/kernel/hostname"

# Environment variables read for the resource (the OTLP transport's own live in otlp.py).
ENV_SERVICE_NAME = "OTEL_SERVICE_NAME"
ENV_RESOURCE_ATTRIBUTES = "OTEL_RESOURCE_ATTRIBUTES"
ENV_NODE_NAME = "NODE_NAME"

AttributeValue = str | int | float | bool
EventAttributes = Callable[[Event], Mapping[str, AttributeValue]]

_CACHE_LIMIT = 65536  # entries per cache (values like lengths are unbounded): a cache.BoundedCache empties when full


class WallClock:
    """Kernel CLOCK_MONOTONIC nanoseconds -> unix nanoseconds, with the offset measured once at construction."""

    __slots__ = ("offset_ns",)

    def __init__(self, offset_ns: int | None = None) -> None:
        if offset_ns is None:
            before = time.monotonic_ns()
            wall = time.time_ns()
            after = time.monotonic_ns()
            offset_ns = wall - (before + after) // 2
        self.offset_ns = offset_ns

    def to_unix_ns(self, monotonic_ns: int) -> int:
        """Wall-clock time of a kernel timestamp."""
        return monotonic_ns + self.offset_ns


# ---- resource ---------------------------------------------------------------------------------------------------

_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def parse_resource_attributes(text: str) -> dict[str, str]:
    """OTEL_RESOURCE_ATTRIBUTES (`k1=v1,k2=v2`, values percent-encoded) -> dict; raises ValueError if malformed."""
    attributes: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals or not key:
            raise ValueError(f"{item!r} is not key=value")
        value = value.strip()
        if _BAD_PERCENT.search(value):
            raise ValueError(f"{item!r} has an invalid percent-encoding")
        try:
            attributes[key] = unquote(value, errors="strict")
        except UnicodeDecodeError as error:
            raise ValueError(f"{item!r} does not percent-decode to UTF-8: {error}") from None
    return attributes


def host_name(environ: Mapping[str, str] | None = None, hostname_path: str = HOSTNAME_PATH) -> str:
    """The node's name: NODE_NAME (the DaemonSet sets it from spec.nodeName; a pod's own host name is the pod's),
    else the kernel's host name of this UTS namespace (`hostname_path`; the host's when not in a container),
    else gethostname()."""
    env = os.environ if environ is None else environ
    node = env.get(ENV_NODE_NAME, "").strip()
    if node:
        return node
    try:
        with open(hostname_path, encoding="utf-8", errors="replace") as handle:
            name = handle.read(256).strip()
    except OSError:
        name = ""
    return name or socket.gethostname()


def resource_attributes(
    environ: Mapping[str, str] | None = None, hostname: str | None = None
) -> dict[str, AttributeValue]:
    """The resource of every exported trace: defaults, then OTEL_RESOURCE_ATTRIBUTES, then OTEL_SERVICE_NAME.

    Defaults: `service.name` ipftrace-exporter, `service.version`, `host.name` (host_name(): the node's),
    `k8s.node.name` from NODE_NAME when set, and `telemetry.sdk.*`. A malformed OTEL_RESOURCE_ATTRIBUTES is
    discarded as a whole with one warning (as the spec says).
    """
    env = os.environ if environ is None else environ
    attributes: dict[str, AttributeValue] = {
        "service.name": DEFAULT_SERVICE_NAME,
        "service.version": __version__,
        "host.name": host_name(env) if hostname is None else hostname,
        **TELEMETRY_SDK,
        "telemetry.sdk.version": __version__,
    }
    node = env.get(ENV_NODE_NAME, "").strip()
    if node:
        attributes["k8s.node.name"] = node
    text = env.get(ENV_RESOURCE_ATTRIBUTES, "")
    if text.strip():
        try:
            attributes.update(parse_resource_attributes(text))
        except ValueError as error:
            log.warning("ignoring %s: %s", ENV_RESOURCE_ATTRIBUTES, error)
    service = env.get(ENV_SERVICE_NAME, "").strip()
    if service:
        attributes["service.name"] = service
    return attributes


def root_span_name(protocol: str, flow_name: str) -> str:
    """`<L4> <flow name>`, e.g. `TCP web`: what Jaeger lists as operations, so it never holds addresses."""
    return f"{protocol} {flow_name}"


def probe_attributes(probe: Probe) -> dict[str, AttributeValue]:
    """The constant attributes of a probe's spans: `ipftrace.probe` always, `code.function.name` for a function."""
    if probe.kind is ProbeKind.TRACEPOINT:
        return {"ipftrace.probe": f"tracepoint:{probe.name}"}
    return {"code.function.name": probe.name, "ipftrace.probe": f"{probe.kind.value}:{probe.name}"}


# ---- wire pieces, derived from the generated classes ---------------------------------------------------------------


def _any_value(value: object) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        if -(1 << 63) <= value < (1 << 63):
            return AnyValue(int_value=value)
        return AnyValue(string_value=str(value))
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, (bytes, bytearray)):
        return AnyValue(string_value=bytes(value).hex())
    return AnyValue(string_value=str(value))


def _key_values(attributes: Mapping[str, object]) -> list[KeyValue]:
    return [KeyValue(key=key, value=_any_value(value)) for key, value in attributes.items()]


def _attribute_field(key: str, value: object) -> bytes:
    """One span attribute as it appears inside a serialized Span (field `attributes`)."""
    return Span(attributes=[KeyValue(key=key, value=_any_value(value))]).SerializeToString()


def _prefix(message: bytes, payload_len: int) -> bytes:
    return message[: len(message) - payload_len]


# field tags, taken from the generated classes (serialize a one-field message, cut off its payload)
_TRACE_ID = _prefix(Span(trace_id=bytes(16)).SerializeToString(), 16)
_SPAN_ID = _prefix(Span(span_id=bytes(8)).SerializeToString(), 8)
_PARENT_ID = _prefix(Span(parent_span_id=bytes(8)).SerializeToString(), 8)
_START = _prefix(Span(start_time_unix_nano=1).SerializeToString(), 8)
_END = _prefix(Span(end_time_unix_nano=1).SerializeToString(), 8)
_SPANS = _prefix(ScopeSpans(spans=[Span()]).SerializeToString(), 1)
_SCOPE_SPANS = _prefix(ResourceSpans(scope_spans=[ScopeSpans()]).SerializeToString(), 1)
_RESOURCE_SPANS = _prefix(ExportTraceServiceRequest(resource_spans=[ResourceSpans()]).SerializeToString(), 1)
if len(_START) != 1 or len(_END) != 1:
    raise ImportError("opentelemetry-proto Span time fields no longer have one-byte tags")
_TIMES = struct.Struct("<BQBQ")  # start tag, start, end tag, end
_START_TAG, _END_TAG = _START[0], _END[0]
_ZERO_ID = bytes(8)
_SMALL_VARINTS = [bytes((n,)) for n in range(128)]


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL_VARINTS[value]
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_VARINT_CACHE = 4096  # spans up to this size take their length prefix from a table
_VARINTS = [_varint(n) for n in range(_VARINT_CACHE)]


def _length_delimited(tag: bytes, body: bytes) -> bytes:
    return tag + _varint(len(body)) + body


_ATTRIBUTE = _prefix(Span(attributes=[KeyValue()]).SerializeToString(), 1)  # tag of Span.attributes
_KV_VALUE = _prefix(KeyValue(value=AnyValue()).SerializeToString(), 1)  # tag of KeyValue.value
_ANY_STRING = _prefix(AnyValue(string_value="x").SerializeToString(), 2)  # tag of AnyValue.string_value
_SKB_KEY = KeyValue(key="ipftrace.skb").SerializeToString()
_SOURCE_ADDRESS_KEY = KeyValue(key="source.address").SerializeToString()
_DESTINATION_ADDRESS_KEY = KeyValue(key="destination.address").SerializeToString()
_SOURCE_PORT_KEY = KeyValue(key="source.port").SerializeToString()
_DESTINATION_PORT_KEY = KeyValue(key="destination.port").SerializeToString()
_ANY_INT = _prefix(AnyValue(int_value=1).SerializeToString(), 1)  # tag of AnyValue.int_value
_NAME = _prefix(Span(name="x").SerializeToString(), 2)  # tag of Span.name
_KIND_INTERNAL = Span(kind=Span.SPAN_KIND_INTERNAL).SerializeToString()


def _string_attribute(key_field: bytes, value: str) -> bytes:
    """`_attribute_field(key, value)` for a str value, without building messages (`key_field`: KeyValue(key=...))."""
    raw = value.encode()
    any_value = _ANY_STRING + _varint(len(raw)) + raw
    return _length_delimited(_ATTRIBUTE, key_field + _length_delimited(_KV_VALUE, any_value))


def _port_attribute(key_field: bytes, port: int) -> bytes:
    """`_attribute_field(key, port)` for a port (0-65535), without building messages."""
    any_value = _ANY_INT + _varint(port)
    return _length_delimited(_ATTRIBUTE, key_field + _length_delimited(_KV_VALUE, any_value))


def _attribute_cache(key: str) -> BoundedCache[object, bytes]:
    """Serialized pieces of attribute `key` by value."""
    return BoundedCache(_CACHE_LIMIT, functools.partial(_attribute_field, key))


# ---- the encoder ------------------------------------------------------------------------------------------------


class SpanEncoder:
    """Finished SkbPaths -> one OTLP ExportTraceServiceRequest (one trace per path). Not thread-safe."""

    def __init__(
        self,
        names: Names,
        clock: WallClock,
        resource_attributes: Mapping[str, AttributeValue],
        event_attributes: EventAttributes | None = None,
        *,
        skb_address: bool = False,
        seed: int | None = None,
    ) -> None:
        self.names = names
        self.probes = probes = names.probes
        self.skb_address = skb_address
        self.clock = clock
        self.event_attributes = event_attributes
        self.resource = Resource(attributes=_key_values(resource_attributes))
        self.scope = InstrumentationScope(name=SCOPE_NAME, version=__version__)
        self._rng = random.Random(seed)
        # ResourceSpans without its scope_spans (appended per request: fields may come in any order)
        self._head = ResourceSpans(resource=self.resource, schema_url=SCHEMA_URL).SerializeToString()
        self._scope = ScopeSpans(scope=self.scope, schema_url=SCHEMA_URL).SerializeToString()
        self._templates = [self._template(probe) for probe in probes]
        self._template_lens = [len(template) for template in self._templates]
        self._tails: BoundedCache[tuple[int, int, int], bytes] = BoundedCache(_CACHE_LIMIT, self._event_tail)
        self._unknown: BoundedCache[int, bytes] = BoundedCache(_CACHE_LIMIT, self._unknown_template)
        self._cpu = _attribute_cache("ipftrace.cpu")
        self._len = _attribute_cache("ipftrace.len")
        self._ifindex = _attribute_cache("ipftrace.ifindex")
        self._networks: BoundedCache[tuple[int, int, int, bytes, bytes, int, int], bytes] = BoundedCache(_CACHE_LIMIT)
        self._headerless: BoundedCache[str, bytes] = BoundedCache(_CACHE_LIMIT, self._name_and_kind)
        self._path_attributes: BoundedCache[tuple[str, object], bytes] = BoundedCache(
            _CACHE_LIMIT, lambda item: _attribute_field(*item))
        # by type too: True and 1 are equal keys but different attribute values
        self._module_attributes: BoundedCache[tuple[str, type, object], bytes] = BoundedCache(
            _CACHE_LIMIT, lambda item: _attribute_field(item[0], item[2]))

    @staticmethod
    def _template(probe: Probe) -> bytes:
        """The constant part of every child span of this probe."""
        return Span(
            name=probe.name, kind=Span.SPAN_KIND_INTERNAL, attributes=_key_values(probe_attributes(probe))
        ).SerializeToString()

    def _unknown_template(self, probe_id: int) -> bytes:
        """The child-span template of a probe id the table does not know."""
        name = self.names.probe(probe_id)
        return Span(name=name, kind=Span.SPAN_KIND_INTERNAL,
                    attributes=_key_values({"ipftrace.probe": name})).SerializeToString()

    def _attribute(self, key: str, value: object) -> bytes:
        return self._path_attributes[(key, value)]

    def _module_attribute(self, key: str, value: object) -> bytes:
        return self._module_attributes[(key, type(value), value)]

    def _network(self, path: SkbPath) -> bytes:
        """Root name and network attributes, cached by flow and headers (packets of a connection share them)."""
        event = path.tuple_event
        if event is None:
            return self._headerless[f"packet {self.names.flow(path.flow_id)}"]
        key = (path.flow_id, event.ipversion, event.l4proto, event.saddr, event.daddr, event.sport, event.dport)
        piece = self._networks.get(key)
        if piece is None:
            flow = path.describe()
            attribute = self._attribute
            name = root_span_name(flow.protocol, self.names.flow(path.flow_id)).encode()
            pieces = [
                _NAME + _varint(len(name)) + name,
                _KIND_INTERNAL,
                attribute("network.transport", flow.protocol.lower()),
                attribute("network.type", f"ipv{flow.ipversion}"),
                _string_attribute(_SOURCE_ADDRESS_KEY, flow.saddr),
                _string_attribute(_DESTINATION_ADDRESS_KEY, flow.daddr),
            ]
            if flow.l4proto in PORT_PROTOCOLS:
                pieces += [_port_attribute(_SOURCE_PORT_KEY, flow.sport),
                           _port_attribute(_DESTINATION_PORT_KEY, flow.dport)]
            piece = self._networks[key] = b"".join(pieces)
        return piece

    @staticmethod
    def _name_and_kind(name: str) -> bytes:
        """Name and kind of a span without a probe: a headerless path's root (one per flow), a clone's span."""
        return Span(name=name, kind=Span.SPAN_KIND_INTERNAL).SerializeToString()

    @staticmethod
    def span_count(paths: Iterable[SkbPath]) -> int:
        """Spans `encode` makes of these paths: a root plus one per event (none for an empty path), and per clone one
        plus one per event."""
        return sum(len(skb.events) + 1 for path in paths if path.events for skb in path.skb_paths if skb.events)

    def encode(self, paths: Sequence[SkbPath]) -> ExportTraceServiceRequest:
        """Paths -> one request (one ResourceSpans, one ScopeSpans, all spans)."""
        return ExportTraceServiceRequest.FromString(self.encode_bytes(paths))

    def encode_bytes(self, paths: Sequence[SkbPath]) -> bytes:
        """Paths -> the request serialized (fields in template order, so not byte-equal to SerializeToString)."""
        spans: list[bytes] = [self._scope]
        for path in paths:
            if path.events:
                self._encode_path(path, spans)
        scope_spans = _length_delimited(_SCOPE_SPANS, b"".join(spans))
        return _length_delimited(_RESOURCE_SPANS, self._head + scope_spans)

    def _event_tail(self, key: tuple[int, int, int]) -> bytes:
        """The `ipftrace.cpu`, `ipftrace.len` and `ipftrace.ifindex` attributes of an event (cached in `_tails`)."""
        cpu, length, ifindex = key
        return self._cpu[cpu] + self._len[length] + self._ifindex[ifindex]

    def _random_ids(self, size: int) -> bytes:
        """`size` random bytes for trace and span ids, none of its 8-byte ids zero (a zero id is invalid: redraw;
        eight zero bytes across two ids also match, which only costs a redraw)."""
        raw = self._rng.getrandbits(8 * size).to_bytes(size, "little")
        while _ZERO_ID in raw:
            raw = self._rng.getrandbits(8 * size).to_bytes(size, "little")
        return raw

    def _encode_path(self, path: SkbPath, out: list[bytes]) -> None:
        """Append the packet's spans to `out`, each as its field tag, length and pieces (joined once, by the
        caller): the root, one span per event, and per clone a span (`ipftrace.relation`) holding its events."""
        raw = self._random_ids(24 + 8 * len(path.events))
        trace_id, root_id = raw[:16], raw[16:24]
        dropped = path.packet_outcome == OUTCOME_DROPPED
        drop_pieces = self._drop_pieces(path, dropped) if path.outcome == OUTCOME_DROPPED else b""
        self._encode_events(path, trace_id, root_id, raw[24:], drop_pieces, out)
        for child in path.children:
            self._encode_child(child, trace_id, root_id, out, dropped)
        if dropped and path.outcome != OUTCOME_DROPPED:  # dropped through a fragment or segment of it
            dropping = next((child for child in path.children if child.outcome == OUTCOME_DROPPED), path)
            drop_pieces = self._drop_pieces(dropping)
        out.append(_length_delimited(_SPANS, self._root(path, trace_id, root_id, self.clock.offset_ns,
                                                        drop_pieces if dropped else b"")))

    def _encode_child(self, child: SkbPath, trace_id: bytes, root_id: bytes, out: list[bytes],
                      packet_dropped: bool) -> None:
        """A clone's path: one span under the packet's root (named after the relation), its events under it."""
        if not child.events:
            return
        raw = self._random_ids(8 + 8 * len(child.events))
        span_id = raw[:8]
        drop_pieces = self._drop_pieces(child, packet_dropped) if child.outcome == OUTCOME_DROPPED else b""
        self._encode_events(child, trace_id, span_id, raw[8:], drop_pieces, out)
        offset = self.clock.offset_ns
        events = child.events
        attribute = self._attribute
        pieces = [
            _TRACE_ID, trace_id, _SPAN_ID, span_id, _PARENT_ID, root_id,
            self._headerless[child.relation],
            _TIMES.pack(_START_TAG, events[0].timestamp_ns + offset, _END_TAG, events[-1].timestamp_ns + offset),
            attribute("ipftrace.relation", child.relation),
            attribute("ipftrace.outcome", child.outcome),
            _string_attribute(_SKB_KEY, f"{child.skb:#x}") if self.skb_address else b"",
        ]
        if child.gap:
            pieces.append(attribute("ipftrace.gap", True))
        if child.before_packet:
            pieces.append(attribute("ipftrace.before_packet", True))
        if child.neighbour_probe:
            pieces.append(attribute("ipftrace.neighbour_probe", True))
        out.append(_length_delimited(_SPANS, b"".join(pieces)))

    def _encode_events(self, path: SkbPath, trace_id: bytes, parent_id: bytes, span_ids: bytes, drop_pieces: bytes,
                       out: list[bytes]) -> None:
        """One span per event of `path`, children of `parent_id`; `drop_pieces` go on the dropping event's span."""
        events = path.events
        count = len(events)
        offset = self.clock.offset_ns
        head = _TRACE_ID + trace_id + _PARENT_ID + parent_id + _SPAN_ID  # every span: same trace, same parent
        fixed = len(head) + 8 + _TIMES.size  # head, the span id, the two times
        dropped = bool(drop_pieces)

        templates = self._templates
        template_lens = self._template_lens
        ntemplates = len(templates)
        tails = self._tails
        unknown = self._unknown
        pack = _TIMES.pack
        module = self.event_attributes
        module_attribute = self._module_attribute
        drop_role = ProbeRole.DROP
        probes = self.probes
        spans_tag = _SPANS
        varints = _VARINTS
        extend = out.extend
        next_ts = events[0].timestamp_ns
        for index in range(count):
            event = events[index]
            start = next_ts + offset
            if index + 1 < count:
                next_ts = events[index + 1].timestamp_ns
                end = next_ts + offset
            else:
                end = start
            probe_id = event.probe_id
            if 0 <= probe_id < ntemplates:
                template = templates[probe_id]
                size = fixed + template_lens[probe_id]
            else:
                template = unknown[probe_id]
                size = fixed + len(template)
            tail = tails[(event.cpu, event.length, event.ifindex)]
            size += len(tail)
            extra = b""
            if module is not None:
                extra = b"".join([module_attribute(name, value) for name, value in module(event).items()])
            if dropped and probe_id < ntemplates and probes[probe_id].role is drop_role:
                extra += drop_pieces
            if event.flags & FLAG_REWRITE:
                extra += self._rewrite_pieces(event)
            if event.flags & FLAG_ENCAP:
                extra += self._rewrite_pieces(event, "encap")
            size += len(extra)
            extend((spans_tag, varints[size] if size < _VARINT_CACHE else _varint(size), head,
                    span_ids[8 * index : 8 * index + 8], template, pack(_START_TAG, start, _END_TAG, end), tail,
                    extra))

    def _rewrite_pieces(self, event: Event, relation: str = "nat") -> bytes:
        """`ipftrace.relation` = nat and the new headers (`ipftrace.rewrite.*`), on the span of the event where they
        were seen rewritten; for a tunnel, `ipftrace.relation` = encap and the outer headers (`ipftrace.encap.*`)."""
        flow = FlowTuple.of(event)
        attribute = self._attribute
        prefix = "ipftrace.rewrite" if relation == "nat" else f"ipftrace.{relation}"
        pieces = [attribute("ipftrace.relation", relation), attribute(f"{prefix}.source.address", flow.saddr),
                  attribute(f"{prefix}.destination.address", flow.daddr)]
        if flow.l4proto in PORT_PROTOCOLS:
            pieces += [attribute(f"{prefix}.source.port", flow.sport),
                       attribute(f"{prefix}.destination.port", flow.dport)]
        return b"".join(pieces)

    def _drop_pieces(self, path: SkbPath, error: bool = True) -> bytes:
        """The drop attributes (on the root and on the dropping event's span), after status ERROR when `error`
        (the packet was dropped; a dropped skb of a packet whose clone was delivered keeps the attributes only)."""
        drop = path.drop
        reason = drop.reason if drop else "unknown"
        function = drop.function if drop else "unknown"
        status = Span(status=Status(code=Status.STATUS_CODE_ERROR, message=f"{reason} at {function}"))
        return (
            (status.SerializeToString() if error else b"")
            + self._attribute("ipftrace.drop.reason", reason)
            + self._attribute("ipftrace.drop.function", function)
        )

    def _root(self, path: SkbPath, trace_id: bytes, root_id: bytes, offset: int, drop_pieces: bytes) -> bytes:
        attribute = self._attribute
        events = path.events
        times = _TIMES.pack(
            _START_TAG, events[0].timestamp_ns + offset, _END_TAG, events[-1].timestamp_ns + offset
        )
        pieces = [
            _TRACE_ID,
            trace_id,
            _SPAN_ID,
            root_id,
            self._network(path),
            times,
            _string_attribute(_SKB_KEY, f"{path.skb:#x}") if self.skb_address else b"",  # unique: not cached
            attribute("ipftrace.flow", self.names.flow(path.flow_id)),
            attribute("ipftrace.outcome", path.packet_outcome),
            drop_pieces,
        ]
        if path.gap:
            pieces.append(attribute("ipftrace.gap", True))
            if path.lost_events:
                pieces.append(attribute("ipftrace.lost_events", path.lost_events))
        if path.freed_unseen:
            pieces.append(attribute("ipftrace.freed_unseen", True))
        return b"".join(pieces)
