"""Time Btf.load + skb_functions() + drop_reasons() (and kallsyms) on this machine's BTF.

Usage: .venv/bin/python bench/btf_load.py [--btf PATH] [--kallsyms PATH] [--repeat N]
Each repeat starts from a fresh reader (nothing cached); the table shows the best and median times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ipftrace_exporter.kernel.btf import DEFAULT_PATH, Btf
from ipftrace_exporter.kernel.symbols import DEFAULT_PATH as KALLSYMS_PATH
from ipftrace_exporter.kernel.symbols import KernelSymbols


def run_once(btf_path: str, kallsyms_path: str | None) -> dict[str, tuple[float, int]]:
    """One cold run: step → (milliseconds, count of what the step produced)."""
    steps: dict[str, tuple[float, int]] = {}
    t0 = time.perf_counter()
    btf = Btf.load(btf_path)
    t1 = time.perf_counter()
    steps["Btf.load (types indexed)"] = ((t1 - t0) * 1e3, len(btf) - 1)
    functions = btf.skb_functions()
    t2 = time.perf_counter()
    steps["skb_functions()"] = ((t2 - t1) * 1e3, len(functions))
    reasons = btf.drop_reasons()
    t3 = time.perf_counter()
    steps["drop_reasons()"] = ((t3 - t2) * 1e3, len(reasons))
    steps["total BTF"] = ((t3 - t0) * 1e3, len(functions))
    if kallsyms_path:
        t4 = time.perf_counter()
        names = KernelSymbols(kallsyms_path).names()
        t5 = time.perf_counter()
        steps["kallsyms names()"] = ((t5 - t4) * 1e3, len(names))
        usable = sum(1 for name, pos in functions.items() if pos <= 5 and name in names)
        steps["skb functions in kallsyms, pos 1-5"] = (0.0, usable)
    return steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--btf", default=DEFAULT_PATH)
    parser.add_argument("--kallsyms", default=KALLSYMS_PATH, help="'' to skip")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    runs = [run_once(args.btf, args.kallsyms or None) for _ in range(max(1, args.repeat))]
    size = os.path.getsize(args.btf) if os.path.exists(args.btf) else 0
    print(f"BTF {args.btf} ({size / 1e6:.1f} MB), {len(runs)} cold runs, Python {sys.version.split()[0]}")
    print(f"{'step':<38} {'best ms':>9} {'median ms':>10} {'count':>8}")
    for step in runs[0]:
        times = [run[step][0] for run in runs]
        print(f"{step:<38} {min(times):>9.1f} {statistics.median(times):>10.1f} {runs[0][step][1]:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
