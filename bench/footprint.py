"""Footprint of the running daemon, for its Kubernetes requests and limits: RSS and CPU idle and under light traffic.

    .venv/bin/python bench/footprint.py [--idle 60] [--busy 30] [--write bench/RESULTS.md]

Runs `ipftrace-exporter` (the embedded default config: ICMP and ICMPv6, no OTLP endpoint) as root, waits for its
ready file, then samples /proc/PID: VmHWM at ready (the start-up peak: BCC/LLVM compiling the program), VmRSS
and CPU time (utime + stime) over `--idle` seconds with no traffic it traces, and over `--busy` seconds of
`ping -i 0.01 127.0.0.1` (100 traced packets/s, each a path of several events) while /metrics is scraped every
second. CPU is reported in millicores (CPU seconds per wall second x 1000).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import command_line, machine_facts, report, table

EXPORTER = Path(sys.executable).with_name("ipftrace-exporter")


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def phase(pid: int, seconds: float, port: int, scrape: bool) -> tuple[float, float, float]:
    """(millicores, mean RSS MiB, max RSS MiB) over `seconds`."""
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    samples = []
    while time.monotonic() - start < seconds:
        time.sleep(1)
        if scrape:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                response.read()
        samples.append(status_kib(pid, "VmRSS") / 1024)
    elapsed = time.monotonic() - start
    return 1000 * (cpu_seconds(pid) - start_cpu) / elapsed, sum(samples) / len(samples), max(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=60)
    parser.add_argument("--busy", type=float, default=30)
    parser.add_argument("--write")
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    work = Path(tempfile.mkdtemp(prefix="ipftrace-footprint-"))
    ready = work / "ready"
    daemon = subprocess.Popen([str(EXPORTER), "--metrics-address", f"127.0.0.1:{port}", "--ready-file", str(ready)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")})
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the daemon did not get ready (exit {daemon.poll()})")
            time.sleep(0.2)
        startup_peak = status_kib(daemon.pid, "VmHWM") / 1024
        time.sleep(5)  # settle
        idle = phase(daemon.pid, args.idle, port, scrape=False)
        ping = subprocess.Popen(["ping", "-q", "-i", "0.01", "127.0.0.1"], stdout=subprocess.DEVNULL)
        try:
            busy = phase(daemon.pid, args.busy, port, scrape=True)
        finally:
            ping.terminate()
            ping.wait(10)
        overall_peak = status_kib(daemon.pid, "VmHWM") / 1024
    finally:
        daemon.terminate()
        daemon.wait(60)
    rows = [
        ["idle (no traced traffic, no scrapes)", f"{args.idle:g}", f"{idle[0]:.1f}", f"{idle[1]:.1f}", f"{idle[2]:.1f}"],
        ["ping -i 0.01 127.0.0.1 (100 traced pkt/s) + scrape every 1 s", f"{args.busy:g}", f"{busy[0]:.1f}",
         f"{busy[1]:.1f}", f"{busy[2]:.1f}"],
    ]
    lines = [*machine_facts(), "", f"Command: `{command_line()}`", "",
             (f"Start-up peak (VmHWM when ready: BCC/LLVM compiling the program) {startup_peak:.1f} MiB; "
             f"peak over the whole run {overall_peak:.1f} MiB."), "",
             table(["phase", "seconds", "CPU millicores", "RSS mean MiB", "RSS max MiB"], rows)]
    return report(lines, args.write, "Footprint (Kubernetes requests and limits)")


if __name__ == "__main__":
    sys.exit(main())
