"""Start-up cost of each backend for 50, 200 and all BTF-discovered functions on this machine.

Usage: .venv/bin/python bench/startup.py [--repeat N] [--sizes 50,200,all] [--write bench/RESULTS.md]
Needs root and BPF. Per backend and size: plan (discovery + manifest reconcile), render, compile (BCC/clang),
then what this kernel allows: kprobe programs are loaded through the verifier (no attach), kfunc programs are
loaded as fentry programs (refused by some kernels: then the load column is the refusal), tracepoints are
attached. Also `Tracer.start()` for `-b auto` against `-b tracepoint`: what auto's fallback costs. Step cells are
the best of the repeats (the machine is shared; the best is the uncontended cost); the last time column is the
median total. `--write` replaces the "## Start-up" section of the results file (or appends it).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ipftrace_exporter import manifest as manifests
from ipftrace_exporter.collector import Collector, kfunc_refusal
from ipftrace_exporter.flows import FlowSpec
from ipftrace_exporter.kernel.view import KernelView, kprobes_unavailable
from ipftrace_exporter.plan import plan_probes
from ipftrace_exporter.program import ProgramOptions
from ipftrace_exporter.tracer import Tracer, TraceRequest

FLOWS = (FlowSpec(name="bench", ipversion=4, l4proto=1),)
SECTION = "## Start-up"


@dataclass
class Row:
    """One measured configuration: seconds per step (medians)."""

    backend: str
    functions: int
    entry_points: int
    plan: float
    compile: float
    load: float
    load_what: str
    outcome: str
    median_total: float = 0.0

    @property
    def total(self) -> float:
        return self.plan + self.compile + self.load


def measure(tracer: Tracer, headers, backend: str, manifest: str | None, functions: int,  # type: ignore[no-untyped-def]
            repeat: int, options: ProgramOptions | None = None) -> Row:
    samples: dict[str, list[float]] = {"plan": [], "compile": [], "load": []}
    outcome, entries = "", 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        plan = plan_probes(tracer.view, backend, manifest)
        program = tracer.program_for(plan) if options is None else _render(tracer, plan, options)
        t1 = time.perf_counter()
        collector = Collector(program, headers)
        try:
            collector.compile()
            t2 = time.perf_counter()
            if backend == "tracepoint":
                report = collector.attach()
                outcome = f"{len(report.attached)} attached, {len(report.failed)} failed"
            else:
                verified = collector.verify()
                statuses = sorted({check.status for check in verified.by_kind(plan.sources[0].probe.kind)})
                outcome = ", ".join(statuses)
            t3 = time.perf_counter()
        finally:
            collector.close()
        entries = len(program.entries())
        samples["plan"].append(t1 - t0)
        samples["compile"].append(t2 - t1)
        samples["load"].append(t3 - t2)
    load_what = {"tracepoint": "attach", "kprobe": "verifier load", "kfunc": "fentry load"}[backend]
    best = {step: min(values) for step, values in samples.items()}
    totals = [sum(values) for values in zip(*samples.values(), strict=True)]
    return Row(backend, functions, entries, best["plan"], best["compile"], best["load"], load_what, outcome,
               statistics.median(totals))


def measure_tp_btf(tracer: Tracer, headers, manifests_by_size: dict[int, str], repeat: int) -> Row:  # type: ignore[no-untyped-def]
    """kfunc entry points of the largest size compiled and verifier-loaded as tp_btf."""
    count = max(manifests_by_size)
    stand_ins = tracer.view.tp_btf_stand_ins()
    samples: dict[str, list[float]] = {"plan": [], "compile": [], "load": []}
    outcome, entries = "", 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        plan = plan_probes(tracer.view, "kfunc", manifests_by_size[count])
        program = tracer.program_for(plan)
        t1 = time.perf_counter()
        with Collector(program, headers) as collector:
            collector.compile()
            t2 = time.perf_counter()
            report = collector.verify_tp_btf(stand_ins)
            t3 = time.perf_counter()
        verified = sum(len(check.sources) for check in report.checks if check.status == "loaded")
        outcome = f"{verified} of {count} functions' entry points loaded"
        entries = len(report.checks)
        samples["plan"].append(t1 - t0)
        samples["compile"].append(t2 - t1)
        samples["load"].append(t3 - t2)
    best = {step: min(values) for step, values in samples.items()}
    totals = [sum(values) for values in zip(*samples.values(), strict=True)]
    return Row("kfunc as tp_btf", count, entries, best["plan"], best["compile"], best["load"], "verifier load (tp_btf)",
               outcome, statistics.median(totals))


def _render(tracer: Tracer, plan, options: ProgramOptions):  # type: ignore[no-untyped-def]
    from ipftrace_exporter.program import render

    return render(plan.sources, tracer.request.flows, options, tracer.request.modules)


def start_times(requested: tuple[str, ...], cache_dir: str | None, repeat: int) -> list[tuple[str, float, float, str]]:
    """Per requested backend: best and median seconds of Tracer.start() (headers cached, BTF read afresh each
    time) and the backend chosen. Requests alternate, so a busy moment of the machine hits both alike."""
    samples: dict[str, list[float]] = {backend: [] for backend in requested}
    chosen: dict[str, str] = {}
    for _ in range(repeat):
        for backend in requested:
            kfunc_refusal.cache_clear()
            started = time.perf_counter()
            tracer = Tracer(TraceRequest(flows=FLOWS, backend=backend), KernelView(), cache_dir)
            try:
                tracer.start()
                samples[backend].append(time.perf_counter() - started)
                chosen[backend] = tracer.backend
            finally:
                tracer.close()
    return [(backend, min(samples[backend]), statistics.median(samples[backend]), chosen[backend])
            for backend in requested]


def table(rows: list[Row], starts: list[tuple[str, float, float, str]], repeat: int) -> str:
    lines = [
        SECTION,
        "",
        (f"`bench/startup.py --repeat {repeat}` on Linux {platform.release()} ({os.cpu_count()} CPUs), header tree "
         "cached, seconds (best of the repeats; last column: median total). Functions are the first N that BTF discovery finds (sorted by name); every "
         "program also holds the skb free tracepoints. kfunc: "
         f"{kfunc_refusal() or 'fentry programs load'}. kprobe: {kprobes_unavailable() or 'kprobes available'}."),
        "",
        ("| backend | functions | entry points | plan | compile | load | load step | total | median total "
         "| kernel's answer |"),
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for row in rows:
        functions = str(row.functions) if row.functions else "-"
        lines.append(f"| {row.backend} | {functions} | {row.entry_points} | {row.plan:.2f} | {row.compile:.2f} "
                     f"| {row.load:.3f} | {row.load_what} | {row.total:.2f} | {row.median_total:.2f} "
                     f"| {row.outcome} |")
    tp_btf = next((row for row in rows if row.backend == "kfunc as tp_btf"), None)
    if tp_btf is not None:
        lines += ["", ("kfunc as tp_btf: where fentry is refused, the kfunc entry points (each role's copy, its "
                       "probe patched in as on fentry) are loaded through the verifier as tp_btf programs on a tracepoint with "
                       "its sk_buff at the same argument, so the kfunc body is verifier-checked with the same "
                       f"BTF-typed arguments: {tp_btf.outcome}.")]
    lines += ["", "| `Tracer.start()` requested | chosen | best | median |", "|---|---|---:|---:|"]
    for requested, best, median, chosen in starts:
        lines.append(f"| {requested} | {chosen} | {best:.2f} | {median:.2f} |")
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace the Start-up section of `path` (up to the next '## ' heading), or append it."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default="50,200,all")
    parser.add_argument("--write", type=Path, help="results file whose Start-up section is replaced")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    cache_dir = os.environ.get("IPFTRACE_CACHE_DIR")
    view = KernelView()
    discovered = manifests.discover(view.btf, view.symbols)
    tracer = Tracer(TraceRequest(flows=FLOWS), view, cache_dir)
    headers = tracer.headers()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as scratch:
        manifest_for: dict[int, str] = {}
        for size in args.sizes.split(","):
            count = len(discovered) if size == "all" else min(int(size), len(discovered))
            path = Path(scratch) / f"{count}.yaml"
            path.write_text(manifests.dump_manifest(discovered[:count]))
            manifest_for[count] = str(path)
        for backend in ("kprobe", "kfunc"):
            for count, path in manifest_for.items():
                rows.append(measure(tracer, headers, backend, path, count, args.repeat))
                print(f"{backend} {count}: {rows[-1].total:.2f}s", file=sys.stderr)
        rows.append(measure(tracer, headers, "tracepoint", None, 0, args.repeat))
        rows.append(measure_tp_btf(tracer, headers, manifest_for, args.repeat))
    starts = start_times(("tracepoint", "auto"), cache_dir, args.repeat)
    section = table(rows, starts, args.repeat)
    print(section)
    if args.write:
        write_section(args.write, section)


if __name__ == "__main__":
    main()
