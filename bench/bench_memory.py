"""Memory: RSS of the user-space pipeline and of the daemon while paths that never end keep arriving.

    .venv/bin/python bench/bench_memory.py [--events 1000000] [--daemon-events 1000000] [--no-daemon]
                                           [--write bench/RESULTS.md]

(1) Pipeline, in this process: `--events` synthetic records of paths that never end (every skb address new, no free
event) go through decode -> PathAssembler -> SpanEncoder.encode_bytes (the evicted paths), once with the daemon's
default `paths.max_inflight` (4096) and once with PathLimits' own default (65536). RSS (VmRSS) is sampled every
10% of the input; growth = last sample - the sample after the first 10% (the working set once caches are warm) and
- the sample before any input.
(2) Daemon (root): `ipftrace-exporter -b tracepoint` with `paths: {idle_timeout: 1h}` (nothing idles out: only
`max_inflight` and skb address reuse bound what it holds) under a TCP bulk transfer and a UDP blast between two
test namespaces until it has taken `--daemon-events` events; its RSS is sampled every second. TCP receive
coalescing frees merged skbs where no tracepoint sees it, so many of these paths never end.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import (
    FLOWS,
    command_line,
    machine_facts,
    make_probes,
    report,
    rss_kib,
    synthetic_events,
    table,
)

from ipftrace_exporter import events as events_module
from ipftrace_exporter.names import Names
from ipftrace_exporter.paths import PathAssembler, PathLimits
from ipftrace_exporter.spans import SpanEncoder, WallClock

TARGET_MB = 100
POLL_RECORDS = 256

TCP_SINK = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
while c.recv(1 << 20):
    pass
"""
TCP_SOURCE = r"""
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
chunk = bytes(1 << 16)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    c.sendall(chunk)
"""
UDP_SOURCE = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], int(sys.argv[2])))
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    for _ in range(1000):
        try:
            s.send(b"never-ending")
        except OSError:
            pass
"""


def pipeline(events: int, max_inflight: int) -> list[list[str]]:
    """RSS samples (MiB) while `events` events of never-ending paths go through the pipeline."""
    gc.collect()
    start = rss_kib()
    # The synthetic timestamps start at 1 s: a clock at 0 keeps every path from ever idling out.
    assembler = PathAssembler(make_probes(), PathLimits(max_inflight=max_inflight, idle_timeout_ns=3600 * 10**9),
                              clock=lambda: 0)
    encoder = SpanEncoder(Names(FLOWS, make_probes()), WallClock(), {"service.name": "bench"}, seed=1)
    decode_frames, encode_frames = events_module.decode_frames, events_module.encode_frames
    step = max(events // 10, 1)
    samples: list[tuple[int, int]] = []
    fed = 0
    records: list[events_module.Event] = []
    encoded = 0
    generator = synthetic_events(events, per_path=4, concurrent=256, end=False, seed=3)
    for event in generator:
        records.append(event)
        if len(records) == POLL_RECORDS:  # as Collector.poll hands them out: one bytes of ring frames
            done = assembler.add_many(decode_frames(encode_frames(records)))
            done += assembler.expire()
            if done:
                encoded += len(encoder.encode_bytes(done))
            fed += len(records)
            records = []
            if fed % step < POLL_RECORDS:
                samples.append((fed, rss_kib()))
    warm = samples[0][1]
    last = samples[-1][1]
    return [[f"{max_inflight:,}", f"{events:,}", f"{start / 1024:.1f}", f"{warm / 1024:.1f}", f"{last / 1024:.1f}",
             f"{(last - warm) / 1024:.1f}", f"{(last - start) / 1024:.1f}", f"{assembler.inflight:,}",
             f"{assembler.evicted:,}", " ".join(f"{kib / 1024:.0f}" for _, kib in samples)]]


def daemon_run(target_events: int, cache_dir: str, max_seconds: float) -> tuple[list[str], list[str]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench_kernel import Daemon

    from tests.kernel.netns import create_pair, delete_pair

    pair = create_pair(240 + os.getpid() % 10)
    workdir = Path(tempfile.mkdtemp(prefix="ipft-mem-"))
    flows = (f"  - {{name: tcp, l4proto: TCP, daddr: {pair.addr_b4}, dport: 9921}}\n"
             f"  - {{name: udp, l4proto: UDP, daddr: {pair.addr_b4}, dport: 9922}}\n")
    daemon = None
    procs: list[subprocess.Popen] = []
    samples: list[tuple[float, float, int]] = []
    try:
        daemon = Daemon(flows, workdir, cache_dir, {}, paths="{idle_timeout: 1h}")
        pid = daemon.proc.pid
        sink = pair.popen_in(pair.ns_b, [sys.executable, "-c", TCP_SINK, pair.addr_b4, "9921"],
                             stdout=subprocess.PIPE)
        procs.append(sink)
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        procs.append(pair.popen_in(pair.ns_a, [sys.executable, "-c", TCP_SOURCE, pair.addr_b4, "9921",
                                               str(max_seconds)]))
        procs.append(pair.popen_in(pair.ns_a, [sys.executable, "-c", UDP_SOURCE, pair.addr_b4, "9922",
                                               str(max_seconds)]))
        started = time.monotonic()
        while time.monotonic() - started < max_seconds:
            metrics = daemon.metrics()
            events = int(metrics.get("ipftrace_events_total", 0))
            samples.append((time.monotonic() - started, events, rss_kib(pid)))
            if events >= target_events:
                break
            time.sleep(1)
        metrics = daemon.metrics()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if daemon is not None:
            daemon.stop()
        delete_pair(pair)
    first = samples[0][2]
    peak = max(kib for _, _, kib in samples)
    last = samples[-1][2]
    row = [f"{samples[-1][0]:.0f}", f"{samples[-1][1]:,}", f"{int(metrics.get('ipftrace_events_lost_total', 0)):,}",
           f"{int(metrics.get('ipftrace_paths_total', 0)):,}", f"{first / 1024:.1f}", f"{peak / 1024:.1f}",
           f"{last / 1024:.1f}", f"{(last - first) / 1024:.1f}"]
    trace = [f"{t:.0f}s {events / 1e6:.2f}M {kib / 1024:.0f}MiB" for t, events, kib in samples[:: max(1, len(samples) // 8)]]
    return row, trace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--daemon-events", type=int, default=1_000_000)
    parser.add_argument("--daemon-seconds", type=float, default=120)
    parser.add_argument("--no-daemon", action="store_true")
    parser.add_argument("--cache-dir", default=os.environ.get("IPFTRACE_CACHE_DIR", "/tmp/ipft-cache"))
    parser.add_argument("--write", metavar="RESULTS_MD", help="replace the 'Memory' section there")
    args = parser.parse_args(argv)

    rows = pipeline(args.events, 4096) + pipeline(args.events, 65536)
    worst = max(float(row[6]) for row in rows)
    lines = [
        *machine_facts(),
        "",
        f"Command: `{command_line()}`",
        "",
        "Pipeline (decode -> PathAssembler -> SpanEncoder of the evicted paths), paths that never end, RSS in MiB:",
        "",
        table(["max_inflight", "events", "RSS start", "RSS at 10%", "RSS end", "growth after warm-up",
               "growth total", "open paths", "evicted", "samples every 10%"], rows),
        "",
        f"Worst total growth {worst:.1f} MiB (target < {TARGET_MB} MB: {'met' if worst < TARGET_MB else 'NOT met'}).",
    ]
    if not args.no_daemon and os.geteuid() == 0:
        row, trace = daemon_run(args.daemon_events, args.cache_dir, args.daemon_seconds)
        growth = float(row[-1])
        lines += [
            "",
            ("Daemon (`-b tracepoint`, `paths: {idle_timeout: 1h}`, default `max_inflight` 4096) under a TCP bulk "
             "transfer plus a UDP blast; RSS in MiB from the first sample (daemon ready) on:"),
            "",
            table(["seconds", "events", "lost", "paths", "RSS first", "RSS peak", "RSS last", "growth"], [row]),
            "",
            f"RSS over time: {', '.join(trace)}.",
            f"Growth {growth:.1f} MiB (target < {TARGET_MB} MB: {'met' if growth < TARGET_MB else 'NOT met'}).",
        ]
    return report(lines, args.write, "Memory")


if __name__ == "__main__":
    sys.exit(main())
