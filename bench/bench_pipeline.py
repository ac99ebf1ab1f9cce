"""User-space pipeline throughput: ring-buffer records -> decode -> paths -> encoded OTLP spans, on one core.

    .venv/bin/python bench/bench_pipeline.py [--events 1000000] [--per-path 6] [--naive-events 30000]
                                             [--write bench/RESULTS.md]

Synthetic records (events.encode_frames of tracepoint-backend-shaped events: 64 skbs in flight, `--per-path` events
each, the first carrying the parsed tuple, the last a consume or (1 in 10) a drop) are cut into ring-buffer polls
of 256 records (one bytes object of ring frames each, as Collector.poll returns them) and fed to the same calls
the daemon makes: `events.decode_frames(frames)`,
`PathAssembler.add_many` + `expire`, then `SpanEncoder.encode_bytes` in batches of at most 4096 spans (the OTLP
sender's batch). The naive baseline makes the same spans with the OpenTelemetry SDK (one SDK span per event,
bench_spans.NaiveEncoder) and encodes them with the OTLP exporter's encoder. Every rate is events per second of
the whole input; the process is pinned to one CPU.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from typing import Self

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import FLOWS, command_line, machine_facts, make_probes, report, synthetic_events, table

from ipftrace_exporter import events as events_module
from ipftrace_exporter.names import Names
from ipftrace_exporter.paths import PathAssembler, PathLimits, SkbPath
from ipftrace_exporter.spans import SpanEncoder, WallClock

POLL_RECORDS = 256
BATCH_SPANS = 4096
TARGET_DECODE_ASSEMBLE = 200_000
TARGET_SPAN_RATIO = 5.0


def polls(buffer: bytes, size: int) -> list[bytes]:
    """The buffer as the collector hands it out: back-to-back ring frames, `size` records per poll."""
    step = events_module.FRAME_SIZE * size
    return [buffer[i:i + step] for i in range(0, len(buffer), step)]


def batches(paths: list[SkbPath], limit: int) -> list[list[SkbPath]]:
    """Paths grouped as the OTLP sender groups them (at most `limit` spans, or one larger path)."""
    out: list[list[SkbPath]] = []
    current: list[SkbPath] = []
    spans = 0
    for path in paths:
        count = len(path.events) + 1
        if current and spans + count > limit:
            out.append(current)
            current, spans = [], 0
        current.append(path)
        spans += count
    if current:
        out.append(current)
    return out


class Clocks:
    """CPU time of this thread (what one core spends, unaffected by other processes on the machine) and wall time."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.wall = 0.0
        self._cpu0 = self._wall0 = 0.0

    def __enter__(self) -> Self:
        self._cpu0, self._wall0 = time.thread_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu += time.thread_time() - self._cpu0
        self.wall += time.perf_counter() - self._wall0


def run_decode(chunks: list[bytes]) -> Clocks:
    """decode_frames over every poll."""
    decode_frames = events_module.decode_frames
    clocks = Clocks()
    count = 0
    with clocks:
        for frames in chunks:
            for _ in decode_frames(frames):
                count += 1
    return clocks


def run_stream(chunks: list[bytes], encoder: SpanEncoder, keep_events: int) -> tuple[Clocks, Clocks, int, int,
                                                                                            list[SkbPath]]:
    """The daemon's pipeline, poll by poll: decode + assemble (+ expire), then encode whenever a sender batch is full.
    Paths are dropped once encoded (as in the daemon), except the first ones holding `keep_events` events (returned
    for the baseline comparison)."""
    assembler = PathAssembler(make_probes(), PathLimits(settle_ns=0), clock=lambda: 0)
    decode_frames = events_module.decode_frames
    assemble, encode = Clocks(), Clocks()
    pending: list[SkbPath] = []
    pending_spans = 0
    spans = size = kept_events = 0
    kept: list[SkbPath] = []
    # settle_ns=0 and a clock at 0: expire(0) releases every ended path at the next poll (the daemon's 50 ms
    # settle time is shorter than its 100 ms poll), and no open path goes idle.
    for index, frames in enumerate(chunks):
        with assemble:
            done = assembler.add_many(decode_frames(frames))
            done += assembler.expire(0)
            if index == len(chunks) - 1:
                done += assembler.flush()
        for path in done:
            if kept_events < keep_events:
                kept.append(path)
                kept_events += len(path.events)
            pending.append(path)
            pending_spans += len(path.events) + 1
        if pending and (pending_spans >= BATCH_SPANS or index == len(chunks) - 1):
            with encode:
                size += len(encoder.encode_bytes(pending))
            spans += pending_spans
            pending, pending_spans = [], 0
    return assemble, encode, spans, size, kept


def run_encode(encode, groups: list[list[SkbPath]]) -> Clocks:  # type: ignore[no-untyped-def]
    clocks = Clocks()
    with clocks:
        for group in groups:
            encode(group)
    return clocks


def rate(events: int, clocks: Clocks) -> str:
    return f"{events / clocks.cpu:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--per-path", type=int, default=6)
    parser.add_argument("--naive-events", type=int, default=30_000, help="events encoded by the slow baseline")
    parser.add_argument("--cpu", type=int, default=0, help="CPU to pin to (-1: do not pin)")
    parser.add_argument("--write", metavar="RESULTS_MD", help="replace the 'User-space pipeline' section there")
    args = parser.parse_args(argv)
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})

    from bench_spans import NaiveEncoder

    load = os.getloadavg()[0]
    probes = make_probes()
    buffer = events_module.encode_frames(synthetic_events(args.events, per_path=args.per_path))
    chunks = polls(buffer, POLL_RECORDS)
    del buffer
    gc.collect()
    events = args.events

    decode = run_decode(chunks)
    encoder = SpanEncoder(Names(FLOWS, probes), WallClock(), {"service.name": "bench"}, seed=1)
    assemble, encode, spans, size, kept = run_stream(chunks, encoder, args.naive_events)
    naive_events = sum(len(path.events) for path in kept)
    groups = batches(kept, BATCH_SPANS)
    fresh = SpanEncoder(Names(FLOWS, probes), WallClock(), {"service.name": "bench"}, seed=2)  # cold caches, like the SDK
    ours = run_encode(fresh.encode_bytes, groups)
    naive = run_encode(NaiveEncoder(probes, WallClock()).encode, groups)
    ratio = naive.cpu / ours.cpu
    met = events / assemble.cpu >= TARGET_DECODE_ASSEMBLE

    rows = [
        ["decode (decode_frames)", f"{events:,}", f"{decode.cpu:.2f}", f"{decode.wall:.2f}", rate(events, decode), ""],
        ["decode + assemble (add_many, expire)", f"{events:,}", f"{assemble.cpu:.2f}", f"{assemble.wall:.2f}",
         rate(events, assemble), f"target >= {TARGET_DECODE_ASSEMBLE:,}: {'met' if met else 'NOT met'}"],
        ["span encoding (SpanEncoder.encode_bytes)", f"{events:,}", f"{encode.cpu:.2f}", f"{encode.wall:.2f}",
         rate(events, encode), f"{spans:,} spans, {size / spans:.0f} B/span"],
        ["decode + assemble + encode", f"{events:,}", f"{assemble.cpu + encode.cpu:.2f}",
         f"{assemble.wall + encode.wall:.2f}", f"{events / (assemble.cpu + encode.cpu):,.0f}", ""],
        ["span encoding, ours (baseline's paths)", f"{naive_events:,}", f"{ours.cpu:.2f}", f"{ours.wall:.2f}",
         rate(naive_events, ours), ""],
        ["span encoding, naive (SDK span per event)", f"{naive_events:,}", f"{naive.cpu:.2f}", f"{naive.wall:.2f}",
         rate(naive_events, naive), f"ours is {ratio:.1f}x faster"],
    ]
    lines = [
        *machine_facts(),
        "",
        f"Command: `{command_line()}`",
        "",
        (f"{events:,} events in paths of {args.per_path} (64 skbs interleaved), {POLL_RECORDS} records per poll, "
         f"spans encoded in batches of <= {BATCH_SPANS}; pinned to CPU {args.cpu}. Rates are events per "
         "CPU-second of this thread (`time.thread_time`), so other processes on the machine do not lower them; "
         f"wall seconds are shown too (load average at the start: {load:.2f})."),
        "",
        table(["stage", "events", "CPU s", "wall s", "events/CPU-s", "note"], rows),
        "",
        (f"Span encoding vs the naive SDK baseline (same paths, same run): {ratio:.1f}x (target >= "
         f"{TARGET_SPAN_RATIO:g}x: {'met' if ratio >= TARGET_SPAN_RATIO else 'NOT met'})."),
    ]
    return report(lines, args.write, "User-space pipeline")


if __name__ == "__main__":
    sys.exit(main())
