"""pcap-filter expressions for the in-kernel flow filter.

`compile_filter()` compiles an expression with the system's libpcap (ctypes: `pcap_open_dead` + `pcap_compile`)
to classic BPF for raw IP packets (DLT_RAW: the kernel filter sees a packet from its IP header), and
`c_function()` translates that program into a C function the BPF verifier accepts: classic BPF jumps only
forward, so every jump becomes a `goto` to a later label; packet loads go through `bpf_probe_read_kernel()` from
the IP header pointer, bounded by the packet length, and a load past the end rejects the packet (as in libpcap).
Pure apart from loading libpcap: only numbers from the compiled program reach the C text, never the expression.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import UsageError

DLT_RAW = 12  # libpcap's DLT_RAW on Linux (LINKTYPE_RAW in files): packets start at the IP header
SNAPLEN = 262144
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
MAX_INSNS = 512  # longer programs are refused: they would make the BPF program too big to verify
MEMWORDS = 16

# classic BPF opcode fields (linux/filter.h, pcap/bpf.h)
LD, LDX, ST, STX, ALU, JMP, RET, MISC = range(8)
SIZES = {0x00: 4, 0x08: 2, 0x10: 1}
IMM, ABS, IND, MEM, LEN, MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
SRC_X = 0x08
ALU_OPS = {0x00: "+", 0x10: "-", 0x20: "*", 0x30: "/", 0x40: "|", 0x50: "&", 0x60: "<<", 0x70: ">>",
           0x80: "neg", 0x90: "%", 0xA0: "^"}
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
JUMP_TESTS = {JEQ: "A == {v}", JGT: "A > {v}", JGE: "A >= {v}", JSET: "(A & {v})"}
RET_A = 0x10
TAX, TXA = 0x00, 0x80
LINK_LAYER_HINT = "the filter sees packets from their IP header: link-layer (ether, vlan, arp, mpls) does not apply"


class PcapFilterError(UsageError):
    """An expression libpcap refuses, or a compiled program this translator cannot turn into C."""


@dataclass(frozen=True, slots=True)
class Insn:
    """One classic BPF instruction."""

    code: int
    jt: int
    jf: int
    k: int


@dataclass(frozen=True, slots=True)
class PcapFilter:
    """A pcap-filter expression and its classic BPF program (for raw IP packets)."""

    expression: str
    insns: tuple[Insn, ...]

    def __post_init__(self) -> None:
        check_program(self.insns)


class _Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_Insn))]


_lock = threading.Lock()  # pcap_compile is not reentrant in every libpcap
_libpcap: ctypes.CDLL | None = None


def _library() -> ctypes.CDLL:
    global _libpcap
    if _libpcap is None:
        names = [name for name in (ctypes.util.find_library("pcap"), "libpcap.so.1", "libpcap.so.0.8") if name]
        for name in names:
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        else:
            raise PcapFilterError("pcap filters need libpcap (Debian: apt-get install libpcap0.8)")
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.pcap_compile.restype = ctypes.c_int
        lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Program), ctypes.c_char_p, ctypes.c_int,
                                     ctypes.c_uint32]
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_geterr.argtypes = [ctypes.c_void_p]
        lib.pcap_freecode.argtypes = [ctypes.POINTER(_Program)]
        lib.pcap_close.argtypes = [ctypes.c_void_p]
        _libpcap = lib
    return _libpcap


def compile_filter(expression: str) -> PcapFilter:
    """The expression compiled by libpcap (optimised) for raw IP packets. Raises PcapFilterError in one line."""
    text = expression.strip()
    if not text:
        raise PcapFilterError("pcap filter is empty")
    try:
        encoded = text.encode("ascii")
    except UnicodeEncodeError:
        raise PcapFilterError(f"pcap filter {text!r}: not ASCII") from None
    if b"\0" in encoded:
        raise PcapFilterError(f"pcap filter {text!r}: contains a NUL byte")
    lib = _library()
    with _lock:
        handle = lib.pcap_open_dead(DLT_RAW, SNAPLEN)
        if not handle:
            raise PcapFilterError("libpcap: pcap_open_dead failed")
        try:
            program = _Program()
            if lib.pcap_compile(handle, ctypes.byref(program), encoded, 1, PCAP_NETMASK_UNKNOWN) != 0:
                reason = (lib.pcap_geterr(handle) or b"does not compile").decode(errors="replace")
                raise PcapFilterError(f"pcap filter {text!r}: {reason}{_hint(reason)}")
            try:
                insns = tuple(Insn(int(i.code), int(i.jt), int(i.jf), int(i.k))
                              for i in program.bf_insns[:program.bf_len])
            finally:
                lib.pcap_freecode(ctypes.byref(program))
        finally:
            lib.pcap_close(handle)
    return PcapFilter(text, insns)


def _hint(reason: str) -> str:
    words = ("ethernet", "vlan", "mpls", "link", "rejects all packets", "not supported", "mac")
    return f" ({LINK_LAYER_HINT})" if any(word in reason.lower() for word in words) else ""


def check_program(insns: Sequence[Insn]) -> None:
    """Refuse what the translator cannot express: unknown opcodes, jumps out of the program, a last instruction
    that does not return, scratch memory out of range, programs longer than MAX_INSNS."""
    if not insns:
        raise PcapFilterError("empty classic BPF program")
    if len(insns) > MAX_INSNS:
        raise PcapFilterError(f"pcap filter compiles to {len(insns)} instructions: at most {MAX_INSNS} are supported")
    for pc, insn in enumerate(insns):
        _statement(pc, insn, len(insns))  # raises on what it cannot translate
    if insns[-1].code & 0x07 != RET:
        raise PcapFilterError("classic BPF program does not end with a return")


def _target(pc: int, offset: int, count: int) -> int:
    target = pc + 1 + offset
    if target >= count:
        raise PcapFilterError(f"classic BPF instruction {pc}: jump past the end of the program")
    return target


def _load(dst: str, size: int, offset: str) -> str:
    """Load `size` bytes at `offset` from the IP header, big-endian, into dst; past the end: reject."""
    value = " | ".join(f"((u32)b[{i}] << {8 * (size - 1 - i)})" if i < size - 1 else f"(u32)b[{i}]"
                       for i in range(size))
    return (f"if ({offset} + {size} > caplen) return 0;\n"
            f"if (bpf_probe_read_kernel(b, {size}, pkt + {offset}) < 0) return 0;\n{dst} = {value};")


def _statement(pc: int, insn: Insn, count: int) -> str:
    """The C statements of one instruction, one per line."""
    code, k = insn.code, insn.k
    cls = code & 0x07
    size = SIZES.get(code & 0x18)
    mode = code & 0xE0
    if cls in (LD, LDX):
        dst = "A" if cls == LD else "X"
        if mode == IMM:
            return f"{dst} = {k}U;"
        if mode == LEN:
            return f"{dst} = len;"
        if mode == MEM and k < MEMWORDS:
            return f"{dst} = M[{k}];"
        if cls == LD and mode == ABS and size:
            return _load("A", size, f"{k}ULL")
        if cls == LD and mode == IND and size:
            return _load("A", size, f"((u64)X + {k}ULL)")
        if cls == LDX and mode == MSH and size == 1:
            return _load("X", 1, f"{k}ULL") + "\nX = (X & 0xf) << 2;"
    elif cls in (ST, STX) and code in (ST, STX) and k < MEMWORDS:
        return f"M[{k}] = {'A' if cls == ST else 'X'};"
    elif cls == ALU:
        op = ALU_OPS.get(code & 0xF0)
        operand = "X" if code & SRC_X else f"{k}U"
        if op == "neg":
            return "A = 0U - A;"
        if op in ("/", "%"):
            guard = "if (X == 0) return 0;\n" if code & SRC_X else ("return 0;\n" if k == 0 else "")
            return f"{guard}A = A {op} {operand};"
        if op in ("<<", ">>"):
            if code & SRC_X:
                return f"A = X < 32 ? A {op} X : 0;"
            return f"A = A {op} {k}U;" if k < 32 else "A = 0;"
        if op is not None:
            return f"A = A {op} {operand};"
    elif cls == JMP:
        op = code & 0xF0
        if op == JA:
            return f"goto L{_target(pc, k, count)};"
        test = JUMP_TESTS.get(op)
        if test is not None:
            condition = test.format(v="X" if code & SRC_X else f"{k}U")
            yes, no = _target(pc, insn.jt, count), _target(pc, insn.jf, count)
            if yes == no:
                return f"goto L{yes};"
            return f"if ({condition}) goto L{yes};\ngoto L{no};"
    elif cls == RET:
        if code & 0x18 == RET_A:
            return "return A != 0;"
        if code & 0x18 == 0:
            return f"return {1 if k else 0};"
    elif cls == MISC:
        if code & 0xF8 == TAX:
            return "X = A;"
        if code & 0xF8 == TXA:
            return "A = X;"
    raise PcapFilterError(f"classic BPF instruction {pc} (code 0x{code:02x}) cannot be translated")


def _jump_targets(insns: Sequence[Insn]) -> set[int]:
    targets: set[int] = set()
    for pc, insn in enumerate(insns):
        if insn.code & 0x07 == JMP:
            if insn.code & 0xF0 == JA:
                targets.add(pc + 1 + insn.k)
            else:
                targets.update((pc + 1 + insn.jt, pc + 1 + insn.jf))
    return targets


def c_function(program: PcapFilter, name: str) -> str:
    """`static __always_inline int name(const unsigned char *pkt, u32 len, u32 caplen)`: 1 if the packet at pkt
    (its IP header; len bytes on the wire, caplen of them readable) matches, else 0. Only numbers from the
    program and the given C identifier reach the text."""
    if not name.isidentifier():
        raise ValueError(f"{name!r} is not a C identifier")
    insns = program.insns
    body = [_statement(pc, insn, len(insns)) for pc, insn in enumerate(insns)]
    targets = _jump_targets(insns)
    text = " ".join(body)
    declarations = [f"u32 {reg} = 0;" for reg in ("A", "X") if re.search(rf"\b{reg}\b", text)]
    if "M[" in text:
        declarations.append(f"u32 M[{MEMWORDS}] = {{}};")
    if "b[" in text:
        declarations.append("u8 b[4] = {};")
    lines = [f"static __always_inline int {name}(const unsigned char *pkt, u32 len, u32 caplen)", "{"]
    lines += [f"    {declaration}" for declaration in declarations]
    unused = [arg for arg in ("pkt", "len", "caplen") if not re.search(rf"\b{arg}\b", text)]
    lines += [f"    (void){arg};" for arg in unused]
    for pc, statement in enumerate(body):
        if pc in targets:
            lines.append(f"L{pc}:")
        lines += [f"    {line}" for line in statement.splitlines()]
    lines.append("}")
    return "\n".join(lines)
