"""`gso`: skb->len and the GSO fields of skb_shared_info (gso_size, gso_segs, gso_type names from BTF), as in the
seed's example: `(len: 2101 gso_size: 1448 gso_segs: 2 gso_type: SKB_GSO_TCPV4)`."""

from __future__ import annotations

import struct

from .base import Fields, Module, flag_names

_LAYOUT = struct.Struct("<IHHI")  # struct ipft_gso_data below


class GsoModule(Module):
    """Per event: skb->len, gso_size, gso_segs and gso_type (bit names joined by '|')."""

    name = "gso"
    data_size = _LAYOUT.size
    description = "skb->len and GSO size, segments and type"

    def configure(self, arg: str | None) -> None:
        super().configure(arg)
        # skb_shared_info sits at skb->end: an offset from skb->head on 64-bit kernels
        # (NET_SKBUFF_DATA_USES_OFFSET), a pointer elsewhere. BTF tells which; without BTF, assume 64-bit.
        self.end_is_pointer = bool(self.context.typedef_is_pointer("sk_buff_data_t"))
        self._names: dict[int, str] | None = None

    @property
    def gso_type_names(self) -> dict[int, str]:
        """SKB_GSO_* bit -> name for the running kernel (read once)."""
        if self._names is None:
            self._names = self.context.gso_types()
        return self._names

    def c_declarations(self) -> str:
        return """\
struct ipft_gso_data {
    u32 len;
    u16 gso_size;
    u16 gso_segs;
    u32 gso_type;
};
"""

    def c_data(self) -> str:
        shinfo = "(unsigned char *)end" if self.end_is_pointer else "head + end"
        return f"""\
struct ipft_gso_data out = {{}};
unsigned char *head = 0;
sk_buff_data_t end = 0;
IPFT_MOD_MEMBER(out.len, skb, struct sk_buff, len);
IPFT_MOD_MEMBER(head, skb, struct sk_buff, head);
IPFT_MOD_MEMBER(end, skb, struct sk_buff, end);
if (head) {{
    unsigned char *shinfo = {shinfo};
    IPFT_MOD_MEMBER(out.gso_size, shinfo, struct skb_shared_info, gso_size);
    IPFT_MOD_MEMBER(out.gso_segs, shinfo, struct skb_shared_info, gso_segs);
    IPFT_MOD_MEMBER(out.gso_type, shinfo, struct skb_shared_info, gso_type);
}}
__builtin_memcpy(data, &out, sizeof(out));
"""

    def decode(self, data: bytes) -> Fields:
        length, gso_size, gso_segs, gso_type = _LAYOUT.unpack(data)
        return {
            "len": length,
            "gso_size": gso_size,
            "gso_segs": gso_segs,
            "gso_type": flag_names(gso_type, self.gso_type_names),
        }

    def text(self, fields: Fields) -> str:
        if not fields:
            return ""
        return (f"(len: {fields['len']} gso_size: {fields['gso_size']} gso_segs: {fields['gso_segs']} "
                f"gso_type: {fields['gso_type']})")
