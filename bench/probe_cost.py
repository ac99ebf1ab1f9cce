"""Per-probe cost of the BPF programs, measured by the kernel: with `kernel.bpf_stats_enabled` the kernel sums
each program's run time and run count, so program time per hit is read directly instead of inferred from noisy
throughput. A ping flood (or, with `--workload tcp`, a TCP bulk transfer that the kernel cuts into GSO segments
in software) between two test namespaces runs with the daemon filtering for another flow and with the daemon
matching the traffic. With `--tree DIR` (repeated) the daemons of several source trees (e.g. a `git worktree` of
an older commit) are measured in the same run, alternating, so that their costs can be compared. Needs root.

    .venv/bin/python bench/probe_cost.py [--pings 100000] [--workload ping|tcp] [--tree DIR ...] [--runs 3]
                                         [--backend tracepoint|kprobe|kfunc] [--write bench/RESULTS.md]

Program time covers the program body only (not the kernel's dispatch into it) and includes the statistics'
own two clock reads per run; hits per packet say how many probes each packet passes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_kernel import OTHER_FLOW, Daemon
from benchlib import command_line, machine_facts, report, table

from tests.kernel.netns import NetPair, create_pair, delete_pair
from tests.kernel.test_segments import GSO_PORT, segmented_transfer

STATS_SYSCTL = "kernel.bpf_stats_enabled"


def program_stats(ids: set[int]) -> dict[int, tuple[str, int, int]]:
    """id -> (name, run_time_ns, run_cnt) of our programs."""
    listing = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return {prog["id"]: (prog.get("name", ""), prog.get("run_time_ns", 0), prog.get("run_cnt", 0))
            for prog in json.loads(listing) if prog["id"] in ids}


def tracepoint_names(ids: set[int]) -> dict[int, str]:
    """program id -> the raw tracepoint it is attached to (from the kernel's link list)."""
    listing = subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {link["prog_id"]: link["tp_name"] for link in json.loads(listing or "[]")
            if link.get("prog_id") in ids and "tp_name" in link}


def tree_command(tree: str | None) -> list[str] | None:
    """The daemon's command line for the source tree `tree` (None: the installed one, this checkout's)."""
    if tree is None:
        return None
    return [sys.executable, "-c", ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
                                   "from ipftrace_exporter.entry import exporter_main; exporter_main()"),
            str(Path(tree).resolve())]


def send(pair: NetPair, workload: str, pings: int) -> int:
    """Runs the workload; returns the packets sent (ping: requests and replies; tcp: segments on the wire from a)."""
    if workload == "tcp":
        return segmented_transfer(pair, 4, size=pings * 64)
    pair.exec_in(pair.ns_a, ["ping", "-f", "-q", "-c", str(pings), "-W", "1", pair.addr_b4], timeout=300)
    return 2 * pings


def measure(pair: NetPair, flows: str, workload: str, pings: int, workdir: Path, cache_dir: str,
            tree: str | None, backend: str = "tracepoint") -> tuple[float, float, dict]:
    """(hits per packet, ns per hit, {program: ns per hit}) for one workload under one daemon."""
    daemon = Daemon(flows, workdir, cache_dir, {}, command=tree_command(tree), backend=backend)
    try:
        subprocess.run(["sysctl", "-qw", f"{STATS_SYSCTL}=1"], check=True)
        names = tracepoint_names(daemon.programs)
        before = program_stats(daemon.programs)
        packets = send(pair, workload, pings)
        after = program_stats(daemon.programs)
    finally:
        subprocess.run(["sysctl", "-qw", f"{STATS_SYSCTL}=0"], check=False)
        daemon.stop()
    per_program: dict[str, float] = {}
    total_ns = total_hits = 0
    for prog_id, (name, run_ns, runs) in after.items():
        hits = runs - before[prog_id][2]
        spent = run_ns - before[prog_id][1]
        total_ns += spent
        total_hits += hits
        if hits:
            per_program[names.get(prog_id, name)] = spent / hits
    return total_hits / max(packets, 1), total_ns / max(total_hits, 1), per_program


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pings", type=int, default=100_000)
    parser.add_argument("--workload", choices=("ping", "tcp"), default="ping",
                        help="tcp: a bulk transfer of pings x 64 bytes, GSO in software")
    parser.add_argument("--tree", action="append", metavar="DIR",
                        help="a source tree whose daemon to measure (repeatable; default: this checkout)")
    parser.add_argument("--backend", choices=("tracepoint", "kprobe", "kfunc"), default="tracepoint",
                        help="the daemons' backend (kprobe, kfunc: the curated manifest; in the kernel matrix)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache-dir", default=os.environ.get("IPFTRACE_CACHE_DIR", "/tmp/ipft-cache"))
    parser.add_argument("--write", metavar="RESULTS_MD", help="replace the 'Probe cost' section there")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or shutil.which("bpftool") is None:
        print("needs root and bpftool", file=sys.stderr)
        return 2
    pair = create_pair(150 + os.getpid() % 50)
    workdir = Path(tempfile.mkdtemp(prefix="ipft-probe-cost-"))
    matching = (f"  - {{name: bulk, l4proto: TCP, daddr: {pair.addr_b4}, dport: {GSO_PORT}}}\n"
                if args.workload == "tcp" else f"  - {{name: ping, l4proto: ICMP, daddr: {pair.addr_b4}}}\n")
    trees: list[str | None] = args.tree or [None]
    modes = {(tree, mode): flows for tree in trees
             for mode, flows in (("other flow", OTHER_FLOW), ("matching", matching))}
    samples: dict[tuple[str | None, str], list[tuple[float, float, dict]]] = {key: [] for key in modes}
    try:
        for run in range(args.runs):
            for (tree, mode), flows in modes.items():
                samples[tree, mode].append(measure(pair, flows, args.workload, args.pings, workdir, args.cache_dir,
                                                   tree, args.backend))
            print(f"run {run + 1} done", file=sys.stderr, flush=True)
    finally:
        delete_pair(pair)
        shutil.rmtree(workdir, ignore_errors=True)
    rows = []
    for (tree, mode), runs in samples.items():
        hits = statistics.median(run[0] for run in runs)
        per_hit = statistics.median(run[1] for run in runs)
        programs = sorted({name for run in runs for name in run[2]})
        spread = ", ".join(f"{name} {statistics.median(run[2].get(name, 0) for run in runs):.0f}"
                           for name in programs)
        label = mode if tree is None else f"{Path(tree).name}: {mode}"
        rows.append([label, f"{hits:.2f}", f"{per_hit:.0f}", f"{hits * per_hit / 1000:.2f}", spread])
    lines = [
        *machine_facts(),
        "",
        f"Command: `{command_line()}`",
        "",
        (f"Median of {args.runs} runs of " + (
            f"a {args.pings * 64 // 1024:,} KiB TCP transfer (GSO in software; packets = segments sent)"
            if args.workload == "tcp" else
            f"a {args.pings:,}-packet ping flood (requests and replies: {2 * args.pings:,} packets)")
         + f", daemon `-b {args.backend}`; program time from `{STATS_SYSCTL}` (run_time_ns / "
         "run_cnt per program, body only, the statistics' clock reads included)."),
        "",
        table(["daemon", "probe hits/packet", "program ns/hit", "program us/packet", "ns/hit per tracepoint"], rows),
    ]
    return report(lines, args.write, "Probe cost")


if __name__ == "__main__":
    sys.exit(main())
