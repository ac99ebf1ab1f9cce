"""ipftrace is never silent about what it could not trace: a flood that overruns the reader is warned about while it
happens, and the exit summary's numbers are the kernel's (checked against ping's own count of what it sent)."""

from __future__ import annotations

import json
import os
import re
import signal
import time

from .netns import NetPair

FLOOD = 20_000
SUMMARY = re.compile(r"ipftrace: INFO: (?P<printed>[\d,]+) paths? printed(?: \((?P<truncated>[\d,]+) truncated\))?; "
                     r"the kernel matched (?P<matched>[\d,]+) packets?(?:, (?P<ring_full>[\d,]+) not traced "
                     r"\(ring buffer full\))?, lost (?:no|(?P<lost>[\d,]+)) events")


def number(text: str | None) -> int:
    return int(text.replace(",", "")) if text else 0


def test_a_flood_that_overruns_the_reader_is_warned_about_and_summed_up_exactly(start_tool, netpair: NetPair) -> None:  # type: ignore[no-untyped-def]
    netpair.ping_b(count=1)  # neighbours resolved: no ARP copy among the flood's paths
    tool = start_tool("ipftrace", "-b", "tracepoint", "-o", "json", "-l4", "ICMP", "-d4", netpair.addr_b4)
    os.kill(tool.proc.pid, signal.SIGSTOP)  # the reader stalls: the 4 MiB ring fills within the flood
    try:
        flood = netpair.exec_in(netpair.ns_a, ["ping", "-4", "-q", "-f", "-c", str(FLOOD), "-W", "1",
                                               netpair.addr_b4], check=False, timeout=120)
    finally:
        os.kill(tool.proc.pid, signal.SIGCONT)
    sent = int(re.search(r"(\d+) packets transmitted", flood.stdout).group(1))  # type: ignore[union-attr]
    time.sleep(3.5)  # every path ends (freed, or idle past the 2 s timeout) and is printed
    code, out, err = tool.stop()
    assert code == 130, err
    warnings = [line for line in err.splitlines() if "the tracer is falling behind" in line]
    assert len(warnings) >= 1 and warnings[0].startswith("ipftrace: WARNING: the tracer is falling behind: the kernel lost ")
    summary = SUMMARY.search(err)
    assert summary, err
    paths = [json.loads(line) for line in out.splitlines()]
    assert number(summary["printed"]) == len(paths)
    assert number(summary["truncated"]) == sum(path["outcome"] == "truncated" for path in paths)
    assert number(summary["lost"]) > 0 and number(summary["ring_full"]) > 0
    # Every echo request the kernel sent matched once, and is either a printed path or counted as not traced.
    assert number(summary["matched"]) == sent, err
    assert len(paths) + number(summary["ring_full"]) == sent, err
