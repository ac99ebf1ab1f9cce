"""A pure-Python reader of raw kernel BTF: skb functions, their prototypes, enums and struct offsets.

The format is the kernel's (Documentation/bpf/btf.rst): a header, a type section of variable-length
records (ids start at 1; 0 is void) and a string section. One pass over the type section records where
each type sits; everything else is decoded on demand and cached.

Only base BTF is read (/sys/kernel/btf/vmlinux); module BTF is split BTF (ids continue after vmlinux)
and is not parsed here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from ipftrace_exporter.errors import KernelError

BTF_MAGIC = 0xEB9F
DEFAULT_PATH = "/sys/kernel/btf/vmlinux"

# Kind numbers (include/uapi/linux/btf.h).
KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

KIND_NAMES = {
    KIND_INT: "INT", KIND_PTR: "PTR", KIND_ARRAY: "ARRAY", KIND_STRUCT: "STRUCT", KIND_UNION: "UNION",
    KIND_ENUM: "ENUM", KIND_FWD: "FWD", KIND_TYPEDEF: "TYPEDEF", KIND_VOLATILE: "VOLATILE",
    KIND_CONST: "CONST", KIND_RESTRICT: "RESTRICT", KIND_FUNC: "FUNC", KIND_FUNC_PROTO: "FUNC_PROTO",
    KIND_VAR: "VAR", KIND_DATASEC: "DATASEC", KIND_FLOAT: "FLOAT", KIND_DECL_TAG: "DECL_TAG",
    KIND_TYPE_TAG: "TYPE_TAG", KIND_ENUM64: "ENUM64",
}

# Bytes that follow the 12-byte struct btf_type: (fixed, per vlen item), indexed by kind.
_TRAILER = [(0, 0)] * 32
_TRAILER[KIND_INT] = (4, 0)
_TRAILER[KIND_ARRAY] = (12, 0)
_TRAILER[KIND_STRUCT] = (0, 12)
_TRAILER[KIND_UNION] = (0, 12)
_TRAILER[KIND_ENUM] = (0, 8)
_TRAILER[KIND_FUNC_PROTO] = (0, 8)
_TRAILER[KIND_VAR] = (4, 0)
_TRAILER[KIND_DATASEC] = (0, 12)
_TRAILER[KIND_DECL_TAG] = (4, 0)
_TRAILER[KIND_ENUM64] = (0, 12)
_KNOWN_KINDS = frozenset(KIND_NAMES)

# Modifiers that do not change what a type is for our purposes (skipped when resolving).
_MODIFIERS = frozenset({KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG})

SKB_DROP_REASON_PREFIX = "SKB_DROP_REASON_"
# Sentinels of enum skb_drop_reason that are not reasons.
_DROP_REASON_SENTINELS = frozenset({"SKB_DROP_REASON_MAX", "SKB_DROP_REASON_SUBSYS_MASK"})

# SKB_GSO_* bits as include/linux/skbuff.h long had them (v5.x to v6.x; later kernels moved and added
# bits, which is why BTF is read first). Used only when no enum in BTF holds SKB_GSO_TCPV4 (the
# constants live in an anonymous enum that a BTF without it would lack).
FALLBACK_GSO_TYPES: dict[int, str] = {
    1 << 0: "SKB_GSO_TCPV4", 1 << 1: "SKB_GSO_DODGY", 1 << 2: "SKB_GSO_TCP_ECN",
    1 << 3: "SKB_GSO_TCP_FIXEDID", 1 << 4: "SKB_GSO_TCPV6", 1 << 5: "SKB_GSO_FCOE",
    1 << 6: "SKB_GSO_GRE", 1 << 7: "SKB_GSO_GRE_CSUM", 1 << 8: "SKB_GSO_IPXIP4",
    1 << 9: "SKB_GSO_IPXIP6", 1 << 10: "SKB_GSO_UDP_TUNNEL", 1 << 11: "SKB_GSO_UDP_TUNNEL_CSUM",
    1 << 12: "SKB_GSO_PARTIAL", 1 << 13: "SKB_GSO_TUNNEL_REMCSUM", 1 << 14: "SKB_GSO_SCTP",
    1 << 15: "SKB_GSO_ESP", 1 << 16: "SKB_GSO_UDP", 1 << 17: "SKB_GSO_UDP_L4",
    1 << 18: "SKB_GSO_FRAGLIST",
}


class BtfType(NamedTuple):
    """One decoded struct btf_type header: kind, name, vlen, kind_flag and the size/type union."""

    id: int
    kind: int
    name: str
    vlen: int
    kind_flag: bool
    size_or_type: int


class Btf:
    """Parsed BTF blob; build with `Btf.load(path)` or `Btf.from_bytes(data)`."""

    def __init__(self, data: bytes, source: str = "<bytes>") -> None:
        self._data = data
        self._source = source
        self._parse_header()
        self._index_types()
        self._names: dict[int, dict[str, list[int]]] = {}
        self._skb_ptr: dict[int, bool] = {}
        self._skb_functions: dict[str, int] | None = None

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str = DEFAULT_PATH) -> Btf:
        """Read and index the BTF file at `path`; KernelError (one line) if missing, unreadable or corrupt."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise KernelError(f"BTF not found at {path} (kernel built without CONFIG_DEBUG_INFO_BTF?)") from None
        except OSError as exc:
            raise KernelError(f"cannot read BTF at {path}: {exc.strerror or exc}") from None
        return cls(data, source=path)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> Btf:
        """Parse a BTF blob already in memory (tests, or BTF taken from an ELF section)."""
        return cls(data, source=source)

    def _corrupt(self, why: str) -> KernelError:
        return KernelError(f"corrupt BTF in {self._source}: {why}")

    def _parse_header(self) -> None:
        data = self._data
        if len(data) < 24:
            raise self._corrupt(f"{len(data)} bytes is shorter than the 24-byte header")
        if struct.unpack_from("<H", data, 0)[0] == BTF_MAGIC:
            endian = "<"
        elif struct.unpack_from(">H", data, 0)[0] == BTF_MAGIC:
            endian = ">"
        else:
            raise self._corrupt(f"bad magic 0x{data[0]:02x}{data[1]:02x}")
        version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            endian + "BBIIIII", data, 2
        )
        if version != 1:
            raise self._corrupt(f"unsupported version {version}")
        if hdr_len < 24 or hdr_len > len(data):
            raise self._corrupt(f"header length {hdr_len} out of range")
        types_start = hdr_len + type_off
        strings_start = hdr_len + str_off
        if types_start + type_len > len(data) or strings_start + str_len > len(data):
            raise self._corrupt("type or string section runs past the end of the data")
        if type_len % 4:
            raise self._corrupt(f"type section length {type_len} is not a multiple of 4")
        self._types_start = types_start
        self._types_end = types_start + type_len
        self._strings_start = strings_start
        self._strings_end = strings_start + str_len
        self._u32 = struct.Struct(endian + "I")
        self._u32x2 = struct.Struct(endian + "II")
        self._u32x3 = struct.Struct(endian + "III")

    def _index_types(self) -> None:
        """One pass over the type section: offset, info and name offset of every type id."""
        data = self._data
        unpack = self._u32x3.unpack_from
        trailer = _TRAILER
        known = _KNOWN_KINDS
        offsets = [0]  # id 0 is void
        infos = [0]
        name_offs = [0]
        off = self._types_start
        end = self._types_end
        add_off = offsets.append
        add_info = infos.append
        add_name = name_offs.append
        try:
            while off < end:
                name_off, info, _ = unpack(data, off)
                kind = (info >> 24) & 0x1F
                if kind not in known:
                    raise self._corrupt(f"unknown kind {kind} at type id {len(offsets)}")
                fixed, per = trailer[kind]
                add_off(off)
                add_info(info)
                add_name(name_off)
                off += 12 + fixed + per * (info & 0xFFFF)
        except struct.error:
            raise self._corrupt(f"truncated type record at type id {len(offsets)}") from None
        if off != end:
            raise self._corrupt(f"type record at type id {len(offsets) - 1} runs past the type section")
        self._offsets = offsets
        self._infos = infos
        self._name_offs = name_offs

    # ---- low-level access ---------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of type ids, void (0) included."""
        return len(self._offsets)

    def string(self, offset: int) -> str:
        """The NUL-terminated string at `offset` in the string section."""
        start = self._strings_start + offset
        if offset < 0 or start >= self._strings_end:
            raise self._corrupt(f"string offset {offset} out of range")
        stop = self._data.find(b"\0", start, self._strings_end)
        if stop < 0:
            raise self._corrupt(f"string at offset {offset} is not NUL-terminated")
        return self._data[start:stop].decode("utf-8", "replace")

    def kind(self, type_id: int) -> int:
        """The kind number of `type_id` (0 for void)."""
        if not 0 <= type_id < len(self._infos):
            raise self._corrupt(f"reference to type id {type_id}, beyond the last ({len(self._infos) - 1})")
        return (self._infos[type_id] >> 24) & 0x1F

    def name(self, type_id: int) -> str:
        """The name of `type_id` ('' when anonymous or void)."""
        return self.string(self._name_offs[type_id]) if self._name_offs[type_id] else ""

    def type(self, type_id: int) -> BtfType:
        """The decoded header of `type_id`."""
        if not 0 < type_id < len(self._offsets):
            raise KeyError(type_id)
        info = self._infos[type_id]
        size_or_type = self._u32.unpack_from(self._data, self._offsets[type_id] + 8)[0]
        return BtfType(type_id, (info >> 24) & 0x1F, self.name(type_id), info & 0xFFFF, bool(info >> 31),
                       size_or_type)

    def _ref(self, type_id: int) -> int:
        """The size/type field of `type_id` (the referenced type for PTR, modifiers, FUNC, VAR)."""
        return self._u32.unpack_from(self._data, self._offsets[type_id] + 8)[0]

    def _items(self, type_id: int, fmt: struct.Struct) -> Iterator[tuple[int, ...]]:
        """The vlen trailer items of `type_id`, each unpacked with `fmt`."""
        vlen = self._infos[type_id] & 0xFFFF
        base = self._offsets[type_id] + 12
        size = fmt.size
        for i in range(vlen):
            yield fmt.unpack_from(self._data, base + i * size)

    def _kind_index(self, kind: int) -> dict[str, list[int]]:
        """Named type ids of one kind by name (built on first use of that kind)."""
        index = self._names.get(kind)
        if index is None:
            index = {}
            data = self._data
            sstart = self._strings_start
            infos = self._infos
            for type_id, name_off in enumerate(self._name_offs):
                if not name_off or (infos[type_id] >> 24) & 0x1F != kind:
                    continue
                start = sstart + name_off
                name = data[start:data.find(b"\0", start)].decode("utf-8", "replace")
                index.setdefault(name, []).append(type_id)
            self._names[kind] = index
        return index

    def find(self, name: str, *kinds: int) -> list[int]:
        """Type ids named `name` of the given kinds (all kinds when none given), in id order."""
        ids: list[int] = []
        for kind in kinds or tuple(KIND_NAMES):
            ids.extend(self._kind_index(kind).get(name, ()))
        return sorted(ids)

    def resolve(self, type_id: int) -> int:
        """`type_id` with typedef/const/volatile/restrict/type_tag stripped."""
        seen = 0
        while type_id and self.kind(type_id) in _MODIFIERS:
            type_id = self._ref(type_id)
            seen += 1
            if seen > 64:
                raise self._corrupt(f"modifier loop at type id {type_id}")
        return type_id

    # ---- functions ----------------------------------------------------------------------------

    def function_ids(self) -> Iterator[int]:
        """Ids of every FUNC type."""
        infos = self._infos
        for type_id in range(1, len(infos)):
            if (infos[type_id] >> 24) & 0x1F == KIND_FUNC:
                yield type_id

    def _proto_params(self, proto_id: int) -> list[tuple[int, int]]:
        """(name offset, type id) of each FUNC_PROTO parameter."""
        return [(name_off, type_id) for name_off, type_id in self._items(proto_id, self._u32x2)]

    def _is_skb_ptr(self, type_id: int) -> bool:
        """True when `type_id` is (modifiers of) a pointer to (modifiers of) struct sk_buff."""
        cached = self._skb_ptr.get(type_id)
        if cached is not None:
            return cached
        result = False
        target = self.resolve(type_id)
        if target and self.kind(target) == KIND_PTR:
            pointee = self.resolve(self._ref(target))
            if pointee and self.kind(pointee) in (KIND_STRUCT, KIND_FWD) and self.name(pointee) == "sk_buff":
                # A FWD with kind_flag set is a union forward; sk_buff is a struct.
                result = self.kind(pointee) == KIND_STRUCT or not self._infos[pointee] >> 31
        self._skb_ptr[type_id] = result
        return result

    def skb_functions(self) -> dict[str, int]:
        """Every FUNC with a `struct sk_buff *` parameter → 1-based position of the first such parameter.

        Positions above 5 are kept (fentry can reach them); kprobes read only arguments 1-5, so
        callers choosing functions for kprobes must filter. When a name appears more than once (static
        functions of the same name in different files), the first FUNC in id order wins.
        """
        if self._skb_functions is not None:
            return dict(self._skb_functions)
        result: dict[str, int] = {}
        kinds_ok = (KIND_FUNC_PROTO,)
        data = self._data
        offsets = self._offsets
        infos = self._infos
        pair = self._u32x2.unpack_from
        ref = self._ref
        is_skb = self._is_skb_ptr
        skb_cache = self._skb_ptr
        for func_id in self.function_ids():
            proto = ref(func_id)
            if not proto or self.kind(proto) not in kinds_ok:
                continue
            base = offsets[proto] + 12
            for i in range(infos[proto] & 0xFFFF):
                param_type = pair(data, base + 8 * i)[1]
                hit = skb_cache.get(param_type)
                if hit is None:
                    hit = is_skb(param_type)
                if hit:
                    name = self.name(func_id)
                    if name and name not in result:
                        result[name] = i + 1
                    break
        self._skb_functions = result
        return dict(result)

    def _func_proto(self, name: str) -> int | None:
        for func_id in self.find(name, KIND_FUNC):
            proto = self._ref(func_id)
            if proto and self.kind(proto) == KIND_FUNC_PROTO:
                return proto
        return None

    def _render_params(self, proto_id: int) -> list[tuple[str, str]]:
        params = []
        for name_off, type_id in self._proto_params(proto_id):
            if not name_off and not type_id:
                params.append(("", "..."))
                continue
            params.append((self.string(name_off) if name_off else "", self.type_text(type_id)))
        return params

    def function_params(self, name: str) -> list[tuple[str, str]] | None:
        """(parameter name, short C type text) of kernel function `name`, or None if BTF lacks it.

        A variadic function's last entry is ("", "...").
        """
        proto = self._func_proto(name)
        return None if proto is None else self._render_params(proto)

    def function_return(self, name: str) -> str | None:
        """The return type text of kernel function `name`, or None if BTF lacks it."""
        proto = self._func_proto(name)
        return None if proto is None else self.type_text(self._ref(proto))

    def tracepoint_params(self, event: str) -> list[tuple[str, str]] | None:
        """TP_PROTO parameters (name, type text) of raw tracepoint `event`, or None if BTF lacks it.

        Read from the `btf_trace_<event>` typedef (pointer to a FUNC_PROTO whose first parameter is the
        `void *` context, dropped here). That prototype has no parameter names; they are taken from
        `__bpf_trace_<event>` (or `__probestub_<event>`) when its types agree, else `argN`.
        """
        proto = None
        for typedef_id in self.find(f"btf_trace_{event}", KIND_TYPEDEF):
            target = self.resolve(self._ref(typedef_id))
            if target and self.kind(target) == KIND_PTR:
                candidate = self.resolve(self._ref(target))
                if candidate and self.kind(candidate) == KIND_FUNC_PROTO:
                    proto = candidate
                    break
        if proto is None:
            return None
        params = self._proto_params(proto)[1:]
        types = [type_id for _, type_id in params]
        names = [f"arg{i + 1}" for i in range(len(params))]
        for helper in (f"__bpf_trace_{event}", f"__probestub_{event}"):
            helper_proto = self._func_proto(helper)
            if helper_proto is None:
                continue
            helper_params = self._proto_params(helper_proto)[1:]
            if [type_id for _, type_id in helper_params] == types:
                names = [self.string(off) if off else names[i] for i, (off, _) in enumerate(helper_params)]
                break
        return [(names[i], self.type_text(type_id)) for i, type_id in enumerate(types)]

    def tracepoint_skb_pos(self, event: str) -> int | None:
        """1-based position of the first `struct sk_buff *` in raw tracepoint `event`'s TP_PROTO."""
        for typedef_id in self.find(f"btf_trace_{event}", KIND_TYPEDEF):
            target = self.resolve(self._ref(typedef_id))
            if target and self.kind(target) == KIND_PTR:
                proto = self.resolve(self._ref(target))
                if proto and self.kind(proto) == KIND_FUNC_PROTO:
                    for index, (_, type_id) in enumerate(self._proto_params(proto)[1:]):
                        if self._is_skb_ptr(type_id):
                            return index + 1
                    return None
        return None

    # ---- type text ----------------------------------------------------------------------------

    def type_text(self, type_id: int, _depth: int = 0) -> str:
        """A short C spelling of `type_id`: "struct sk_buff *", "const char *", "u32", "void *"."""
        if type_id == 0:
            return "void"
        if _depth > 32:
            return "..."
        kind = self.kind(type_id)
        name = self.name(type_id)
        if kind in (KIND_INT, KIND_FLOAT, KIND_TYPEDEF):
            return name or "?"
        if kind in (KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64):
            word = {KIND_STRUCT: "struct", KIND_UNION: "union"}.get(kind, "enum")
            return f"{word} {name}" if name else f"{word} {{...}}"
        if kind == KIND_FWD:
            word = "union" if self._infos[type_id] >> 31 else "struct"
            return f"{word} {name}"
        if kind == KIND_PTR:
            target = self._ref(type_id)
            if target and self.kind(self.resolve(target)) == KIND_FUNC_PROTO and self.kind(target) != KIND_TYPEDEF:
                proto = self.resolve(target)
                return f"{self.type_text(self._ref(proto), _depth + 1)} (*)(...)"
            inner = self.type_text(target, _depth + 1)
            return inner + ("*" if inner.endswith("*") else " *")
        if kind in (KIND_CONST, KIND_VOLATILE, KIND_RESTRICT):
            word = {KIND_CONST: "const", KIND_VOLATILE: "volatile", KIND_RESTRICT: "restrict"}[kind]
            target = self._ref(type_id)
            inner = self.type_text(target, _depth + 1)
            if target and self.kind(target) == KIND_PTR:
                return f"{inner}{word}" if inner.endswith("*") else f"{inner} {word}"
            return f"{word} {inner}"
        if kind == KIND_TYPE_TAG:
            return self.type_text(self._ref(type_id), _depth + 1)
        if kind == KIND_ARRAY:
            elem, _index, nelems = self._u32x3.unpack_from(self._data, self._offsets[type_id] + 12)
            return f"{self.type_text(elem, _depth + 1)}[{nelems}]"
        if kind == KIND_FUNC_PROTO:
            return f"{self.type_text(self._ref(type_id), _depth + 1)} (...)"
        return f"{KIND_NAMES.get(kind, '?').lower()} {name}".strip()

    # ---- enums --------------------------------------------------------------------------------

    def enum_values(self, type_id: int) -> dict[str, int]:
        """Members of ENUM or ENUM64 `type_id`, name → value (signed when the enum is signed)."""
        kind = self.kind(type_id)
        signed = bool(self._infos[type_id] >> 31)
        values: dict[str, int] = {}
        if kind == KIND_ENUM:
            for name_off, raw in self._items(type_id, self._u32x2):
                value = raw - (1 << 32) if signed and raw >= 1 << 31 else raw
                values[self.string(name_off)] = value
        elif kind == KIND_ENUM64:
            for name_off, lo, hi in self._items(type_id, self._u32x3):
                raw = (hi << 32) | lo
                value = raw - (1 << 64) if signed and raw >= 1 << 63 else raw
                values[self.string(name_off)] = value
        else:
            raise KeyError(f"type id {type_id} is {KIND_NAMES.get(kind, kind)}, not an enum")
        return values

    def enum(self, name: str) -> dict[str, int]:
        """Members of `enum name` (ENUM or ENUM64), name → value; {} when BTF has no such enum."""
        for type_id in self.find(name, KIND_ENUM, KIND_ENUM64):
            if self._infos[type_id] & 0xFFFF:
                return self.enum_values(type_id)
        return {}

    def enum_with_member(self, member: str) -> dict[str, int]:
        """Members of the first enum (named or anonymous) that has a constant called `member`."""
        for type_id in range(1, len(self._offsets)):
            kind = self.kind(type_id)
            if kind not in (KIND_ENUM, KIND_ENUM64):
                continue
            fmt = self._u32x2 if kind == KIND_ENUM else self._u32x3
            for item in self._items(type_id, fmt):
                if self.string(item[0]) == member:
                    return self.enum_values(type_id)
        return {}

    def drop_reasons(self) -> dict[int, str]:
        """`enum skb_drop_reason` as value → name without `SKB_DROP_REASON_` (3 → "NO_SOCKET").

        Only SKB_DROP_REASON_* members are included (not SKB_NOT_DROPPED_YET / SKB_CONSUMED, nor the
        MAX and SUBSYS_MASK sentinels); when two names share a value the first wins. {} on kernels
        without drop reasons (before 5.17).
        """
        reasons: dict[int, str] = {}
        for name, value in self.enum("skb_drop_reason").items():
            if name.startswith(SKB_DROP_REASON_PREFIX) and name not in _DROP_REASON_SENTINELS:
                reasons.setdefault(value, name[len(SKB_DROP_REASON_PREFIX):])
        return reasons

    def skb_consumed_reason(self) -> int | None:
        """The value of SKB_CONSUMED in `enum skb_drop_reason` (a normal free), or None if absent."""
        return self.enum("skb_drop_reason").get("SKB_CONSUMED")

    def gso_types(self) -> dict[int, str]:
        """SKB_GSO_* bit value → name, from the (anonymous) enum in BTF holding SKB_GSO_TCPV4.

        Falls back to FALLBACK_GSO_TYPES (the v6.x list from include/linux/skbuff.h) when BTF has no
        such enum.
        """
        values = self.enum_with_member("SKB_GSO_TCPV4")
        if not values:
            return dict(FALLBACK_GSO_TYPES)
        result: dict[int, str] = {}
        for name, value in values.items():
            if name.startswith("SKB_GSO_"):
                # The enum is a signed int in C: bit 31 reads negative. gso_type is unsigned; mask it.
                result.setdefault(value & 0xFFFFFFFF, name)
        return result

    # ---- structs ------------------------------------------------------------------------------

    def _members(self, type_id: int) -> Iterator[tuple[str, int, int]]:
        """(name, type id, bit offset) of each member of STRUCT/UNION `type_id`."""
        bitfields = bool(self._infos[type_id] >> 31)
        for name_off, member_type, offset in self._items(type_id, self._u32x3):
            bits = offset & 0xFFFFFF if bitfields else offset
            yield (self.string(name_off) if name_off else "", member_type, bits)

    def _member_bits(self, type_id: int, member: str, depth: int = 0) -> int | None:
        if depth > 16:
            return None
        for name, member_type, bits in self._members(type_id):
            if name == member:
                return bits
        for name, member_type, bits in self._members(type_id):
            if not name:  # anonymous struct/union: its members belong to the parent
                inner = self.resolve(member_type)
                if inner and self.kind(inner) in (KIND_STRUCT, KIND_UNION):
                    found = self._member_bits(inner, member, depth + 1)
                    if found is not None:
                        return bits + found
        return None

    def struct_member_offset(self, struct_name: str, member: str) -> int | None:
        """Byte offset of `member` in `struct struct_name` (anonymous inner structs/unions searched).

        None when the struct or member is unknown. A bitfield member gives the byte holding its first bit.
        """
        for type_id in self.find(struct_name, KIND_STRUCT, KIND_UNION):
            bits = self._member_bits(type_id, member)
            if bits is not None:
                return bits // 8
        return None

    def struct_member_bit(self, struct_name: str, member: str) -> int | None:
        """Bit offset of `member` (a bitfield's first bit, counted from the struct's first byte's lowest bit on
        little-endian machines) in `struct struct_name`; None when unknown."""
        for type_id in self.find(struct_name, KIND_STRUCT, KIND_UNION):
            bits = self._member_bits(type_id, member)
            if bits is not None:
                return bits
        return None

    def struct_size(self, struct_name: str) -> int | None:
        """sizeof(struct struct_name), or None when BTF lacks it."""
        for type_id in self.find(struct_name, KIND_STRUCT, KIND_UNION):
            return self._ref(type_id)
        return None
