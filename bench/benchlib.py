"""Shared by the bench scripts: machine facts, synthetic ring-buffer events, RSS, table printing."""

from __future__ import annotations

import os
import platform
import random
import shlex
import sys
from collections.abc import Iterator, Sequence

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ipftrace_exporter.events import FLAG_SAMPLED, FLAG_TUPLE, MODULE_DATA_SIZE, Event
from ipftrace_exporter.probes import Probe, ProbeKind, ProbeRole, ProbeTable
from tests.support.procfs import rss_kib  # noqa: F401 - re-exported for the bench scripts

# What the tracepoint backend attaches on this kernel, in plan order (steps, then the two free tracepoints).
TRACEPOINTS = [
    "net:netif_receive_skb", "net:netif_rx", "net:net_dev_queue", "net:net_dev_start_xmit", "net:net_dev_xmit",
    "net:napi_gro_receive_entry", "skb:skb_copy_datagram_iovec",
]  # fmt: skip
DROP_ID = len(TRACEPOINTS)
CONSUME_ID = DROP_ID + 1
FLOWS = ["web", "dns", "ping", "other"]
_ZERO_DATA = bytes(MODULE_DATA_SIZE)


def machine_facts() -> list[str]:
    """uname -r, CPU count and model, Python: the lines every RESULTS.md section starts with."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return [
        f"kernel {platform.release()}, {os.cpu_count()} CPUs ({model}), python {platform.python_version()}",
    ]


def command_line() -> str:
    """The exact command that ran this script."""
    return " ".join(shlex.quote(part) for part in [sys.executable, *sys.argv])


def make_probes() -> ProbeTable:
    """The tracepoint backend's probe table (as planned on this machine)."""
    probes = [Probe(i, name, ProbeKind.TRACEPOINT) for i, name in enumerate(TRACEPOINTS)]
    probes.append(Probe(DROP_ID, "skb:kfree_skb", ProbeKind.TRACEPOINT, role=ProbeRole.DROP))
    probes.append(Probe(CONSUME_ID, "skb:consume_skb", ProbeKind.TRACEPOINT, role=ProbeRole.CONSUME))
    return ProbeTable(probes)


def synthetic_events(count: int, per_path: int = 6, concurrent: int = 64, end: bool = True,
                     seed: int = 1) -> Iterator[Event]:
    """`count` events of paths `per_path` long, `concurrent` skbs interleaved, the first event of each carrying the
    parsed tuple (as the kernel sends it). With `end`, each path ends with a consume (1 in 10: a drop); without,
    paths never end (every skb address is new: the flood a daemon must survive)."""
    rng = random.Random(seed)
    saddr = bytes([10, 199, 1, 1]) + bytes(12)
    daddr = bytes([10, 199, 1, 2]) + bytes(12)
    ts = 1_000_000_000
    lanes: list[list[int]] = [[0, 0] for _ in range(concurrent)]  # [skb, step]
    next_skb = 0xFFFF_8880_1000_0000
    emitted = 0
    lane = 0
    steps = len(TRACEPOINTS)
    while emitted < count:
        slot = lanes[lane]
        lane = (lane + 1) % concurrent
        if slot[0] == 0:
            next_skb += 0x100
            slot[0], slot[1] = next_skb, 0
        skb, step = slot
        ts += rng.randrange(100, 2_000)
        flow_id = (skb >> 8) % len(FLOWS)
        if step == 0:
            sport = 1024 + (skb >> 8) % 50_000
            yield Event(ts, skb, 0, 0, lane % 8, 98, 2, 0, flow_id, 4, 17, saddr, daddr, sport, 53,
                        FLAG_TUPLE | FLAG_SAMPLED, _ZERO_DATA)
        elif end and step == per_path - 1:
            dropped = (skb >> 8) % 10 == 0
            probe = DROP_ID if dropped else CONSUME_ID
            yield Event(ts, skb, 0xFFFFFFFF81000000 if dropped else 0, probe, lane % 8, 98, 2, 2 if dropped else 0,
                        flow_id, 0, 0, bytes(16), bytes(16), 0, 0, FLAG_SAMPLED, _ZERO_DATA)
            slot[0] = 0
            emitted += 1
            continue
        else:
            yield Event(ts, skb, 0, step % steps, lane % 8, 98, 2, 0, flow_id, 0, 0, bytes(16), bytes(16), 0, 0,
                        FLAG_SAMPLED, _ZERO_DATA)
        emitted += 1
        slot[1] = step + 1
        if not end and slot[1] >= per_path:
            slot[0] = 0  # never freed where a probe sees it: left open


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (printed as is and pasted into RESULTS.md)."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


def write_section(path: str, title: str, body: str) -> None:
    """Replace the `## title` section of a Markdown file (up to the next `## `), or append it."""
    heading = f"## {title}"
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        text = "# Benchmark results\n"
    section = f"{heading}\n\n{body.strip()}\n"
    start = text.find(heading + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + (text[end:] if end >= 0 else "")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def report(lines: Sequence[str], write_to: str | None, title: str) -> int:
    """Print a bench's result section and, with --write FILE, put it into that Markdown file; exit status 0."""
    text = "\n".join(lines)
    print(text)
    if write_to:
        write_section(write_to, title, text)
    return 0
