"""Concurrent scrapes: N clients GET /metrics of the daemon's HTTP server at once, with the listen backlog it uses
and with the standard library's default of 5, on loopback (no root needed).

    .venv/bin/python bench/concurrent_scrapes.py [--clients 1000] [--timeout 10] [--write bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import command_line, machine_facts, report, table

from ipftrace_exporter import httpserver
from ipftrace_exporter.httpserver import LISTEN_BACKLOG, HttpServer
from ipftrace_exporter.metrics import ExporterMetrics


def run(backlog: int, clients: int, timeout: float) -> list[object]:
    """One round: [backlog, answered, failed, p50, p99, max] (seconds)."""
    httpserver._Server.request_queue_size = backlog
    server = HttpServer("127.0.0.1:0", ExporterMetrics(["a", "b"]).registry)
    server.start()
    latencies: list[float] = []
    failures: list[str] = []
    lock, go = threading.Lock(), threading.Event()

    def scrape() -> None:
        go.wait()
        started = time.monotonic()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
            conn.request("GET", "/metrics")
            conn.getresponse().read()
            conn.close()
            with lock:
                latencies.append(time.monotonic() - started)
        except OSError as err:
            with lock:
                failures.append(type(err).__name__)

    threads = [threading.Thread(target=scrape) for _ in range(clients)]
    for thread in threads:
        thread.start()
    go.set()
    for thread in threads:
        thread.join()
    server.close()
    latencies.sort()
    pick = (lambda q: f"{latencies[min(len(latencies) - 1, int(q * len(latencies)))]:.2f}") if latencies else (
        lambda q: "-")
    return [backlog, len(latencies), f"{len(failures)} ({', '.join(sorted(set(failures))) or '-'})", pick(0.5),
            pick(0.99), pick(1.0)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--write")
    args = parser.parse_args()
    rows = [run(backlog, args.clients, args.timeout) for backlog in (5, LISTEN_BACKLOG)]
    lines = [*machine_facts(), "", f"Command: `{command_line()}`", "",
             f"{args.clients} clients at once, each one GET /metrics with a {args.timeout:g} s timeout:", "",
             table(["listen backlog", "answered", "failed", "p50 s", "p99 s", "max s"], rows), "",
             (f"The server listens with a backlog of {LISTEN_BACKLOG} (httpserver.LISTEN_BACKLOG); 5 is the "
             "standard library's default, which it used before.")]
    return report(lines, args.write, "Concurrent scrapes")


if __name__ == "__main__":
    sys.exit(main())
