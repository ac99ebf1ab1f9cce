"""Kernel overhead: a ping flood and a UDP blast between two test namespaces, without the tracer, with the tracer
filtering for another flow, and with the tracer matching the flood. Needs root.

    .venv/bin/python bench/bench_kernel.py [--pings 200000] [--datagrams 200000] [--rate 20000] [--runs 5]
                                           [--otlp] [--write bench/RESULTS.md]

The tracer is the daemon (`ipftrace-exporter`, backend tracepoint, the flows below) started fresh for each case;
it is ready (probes attached) before the flood starts. Traffic runs only between this script's namespaces
(10.199.N.1 in a -> 10.199.N.2 in b, as tests/kernel/netns.py makes them).
- ping flood: `ping -f -q -c N` in a; rate = echo replies received / ping's own elapsed time.
- UDP blast: a Python sender in a sends N 16-byte datagrams as fast as it can; a Python receiver in b counts them;
  rate = datagrams received / (last - first arrival).
- paced UDP: the same at `--rate` datagrams/s (the "no lost events at 20k matching packets/s" target).
Lost events are the daemon's `ipftrace_events_lost_total` (counted in the kernel) scraped after the flood.
The flood (ping, UDP sender) is pinned to the last CPU, the UDP receiver to CPU 0; the daemon is not pinned.
Each cell is the median of `--runs` runs. `--otlp` also exports spans to a gRPC OTLP receiver in this process.
"other flow, empty programs" runs a copy of the daemon whose BPF programs return at their first statement: the
floor set by the kernel's tracepoint dispatch, which no program body can go below.
"matching, 1/10 sampled" is the matching flow with `traces: {sample_ratio: 0.1}` (counters stay exact).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import command_line, machine_facts, report, table

from tests.kernel.netns import NetPair, create_pair, delete_pair
from tests.support.procfs import program_ids

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
UDP_PORT = 9911
TARGET_OTHER, TARGET_MATCHING = 0.85, 0.70
# A flow nothing in the floods matches: the tracer filters every packet and traces none.
OTHER_FLOW = "  - {name: other, l4proto: TCP, daddr: 10.199.250.250, dport: 1}\n"
MODES = ("untraced", "other flow", "other flow, empty programs", "matching", "matching, 1/10 sampled")

RECEIVER = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
s.settimeout(30)
buf = bytearray(2048)
s.recv_into(buf)
first = last = time.monotonic()
count = 1
s.settimeout(1.0)
recv = s.recv_into
mono = time.monotonic
try:
    while True:
        recv(buf)
        last = mono()
        count += 1
except socket.timeout:
    pass
print(count, first, last, flush=True)
"""

SENDER = r"""
import socket, sys, time
target = (sys.argv[1], int(sys.argv[2]))
total, rate = int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(target)
payload = b"ipftrace-bench!!"
send = s.send
sent = 0
started = time.monotonic()
if rate <= 0:
    for _ in range(total):
        try:
            send(payload)
        except OSError:
            continue
        sent += 1
else:
    batch = 50
    while sent < total:
        for _ in range(batch):
            try:
                send(payload)
            except OSError:
                pass
        sent += batch
        ahead = started + sent / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
print(sent, time.monotonic() - started, flush=True)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    """Unlabelled counters and the sums of labelled ones, by metric name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        series, value = line.rsplit(" ", 1)
        name = series.split("{", 1)[0]
        out[name] = out.get(name, 0.0) + float(value)
    return out


def foreign_programs(own: set[int]) -> int:
    """ipft_* BPF programs loaded by someone else right now (other tracers on this machine skew the numbers)."""
    listing = subprocess.run(["bpftool", "prog", "list"], capture_output=True, text=True, check=False).stdout
    ids = {int(m.group(1)) for m in re.finditer(r"^(\d+): \S+\s+name (ipft_\S+)", listing, re.MULTILINE)}
    return len(ids - own)


# Under emulation (the kernel matrix's TCG) a start compiles for about a minute.
START_TIMEOUT_S = float(os.environ.get("IPFTRACE_TEST_READY_TIMEOUT", "90"))


class Daemon:
    """ipftrace-exporter with a config, ready before use, stopped with SIGTERM."""

    def __init__(self, flows: str, workdir: Path, cache_dir: str, env: dict[str, str],
                 paths: str = "{idle_timeout: 1s}", extra: str = "", command: list[str] | None = None,
                 backend: str = "tracepoint") -> None:
        self.port = free_port()
        config = workdir / "config.yaml"
        config.write_text(f"backend: {backend}\nflows:\n{flows}\npaths: {paths}\n{extra}")
        ready = workdir / "ready"
        ready.unlink(missing_ok=True)
        self.log = open(workdir / "daemon.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*(command or [str(BIN / "ipftrace-exporter")]), "--config", str(config), "--metrics-address",
             f"127.0.0.1:{self.port}", "--ready-file", str(ready)],
            stdout=self.log, stderr=subprocess.STDOUT,
            env=dict(os.environ, IPFTRACE_CACHE_DIR=cache_dir, **env))
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"daemon did not start: {(workdir / 'daemon.log').read_text()[-2000:]}")
            time.sleep(0.05)
        self.programs = program_ids(self.proc.pid)

    def metrics(self) -> dict[str, float]:
        return scrape(self.port)

    def cpu_seconds(self) -> float:
        """User + system CPU time the daemon has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@dataclass
class Result:
    """One workload under one tracer mode."""

    rates: list[float] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)  # busy CPU microseconds (all CPUs) per packet
    lost: list[float] = field(default_factory=list)
    events: list[float] = field(default_factory=list)
    paths: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    foreign: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def cost(self) -> float:
        return statistics.median(self.costs)


def busy_seconds() -> float:
    """CPU time spent on anything but idle, iowait and steal, all CPUs (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(value) for value in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def empty_program_daemon(workdir: Path) -> list[str]:
    """A daemon command running a copy of the package whose BPF programs return at their first statement: the
    floor any program body sits on (the kernel's raw-tracepoint dispatch plus an empty program)."""
    copy = workdir / "empty-program"
    shutil.copytree(PROJECT / "ipftrace_exporter", copy / "ipftrace_exporter", dirs_exist_ok=True)
    source = copy / "ipftrace_exporter" / "bpf" / "ipftrace.bpf.c"
    text = source.read_text()
    entry = "    if (!skb)\n        return 0;\n    u64 key = (u64)skb;"
    if entry not in text:
        raise RuntimeError("ipft_handle's first statement changed: update empty_program_daemon")
    source.write_text(text.replace(entry, "    if (skb)\n        return 0;\n    u64 key = (u64)skb;"))
    site = next(path for path in sys.path if path.endswith("site-packages"))
    # -S: the editable install's import hook would otherwise load the project's own package, not the copy.
    starter = (f"import sys; sys.path[:0] = [{str(copy)!r}, {site!r}]; "
               "from ipftrace_exporter.cli import exporter_main; sys.exit(exporter_main())")
    return [sys.executable, "-S", "-c", starter]


def measured(work, packets: int, result: Result) -> None:  # type: ignore[no-untyped-def]
    """Run one workload; record its rate and the machine's busy CPU time per packet."""
    before = busy_seconds()
    result.rates.append(work())
    result.costs.append((busy_seconds() - before) / packets * 1e6)


# The flood runs on the last CPU (its softirq work follows it there: veth delivers on the sending CPU), the UDP
# receiver on the first; without pinning, where the scheduler puts them moves the rates by 2x between runs.
FLOOD_CPU = str((os.cpu_count() or 1) - 1)
RECEIVER_CPU = "0"


def ping_flood(pair: NetPair, count: int) -> float:
    done = pair.exec_in(pair.ns_a, ["taskset", "-c", FLOOD_CPU, "ping", "-f", "-q", "-c", str(count), "-W", "1",
                                    pair.addr_b4], timeout=300, check=False)
    match = re.search(r"(\d+) packets transmitted, (\d+) received.*time (\d+)ms", done.stdout)
    if not match:
        raise RuntimeError(f"ping output not understood: {done.stdout} {done.stderr}")
    return int(match.group(2)) / (int(match.group(3)) / 1000)


def udp_blast(pair: NetPair, count: int, rate: float) -> float:
    receiver = pair.popen_in(pair.ns_b, ["taskset", "-c", RECEIVER_CPU, sys.executable, "-c", RECEIVER,
                                         pair.addr_b4, str(UDP_PORT)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert receiver.stdout is not None
        if receiver.stdout.readline().strip() != "ready":
            raise RuntimeError(f"receiver did not start: {receiver.communicate()[1]}")
        pair.exec_in(pair.ns_a, ["taskset", "-c", FLOOD_CPU, sys.executable, "-c", SENDER, pair.addr_b4,
                                 str(UDP_PORT), str(count), str(rate)], timeout=600)
        out, _ = receiver.communicate(timeout=60)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    received, first, last = out.split()
    return int(received) / max(float(last) - float(first), 1e-6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pings", type=int, default=200_000)
    parser.add_argument("--datagrams", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=20_000, help="paced UDP rate, datagrams/s")
    parser.add_argument("--paced-seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--otlp", action="store_true", help="export spans to a gRPC OTLP receiver in this process")
    parser.add_argument("--cache-dir", default=os.environ.get("IPFTRACE_CACHE_DIR", "/tmp/ipft-cache"))
    parser.add_argument("--workloads", default="ping,udp,paced", help="comma-separated subset of ping,udp,paced")
    parser.add_argument("--modes", default=";".join(MODES),
                        help="semicolon-separated tracer modes")
    parser.add_argument("--ring-buffer-pages", type=int, help="the daemon's collector.ring_buffer_pages (default: its own)")
    parser.add_argument("--write", metavar="RESULTS_MD", help="replace the 'Kernel overhead' section there")
    args = parser.parse_args(argv)
    ring = f"collector: {{ring_buffer_pages: {args.ring_buffer_pages}}}\n" if args.ring_buffer_pages else ""
    if os.geteuid() != 0 or shutil.which("bpftool") is None:
        print("needs root and bpftool", file=sys.stderr)
        return 2

    receiver = None
    env: dict[str, str] = {}
    if args.otlp:
        sys.path.insert(0, str(PROJECT))
        from tests.support.otlp_receiver import GrpcOtlpReceiver

        receiver = GrpcOtlpReceiver().__enter__()
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint

    pair = create_pair(200 + os.getpid() % 50)
    workdir = Path(tempfile.mkdtemp(prefix="ipft-bench-"))
    flows = {
        "ping": {"other flow": OTHER_FLOW,
                 "matching": f"  - {{name: ping, l4proto: ICMP, daddr: {pair.addr_b4}}}\n"},
        "udp": {"other flow": OTHER_FLOW,
                "matching": f"  - {{name: udp, l4proto: UDP, daddr: {pair.addr_b4}, dport: {UDP_PORT}}}\n"},
    }
    paced_count = int(args.rate * args.paced_seconds)
    workloads = {
        "ping": ("ping flood", lambda: ping_flood(pair, args.pings), 2 * args.pings),  # request and reply
        "udp": ("UDP blast", lambda: udp_blast(pair, args.datagrams, 0), args.datagrams),
        "paced": (f"UDP paced at {args.rate:,.0f}/s", lambda: udp_blast(pair, paced_count, args.rate), paced_count),
    }
    chosen = set(args.workloads.split(","))
    workloads = {key: value for key, value in workloads.items() if key in chosen}
    wanted_modes = set(args.modes.split(";"))
    results: dict[tuple[str, str], Result] = {}
    try:
        for run in range(args.runs):
            for key, (_, work, packets) in workloads.items():
                modes = MODES if key != "paced" else ("untraced", "matching")
                for mode in [mode for mode in modes if mode in wanted_modes or mode == "untraced"]:
                    result = results.setdefault((key, mode), Result())
                    if mode == "untraced":
                        result.foreign.append(foreign_programs(set()))
                        measured(work, packets, result)
                        continue
                    sampled = mode.endswith("sampled")
                    command = empty_program_daemon(workdir) if mode.endswith("empty programs") else None
                    daemon = Daemon(flows["udp" if key == "paced" else key][mode.split(",")[0]], workdir,
                                    args.cache_dir, env,
                                    extra=ring + ("traces: {sample_ratio: 0.1}\n" if sampled else ""),
                                    command=command)
                    try:
                        before = daemon.metrics()
                        cpu = daemon.cpu_seconds()
                        result.foreign.append(foreign_programs(daemon.programs))
                        measured(work, packets, result)
                        time.sleep(1.5)  # idle timeout + settle: paths finish
                        after = daemon.metrics()
                        result.cpu.append(daemon.cpu_seconds() - cpu)
                    finally:
                        daemon.stop()
                    for name, bucket in (("ipftrace_events_lost_total", result.lost),
                                         ("ipftrace_events_total", result.events),
                                         ("ipftrace_paths_total", result.paths)):
                        bucket.append(after.get(name, 0.0) - before.get(name, 0.0))
                print(f"run {run + 1}: {key} done", file=sys.stderr, flush=True)
    finally:
        delete_pair(pair)
        if receiver is not None:
            receiver.__exit__(None, None, None)
        shutil.rmtree(workdir, ignore_errors=True)

    rows = []
    verdicts = []
    for key, (label, _, _) in workloads.items():
        base = results[(key, "untraced")].rate
        base_cost = results[(key, "untraced")].cost
        for mode in MODES:
            result = results.get((key, mode))
            if result is None:
                continue
            ratio = result.rate / base
            cost_ratio = base_cost / result.cost
            target = {"other flow": TARGET_OTHER, "matching": TARGET_MATCHING}.get(mode)
            verdict = ""
            if target is not None and key != "paced":
                verdict = f">= {target}: {'met' if cost_ratio >= target else 'NOT met'}"
                verdicts.append(cost_ratio >= target)
            if key == "paced" and mode == "matching":
                verdict = f"lost = 0: {'met' if max(result.lost) == 0 else 'NOT met'}"
            rows.append([
                label, mode, f"{result.rate:,.0f}", f"{ratio:.2f}", f"{result.cost:.2f}", f"{cost_ratio:.2f}",
                verdict,
                "-" if not result.events else f"{statistics.median(result.events):,.0f}",
                "-" if not result.lost else f"{max(result.lost):,.0f}",
                "-" if not result.paths else f"{statistics.median(result.paths):,.0f}",
                "-" if not result.cpu else f"{statistics.median(result.cpu):.1f}",
                max(result.foreign),
            ])
    ring_text = f", `collector.ring_buffer_pages: {args.ring_buffer_pages}`" if args.ring_buffer_pages else ""
    export = ("exporting spans to a gRPC OTLP receiver in the bench process" if args.otlp
              else "no OTLP endpoint (paths assembled and counted, not encoded)")
    lines = [
        *machine_facts(),
        "",
        f"Command: `{command_line()}`",
        "",
        (f"Median of {args.runs} runs; daemon `-b tracepoint`{ring_text}, {export}. Rate ratio = traced rate / untraced "
         "rate of the same workload. CPU us/packet = busy time of all CPUs (/proc/stat: user, system, irq, "
         "softirq; not idle or steal) per packet sent, daemon included; CPU ratio = untraced / traced cost, i.e. "
         "the throughput ratio a CPU-bound flood would see; targets are judged on it, because on this VM the "
         "rates of identical runs differ up to 2x (vCPU scheduling by the host). Events, paths and daemon CPU "
         "are per run (median), lost events the worst run. "
         "`foreign` = ipft_* programs of other processes attached during the run (other tracers on this machine "
         "slow every column down, the untraced one included)."),
        "",
        table(["workload", "tracer", "packets/s", "rate ratio", "CPU us/packet", "CPU ratio", "target", "events",
               "lost", "paths", "daemon CPU s", "foreign"], rows),
    ]
    return report(lines, args.write, "Kernel overhead")


if __name__ == "__main__":
    sys.exit(main())
