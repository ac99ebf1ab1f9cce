"""Faults the daemon must survive: a dead OTLP endpoint, a ring buffer too small for the traffic, and SIGTERM at any
moment (while attaching or in steady state) without leaving a BPF program of ours behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.otlp_receiver import GrpcOtlpReceiver, attributes
from tests.support.procfs import program_ids, rss_kib

from .conftest import BIN, Running
from .netns import NetPair
from .test_exporter import free_port, sample, scrape, wait_for

UDP_PORT = 9912
FREE_PROBES = ("skb:consume_skb", "skb:kfree_skb")

BLAST = (
    "import socket, sys, time\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.connect((sys.argv[1], int(sys.argv[2])))\n"
    "pause = float(sys.argv[4])\n"
    "for i in range(int(sys.argv[3])):\n"
    "    try:\n"
    "        s.send(b'ipftrace-hardening')\n"
    "    except OSError:\n"
    "        pass\n"
    "    if pause and i % 100 == 99:\n"
    "        time.sleep(pause)\n"
)


def config(tmp_path: Path, pair: NetPair, extra: str = "") -> Path:
    """The UDP datagrams of `blast` (a -> b:UDP_PORT, nothing listens: each is dropped NO_SOCKET) as flow `udp`."""
    path = tmp_path / "hardening.yaml"
    path.write_text(
        "backend: tracepoint\n"
        f"flows:\n  - {{name: udp, l4proto: UDP, daddr: {pair.addr_b4}, dport: {UDP_PORT}}}\n"
        "paths: {idle_timeout: 1s}\n" + extra
    )
    return path


def blast(pair: NetPair, count: int, pause: float = 0.0) -> None:
    """`count` UDP datagrams from a to b, as fast as one Python loop sends them (with `pause` seconds of sleep
    after every 100)."""
    pair.exec_in(pair.ns_a, [sys.executable, "-c", BLAST, pair.addr_b4, str(UDP_PORT), str(count), str(pause)],
                 timeout=60)


def loaded_ipft_programs() -> set[int]:
    """Ids of every loaded BPF program named ipft_* (ours or another tracer's)."""
    listing = subprocess.run(["bpftool", "prog", "list"], capture_output=True, text=True, check=True).stdout
    return {int(m.group(1)) for m in re.finditer(r"^(\d+):\s+\S+\s+name (ipft_\S+)", listing, re.MULTILINE)}


def held_programs() -> set[int]:
    """Program ids some live process holds open."""
    held: set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            held |= program_ids(int(entry))
    return held


def assert_programs_gone(ours: set[int], started_after: int) -> None:
    """None of `ours` is loaded any more, and no ipft_* program loaded since `started_after` is left without an
    owner (the kernel frees programs a moment after their last fd closes: poll)."""
    deadline = time.monotonic() + 10
    while True:
        loaded = loaded_ipft_programs()
        leftover = loaded & ours
        orphans = {pid for pid in loaded if pid > started_after} - held_programs()
        if not leftover and not orphans:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"BPF programs left behind: ours {sorted(leftover)}, orphans {sorted(orphans)}")
        time.sleep(0.2)


def start_daemon(cache_dir: str, tmp_path: Path, config_path: Path, port: int,
                 env: dict[str, str] | None = None) -> Running:
    """The daemon, not yet waited for (the caller decides when)."""
    ready = tmp_path / "ready"
    return Running([str(BIN / "ipftrace-exporter"), "--config", str(config_path), "--metrics-address",
                    f"127.0.0.1:{port}", "--ready-file", str(ready)], cache_dir, ready, env)


def paths_total(port: int) -> float:
    metrics = scrape(port)
    return sum(sample(metrics, "ipftrace_paths_total", flow="udp", outcome=outcome)
               for outcome in ("delivered", "dropped", "timeout", "truncated"))


def settled(port: int, timeout: float = 15) -> float:
    """Waits until the daemon's path count stops moving (paths idle out after 1 s); returns it."""
    deadline = time.monotonic() + timeout
    last = paths_total(port)
    while time.monotonic() < deadline:
        time.sleep(1.5)
        now = paths_total(port)
        if now == last:
            return now
        last = now
    raise AssertionError(f"paths still finishing after {timeout}s")


def test_a_dead_otlp_endpoint_for_the_whole_run_drops_and_counts_spans_in_flat_memory(
        netpair: NetPair, start_tool, tmp_path: Path) -> None:
    dead = free_port()  # nothing ever listens here
    port = free_port()
    path = config(tmp_path, netpair, f"traces: {{otlp: {{endpoint: 'http://127.0.0.1:{dead}', timeout: 1s}}}}\n")
    daemon = start_tool("ipftrace-exporter", "--config", str(path), "--metrics-address", f"127.0.0.1:{port}")
    pid = daemon.proc.pid
    blast(netpair, 5_000)  # warm-up: caches, queues and the allocator reach their working size
    warm = settled(port)
    assert warm > 0
    before = rss_kib(pid)
    for _ in range(3):
        blast(netpair, 10_000)
    total = settled(port)
    after = rss_kib(pid)
    metrics = scrape(port)  # still serving
    dropped = (sample(metrics, "ipftrace_spans_dropped_total", reason="export_failed")
               + sample(metrics, "ipftrace_spans_dropped_total", reason="queue_full"))
    assert sample(metrics, "ipftrace_spans_exported_total") == 0
    assert total > warm
    assert dropped >= total  # at least a root span per path; counted, never exported
    assert sample(metrics, "ipftrace_function_hits_total", flow="udp", function="skb:kfree_skb") >= 30_000  # exact
    assert after - before < 64 * 1024, f"RSS grew from {before} to {after} KiB over {total - warm:.0f} more paths"
    code, _, err = daemon.stop(sig=signal.SIGTERM)
    assert code == 0, err
    assert "Traceback" not in err


def test_ring_buffer_overflow_is_counted_and_marks_paths_truncated_never_merged(
        netpair: NetPair, start_tool, tmp_path: Path) -> None:
    port = free_port()
    with GrpcOtlpReceiver() as receiver:
        path = config(tmp_path, netpair, "collector: {ring_buffer_pages: 1}\n")  # 4 KiB: about 25 records
        daemon = start_tool("ipftrace-exporter", "--config", str(path), "--metrics-address", f"127.0.0.1:{port}",
                            env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint})
        # Bursts of 100 datagrams (~500 events into a ring of ~25) with pauses, for 2 s: the reader drains the ring
        # between bursts, so packets lose some of their events, not all (those are the truncated paths).
        blast(netpair, 20_000, pause=0.01)
        assert wait_for(lambda: sample(scrape(port), "ipftrace_events_lost_total") > 0, timeout=10)
        assert wait_for(lambda: sample(scrape(port), "ipftrace_paths_total", flow="udp", outcome="truncated") > 0,
                        timeout=10)
        metrics = scrape(port)
        code, _, err = daemon.stop(sig=signal.SIGTERM)
        assert code == 0, err
        spans = receiver.spans()
    assert sample(metrics, "ipftrace_function_hits_total", flow="udp", function="skb:kfree_skb") >= 19_000  # exact
    roots = {span.span_id: span for span in spans if not span.parent_span_id}
    children: dict[bytes, list] = {}
    for span in spans:
        if span.parent_span_id:
            children.setdefault(span.parent_span_id, []).append(span)
    outcomes = {attributes(root.attributes)["ipftrace.outcome"] for root in roots.values()}
    assert "truncated" in outcomes, outcomes
    for root_id, root in roots.items():
        names = [child.name for child in children.get(root_id, [])]
        # One packet passes each skb tracepoint at most once on this path: a name seen twice means two packets
        # were merged into one path.
        assert len(names) == len(set(names)), (attributes(root.attributes), sorted(names))
        ends = [name for name in names if name in FREE_PROBES]
        outcome = attributes(root.attributes)["ipftrace.outcome"]
        if outcome in ("dropped", "delivered"):
            assert len(ends) == 1, (outcome, names)
        if attributes(root.attributes).get("ipftrace.gap"):
            assert outcome == "truncated"


def test_sigterm_while_attaching_exits_0_and_leaves_no_program(netpair: NetPair, cache_dir: str,
                                                             tmp_path: Path) -> None:
    started_after = max(loaded_ipft_programs(), default=0)
    port = free_port()
    daemon = start_daemon(cache_dir, tmp_path, config(tmp_path, netpair), port)
    seen: set[int] = set()
    try:
        # The metrics server answers once the signal handlers are installed, just before compiling and attaching.
        deadline = time.monotonic() + 60
        while True:
            assert daemon.proc.poll() is None, daemon.output()
            assert time.monotonic() < deadline, "the daemon never served /metrics"
            try:
                scrape(port)
                break
            except OSError:
                time.sleep(0.01)
        assert not daemon.ready_file.exists(), "already attached: too late to test SIGTERM during attach"
        daemon.proc.send_signal(signal.SIGTERM)
        while daemon.proc.poll() is None and time.monotonic() < deadline:
            seen |= program_ids(daemon.proc.pid)
            time.sleep(0.005)
        code, _, err = daemon.finish(timeout=30)
    finally:
        daemon.stop()
    assert code == 0, err
    assert "Traceback" not in err
    assert_programs_gone(seen, started_after)


def test_sigterm_in_steady_state_exits_0_and_detaches_every_program(netpair: NetPair, start_tool,
                                                                    tmp_path: Path) -> None:
    started_after = max(loaded_ipft_programs(), default=0)
    port = free_port()
    daemon = start_tool("ipftrace-exporter", "--config", str(config(tmp_path, netpair)), "--metrics-address",
                        f"127.0.0.1:{port}")
    ours = program_ids(daemon.proc.pid)
    assert ours and ours <= loaded_ipft_programs()  # attached, and named ipft_*
    blast(netpair, 200)
    netpair.ping_b(count=2)
    assert wait_for(lambda: sample(scrape(port), "ipftrace_function_hits_total", flow="udp",
                                   function="skb:kfree_skb") >= 150)
    code, _, err = daemon.stop(sig=signal.SIGTERM)
    assert code == 0, err
    assert "probes detached" in err
    assert_programs_gone(ours, started_after)


READER = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind((sys.argv[1], int(sys.argv[2])))\n"
    "print('ready', flush=True)\n"
    "s.settimeout(5)\n"
    "try:\n"
    "    while True:\n"
    "        s.recv(2048)\n"
    "except socket.timeout:\n"
    "    pass\n"
)


def test_datagrams_read_by_a_socket_are_one_path_each_even_at_a_reused_address(netpair: NetPair,
                                                                             start_tool) -> None:
    # A datagram read by recvmsg is freed where no tracepoint sees it, and the next one usually gets the same skb
    # address and data buffer: only the packet's fingerprint (IP id, UDP length) tells them apart.
    reader = netpair.popen_in(netpair.ns_b, [sys.executable, "-c", READER, netpair.addr_b4, str(UDP_PORT)],
                              stdout=subprocess.PIPE)
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip() == "ready"
        tool = start_tool("ipftrace", "-b", "tracepoint", "-l4", "UDP", "-d4", netpair.addr_b4, "-dp",
                          str(UDP_PORT), "-o", "json", "--timeout", "4")
        blast(netpair, 2_000)
        code, out, err = tool.finish()
    finally:
        reader.kill()
        reader.wait()
    assert code == 0, err
    paths = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(paths) >= 200, (len(paths), err)  # fewer than 2,000 when the ring buffer overflowed
    for path in paths:
        names = [event["function"] for event in path["events"]]
        assert len(names) == len(set(names)), json.dumps(path)  # two packets merged into one path
