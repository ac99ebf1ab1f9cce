"""Facts about the running kernel, read once and on demand: its BTF, kallsyms and tracefs (which functions
ftrace can hook, the kprobe blacklist, whether kprobes and kprobe-multi links exist) and the names of drop reasons
and free locations."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Sequence
from functools import cached_property

from ..collector import kprobe_multi_refusal
from ..errors import KernelError
from ..names import Names
from ..probes import ProbeKind, ProbeTable
from ..tracepoints import tracefs_root
from .btf import KIND_FUNC, KIND_TYPEDEF, Btf
from .symbols import KernelSymbols

log = logging.getLogger(__name__)

KPROBE_PMU = "/sys/bus/event_source/devices/kprobe/type"
KPROBE_BLACKLIST = "/sys/kernel/debug/kprobes/blacklist"
# Tracepoints whose TP_PROTO has a struct sk_buff * at argument N: kfunc entry points for skb position N are
# verifier-checked as tp_btf programs on them where fentry is refused (Tracer.verify_kfunc_as_tp_btf).
TP_BTF_STAND_INS = {
    1: ("netif_receive_skb", "consume_skb", "kfree_skb"),
    2: ("tcp_retransmit_skb", "sock_rcvqueue_full"),
    3: ("udp_fail_queue_rcv_skb",),
    4: ("qdisc_dequeue",),
}
_TEXT_SYMBOL_TYPES = frozenset("tTwW")


_NO_SYMBOLS = "%s: drop locations will be shown as addresses"


def preload_symbols(symbols: KernelSymbols) -> None:
    """Read kallsyms now (a warning, not an error, when it cannot be read)."""
    try:
        symbols.load()
    except KernelError as err:
        log.warning(_NO_SYMBOLS, err)


class KernelView:
    """BTF, kallsyms and tracefs of the running kernel, loaded once and on demand."""

    def __init__(self, btf_path: str = "/sys/kernel/btf/vmlinux", kallsyms_path: str = "/proc/kallsyms") -> None:
        self.btf_path = btf_path
        self.kallsyms_path = kallsyms_path

    @cached_property
    def btf(self) -> Btf:
        return Btf.load(self.btf_path)

    @cached_property
    def symbols(self) -> KernelSymbols | None:
        try:
            return KernelSymbols(self.kallsyms_path)
        except KernelError as err:
            log.warning(_NO_SYMBOLS, err)
            return None

    def names(self, flows: Sequence[str], probes: ProbeTable) -> Names:
        """The names of these flows and probes, with this kernel's drop reasons (BTF) and functions (kallsyms)."""
        symbols = self.symbols
        return Names(flows, probes, self.btf.drop_reasons(), symbols.function_name if symbols is not None else None)

    @cached_property
    def func_ip_mode(self) -> str:
        """How kprobe entry points learn the traced function: "helper" (bpf_get_func_ip, Linux 5.15+) or "regs"
        (the instruction pointer). (kfunc copies carry their probe: program.KFUNC_PROBE_PLACEHOLDER.)"""
        return "helper" if "BPF_FUNC_get_func_ip" in self.btf.enum("bpf_func_id") else "regs"

    @cached_property
    def ftrace_functions(self) -> frozenset[str] | None:
        """Functions ftrace can hook (tracefs `available_filter_functions`): fentry and kprobe-multi attach only
        to these, and a kprobe elsewhere is refused or unsafe. None when the list is unreadable (then nothing is
        filtered out)."""
        root = tracefs_root()
        if root is None:
            return None
        names: set[str] = set()
        try:
            with open(os.path.join(root, "available_filter_functions"), encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    names.add(line.split(None, 1)[0] if line.strip() else "")
        except OSError as err:
            log.debug("available_filter_functions is unreadable (%s): functions are not filtered", err.strerror)
            return None
        names.discard("")
        return frozenset(names)

    @cached_property
    def kprobe_blacklist(self) -> frozenset[str]:
        """Functions the kernel forbids kprobes on (debugfs kprobes/blacklist; empty when unreadable)."""
        try:
            with open(KPROBE_BLACKLIST, encoding="utf-8", errors="replace") as handle:
                return frozenset(line.split()[-1] for line in handle if line.strip())
        except OSError:
            return frozenset()

    @cached_property
    def kprobe_multi_refusal(self) -> str | None:
        """Why kprobe-multi links cannot be used here, or None: the kernel must know them (5.18+), have fprobe
        (CONFIG_FPROBE, a trial link tells) and bpf_get_func_ip (how the shared entry points find their function)."""
        if "BPF_TRACE_KPROBE_MULTI" not in self.btf.enum("bpf_attach_type"):
            return "this kernel has no kprobe-multi links (Linux 5.18+)"
        if self.func_ip_mode != "helper":
            return "no bpf_get_func_ip on this kernel"
        missing = kprobes_unavailable()
        if missing is not None:
            return missing
        try:
            return kprobe_multi_refusal()
        except KernelError as err:
            return str(err)

    @property
    def has_kprobe_multi(self) -> bool:
        """Whether kprobe probes are attached with one kprobe-multi link per entry point (else one by one)."""
        return self.kprobe_multi_refusal is None

    def untraceable(self, name: str, kind: ProbeKind) -> str | None:
        """Why `kind` cannot probe function `name` on this kernel, or None."""
        ftrace = self.ftrace_functions
        if ftrace is not None and name not in ftrace:
            return "not in available_filter_functions (notrace, inlined or init code)"
        if kind is ProbeKind.KPROBE and name in self.kprobe_blacklist:
            return "on the kernel's kprobe blacklist"
        return None

    def function_btf_ids(self, names: Collection[str]) -> dict[str, int]:
        """vmlinux BTF FUNC type ids of `names` (the ids fentry programs attach to); absent names left out."""
        found = {}
        for name in names:
            ids = self.btf.find(name, KIND_FUNC)
            if ids:
                found[name] = ids[0]
        return found

    def tp_btf_stand_ins(self) -> dict[int, tuple[str, int]]:
        """skb position -> (tracepoint, btf_trace_* typedef id) of a tracepoint with an sk_buff there."""
        found: dict[int, tuple[str, int]] = {}
        for position, events in TP_BTF_STAND_INS.items():
            for event in events:
                params = self.btf.tracepoint_params(event)
                ids = self.btf.find(f"btf_trace_{event}", KIND_TYPEDEF)
                if params and ids and len(params) >= position and "struct sk_buff *" in params[position - 1][1]:
                    found[position] = (event, ids[0])
                    break
        return found

    def function_addresses(self, names: Collection[str]) -> dict[str, list[int]]:
        """kallsyms text addresses of `names` (a static function name can have several); hidden addresses
        (zeros, when not root) are left out."""
        wanted = set(names)
        found: dict[str, list[int]] = {}
        try:
            with open(self.kallsyms_path, encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    parts = line.split(None, 3)
                    if len(parts) >= 3 and parts[2] in wanted and parts[1] in _TEXT_SYMBOL_TYPES:
                        address = int(parts[0], 16)
                        if address:
                            found.setdefault(parts[2], []).append(address)
        except (OSError, ValueError) as err:
            log.warning("cannot read function addresses from %s: %s", self.kallsyms_path, err)
        return found


def kprobes_unavailable() -> str | None:
    """Why kprobes cannot be attached on this kernel (no kprobe PMU and no kprobe_events), or None."""
    if os.path.exists(KPROBE_PMU):
        return None
    root = tracefs_root()
    if root is not None and os.path.exists(os.path.join(root, "kprobe_events")):
        return None
    if root is None:
        return "no kprobe PMU and tracefs is not mounted (no kprobe_events)"
    return "this kernel has no kprobes (CONFIG_KPROBES is off: no kprobe PMU, no kprobe_events in tracefs)"
