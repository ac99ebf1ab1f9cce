"""The module API: a module adds a C match and/or data snippet to the BPF program and decodes its share of each
event's 64 bytes of custom data into fields (JSON, span attributes `ipftrace.<module>.<field>`) and a short text
(the `Custom Data` column).

A module is a `Module` subclass. Its C runs inside two generated functions, with these names in scope:
  match (`c_match`): `struct sk_buff *skb`, `const struct ipft_tuple *t` (the parsed headers); `return 0;` rejects
      the packet. It runs once per packet, when the packet first matches a flow.
  data (`c_data`): `skb`, `t` (parsed headers on the packet's first event, zeros afterwards) and `u8 *data`, this
      module's own `data_size` bytes (already zeroed). It runs on every event of a traced packet.
C must read kernel memory with bpf_probe_read_kernel and put only numbers validated in Python into the text. The
program's C file defines two helpers for it:
  IPFT_MOD_READ(dst, ptr): copy sizeof(dst) bytes of kernel memory at ptr into dst;
  IPFT_MOD_MEMBER(dst, ptr, type, member): copy member `member` of the `type` at ptr into dst (offsets from the
      kernel's own layout).
Helper names must start with `ipft_<module name>_`; `ipft_hook_*` is reserved for the generated hook functions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import ClassVar

from ..errors import KernelError, UsageError
from ..events import MODULE_DATA_SIZE
from ..kernel.btf import (
    DEFAULT_PATH,
    FALLBACK_GSO_TYPES,
    KIND_PTR,
    KIND_STRUCT,
    KIND_TYPEDEF,
    KIND_UNION,
    Btf,
)

FieldValue = str | int | float | bool
Fields = dict[str, FieldValue]

MODULE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
DATA_SIZE = MODULE_DATA_SIZE  # bytes of custom data per event

class ModuleError(UsageError):
    """A module could not be found, was given a bad option, or its C code does not compile."""


class ModuleContext:
    """What modules may ask about the running kernel. BTF is read on first use; without it, modules assume a
    64-bit kernel and the built-in GSO type names."""

    def __init__(self, btf: Btf | Callable[[], Btf] | None = None, btf_path: str = DEFAULT_PATH) -> None:
        self._source = btf
        self._btf_path = btf_path
        self._btf: Btf | None = None
        self._loaded = False

    def btf(self) -> Btf | None:
        """The kernel's BTF, or None when it cannot be read."""
        if not self._loaded:
            self._loaded = True
            try:
                if isinstance(self._source, Btf):
                    self._btf = self._source
                elif self._source is not None:
                    self._btf = self._source()
                else:
                    self._btf = Btf.load(self._btf_path)
            except KernelError:
                self._btf = None
        return self._btf

    def gso_types(self) -> dict[int, str]:
        """SKB_GSO_* bit -> name for this kernel (BTF first)."""
        btf = self.btf()
        return btf.gso_types() if btf is not None else dict(FALLBACK_GSO_TYPES)

    def has_member(self, struct_name: str, member: str) -> bool | None:
        """Whether `struct struct_name` has `member` (None when BTF is unavailable)."""
        btf = self.btf()
        if btf is None:
            return None
        return btf.struct_member_offset(struct_name, member) is not None

    def typedef_kind(self, name: str) -> int | None:
        """The BTF kind (KIND_INT, KIND_PTR, KIND_STRUCT, ...) a typedef stands for; None when unknown."""
        btf = self.btf()
        if btf is None:
            return None
        for type_id in btf.find(name, KIND_TYPEDEF):
            return btf.kind(btf.resolve(type_id))
        return None

    def typedef_is_pointer(self, name: str) -> bool | None:
        """Whether a typedef stands for a pointer (None when unknown)."""
        kind = self.typedef_kind(name)
        return None if kind is None else kind == KIND_PTR

    def typedef_struct_members(self, name: str) -> int | None:
        """How many members the struct a typedef stands for has (None when unknown)."""
        btf = self.btf()
        if btf is None:
            return None
        for type_id in btf.find(name, KIND_TYPEDEF):
            target = btf.resolve(type_id)
            if target and btf.kind(target) in (KIND_STRUCT, KIND_UNION):
                return btf.type(target).vlen
            return None
        return None


class Module:
    """Base of every module: set `name` and `data_size`; override `configure` (options), the C snippets, `decode`
    and (optionally) `text`. The loader builds it as `Module(arg, context)`."""

    name: ClassVar[str] = ""
    data_size: ClassVar[int] = 0  # bytes of custom data this module fills (0..64)
    align: ClassVar[int] = 4  # its data starts at a multiple of this (1, 2, 4 or 8)
    description: ClassVar[str] = ""

    def __init__(self, arg: str | None, context: ModuleContext) -> None:
        self.context = context
        self.configure(arg)

    def configure(self, arg: str | None) -> None:
        """Take the option text after `NAME=` (None when absent); raise ValueError (or ModuleError) when it is bad.
        The default takes no option. `self.context` is set."""
        if arg is not None:
            raise ModuleError(f"module {self.name!r}: takes no option (got {arg!r})")

    def c_declarations(self) -> str:
        """C types and helpers placed before the hooks (names prefixed `ipft_<name>_`)."""
        return ""

    def c_match(self) -> str:
        """C statements deciding whether a packet is traced; `return 0;` rejects it. '' = no condition."""
        return ""

    def c_data(self) -> str:
        """C statements filling `data[0 .. data_size)`. '' = no data."""
        return ""

    def decode(self, data: bytes) -> Fields:
        """This module's `data_size` bytes -> fields ({} when the event carries nothing for this module)."""
        return {}

    def text(self, fields: Fields) -> str:
        """The `Custom Data` text of decoded fields; default `(key: value ...)`, '' for no fields."""
        if not fields:
            return ""
        return "(" + " ".join(f"{key}: {value}" for key, value in fields.items()) + ")"


ModuleFactory = type[Module]


def check_module_class(cls: object, origin: str) -> type[Module]:
    """`cls` if it is a usable Module subclass, else ModuleError saying why (origin names where it came from)."""
    if not isinstance(cls, type) or not issubclass(cls, Module) or cls is Module:
        raise ModuleError(f"module {origin!r}: {cls!r} is not a subclass of ipftrace_exporter.modules.Module")
    if not isinstance(cls.name, str) or not MODULE_NAME.fullmatch(cls.name):
        raise ModuleError(f"module {origin!r}: name {cls.name!r} must match {MODULE_NAME.pattern}")
    if not isinstance(cls.data_size, int) or not 0 <= cls.data_size <= DATA_SIZE:
        raise ModuleError(f"module {cls.name!r}: data_size {cls.data_size!r} must be within 0..{DATA_SIZE}")
    if cls.align not in (1, 2, 4, 8):
        raise ModuleError(f"module {cls.name!r}: align {cls.align!r} must be 1, 2, 4 or 8")
    return cls


# ---- option parsing helpers -----------------------------------------------------------------------------------

def parse_uint(text: str, what: str, bits: int = 32) -> int:
    """An unsigned integer in C syntax (decimal, 0x.., 0o.., 0b..) that fits in `bits`; ValueError otherwise."""
    cleaned = text.strip()
    try:
        value = int(cleaned, 0)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a number") from None
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{what} {text!r} is out of range (0..{(1 << bits) - 1:#x})")
    return value


def parse_value_mask(text: str, what: str, bits: int = 32) -> tuple[int, int]:
    """'VALUE[/MASK]' -> (value, mask); the mask defaults to all ones and value must lie within it."""
    value_text, sep, mask_text = text.partition("/")
    value = parse_uint(value_text, what, bits)
    mask = parse_uint(mask_text, f"{what} mask", bits) if sep else (1 << bits) - 1
    if value & ~mask:
        raise ValueError(f"{what} {value:#x} has bits outside the mask {mask:#x}: nothing would match")
    return value, mask


def parse_options(arg: str | None, known: Mapping[str, str]) -> dict[str, str]:
    """'key=value,key2=value2' -> dict, keys checked against `known` (key -> help); ValueError on others."""
    if arg is None or not arg.strip():
        return {}
    out: dict[str, str] = {}
    for item in arg.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in known:
            names = ", ".join(sorted(known)) or "none"
            raise ValueError(f"unknown option {key!r} (known: {names})")
        if not sep:
            raise ValueError(f"option {key!r} needs a value ({key}=...)")
        out[key] = value.strip()
    return out


def flag_names(value: int, names: Mapping[int, str]) -> str:
    """Bits of `value` named by `names` (bit -> name), joined by '|'; unnamed bits as hex; '' for 0."""
    parts = []
    rest = value
    for bit in sorted(names):
        if bit and value & bit == bit:
            parts.append(names[bit])
            rest &= ~bit
    if rest:
        parts.append(f"{rest:#x}")
    return "|".join(parts)
