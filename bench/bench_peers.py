"""Peers (bpftrace): the same floods traced by bpftrace doing the least comparable work and by our
daemon, in one run, reported as ratios. Needs root, bpftrace and bpftool.

    .venv/bin/python bench/bench_peers.py [--pings 50000] [--datagrams 100000] [--runs 3]
                                          [--cache-dir DIR] [--write bench/RESULTS.md]

Workloads, only between this script's two namespaces (10.199.N.1 in a -> 10.199.N.2 in b), the sender pinned
to the last CPU:
- ping flood: `ping -f -q -c N` from a to b (requests and replies both count as packets);
- UDP blast: N 16-byte datagrams from a to a closed port in b (each one dropped with NO_SOCKET there).
Tracers, each with a filter on the IPv4 destination only: "other flow" (10.199.250.250, which no flood uses)
and "matching" (b's address, the floods' destination):
- bpftrace: one program per tracepoint our daemon attaches (read from its BPF links) that reads the skb's
  protocol and IPv4 destination and counts the hit when the destination matches. bpftrace 0.17 (Debian
  bookworm) has no raw tracepoints, so it attaches the classic ones (`tracepoint:net:netif_rx`, ...);
- ours: `ipftrace-exporter -b tracepoint` (raw tracepoints), started as bench_kernel.Daemon does;
- ours, empty programs (other flow only): the same daemon with every program returning at its first
  statement (bench_kernel.empty_program_daemon), the floor of our per-hit cost;
- untraced: no tracer.
Measured per flood: the tracer's programs' run time and run count from `kernel.bpf_stats_enabled` (program
body, not the kernel's dispatch into it), the sender's system CPU time (getrusage of the reaped flood process:
the softirq work veth does on the sender's CPU is charged to it, as this kernel has no
CONFIG_IRQ_TIME_ACCOUNTING) and the packets/s. Each round measures untraced, then every filter under every
tracer (the tracers' order alternates between rounds); ratios are paired within a round, then the median over
`--runs` rounds is shown. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_kernel import (
    BIN,
    FLOOD_CPU,
    PROJECT,
    SENDER,
    START_TIMEOUT_S,
    UDP_PORT,
    Daemon,
    empty_program_daemon,
    foreign_programs,
    ping_flood,
)
from benchlib import command_line, machine_facts, report, table
from probe_cost import STATS_SYSCTL, program_stats, tracepoint_names

from ipftrace_exporter.kernel.btf import Btf
from ipftrace_exporter.tracepoints import SKB_TRACEPOINTS, TracepointInfo, tracefs_root
from tests.kernel.netns import NetPair, create_pair, delete_pair
from tests.support.procfs import link_programs

OTHER_DADDR = "10.199.250.250"  # no flood goes there
EMPTY = "ours, empty programs"  # our daemon with every program returning at its first statement: the floor
MODES = ("other flow", "matching")
TRACERS = {"other flow": ("bpftrace", "ours", EMPTY), "matching": ("bpftrace", "ours")}
# issue 14: ours/bpftrace program ns per hit at most this; untraced/traced CPU per packet at least this.
TARGET_NS = {"other flow": 0.5, "matching": 1.0}
TARGET_CPU = {"other flow": 0.90, "matching": 0.80}
ETH_P_IP = int.from_bytes(b"\x08\x00", sys.byteorder)  # skb->protocol (big-endian) as a native load reads it
BACKENDS = ("tracepoint", "kprobe", "kfunc")
BPFTRACE_KFUNC_PARAMS = 6  # bpftrace 0.17: "functions with more than 6 parameters are not supported"
MANIFEST = PROJECT / "ipftrace_exporter" / "manifests" / "default.yaml"  # the daemon's embedded default


@dataclass
class Sample:
    """One flood under one tracer and filter."""

    rate: float  # packets/s
    cpu_us: float  # sender's system CPU microseconds per packet
    tracer_us: float = 0.0  # the tracer process's own CPU microseconds per packet
    runs: dict[str, tuple[int, int]] = field(default_factory=dict)  # tracepoint -> (run_time_ns, run_cnt)
    lost: float = 0.0

    @property
    def hits(self) -> int:
        return sum(count for _, count in self.runs.values())

    @property
    def ns_per_hit(self) -> float:
        return sum(ns for ns, _ in self.runs.values()) / max(self.hits, 1)


def native_u32(addr: str) -> int:
    """An IPv4 address as a native load of `iphdr.daddr` reads it."""
    return int.from_bytes(socket.inet_aton(addr), sys.byteorder)


def has_field(info: TracepointInfo, declaration: str) -> bool:
    """True when the classic tracepoint's format lists the field (e.g. `void * skbaddr;`)."""
    path = Path(tracefs_root() or "/sys/kernel/tracing", "events", info.category, info.event, "format")
    return declaration in path.read_text()


def probe_block(info: TracepointInfo, daddr: str) -> str:
    """The bpftrace program for one tracepoint: is the packet IPv4 to `daddr`? then count the hit. The IP
    header is at skb->data on the receive entry points, at head + network_header elsewhere (as ours read it)."""
    want = f"0x{native_u32(daddr):08x}"
    count = f"@{info.event} = count();"
    if has_field(info, " skbaddr;"):
        header = "$skb->data" if info.from_data else "($skb->head + $skb->network_header)"
        body = ipv4_check("(struct sk_buff *)args->skbaddr", header, daddr, count)
    elif has_field(info, " daddr[28];"):  # udp_fail_queue_rcv_skb: no skb field, the addresses as sockaddr
        body = (f"  $addr = *(uint32 *)((uint64)args->daddr + 4);\n"
                f"  if (args->family == 2 && $addr == {want}) {{ {count} }}\n")
    else:
        raise RuntimeError(f"{info.name}: neither skbaddr nor daddr in its format; update probe_block")
    return f"tracepoint:{info.category}:{info.event} {{\n{body}}}\n"


def ipv4_check(skb: str, header: str, daddr: str, count: str) -> str:
    """A probe body: the skb `skb` is IPv4 (skb->protocol) with its header at `header` and destination `daddr`?
    then `count`."""
    return (f"  $skb = {skb};\n  if ($skb->protocol == {ETH_P_IP}) {{\n"
            f"    $ip = (struct iphdr *){header};\n"
            f"    if ($ip->daddr == 0x{native_u32(daddr):08x}) {{ {count} }}\n  }}\n")


@dataclass(frozen=True)
class FunctionProbe:
    """A kernel function our daemon probes on a function backend, and where its skb argument is."""

    name: str
    skb_pos: int  # 1-based, as `ipftrace -l` shows it
    skb_param: str  # the argument's name (BTF), which bpftrace's kfunc probes read it by


def function_probes(backend: str, cache_dir: str) -> tuple[list[FunctionProbe], int]:
    """The curated manifest's functions that `backend` can attach on this kernel (`ipftrace -l`), with their
    skb argument; left out: functions whose names bpftrace cannot spell (`.isra.0` suffixes) and, for kfunc, those
    with more than 6 parameters (bpftrace 0.17 refuses them). Also returns how many the backend can attach."""
    listing = json.loads(subprocess.run(
        [str(BIN / "ipftrace"), "-b", backend, "-l", "-o", "json", str(MANIFEST)], capture_output=True, text=True,
        check=True, env=dict(os.environ, IPFTRACE_CACHE_DIR=cache_dir)).stdout)
    btf = Btf.load()
    attachable = [entry for entry in listing["probes"] if entry.get(backend) == "attachable"]
    probes = []
    for entry in attachable:
        params = btf.function_params(entry["name"])
        if params and entry["name"].isidentifier() and entry["skb_pos"] <= len(params) \
                and (backend != "kfunc" or len(params) <= BPFTRACE_KFUNC_PARAMS):
            probes.append(FunctionProbe(entry["name"], entry["skb_pos"], params[entry["skb_pos"] - 1][0]))
    return probes, len(attachable)


def function_block(backend: str, probe: FunctionProbe, daddr: str) -> str:
    """The bpftrace program for one function: the same IPv4 check at the network header (where a receive
    function runs before the header is set, it reads a stale one: the cost, not the count, is compared)."""
    skb = f"(struct sk_buff *)arg{probe.skb_pos - 1}" if backend == "kprobe" else f"args->{probe.skb_param}"
    body = ipv4_check(skb, "($skb->head + $skb->network_header)", daddr, f"@{probe.name} = count();")
    return f"{backend}:{probe.name} {{\n{body}}}\n"


def bpftrace_script(events: list[str], daddr: str, backend: str = "tracepoint",
                    functions: Sequence[FunctionProbe] = ()) -> str:
    """One probe block per tracepoint our daemon attaches (by event name), and per function on a function
    backend."""
    known = {info.event: info for info in SKB_TRACEPOINTS}
    missing = [event for event in events if event not in known]
    if missing:
        raise RuntimeError(f"tracepoints not in SKB_TRACEPOINTS: {missing}")
    return ("".join(probe_block(known[event], daddr) for event in events)
            + "".join(function_block(backend, probe, daddr) for probe in functions))


def attached_programs(pid: int) -> dict[int, str]:
    """program id -> what it is attached to, for process `pid`: its perf-event attachments (`bpftool perf show`:
    a tracepoint, a kprobe's function) and its BPF links (fdinfo: fentry programs, named by link type and program
    id, since samples are kept by name)."""
    listing = subprocess.run(["bpftool", "-j", "perf", "show"], capture_output=True, text=True,
                             check=True).stdout
    attached = {entry["prog_id"]: entry.get("tracepoint") or entry.get("func", "?")
                for entry in json.loads(listing or "[]") if entry.get("pid") == pid}
    # one name per program: samples are kept by name
    attached.update({prog_id: f"{link_type} link, program {prog_id}"
                     for prog_id, link_type in link_programs(pid).items()})
    return attached


class Bpftrace(Daemon):
    """bpftrace running a script, ready once every probe is attached. Only stop() and cpu_seconds() are the
    daemon's (Daemon.__init__ is not called: no config, no metrics endpoint)."""

    def __init__(self, script: str, probes: int, workdir: Path) -> None:
        source = workdir / "peer.bt"
        source.write_text(script)
        self.log = open(workdir / "bpftrace.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(["bpftrace", str(source)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        self.names = attached_programs(self.proc.pid)
        while len(self.names) < probes:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"bpftrace did not attach: {(workdir / 'bpftrace.log').read_text()[-2000:]}")
            time.sleep(0.05)
            self.names = attached_programs(self.proc.pid)
        self.programs = set(self.names)

    def metrics(self) -> dict[str, float]:
        return {}


class Ours(Daemon):
    """Our daemon with one flow on the IPv4 destination `daddr`, its program ids named by their tracepoints."""

    def __init__(self, daddr: str, workdir: Path, cache_dir: str, command: list[str] | None = None,
                 backend: str = "tracepoint") -> None:
        super().__init__(f"  - {{name: peer, daddr: {daddr}}}\n", workdir, cache_dir, {}, command=command,
                         backend=backend)
        self.names = tracepoint_names(self.programs)


Tracer = Bpftrace | Ours


def udp_closed_blast(pair: NetPair, count: int) -> float:
    """`count` datagrams from a to a closed port in b as fast as the sender goes; datagrams sent per second."""
    done = pair.exec_in(pair.ns_a, ["taskset", "-c", FLOOD_CPU, sys.executable, "-c", SENDER, pair.addr_b4,
                                    str(UDP_PORT), str(count), "0"], timeout=600)
    sent, seconds = done.stdout.split()
    return int(sent) / float(seconds)


def children_system_seconds() -> float:
    """System CPU time of this process's reaped children (the floods)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime


def flood_cost(flood: Callable[[], float], packets: int) -> Sample:
    """Run one flood: its rate and the sender's system CPU per packet."""
    cpu = children_system_seconds()
    rate = flood()
    return Sample(rate, (children_system_seconds() - cpu) / packets * 1e6)


def measure(flood: Callable[[], float], packets: int, tracer: Tracer) -> Sample:
    """One flood under a tracer: flood_cost plus the tracer's program statistics, own CPU and lost events."""
    lost = "ipftrace_events_lost_total"
    metrics = tracer.metrics()  # scraped outside the statistics' window: the scrape's packets are not counted
    before, own = program_stats(tracer.programs), tracer.cpu_seconds()
    sample = flood_cost(flood, packets)
    after, sample.tracer_us = program_stats(tracer.programs), (tracer.cpu_seconds() - own) / packets * 1e6
    sample.lost = tracer.metrics().get(lost, 0.0) - metrics.get(lost, 0.0)
    for prog_id, (_, run_ns, runs) in after.items():
        name = tracer.names.get(prog_id, str(prog_id))
        sample.runs[name] = (run_ns - before[prog_id][1], runs - before[prog_id][2])
    return sample


def set_stats(value: str) -> str:
    """Set kernel.bpf_stats_enabled; returns the value it had."""
    old = subprocess.run(["sysctl", "-n", STATS_SYSCTL], capture_output=True, text=True, check=True).stdout
    subprocess.run(["sysctl", "-qw", f"{STATS_SYSCTL}={value}"], check=True)
    return old.strip()


Key = tuple[str, str, str]  # workload, tracer, filter
Floods = dict[str, tuple[Callable[[], float], int]]  # workload -> (flood, packets it sends)


@dataclass
class Bench:
    """What every round needs, and the samples the rounds collect."""

    pair: NetPair
    floods: Floods
    events: list[str]  # the tracepoints our daemon attaches
    workdir: Path
    cache_dir: str
    empty_command: list[str]  # the daemon with empty programs (bench_kernel.empty_program_daemon)
    backend: str = "tracepoint"  # ours with this backend, bpftrace on the same probes
    functions: list[FunctionProbe] = field(default_factory=list)  # on a function backend: the functions
    samples: dict[Key, list[Sample]] = field(default_factory=dict)
    foreign: list[int] = field(default_factory=list)  # ipft_* programs of other processes, per measurement

    def start(self, name: str, daddr: str) -> Tracer:
        """Tracer `name` with its filter on `daddr`, probes attached."""
        if name == "bpftrace":
            return Bpftrace(bpftrace_script(self.events, daddr, self.backend, self.functions),
                            len(self.events) + len(self.functions), self.workdir)
        command = self.empty_command if name == EMPTY else None
        return Ours(daddr, self.workdir, self.cache_dir, command, self.backend)

    def round(self, index: int) -> None:
        """Untraced, then each filter under each tracer (the tracers' order alternates between rounds)."""
        self.foreign.append(foreign_programs(set()))
        for workload, (flood, packets) in self.floods.items():
            self.samples.setdefault((workload, "untraced", "-"), []).append(flood_cost(flood, packets))
        for mode in MODES:
            daddr = self.pair.addr_b4 if mode == "matching" else OTHER_DADDR
            for name in TRACERS[mode] if index % 2 == 0 else TRACERS[mode][::-1]:
                tracer = self.start(name, daddr)
                try:
                    self.foreign.append(foreign_programs(tracer.programs))
                    for workload, (flood, packets) in self.floods.items():
                        sample = measure(flood, packets, tracer)
                        self.samples.setdefault((workload, name, mode), []).append(sample)
                finally:
                    tracer.stop()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def verdict(ok: bool, text: str) -> str:
    return f"{text}: {'met' if ok else 'NOT met'}"


def paired(runs: list[Sample], refs: list[Sample], ratio: Callable[[Sample, Sample], float]) -> float:
    """Median over rounds of a ratio between a sample and the same round's reference."""
    return median([ratio(sample, ref) for sample, ref in zip(runs, refs)])


def cpu_ratio(sample: Sample, base: Sample) -> float:
    """Untraced / traced CPU per packet: the throughput a CPU-bound flood keeps."""
    return base.cpu_us / sample.cpu_us


def ns_ratio(sample: Sample, peer: Sample) -> float:
    """Program ns per hit against bpftrace's."""
    return sample.ns_per_hit / peer.ns_per_hit


def tracer_row(label: str, name: str, mode: str, runs: list[Sample], base: list[Sample], peer: list[Sample],
               packets: int) -> list[str]:
    """One row of the main table: a tracer and filter against the round's untraced flood and bpftrace."""
    per_hit = paired(runs, peer, ns_ratio)
    cpu = paired(runs, base, cpu_ratio)
    target = ""
    if name == "ours":
        target = (f"{verdict(per_hit <= TARGET_NS[mode], f'ns <= {TARGET_NS[mode]}x')}; "
                  f"{verdict(cpu >= TARGET_CPU[mode], f'CPU >= {TARGET_CPU[mode]}')}")
    return [
        label, name, mode, f"{median([s.rate for s in runs]):,.0f}",
        f"{paired(runs, base, lambda s, b: s.rate / b.rate):.2f}", f"{median([s.cpu_us for s in runs]):.2f}",
        f"{cpu:.2f}", f"{median([s.hits / packets for s in runs]):.2f}",
        f"{median([s.ns_per_hit for s in runs]):.0f}", f"{per_hit:.2f}",
        f"{median([s.tracer_us for s in runs]):.2f}",
        "-" if name == "bpftrace" else f"{max(s.lost for s in runs):,.0f}", target,
    ]


def verdict_line(label: str, mode: str, samples: dict[Key, list[Sample]], workload: str) -> str:
    """The targets for ours on one flood and filter, with bpftrace's CPU ratio (and the floor) for context."""
    base = samples[(workload, "untraced", "-")]
    peer = samples[(workload, "bpftrace", mode)]
    ours = samples[(workload, "ours", mode)]
    per_hit = paired(ours, peer, ns_ratio)
    cpu = paired(ours, base, cpu_ratio)
    line = (f"- {label}, {mode}: ours/bpftrace ns per hit {per_hit:.2f} "
            f"({verdict(per_hit <= TARGET_NS[mode], f'<= {TARGET_NS[mode]}')}), CPU ratio {cpu:.2f} "
            f"({verdict(cpu >= TARGET_CPU[mode], f'>= {TARGET_CPU[mode]}')}); bpftrace's CPU ratio "
            f"{paired(peer, base, cpu_ratio):.2f}")
    if (workload, EMPTY, mode) in samples:
        empty = samples[(workload, EMPTY, mode)]
        line += (f"; floor (our daemon, empty programs): {paired(empty, peer, ns_ratio):.2f} of bpftrace's "
                 f"ns per hit, CPU ratio {paired(empty, base, cpu_ratio):.2f}")
    return line


def result_rows(samples: dict[Key, list[Sample]], floods: Floods,
                labels: dict[str, str]) -> tuple[list[list[str]], list[str]]:
    """The main table's rows and one verdict line per flood and filter."""
    rows, verdicts = [], []
    for workload, (_, packets) in floods.items():
        base = samples[(workload, "untraced", "-")]
        rows.append([labels[workload], "untraced", "-", f"{median([s.rate for s in base]):,.0f}", "1.00",
                     f"{median([s.cpu_us for s in base]):.2f}", "1.00", "-", "-", "-", "-", "-", "-"])
        for mode in MODES:
            peer = samples[(workload, "bpftrace", mode)]
            for name in TRACERS[mode]:
                runs = samples[(workload, name, mode)]
                rows.append(tracer_row(labels[workload], name, mode, runs, base, peer, packets))
            verdicts.append(verdict_line(labels[workload], mode, samples, workload))
    return rows, verdicts


def columns() -> list[tuple[str, str]]:
    """(tracer, filter) pairs in table order."""
    return [(name, mode) for mode in MODES for name in TRACERS[mode]]


def tracepoint_rows(samples: dict[Key, list[Sample]], events: list[str]) -> list[list[str]]:
    """ns per hit per tracepoint, both floods of a round together, per tracer and filter (median over rounds);
    tracepoints no flood hit are left out."""
    rows = []
    for event in events:
        row = [event]
        for name, mode in columns():
            floods = [runs for (_, tracer, filt), runs in samples.items() if (tracer, filt) == (name, mode)]
            per_round = []
            for one_round in zip(*floods):
                spent, hits = (sum(values) for values in zip(*(s.runs.get(event, (0, 0)) for s in one_round)))
                if hits:
                    per_round.append(spent / hits)
            row.append(f"{median(per_round):.0f}" if per_round else "-")
        if any(cell != "-" for cell in row[1:]):
            rows.append(row)
    return rows


def ours_tracepoints(workdir: Path, cache_dir: str, backend: str) -> list[str]:
    """The raw tracepoints our daemon attaches here (from the kernel's link list), in attach order."""
    daemon = Ours(OTHER_DADDR, workdir, cache_dir, backend=backend)
    try:
        return [daemon.names[prog_id] for prog_id in sorted(daemon.names)]
    finally:
        daemon.stop()


def probed(backend: str, events: list[str], functions: list[FunctionProbe], attachable: int) -> str:
    """What both tracers probe, for the report (empty on the tracepoint backend: the tracepoints say it)."""
    if backend == "tracepoint":
        return ""
    return (f"; the curated manifest: {attachable} functions attachable here, of which bpftrace probes "
            f"{len(functions)} (one `{backend}:` program each, reading the skb argument), plus the {len(events)} "
            "tracepoints ours holds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pings", type=int, default=50_000)
    parser.add_argument("--datagrams", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache-dir", default=os.environ.get("IPFTRACE_CACHE_DIR", "/tmp/ipft-cache"))
    parser.add_argument("--backend", choices=BACKENDS, default="tracepoint",
                        help="ours with this backend (curated manifest), bpftrace on the same probes")
    parser.add_argument("--write", metavar="RESULTS_MD", help="replace this bench's section there")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or not shutil.which("bpftool") or not shutil.which("bpftrace"):
        print("needs root, bpftool and bpftrace", file=sys.stderr)
        return 2
    pair = create_pair(100 + os.getpid() % 50)
    workdir = Path(tempfile.mkdtemp(prefix="ipft-peers-"))
    floods: Floods = {"ping": (lambda: ping_flood(pair, args.pings), 2 * args.pings),
                      "udp": (lambda: udp_closed_blast(pair, args.datagrams), args.datagrams)}
    labels = {"ping": "ping flood", "udp": "UDP blast, closed port"}
    old_stats = set_stats("1")
    try:
        events = ours_tracepoints(workdir, args.cache_dir, args.backend)
        functions, attachable = ([], 0) if args.backend == "tracepoint" else \
            function_probes(args.backend, args.cache_dir)
        bench = Bench(pair, floods, events, workdir, args.cache_dir, empty_program_daemon(workdir), args.backend,
                      functions)
        for index in range(args.runs):
            bench.round(index)
            print(f"round {index + 1} done", file=sys.stderr, flush=True)
    finally:
        set_stats(old_stats)
        delete_pair(pair)
        shutil.rmtree(workdir, ignore_errors=True)
    version = subprocess.run(["bpftrace", "--version"], check=True, capture_output=True, text=True).stdout.strip()
    rows, verdicts = result_rows(bench.samples, floods, labels)
    foreign = sum(1 for count in bench.foreign if count)
    lines = [
        *machine_facts(),
        "",
        f"Command: `{command_line()}`",
        "",
        (f"One run of {args.runs} rounds, each: untraced, then {version} and our daemon (`-b {args.backend}`, no "
         f"OTLP endpoint{probed(args.backend, events, functions, attachable)}) with a filter on another flow "
         f"(daddr {OTHER_DADDR}) and on the floods' destination "
         f"(matching), the tracers' order alternating. {args.pings:,} pings (requests and replies: "
         f"{2 * args.pings:,} packets) and {args.datagrams:,} UDP datagrams to a closed port, between two "
         "test namespaces, sender pinned to the last CPU. CPU us/packet = the sender's system CPU time "
         "(getrusage; veth's softirq work on its CPU included) per packet; CPU ratio = untraced / traced CPU "
         "per packet (the throughput a CPU-bound flood keeps); rate ratio = traced / untraced packets/s; "
         f"ns/hit = the tracer's programs' run_time_ns / run_cnt (`{STATS_SYSCTL}`: program body, not the "
         "dispatch); ratios are paired within a round, medians over rounds. tracer us/packet = the tracer "
         "process's own CPU; lost = our daemon's ipftrace_events_lost_total, worst round. ipft_* programs of "
         "other processes (another ipftrace on this machine, on the same tracepoints) were attached at "
         f"{foreign} of {len(bench.foreign)} measurements' starts (at most {max(bench.foreign, default=0)})."),
        "",
        table(["workload", "tracer", "filter", "packets/s", "rate ratio", "CPU us/packet", "CPU ratio",
               "hits/packet", "ns/hit", "ns/hit vs bpftrace", "tracer us/packet", "lost", "target (issue 14)"],
              rows),
        "",
        "Targets (issue 14), ours:",
        "",
        *verdicts,
        "",
    ]
    if args.backend == "tracepoint":  # on a function backend our entry points are shared: no per-probe split
        lines += [
            "Program ns per hit by tracepoint (both floods; bpftrace on the classic tracepoint, ours on the raw one):",
            "",
            table(["tracepoint", *[f"{name}, {mode}" for name, mode in columns()]],
                  tracepoint_rows(bench.samples, events)),
        ]
    title = "Peers (bpftrace)" if args.backend == "tracepoint" else \
        f"Peers (bpftrace), {args.backend} on {platform.release()}"
    return report(lines, args.write, title)


if __name__ == "__main__":
    sys.exit(main())
