"""Render the BPF program text: generated prelude (constants, flow filter, module hooks), the shared C body,
and one small entry point per probe. Pure: no BCC here. Only validated numbers reach the generated text."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Sequence

from .flows import FlowSpec, filter_function
from .probes import Probe, ProbeKind, ProbeRole

ROLE_CODES = {ProbeRole.STEP: 0, ProbeRole.CONSUME: 1, ProbeRole.DROP: 2, ProbeRole.EGRESS: 3}
MAX_KPROBE_ARG = 5


@dataclass(frozen=True, slots=True)
class ProbeSource:
    """A probe plus what the C entry point needs: where the skb, free location and drop reason are."""

    probe: Probe
    target: str  # raw tracepoint event name, or kernel function name
    skb_arg: int  # 0-based argument index
    location_arg: int | None = None
    reason_arg: int | None = None
    from_data: bool = False

    @property
    def entry_name(self) -> str:
        """Name of the C entry point for this probe (no BCC auto-attach prefix: we attach explicitly)."""
        return f"ipft_{self.probe.kind.value}_{self.probe.id}"


@dataclass(frozen=True, slots=True)
class ModuleCode:
    """C contributed by modules: declarations, a match expression body and a data-filling body."""

    declarations: str = ""
    match_body: str = ""  # statements; `return 0;` rejects the packet (skb, t in scope)
    data_body: str = ""  # statements filling `u8 *data` (64 bytes) (skb, t in scope)


@dataclass(frozen=True, slots=True)
class ProgramOptions:
    """Sizes and sampling written into the program."""

    max_inflight: int = 65536
    ringbuf_pages: int = 256
    sample_ratio: float = 1.0
    max_drop_keys: int = 16384

    def __post_init__(self) -> None:
        pages = self.ringbuf_pages
        if pages <= 0 or pages & (pages - 1):
            raise ValueError(f"ring buffer pages must be a power of two, got {pages}")
        if not 0.0 <= self.sample_ratio <= 1.0:
            raise ValueError(f"sample ratio must be within 0..1, got {self.sample_ratio}")
        if self.max_inflight <= 0 or self.max_drop_keys <= 0:
            raise ValueError("map sizes must be positive")


@dataclass(frozen=True, slots=True)
class Program:
    """The rendered C text and its entry points."""

    text: str
    sources: tuple[ProbeSource, ...] = field(default_factory=tuple)


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
    """The C entry point of one probe."""
    probe = source.probe
    tail = f"{int(probe.id)}, {int(source.from_data)}, {ROLE_CODES[probe.role]}"
    if probe.kind is ProbeKind.TRACEPOINT:
        skb = _arg("ctx->args", source.skb_arg, "struct sk_buff *")
        location = _arg("ctx->args", source.location_arg, "u64")
        reason = _arg("ctx->args", source.reason_arg, "u32")
        return (f"int {source.entry_name}(struct bpf_raw_tracepoint_args *ctx)\n"
                f"{{\n    return ipft_handle(ctx, {skb}, {tail}, {location}, {reason});\n}}\n")
    if probe.kind is ProbeKind.KPROBE:
        if not 0 <= source.skb_arg < MAX_KPROBE_ARG:
            raise ValueError(f"{source.target}: kprobes reach arguments 1-{MAX_KPROBE_ARG}, skb is {source.skb_arg + 1}")
        return (f"int {source.entry_name}(struct pt_regs *ctx)\n"
                f"{{\n    return ipft_handle(ctx, (struct sk_buff *)PT_REGS_PARM{source.skb_arg + 1}(ctx), {tail}, 0, 0);\n}}\n")
    if probe.kind is ProbeKind.KFUNC:
        skb = _arg("ctx", source.skb_arg, "struct sk_buff *")
        return (f"int {source.entry_name}(unsigned long long *ctx)\n"
                f"{{\n    return ipft_handle(ctx, {skb}, {tail}, 0, 0);\n}}\n")
    raise ValueError(f"unknown probe kind {probe.kind}")


def _module_macros(modules: Sequence[ModuleCode]) -> str:
    declarations = "\n".join(m.declarations for m in modules if m.declarations)
    match = "\n".join(m.match_body for m in modules if m.match_body)
    data = "\n".join(m.data_body for m in modules if m.data_body)
    return (
        f"{declarations}\n"
        "static __always_inline int ipft_module_match(struct sk_buff *skb, const struct ipft_tuple *t)\n"
        f"{{\n{match}\n    return 1;\n}}\n"
        "static __always_inline void ipft_module_data(struct sk_buff *skb, const struct ipft_tuple *t, u8 *data)\n"
        f"{{\n{data}\n}}\n"
    )


def bpf_source() -> str:
    """The shared C body shipped with the package."""
    return resources.files("ipftrace_exporter").joinpath("bpf/ipftrace.bpf.c").read_text()


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
    body = bpf_source()
    split = body.index("BPF_RINGBUF_OUTPUT")  # structs first, then maps and code
    prelude = "\n".join([
        "/* generated by ipftrace-exporter */",
        f"#define IPFT_NUM_PROBES {len(sources)}",
        f"#define IPFT_NUM_FLOWS {len(flows)}",
        f"#define IPFT_MAX_INFLIGHT {int(options.max_inflight)}",
        f"#define IPFT_RINGBUF_PAGES {int(options.ringbuf_pages)}",
        f"#define IPFT_MAX_DROP_KEYS {int(options.max_drop_keys)}",
        f"#define IPFT_SAMPLED() {sample_expression(options.sample_ratio)}",
        "#define IPFT_MODULE_MATCH(skb, t) ipft_module_match(skb, t)",
        "#define IPFT_MODULE_DATA(skb, t, data) ipft_module_data(skb, t, data)",
    ])
    generated = "\n".join([filter_function(flows), _module_macros(modules)])
    entries = "\n".join(entry_point(source) for source in sources)
    text = "\n".join([prelude, body[:split], generated, body[split:], entries])
    return Program(text, tuple(sources))
