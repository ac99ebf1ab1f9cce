"""`mark`: skb->mark on every event; `mark=VALUE[/MASK]` traces only packets whose mark matches when first seen."""

from __future__ import annotations

import struct

from .base import Fields, Module, ModuleError, parse_value_mask

_LAYOUT = struct.Struct("<I")


class MarkModule(Module):
    """skb->mark (hex); the option `VALUE[/MASK]` keeps only packets with (mark & MASK) == VALUE."""

    name = "mark"
    data_size = _LAYOUT.size
    description = "skb->mark; mark=VALUE[/MASK] matches on it"

    match: tuple[int, int] | None = None  # (value, mask) from the option

    def configure(self, arg: str | None) -> None:
        if arg is not None:
            if not arg.strip():
                raise ModuleError("module 'mark': empty option (use mark=VALUE or mark=VALUE/MASK)")
            self.match = parse_value_mask(arg, "mark")

    def c_match(self) -> str:
        if self.match is None:
            return ""
        value, mask = self.match
        return f"""\
u32 mark = 0;
IPFT_MOD_MEMBER(mark, skb, struct sk_buff, mark);
if ((mark & {int(mask):#x}U) != {int(value):#x}U)
    return 0;
"""

    def c_data(self) -> str:
        return """\
u32 mark = 0;
IPFT_MOD_MEMBER(mark, skb, struct sk_buff, mark);
__builtin_memcpy(data, &mark, sizeof(mark));
"""

    def decode(self, data: bytes) -> Fields:
        return {"mark": _LAYOUT.unpack(data)[0]}

    def text(self, fields: Fields) -> str:
        return f"(mark: {int(fields['mark']):#x})" if fields else ""
