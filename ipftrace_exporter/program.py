"""Render the BPF program: bpf/ipftrace.bpf.c with its named splice points filled (SPLICE_POINTS: the settings,
the modules' C, the flow filter, the function lookup's sizes, the entry points) by one renderer, `splice`, which
the modules' compile check uses too. Pure: no BCC here. Only validated numbers reach the generated text.

Tracepoints get one entry point each. Kernel functions (kprobe, kfunc) share one entry point per skb argument
position, so hundreds of functions compile as fast as one. A kprobe entry point finds its probe id by the traced
function's address (`bpf_get_func_ip`, or the instruction pointer before 5.15) in the `ipft_funcs` hash map, which
the collector fills from kallsyms, and is loaded once per position. A kfunc entry point is loaded once per
function anyway (fentry binds a program to one function's BTF id): each copy gets that function's probe id and
role in place of a placeholder constant (KFUNC_PROBE_PLACEHOLDER, patch_ld_imm64), so the verifier walks that
role's path alone and no lookup is needed, nor bpf_get_func_ip (so the same copies also load as tp_btf programs,
for a verifier check where fentry is refused)."""

from __future__ import annotations

import mmap
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from .events import FRAME_SIZE
from .flows import FlowSpec, filter_function, where_function
from .probes import Probe, ProbeKind, ProbeRole

# release and prepare probes are the same to the kernel: a step of a tracked skb, never a packet's start
ROLE_CODES = {ProbeRole.STEP: 0, ProbeRole.CONSUME: 1, ProbeRole.DROP: 2, ProbeRole.EGRESS: 3, ProbeRole.RELEASE: 4,
              ProbeRole.PREPARE: 4}
# The tracepoint where a socket reads a packet (IPFT_TP_SOCKET_READ in the C file; other tracepoints: IPFT_TP_OTHER).
SOCKET_READ_TRACEPOINT = "skb:skb_copy_datagram_iovec"
TP_KIND_OTHER, TP_KIND_SOCKET_READ = 1, 2
MAX_KPROBE_ARG = 5
FUNCTION_KINDS = frozenset({ProbeKind.KPROBE, ProbeKind.KFUNC})
# How a kprobe entry point learns its function. helper: bpf_get_func_ip (5.15+); regs: the instruction pointer.
# (kfunc entry points need neither: see KFUNC_PROBE_PLACEHOLDER.)
FUNC_IP_MODES = ("helper", "regs")
# Hash-map slots per function probe: a name can have several kallsyms addresses (static functions).
FUNC_ADDRESS_SLOTS = 4
# A kfunc entry point's probe: the 64-bit constant its C loads (ipft_kfunc_probe, an asm statement the compiler
# cannot fold), which the collector replaces in each function's copy with kfunc_probe_constant (patch_ld_imm64).
KFUNC_PROBE_PLACEHOLDER = 0x1BADC0DE5EED1234
_BPF_LD_IMM64 = 0x18
_INSN = 8


@dataclass(frozen=True, slots=True)
class ProbeSource:
    """A probe plus what the C entry point needs: where the skb, free location, drop reason and device are."""

    probe: Probe
    target: str  # raw tracepoint event name, or kernel function name
    skb_arg: int  # 0-based argument index
    location_arg: int | None = None
    reason_arg: int | None = None
    from_data: bool = False
    device_arg: int | None = None  # a tracepoint's `struct net_device *`: the device the event is about

    @property
    def entry_name(self) -> str:
        """Name of the C entry point for this probe (no BCC auto-attach prefix: we load and attach explicitly).
        Kernel functions share one entry point per skb argument position."""
        if self.probe.kind in FUNCTION_KINDS:
            return f"ipft_{self.probe.kind.value}_arg{self.skb_arg + 1}"
        return f"ipft_{self.probe.kind.value}_{self.probe.id}"

    @property
    def is_function(self) -> bool:
        """True for kernel-function probes (kprobe, kfunc), false for tracepoints."""
        return self.probe.kind in FUNCTION_KINDS


@dataclass(frozen=True, slots=True)
class ModuleCode:
    """C contributed by modules: declarations, a match expression body and a data-filling body."""

    declarations: str = ""
    match_body: str = ""  # statements; `return 0;` rejects the packet (skb, t in scope)
    data_body: str = ""  # statements filling `u8 *data` (64 bytes) (skb, t in scope)


PAGE_SIZE = mmap.PAGESIZE


@dataclass(frozen=True, slots=True)
class ProgramOptions:
    """Sizes and sampling written into the program (ring pages and sample ratio as config.py checked them)."""

    max_inflight: int = 65536
    ringbuf_pages: int = 1024
    sample_ratio: float = 1.0
    max_drop_keys: int = 16384
    func_ip: str = "helper"  # how a kprobe entry point learns its function: "helper" or "regs"
    cpus: int = 0  # CPUs that may write records (0: this machine's count); sets the reader's wake-up interval
    cloned_bit: int | None = None  # bit offset of sk_buff's `cloned` bitfield (BTF); None: clones are not told apart

    def __post_init__(self) -> None:
        if self.func_ip not in FUNC_IP_MODES:
            raise ValueError(f"func_ip must be one of {', '.join(FUNC_IP_MODES)}, got {self.func_ip!r}")
        if self.max_inflight <= 0 or self.max_drop_keys <= 0:
            raise ValueError("map sizes must be positive")
        if self.cpus < 0:
            raise ValueError(f"cpus must be 0 (this machine) or positive, got {self.cpus}")
        if self.cloned_bit is not None and not 0 <= self.cloned_bit < 8 * 4096:
            raise ValueError(f"cloned_bit must be a bit offset within sk_buff, got {self.cloned_bit}")

    @property
    def wakeup_every(self) -> int:
        """Records per CPU between two wake-ups of the reader: all CPUs together wake it about once per eighth
        of the ring, so it reads in large batches yet long before the ring fills."""
        ring_records = self.ringbuf_pages * PAGE_SIZE // FRAME_SIZE
        return max(1, ring_records // (8 * (self.cpus or os.cpu_count() or 1)))


@dataclass(frozen=True, slots=True)
class Program:
    """The rendered C text and its entry points."""

    text: str
    sources: tuple[ProbeSource, ...] = field(default_factory=tuple)

    def function_sources(self) -> tuple[ProbeSource, ...]:
        """The kernel-function probes that find their probe by the function's address (kprobe), in id order."""
        return tuple(source for source in self.sources if source.probe.kind is ProbeKind.KPROBE)

    def entries(self) -> dict[str, tuple[ProbeSource, ...]]:
        """Each C entry point and the probes that run it, in first-use order."""
        return {group[0].entry_name: tuple(group) for group in _entry_groups(self.sources)}


def sample_expression(ratio: float) -> str:
    """C expression deciding per packet whether it is traced."""
    if ratio >= 1.0:
        return "1"
    threshold = int(ratio * 2**32)
    if threshold <= 0:
        return "0"
    return f"(bpf_get_prandom_u32() < {min(threshold, 2**32 - 1)}U)"


def _arg(ctx_args: str, index: int | None, cast: str) -> str:
    return "0" if index is None else f"({cast}){ctx_args}[{int(index)}]"


def entry_point(source: ProbeSource) -> str:
    """The C entry point of one probe (for a shared function entry point: of every probe at its skb position)."""
    probe = source.probe
    tail = f"{int(probe.id)}, {int(source.from_data)}, {ROLE_CODES[probe.role]}"
    if probe.kind is ProbeKind.TRACEPOINT:
        skb = _arg("ctx->args", source.skb_arg, "struct sk_buff *")
        location = _arg("ctx->args", source.location_arg, "u64")
        reason = _arg("ctx->args", source.reason_arg, "u32")
        device = _arg("ctx->args", source.device_arg, "struct net_device *")
        tp_kind = TP_KIND_SOCKET_READ if probe.name == SOCKET_READ_TRACEPOINT else TP_KIND_OTHER
        return (f"int {source.entry_name}(struct bpf_raw_tracepoint_args *ctx)\n"
                f"{{\n    return ipft_handle(ctx, {skb}, {tail}, {location}, {reason}, {device}, {tp_kind});\n}}\n")
    if probe.kind is ProbeKind.KPROBE:
        if not 0 <= source.skb_arg < MAX_KPROBE_ARG:
            raise ValueError(f"{source.target}: kprobes reach arguments 1-{MAX_KPROBE_ARG}, skb is {source.skb_arg + 1}")
        skb = f"(struct sk_buff *)PT_REGS_PARM{source.skb_arg + 1}(ctx)"
        return (f"int {source.entry_name}(struct pt_regs *ctx)\n"
                f"{{\n    return ipft_function(ctx, {skb}, IPFT_KPROBE_IP(ctx));\n}}\n")
    if probe.kind is ProbeKind.KFUNC:
        if source.skb_arg < 0:
            raise ValueError(f"{source.target}: skb argument {source.skb_arg + 1} is not a position")
        skb = _arg("ctx", source.skb_arg, "struct sk_buff *")
        return (f"int {source.entry_name}(unsigned long long *ctx)\n"
                f"{{\n    u64 probe = ipft_kfunc_probe(); /* this function's copy: (role << 32) | probe id */\n"
                f"    return ipft_kfunc(ctx, {skb}, (u32)probe, (int)(probe >> 32));\n}}\n")
    raise ValueError(f"unknown probe kind {probe.kind}")


def kfunc_probe_constant(source: ProbeSource) -> int:
    """What KFUNC_PROBE_PLACEHOLDER becomes in the copy of a kfunc entry point loaded for `source`'s function:
    its role code in the high 32 bits, its probe id in the low ones."""
    return (ROLE_CODES[source.probe.role] << 32) | int(source.probe.id)


def function_lookup(num_functions: int, func_ip: str) -> str:
    """The `functions` splice: the size of the address -> probe map of the kprobe entry points and how they learn
    their function's address (the map and `ipft_function()` are in the C file, under IPFT_HAS_FUNCTIONS)."""
    slots = max(64, FUNC_ADDRESS_SLOTS * int(num_functions))
    if func_ip == "helper":
        ip_macro = "#define IPFT_KPROBE_IP(ctx) bpf_get_func_ip(ctx)"
    else:  # the instruction pointer after the breakpoint (x86: int3 is one byte), or the probed address
        ip_macro = ("#if defined(__TARGET_ARCH_x86) || defined(bpf_target_x86)\n"
                    "#define IPFT_KPROBE_IP(ctx) (PT_REGS_IP(ctx) - 1)\n#else\n"
                    "#define IPFT_KPROBE_IP(ctx) PT_REGS_IP(ctx)\n#endif")
    return f"#define IPFT_HAS_FUNCTIONS 1\n#define IPFT_FUNC_SLOTS {slots}\n{ip_macro}"


def module_splices(modules: Sequence[ModuleCode]) -> dict[str, str]:
    """The modules' splices (declarations, and the bodies of the `ipft_module_match` and `ipft_module_data` hooks),
    the same for the program and the modules' compile check."""
    return {
        "module_declarations": "\n".join(m.declarations.rstrip("\n") for m in modules if m.declarations),
        "module_match": "\n".join(m.match_body for m in modules if m.match_body),
        "module_data": "\n".join(m.data_body for m in modules if m.data_body),
    }


def settings(num_probes: int, num_flows: int, options: ProgramOptions) -> str:
    """The `settings` splice: sizes and sampling as #defines (numbers only)."""
    return "\n".join([
        "/* generated by ipftrace-exporter */",
        f"#define IPFT_NUM_PROBES {int(num_probes)}",
        f"#define IPFT_NUM_FLOWS {int(num_flows)}",
        f"#define IPFT_MAX_INFLIGHT {int(options.max_inflight)}",
        f"#define IPFT_RINGBUF_PAGES {int(options.ringbuf_pages)}",
        f"#define IPFT_MAX_DROP_KEYS {int(options.max_drop_keys)}",
        f"#define IPFT_WAKEUP_EVERY {int(options.wakeup_every)}",
        f"#define IPFT_SAMPLED() {sample_expression(options.sample_ratio)}",
        f"#define IPFT_CLONED_BIT {-1 if options.cloned_bit is None else int(options.cloned_bit)}",
    ])


def bpf_source() -> str:
    """The program's C file shipped with the package, splice points unfilled."""
    return resources.files("ipftrace_exporter").joinpath("bpf/ipftrace.bpf.c").read_text()


# The splice points of bpf/ipftrace.bpf.c, in the order they stand there.
SPLICE_POINTS = ("settings", "functions", "module_declarations", "module_match", "module_data", "flows", "entries")
_MARKER = re.compile(r"^[ \t]*/\* @ipft:(\w+) \*/[ \t]*\n?", re.MULTILINE)


class ProgramTemplate:
    """C text with named splice points: lines holding only `/* @ipft:NAME */`. Raises ValueError at construction
    when a point of `points` is missing or stands more than once, or a marker names no point."""

    def __init__(self, text: str, points: Sequence[str] = SPLICE_POINTS) -> None:
        self.points = tuple(points)
        self._pieces: list[str] = []  # text between the markers
        self._order: list[str] = []  # the point at the end of each piece but the last
        at = 0
        for marker in _MARKER.finditer(text):
            name = marker.group(1)
            if name not in self.points:
                raise ValueError(f"splice point {name!r} in the program text is not one of {', '.join(self.points)}")
            if name in self._order:
                raise ValueError(f"splice point {name!r} stands more than once in the program text")
            self._pieces.append(text[at:marker.start()])
            self._order.append(name)
            at = marker.end()
        self._pieces.append(text[at:])
        missing = [name for name in self.points if name not in self._order]
        if missing:
            raise ValueError(f"splice point {missing[0]!r} is missing from the program text")

    def render(self, fills: Mapping[str, str]) -> str:
        """The text with each point's line replaced by its fill (a line of its own; '' removes the line). Raises
        ValueError naming a fill that is no point, or a point with no fill."""
        unknown = [name for name in fills if name not in self.points]
        if unknown:
            raise ValueError(f"no splice point {unknown[0]!r} (known: {', '.join(self.points)})")
        missing = [name for name in self.points if name not in fills]
        if missing:
            raise ValueError(f"splice point {missing[0]!r} is not filled")
        out = [self._pieces[0]]
        for name, piece in zip(self._order, self._pieces[1:]):
            fill = fills[name]
            out.append(fill if not fill or fill.endswith("\n") else fill + "\n")
            out.append(piece)
        return "".join(out)


@cache
def program_template() -> ProgramTemplate:
    """The program's C file as a template (read and checked once)."""
    return ProgramTemplate(bpf_source())


def splice(fills: Mapping[str, str]) -> str:
    """The program's C file with every splice point filled (see ProgramTemplate.render): the one renderer of the
    program and of the modules' compile check."""
    return program_template().render(fills)


def render(
    sources: Sequence[ProbeSource],
    flows: Sequence[FlowSpec],
    options: ProgramOptions | None = None,
    modules: Sequence[ModuleCode] = (),
) -> Program:
    """The whole program text for these probes, flows and modules."""
    options = options or ProgramOptions()
    if not sources:
        raise ValueError("no probe to render")
    for index, source in enumerate(sources):
        if source.probe.id != index:
            raise ValueError(f"probe {source.target} has id {source.probe.id}, expected {index}")
    kprobes = [source for source in sources if source.probe.kind is ProbeKind.KPROBE]
    text = splice({
        "settings": settings(len(sources), len(flows), options),
        **module_splices(modules),
        "flows": "\n".join([where_function(flows), filter_function(flows)]),
        "functions": function_lookup(len(kprobes), options.func_ip) if kprobes else "",
        "entries": "\n".join(entry_point(group[0]) for group in _entry_groups(sources)),
    })
    return Program(text, tuple(sources))


def patch_ld_imm64(code: bytes, placeholder: int, value: int) -> bytes:
    """`code` (BPF instructions) with every 64-bit immediate load of `placeholder` loading `value` instead.
    Raises ValueError when the placeholder is not there (the compiler folded it away: a bug to know at once)."""
    insns = bytearray(code)
    low, high = placeholder & 0xFFFFFFFF, placeholder >> 32
    found = 0
    for offset in range(0, len(insns) - 2 * _INSN + 1, _INSN):
        if (insns[offset] == _BPF_LD_IMM64 and int.from_bytes(insns[offset + 4:offset + 8], "little") == low
                and int.from_bytes(insns[offset + 12:offset + 16], "little") == high):
            insns[offset + 4:offset + 8] = (value & 0xFFFFFFFF).to_bytes(4, "little")
            insns[offset + 12:offset + 16] = (value >> 32).to_bytes(4, "little")
            found += 1
    if not found:
        raise ValueError(f"placeholder {placeholder:#x} not found in {len(code) // _INSN} instructions")
    return bytes(insns)


def _entry_groups(sources: Sequence[ProbeSource]) -> list[list[ProbeSource]]:
    groups: dict[str, list[ProbeSource]] = {}
    for source in sources:
        groups.setdefault(source.entry_name, []).append(source)
    return list(groups.values())
