"""BTF reader: the running kernel's vmlinux BTF, and hand-built blobs for the parser's edge cases."""

from __future__ import annotations

import os
import struct

import pytest

from ipftrace_exporter.errors import KernelError
from ipftrace_exporter.kernel import btf as btfmod
from ipftrace_exporter.kernel.btf import Btf

VMLINUX = "/sys/kernel/btf/vmlinux"
needs_vmlinux = pytest.mark.skipif(not os.access(VMLINUX, os.R_OK), reason=f"{VMLINUX} missing or unreadable")


# ---- a tiny BTF writer ------------------------------------------------------------------------------


class BlobBuilder:
    """Writes raw BTF the way the kernel lays it out; each add_* returns the new type id."""

    def __init__(self, endian: str = "<") -> None:
        self.endian = endian
        self.records: list[bytes] = []
        self.strings = bytearray(b"\0")
        self.string_offsets: dict[str, int] = {"": 0}

    def s(self, text: str) -> int:
        if text not in self.string_offsets:
            self.string_offsets[text] = len(self.strings)
            self.strings += text.encode() + b"\0"
        return self.string_offsets[text]

    def add(self, kind: int, name: str = "", vlen: int = 0, kflag: bool = False, size_or_type: int = 0,
            tail: bytes = b"") -> int:
        info = (int(kflag) << 31) | (kind << 24) | vlen
        self.records.append(struct.pack(self.endian + "III", self.s(name), info, size_or_type) + tail)
        return len(self.records)

    def u32(self, *values: int) -> bytes:
        return struct.pack(self.endian + "I" * len(values), *values)

    def int_(self, name: str, size: int, signed: bool = False) -> int:
        return self.add(btfmod.KIND_INT, name, size_or_type=size, tail=self.u32((int(signed) << 24) | size * 8))

    def ptr(self, target: int) -> int:
        return self.add(btfmod.KIND_PTR, size_or_type=target)

    def modifier(self, kind: int, target: int, name: str = "") -> int:
        return self.add(kind, name, size_or_type=target)

    def struct(self, name: str, size: int, members: list[tuple[str, int, int]], union: bool = False,
               bitfields: bool = False) -> int:
        tail = b"".join(self.u32(self.s(m), t, off) for m, t, off in members)
        kind = btfmod.KIND_UNION if union else btfmod.KIND_STRUCT
        return self.add(kind, name, len(members), bitfields, size, tail)

    def enum(self, name: str, values: list[tuple[str, int]], signed: bool = False) -> int:
        tail = b"".join(self.u32(self.s(n), v & 0xFFFFFFFF) for n, v in values)
        return self.add(btfmod.KIND_ENUM, name, len(values), signed, 4, tail)

    def enum64(self, name: str, values: list[tuple[str, int]], signed: bool = False) -> int:
        tail = b""
        for n, v in values:
            raw = v & 0xFFFFFFFFFFFFFFFF
            tail += self.u32(self.s(n), raw & 0xFFFFFFFF, raw >> 32)
        return self.add(btfmod.KIND_ENUM64, name, len(values), signed, 8, tail)

    def fwd(self, name: str, union: bool = False) -> int:
        return self.add(btfmod.KIND_FWD, name, kflag=union)

    def array(self, elem: int, index: int, count: int) -> int:
        return self.add(btfmod.KIND_ARRAY, tail=self.u32(elem, index, count))

    def proto(self, ret: int, params: list[tuple[str, int]]) -> int:
        tail = b"".join(self.u32(self.s(n), t) for n, t in params)
        return self.add(btfmod.KIND_FUNC_PROTO, vlen=len(params), size_or_type=ret, tail=tail)

    def func(self, name: str, proto: int, linkage: int = 1) -> int:
        return self.add(btfmod.KIND_FUNC, name, vlen=linkage, size_or_type=proto)

    def var(self, name: str, target: int) -> int:
        return self.add(btfmod.KIND_VAR, name, size_or_type=target, tail=self.u32(1))

    def datasec(self, name: str, entries: list[tuple[int, int, int]]) -> int:
        tail = b"".join(self.u32(*entry) for entry in entries)
        return self.add(btfmod.KIND_DATASEC, name, len(entries), size_or_type=64, tail=tail)

    def decl_tag(self, name: str, target: int, component: int) -> int:
        return self.add(btfmod.KIND_DECL_TAG, name, size_or_type=target,
                        tail=struct.pack(self.endian + "i", component))

    def build(self, header_extra: bytes = b"") -> bytes:
        types = b"".join(self.records)
        strings = bytes(self.strings)
        hdr_len = 24 + len(header_extra)
        header = struct.pack(self.endian + "HBBIIIII", 0xEB9F, 1, 0, hdr_len, 0, len(types), len(types),
                             len(strings))
        return header + header_extra + types + strings


def sample_blob(endian: str = "<", header_extra: bytes = b"") -> bytes:
    """A small BTF with every kind and the shapes skb_functions must (and must not) match."""
    b = BlobBuilder(endian)
    K = btfmod
    int_t = b.int_("int", 4, signed=True)  # 1
    uint_t = b.int_("unsigned int", 4)
    char_t = b.int_("char", 1, signed=True)
    skb = b.struct("sk_buff", 232, [("len", uint_t, 0)])
    # struct sock { int a; union { int b; struct { unsigned int c:4, d:12; }; }; int e; }
    inner = b.struct("", 4, [("c", uint_t, (4 << 24) | 0), ("d", uint_t, (12 << 24) | 4)], bitfields=True)
    anon_union = b.struct("", 4, [("b", int_t, 0), ("", inner, 0)], union=True)
    sock = b.struct("sock", 12, [("a", int_t, 0), ("", anon_union, 32), ("e", int_t, 64)])
    skb_ptr = b.ptr(skb)
    const_skb = b.modifier(K.KIND_CONST, skb)
    ptr_const_skb = b.ptr(const_skb)
    skb_typedef = b.modifier(K.KIND_TYPEDEF, skb, "skb_t")
    ptr_skb_typedef = b.ptr(skb_typedef)
    skb_ptr_typedef = b.modifier(K.KIND_TYPEDEF, skb_ptr, "skb_ptr_t")
    volatile_skb_ptr = b.modifier(K.KIND_VOLATILE, skb_ptr)
    restrict_skb_ptr = b.modifier(K.KIND_RESTRICT, skb_ptr)
    tagged_skb = b.modifier(K.KIND_TYPE_TAG, skb, "rcu")
    ptr_tagged_skb = b.ptr(tagged_skb)
    fwd_skb = b.fwd("sk_buff")
    ptr_fwd_skb = b.ptr(fwd_skb)
    union_skb = b.struct("sk_buff", 8, [], union=True)  # a union that happens to be called sk_buff
    ptr_union_skb = b.ptr(union_skb)
    ptr_ptr_skb = b.ptr(skb_ptr)
    sock_ptr = b.ptr(sock)
    void_ptr = b.ptr(0)
    const_char = b.modifier(K.KIND_CONST, char_t)
    const_char_ptr = b.ptr(const_char)
    const_void_ptr_const = b.modifier(K.KIND_CONST, void_ptr)
    array = b.array(char_t, uint_t, 16)
    cb_proto = b.proto(int_t, [("", skb_ptr)])
    cb_ptr = b.ptr(cb_proto)
    drop = b.enum("skb_drop_reason", [("SKB_NOT_DROPPED_YET", 0), ("SKB_CONSUMED", 1),
                                      ("SKB_DROP_REASON_NOT_SPECIFIED", 2), ("SKB_DROP_REASON_NO_SOCKET", 3),
                                      ("SKB_DROP_REASON_ALIAS", 3), ("SKB_DROP_REASON_MAX", 4),
                                      ("SKB_DROP_REASON_SUBSYS_MASK", 0xFFFF0000)])
    b.enum("signed_enum", [("NEG", -5), ("POS", 7)], signed=True)
    b.enum("", [("__SKB_GSO_X", 8), ("SKB_GSO_TCPV4", 1), ("SKB_GSO_DODGY", 2), ("SKB_GSO_HIGH", -(1 << 31))],
           signed=True)
    b.enum64("big", [("HUGE", 1 << 40), ("TOP", (1 << 64) - 1)])
    b.enum64("big_signed", [("MINUS", -(1 << 40))], signed=True)
    b.add(K.KIND_FLOAT, "double", size_or_type=8)

    def fn(name: str, params: list[tuple[str, int]], ret: int = int_t) -> int:
        return b.func(name, b.proto(ret, params))

    fn("skb_first", [("skb", skb_ptr), ("dev", void_ptr)])
    fn("skb_third", [("net", void_ptr), ("sk", sock_ptr), ("skb", skb_ptr)])
    fn("skb_two", [("a", int_t), ("first", skb_ptr), ("second", skb_ptr)])
    fn("skb_const", [("skb", ptr_const_skb)])
    fn("skb_typedef_struct", [("skb", ptr_skb_typedef)])
    fn("skb_typedef_ptr", [("x", int_t), ("skb", skb_ptr_typedef)])
    fn("skb_volatile", [("skb", volatile_skb_ptr)])
    fn("skb_restrict", [("skb", restrict_skb_ptr)])
    fn("skb_type_tag", [("skb", ptr_tagged_skb)])
    fn("skb_fwd", [("skb", ptr_fwd_skb)])
    fn("skb_sixth", [("a", int_t)] * 5 + [("skb", skb_ptr)])
    fn("not_union", [("u", ptr_union_skb)])
    fn("not_double_ptr", [("pp", ptr_ptr_skb)])
    fn("not_callback", [("cb", cb_ptr)])
    fn("no_params", [])
    fn("variadic", [("fmt", const_char_ptr), ("", 0)], ret=0)
    fn("mixed", [("name", const_char_ptr), ("buf", array), ("p", const_void_ptr_const), ("cb", cb_ptr),
                 ("sk", sock_ptr)], ret=void_ptr)
    dup = fn("skb_dup", [("skb", skb_ptr)])
    fn("skb_dup", [("x", int_t), ("skb", skb_ptr)])  # a second static of the same name: first wins
    b.decl_tag("noinline", dup, -1)
    # raw tracepoint kfree_skb: btf_trace_ typedef (unnamed params) + __bpf_trace_ helper (named)
    tp_proto = b.proto(0, [("", void_ptr), ("", skb_ptr), ("", void_ptr), ("", drop)])
    b.modifier(K.KIND_TYPEDEF, b.ptr(tp_proto), "btf_trace_kfree_skb")
    b.func("__bpf_trace_kfree_skb", b.proto(0, [("__data", void_ptr), ("skb", skb_ptr), ("location", void_ptr),
                                                ("reason", drop)]), linkage=0)
    tp2 = b.proto(0, [("", void_ptr), ("", int_t), ("", skb_ptr)])  # no helper: names become argN
    b.modifier(K.KIND_TYPEDEF, b.ptr(tp2), "btf_trace_odd")
    var = b.var("some_var", int_t)
    b.datasec(".data", [(var, 0, 4)])
    return b.build(header_extra)


@pytest.fixture(scope="module")
def sample() -> Btf:
    return Btf.from_bytes(sample_blob(), "sample")


# ---- hand-built BTF -----------------------------------------------------------------------------------


def test_skb_functions_follow_modifiers_and_report_first_skb_position(sample: Btf) -> None:
    assert sample.skb_functions() == {
        "skb_first": 1, "skb_third": 3, "skb_two": 2, "skb_const": 1, "skb_typedef_struct": 1,
        "skb_typedef_ptr": 2, "skb_volatile": 1, "skb_restrict": 1, "skb_type_tag": 1, "skb_fwd": 1,
        "skb_sixth": 6, "skb_dup": 1, "__bpf_trace_kfree_skb": 2,
    }


def test_skb_functions_returns_a_copy(sample: Btf) -> None:
    sample.skb_functions()["skb_first"] = 99
    assert sample.skb_functions()["skb_first"] == 1


def test_function_params_renders_short_c_types(sample: Btf) -> None:
    assert sample.function_params("skb_third") == [
        ("net", "void *"), ("sk", "struct sock *"), ("skb", "struct sk_buff *")]
    assert sample.function_params("skb_const") == [("skb", "const struct sk_buff *")]
    assert sample.function_params("skb_typedef_ptr") == [("x", "int"), ("skb", "skb_ptr_t")]
    assert sample.function_params("mixed") == [
        ("name", "const char *"), ("buf", "char[16]"), ("p", "void *const"), ("cb", "int (*)(...)"),
        ("sk", "struct sock *")]
    assert sample.function_return("mixed") == "void *"
    assert sample.function_params("no_params") == []
    assert sample.function_params("variadic") == [("fmt", "const char *"), ("", "...")]
    assert sample.function_params("nope") is None


def test_enum_reads_signed_unsigned_and_enum64(sample: Btf) -> None:
    assert sample.enum("signed_enum") == {"NEG": -5, "POS": 7}
    assert sample.enum("big") == {"HUGE": 1 << 40, "TOP": (1 << 64) - 1}
    assert sample.enum("big_signed") == {"MINUS": -(1 << 40)}
    assert sample.enum("missing") == {}


def test_drop_reasons_strip_prefix_and_skip_sentinels(sample: Btf) -> None:
    assert sample.drop_reasons() == {2: "NOT_SPECIFIED", 3: "NO_SOCKET"}
    assert sample.skb_consumed_reason() == 1


def test_gso_types_come_from_the_anonymous_enum_as_unsigned_bits(sample: Btf) -> None:
    assert sample.gso_types() == {1: "SKB_GSO_TCPV4", 2: "SKB_GSO_DODGY", 1 << 31: "SKB_GSO_HIGH"}


def test_gso_types_fall_back_when_btf_has_none() -> None:
    b = BlobBuilder()
    b.int_("int", 4)
    assert Btf.from_bytes(b.build()).gso_types() == btfmod.FALLBACK_GSO_TYPES


def test_tracepoint_params_drop_context_and_take_names_from_helper(sample: Btf) -> None:
    assert sample.tracepoint_params("kfree_skb") == [
        ("skb", "struct sk_buff *"), ("location", "void *"), ("reason", "enum skb_drop_reason")]
    assert sample.tracepoint_params("odd") == [("arg1", "int"), ("arg2", "struct sk_buff *")]
    assert sample.tracepoint_skb_pos("odd") == 2
    assert sample.tracepoint_params("no_such_event") is None
    assert sample.tracepoint_skb_pos("no_such_event") is None


def test_struct_member_offset_searches_anonymous_members_and_bitfields(sample: Btf) -> None:
    assert sample.struct_member_offset("sock", "a") == 0
    assert sample.struct_member_offset("sock", "b") == 4
    assert sample.struct_member_offset("sock", "c") == 4
    assert sample.struct_member_offset("sock", "d") == 4  # bit 36: byte 4
    assert sample.struct_member_offset("sock", "e") == 8
    assert sample.struct_member_offset("sock", "zz") is None
    assert sample.struct_member_offset("no_struct", "a") is None
    assert sample.struct_size("sk_buff") == 232


def test_every_kind_is_indexed(sample: Btf) -> None:
    kinds = {sample.kind(i) for i in range(1, len(sample))}
    assert kinds == set(btfmod.KIND_NAMES)
    assert sample.type(1) == btfmod.BtfType(1, btfmod.KIND_INT, "int", 0, False, 4)


def test_big_endian_blob_parses_the_same() -> None:
    big = Btf.from_bytes(sample_blob(">"), "big")
    little = Btf.from_bytes(sample_blob("<"), "little")
    assert big.skb_functions() == little.skb_functions()
    assert big.enum("big") == little.enum("big")
    assert big.tracepoint_params("kfree_skb") == little.tracepoint_params("kfree_skb")


def test_longer_header_is_skipped_by_hdr_len() -> None:
    btf = Btf.from_bytes(sample_blob(header_extra=b"\0" * 8))
    assert btf.skb_functions()["skb_third"] == 3


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda blob: blob[:10], "shorter than the 24-byte header"),
        (lambda blob: b"\x00\x00" + blob[2:], "bad magic"),
        (lambda blob: blob[:2] + b"\x02" + blob[3:], "unsupported version 2"),
        (lambda blob: blob[:-5], "runs past the end"),
    ],
    ids=["short", "magic", "version", "truncated"],
)
def test_corrupt_header_raises_kernel_error(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KernelError, match=message) as info:
        Btf.from_bytes(mutate(sample_blob()), "bad.btf")
    assert "bad.btf" in str(info.value) and "\n" not in str(info.value)


def test_unknown_kind_raises_kernel_error() -> None:
    b = BlobBuilder()
    b.int_("int", 4)
    b.add(25, "weird")
    with pytest.raises(KernelError, match="unknown kind 25 at type id 2"):
        Btf.from_bytes(b.build())


def test_record_running_past_the_type_section_raises_kernel_error() -> None:
    b = BlobBuilder()
    b.int_("int", 4)
    b.add(btfmod.KIND_STRUCT, "s", vlen=3)  # claims three members, has none
    with pytest.raises(KernelError, match="corrupt BTF"):
        Btf.from_bytes(b.build())


def test_dangling_type_reference_raises_kernel_error() -> None:
    b = BlobBuilder()
    int_t = b.int_("int", 4)
    b.func("f", b.proto(int_t, [("p", b.ptr(500))]))
    b.func("g", 900)
    with pytest.raises(KernelError, match="reference to type id (500|900), beyond the last"):
        Btf.from_bytes(b.build()).skb_functions()


def test_bad_string_offset_raises_kernel_error() -> None:
    b = BlobBuilder()
    b.records.append(struct.pack("<III", 10_000, btfmod.KIND_INT << 24, 4) + struct.pack("<I", 32))
    btf = Btf.from_bytes(b.build())
    with pytest.raises(KernelError, match="string offset 10000 out of range"):
        btf.name(1)


def test_load_missing_file_raises_one_line_kernel_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "vmlinux"
    with pytest.raises(KernelError, match="BTF not found at .*vmlinux") as info:
        Btf.load(str(path))
    assert "\n" not in str(info.value)


def test_load_unreadable_path_raises_kernel_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KernelError, match="cannot read BTF"):
        Btf.load(str(tmp_path))  # a directory


def test_load_reads_a_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "vmlinux"
    path.write_bytes(sample_blob())
    assert Btf.load(str(path)).skb_functions()["skb_first"] == 1


# ---- the running kernel -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vmlinux() -> Btf:
    if not os.access(VMLINUX, os.R_OK):
        pytest.skip(f"{VMLINUX} missing or unreadable")
    return Btf.load(VMLINUX)


@needs_vmlinux
def test_vmlinux_load_finds_hundreds_of_skb_functions() -> None:
    functions = Btf.load(VMLINUX).skb_functions()  # its speed is measured in bench/btf_load.py, not asserted
    assert len(functions) > 500


@needs_vmlinux
def test_the_cloned_bitfield_sits_at_the_kernels_cloned_offset_marker(vmlinux: Btf) -> None:
    # skb->cloned is the first bit after the zero-length `__cloned_offset` marker the kernel keeps for its JITs
    marker = vmlinux.struct_member_offset("sk_buff", "__cloned_offset")
    bit = vmlinux.struct_member_bit("sk_buff", "cloned")
    assert marker is not None and bit == 8 * marker
    assert vmlinux.struct_member_bit("sk_buff", "no_such_member") is None


@needs_vmlinux
def test_vmlinux_known_skb_positions(vmlinux: Btf) -> None:
    functions = vmlinux.skb_functions()
    assert functions["ip_rcv"] == 1
    assert functions["ip_output"] == 3
    params = vmlinux.function_params("ip_output")
    assert params is not None and params[2] == ("skb", "struct sk_buff *")
    assert "ip_rcv" in functions and "sk_buff" not in functions


@needs_vmlinux
def test_vmlinux_every_reported_position_holds_an_skb_pointer(vmlinux: Btf) -> None:
    for name, pos in vmlinux.skb_functions().items():
        params = vmlinux.function_params(name)
        assert params is not None
        assert params[pos - 1][1] in ("struct sk_buff *", "const struct sk_buff *"), (name, params)
        assert not any(text.endswith("struct sk_buff *") for _, text in params[: pos - 1]), (name, params)


@needs_vmlinux
def test_vmlinux_drop_reasons(vmlinux: Btf) -> None:
    reasons = vmlinux.drop_reasons()
    names = set(reasons.values())
    assert {"NO_SOCKET", "NOT_SPECIFIED"} <= names
    enum = vmlinux.enum("skb_drop_reason")
    assert reasons[enum["SKB_DROP_REASON_NO_SOCKET"]] == "NO_SOCKET"
    assert not any(name.startswith("SKB_DROP_REASON_") for name in names)
    consumed = vmlinux.skb_consumed_reason()
    assert consumed == enum["SKB_CONSUMED"] and consumed not in reasons


@needs_vmlinux
def test_vmlinux_tracepoint_params(vmlinux: Btf) -> None:
    kfree = vmlinux.tracepoint_params("kfree_skb")
    assert kfree is not None
    assert kfree[0] == ("skb", "struct sk_buff *")
    assert ("reason", "enum skb_drop_reason") in kfree
    assert ("location", "void *") in kfree
    assert vmlinux.tracepoint_params("netif_receive_skb") == [("skb", "struct sk_buff *")]
    assert vmlinux.tracepoint_skb_pos("kfree_skb") == 1


@needs_vmlinux
def test_vmlinux_enum_and_struct_lookups(vmlinux: Btf) -> None:
    assert vmlinux.enum("bpf_prog_type")["BPF_PROG_TYPE_KPROBE"] == 2  # uapi: stable
    head = vmlinux.struct_member_offset("sk_buff", "head")
    data = vmlinux.struct_member_offset("sk_buff", "data")
    assert head is not None and data == head + 8  # unsigned char *head, *data;
    assert vmlinux.struct_member_offset("sk_buff", "len") is not None
    assert vmlinux.gso_types()[1] == "SKB_GSO_TCPV4"
