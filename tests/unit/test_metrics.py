"""The metrics collector over a dict-backed counter reader: names, labels and values as Prometheus sees them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from ipftrace_exporter.metrics import (
    ExporterMetrics,
    IpftraceCollector,
    KernelCounters,
    PathStats,
)
from ipftrace_exporter.names import Names
from ipftrace_exporter.paths import OUTCOMES
from ipftrace_exporter.probes import Probe, ProbeKind, ProbeRole, ProbeTable
from tests.support.contract import CONTRACT_METRICS

FLOWS = ("icmp", "web")
PROBES = ProbeTable(
    [
        Probe(0, "net:netif_receive_skb", ProbeKind.TRACEPOINT),
        Probe(1, "ip_rcv", ProbeKind.KFUNC),
        Probe(2, "skb:kfree_skb", ProbeKind.TRACEPOINT, role=ProbeRole.DROP),
    ]
)
FUNCTIONS = {
    0xFFFF0010: "udp_queue_rcv_one_skb",
    0xFFFF0020: "udp_queue_rcv_one_skb",
    0xFFFF0100: "ip_rcv_finish",
}
REASONS = {2: "NO_SOCKET", 5: "NETFILTER_DROP", 6: "OTHERHOST"}  # as btf.drop_reasons names them
CONTRACT = CONTRACT_METRICS


class DictReader:
    """A CounterReader over plain dicts, the way the BPF maps look after summing CPUs."""

    def __init__(self) -> None:
        self.hit_counts: dict[tuple[int, int], int] = {}
        self.drop_counts: dict[tuple[int, int, int], int] = {}
        self.total_counts: dict[str, int] = {"events": 0, "lost": 0}
        self.untraced_counts: dict[tuple[int, str], int] = {}
        self.matched_counts: dict[int, int] = {}

    def hits(self) -> Iterator[tuple[int, int, int]]:
        return ((flow, probe, n) for (flow, probe), n in self.hit_counts.items())

    def drops(self) -> Iterator[tuple[int, int, int, int]]:
        return ((flow, loc, reason, n) for (flow, loc, reason), n in self.drop_counts.items())

    def matched(self) -> Iterator[tuple[int, int]]:
        return iter(self.matched_counts.items())

    def untraced(self) -> Iterator[tuple[int, str, int]]:
        return ((flow, reason, n) for (flow, reason), n in self.untraced_counts.items())

    def totals(self) -> Mapping[str, int]:
        return self.total_counts


# The tracer's names over dicts (kallsyms and BTF in production).
NAMES = Names(FLOWS, PROBES, REASONS, lambda address: FUNCTIONS.get(address, hex(address)))


class BrokenReader(DictReader):
    def __init__(self, broken: str) -> None:
        super().__init__()
        self.broken = broken

    def hits(self) -> Iterator[tuple[int, int, int]]:
        if self.broken == "hits":
            yield (0, 0, 1)
            raise OSError("map lookup failed")
        yield from super().hits()

    def drops(self) -> Iterator[tuple[int, int, int, int]]:
        if self.broken == "drops":
            raise RuntimeError("drops map gone")
        return super().drops()

    def totals(self) -> Mapping[str, int]:
        if self.broken == "totals":
            raise KeyError("stats")
        return super().totals()


def scrape(metrics: ExporterMetrics) -> tuple[str, dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """The exposition text and its samples keyed by (sample name, labels)."""
    text = generate_latest(metrics.registry).decode()
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return text, samples


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def series(
    samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str
) -> dict[frozenset, float]:
    return {labels: value for (sample, labels), value in samples.items() if sample == name}


@pytest.fixture
def reader() -> DictReader:
    return DictReader()


@pytest.fixture
def metrics(reader: DictReader) -> ExporterMetrics:
    m = ExporterMetrics(FLOWS, version="9.9.9", kernel="6.18.0-test")
    m.collector.set_kernel(KernelCounters(reader, NAMES))
    return m


def test_exports_exactly_the_contract_names_plus_scrape_errors(metrics):
    families = {family.name for family in metrics.registry.collect()}
    text, samples = scrape(metrics)
    names = {name for name, _ in samples} | {
        line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")
    }
    assert CONTRACT <= names
    ours = {name for name in names if not name.startswith("process_")}
    # beyond DESIGN.md's contract (read-only here): scrape errors, and packets matched (what paths_total adds up to)
    assert ours - CONTRACT == {"ipftrace_scrape_errors_total", "ipftrace_packets_matched_total"}
    assert {"ipftrace_function_hits", "ipftrace_skb_drops"} <= families  # counters named without _total


def test_process_metrics_are_read_from_the_proc_root_given(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """prometheus_client's ProcessCollector, as node_exporter's process_* families: from /proc (here a recorded
    copy of this process's stat, status and limits under a fake root)."""
    from prometheus_client.parser import text_string_to_metric_families
    pid_dir = tmp_path / "self"  # the collector reads <proc>/self
    pid_dir.mkdir()
    for name in ("stat", "status", "limits"):
        (pid_dir / name).write_bytes(Path(f"/proc/self/{name}").read_bytes())
    (pid_dir / "fd").mkdir()
    for fd in range(3):
        (pid_dir / "fd" / str(fd)).write_text("")
    (tmp_path / "stat").write_bytes(Path("/proc/stat").read_bytes())
    m = ExporterMetrics(FLOWS, procfs=str(tmp_path))
    text = generate_latest(m.registry).decode()
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert values["process_open_fds"] == 3
    assert values["process_resident_memory_bytes"] > 10e6
    assert values["process_start_time_seconds"] > 1.6e9
    assert {"process_cpu_seconds_total", "process_virtual_memory_bytes", "process_max_fds"} <= set(values)


def test_function_hits_per_flow_and_probe_name(metrics, reader):
    reader.hit_counts.update({(0, 0): 7, (0, 1): 7, (1, 0): 3})
    text, samples = scrape(metrics)
    assert 'ipftrace_function_hits_total{flow="icmp",function="net:netif_receive_skb"} 7.0' in text
    assert series(samples, "ipftrace_function_hits_total") == {
        frozenset({("flow", "icmp"), ("function", "net:netif_receive_skb")}): 7,
        frozenset({("flow", "icmp"), ("function", "ip_rcv")}): 7,
        frozenset({("flow", "web"), ("function", "net:netif_receive_skb")}): 3,
    }


def test_counts_are_read_at_scrape_time(metrics, reader):
    reader.hit_counts[(0, 1)] = 1
    reader.total_counts.update(events=10, lost=2)
    _, before = scrape(metrics)
    reader.hit_counts[(0, 1)] = 5
    reader.total_counts.update(events=40, lost=3)
    _, after = scrape(metrics)
    assert before[key("ipftrace_function_hits_total", flow="icmp", function="ip_rcv")] == 1
    assert after[key("ipftrace_function_hits_total", flow="icmp", function="ip_rcv")] == 5
    assert (before[key("ipftrace_events_total")], before[key("ipftrace_events_lost_total")]) == (10, 2)
    assert (after[key("ipftrace_events_total")], after[key("ipftrace_events_lost_total")]) == (40, 3)


def test_drops_are_named_and_summed_per_function_and_reason(metrics, reader):
    reader.drop_counts.update(
        {
            (0, 0xFFFF0010, 2): 4,  # two free locations inside one function ...
            (0, 0xFFFF0020, 2): 6,  # ... are one series
            (0, 0xFFFF0020, 6): 1,
            (1, 0xFFFF0100, 5): 2,
            (1, 0xDEAD, 99): 1,  # unknown location and reason: the resolver's fallback names
        }
    )
    text, samples = scrape(metrics)
    assert (
        'ipftrace_skb_drops_total{flow="icmp",function="udp_queue_rcv_one_skb",reason="NO_SOCKET"} 10.0'
        in text
    )
    assert series(samples, "ipftrace_skb_drops_total") == {
        frozenset({("flow", "icmp"), ("function", "udp_queue_rcv_one_skb"), ("reason", "NO_SOCKET")}): 10,
        frozenset({("flow", "icmp"), ("function", "udp_queue_rcv_one_skb"), ("reason", "OTHERHOST")}): 1,
        frozenset({("flow", "web"), ("function", "ip_rcv_finish"), ("reason", "NETFILTER_DROP")}): 2,
        frozenset({("flow", "web"), ("function", "0xdead"), ("reason", "99")}): 1,
    }


def test_unknown_flow_and_probe_ids_still_count(metrics, reader):
    reader.hit_counts[(9, 42)] = 1
    _, samples = scrape(metrics)
    assert samples[key("ipftrace_function_hits_total", flow="flow#9", function="probe#42")] == 1


def test_path_outcomes_have_zero_series_for_every_flow(metrics):
    metrics.paths.count("icmp", "dropped")
    metrics.paths.count("icmp", "dropped")
    metrics.paths.count("web", "delivered", 5)
    _, samples = scrape(metrics)
    paths = series(samples, "ipftrace_paths_total")
    assert len(paths) == len(FLOWS) * len(OUTCOMES)
    expected = {(flow, outcome): 0 for flow in FLOWS for outcome in OUTCOMES}
    expected.update({("icmp", "dropped"): 2, ("web", "delivered"): 5})
    assert {
        (dict(labels)["flow"], dict(labels)["outcome"]): value for labels, value in paths.items()
    } == expected


def test_path_stats_refuse_unknown_outcomes_and_are_thread_safe():
    stats = PathStats(["a"])
    with pytest.raises(ValueError, match="unknown path outcome 'lost'"):
        stats.count("a", "lost")

    def work() -> None:
        for _ in range(5000):
            stats.count("a", "delivered")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stats.snapshot()[("a", "delivered")] == 40000


def test_before_probes_attach_kernel_counters_are_zero_and_hits_empty():
    m = ExporterMetrics(FLOWS, version="1", kernel="k")
    text, samples = scrape(m)
    assert samples[key("ipftrace_events_total")] == 0 and samples[key("ipftrace_events_lost_total")] == 0
    assert not series(samples, "ipftrace_function_hits_total")
    assert "# TYPE ipftrace_function_hits_total counter" in text  # the family is still announced
    assert samples[key("ipftrace_build_info", version="1", backend="none", kernel="k")] == 1


def test_probe_gauge_build_info_and_readiness_follow_the_attach_results(metrics):
    status = metrics.probes
    assert status.ready() == (False, "probes not attached yet")
    status.record("kfunc", attached=0, failed=120)
    ok, reason = status.ready()
    assert not ok and "kfunc 0 attached / 120 failed" in reason
    status.record("tracepoint", attached=11, failed=1)
    assert status.ready() == (True, "11 probes attached (tracepoint), 1 failed")
    _, samples = scrape(metrics)
    assert series(samples, "ipftrace_probes") == {
        frozenset({("backend", "kfunc"), ("state", "attached")}): 0,
        frozenset({("backend", "kfunc"), ("state", "failed")}): 120,
        frozenset({("backend", "tracepoint"), ("state", "attached")}): 11,
        frozenset({("backend", "tracepoint"), ("state", "failed")}): 1,
    }
    assert series(samples, "ipftrace_build_info") == {
        frozenset({("version", "9.9.9"), ("backend", "tracepoint"), ("kernel", "6.18.0-test")}): 1
    }
    status.detached()
    assert status.ready() == (False, "probes detached (shutting down)")
    _, samples = scrape(metrics)
    assert samples[key("ipftrace_probes", backend="tracepoint", state="attached")] == 0
    assert samples[key("ipftrace_build_info", version="9.9.9", backend="none", kernel="6.18.0-test")] == 1


def test_span_counts_come_from_the_sink_with_zero_series_for_known_reasons():
    m = ExporterMetrics(FLOWS, span_drop_reasons=("queue_full", "export_failed", "shutdown"))
    _, samples = scrape(m)
    assert samples[key("ipftrace_spans_exported_total")] == 0
    assert set(series(samples, "ipftrace_spans_dropped_total").values()) == {0}
    m.collector.set_span_stats(lambda: (12, {"export_failed": 3, "timeout": 1}))
    _, samples = scrape(m)
    assert samples[key("ipftrace_spans_exported_total")] == 12
    assert series(samples, "ipftrace_spans_dropped_total") == {
        frozenset({("reason", "queue_full")}): 0,
        frozenset({("reason", "export_failed")}): 3,
        frozenset({("reason", "shutdown")}): 0,
        frozenset({("reason", "timeout")}): 1,
    }


@pytest.mark.parametrize("broken", ["hits", "drops", "totals"])
def test_a_failing_reader_is_logged_once_counted_and_the_rest_exported(broken, caplog):
    reader = BrokenReader(broken)
    reader.hit_counts[(0, 1)] = 4
    reader.drop_counts[(0, 0xFFFF0100, 2)] = 1
    reader.total_counts.update(events=9)
    m = ExporterMetrics(FLOWS)
    m.collector.set_kernel(KernelCounters(reader, NAMES))
    m.paths.count("icmp", "delivered")
    with caplog.at_level(logging.DEBUG, logger="ipftrace_exporter.metrics"):
        scrape(m)
        _, samples = scrape(m)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and f"reading {broken} failed" in warnings[0].getMessage()
    assert samples[key("ipftrace_scrape_errors_total", source=broken)] == 2
    assert samples[key("ipftrace_paths_total", flow="icmp", outcome="delivered")] == 1
    read = {
        "hits": key("ipftrace_function_hits_total", flow="icmp", function="ip_rcv"),
        "drops": key("ipftrace_skb_drops_total", flow="icmp", function="ip_rcv_finish", reason="NO_SOCKET"),
        "totals": key("ipftrace_events_total"),
    }
    for source, sample in read.items():  # no partial or made-up samples for the broken source
        assert (sample in samples) == (source != broken)
    if broken == "hits":  # the one record yielded before the failure is not exported either
        assert not series(samples, "ipftrace_function_hits_total")


def test_a_failing_span_provider_does_not_break_the_scrape():
    m = ExporterMetrics(FLOWS)

    def broken() -> tuple[int, dict[str, int]]:
        raise RuntimeError("sink gone")

    m.collector.set_span_stats(broken)
    _, samples = scrape(m)
    assert samples[key("ipftrace_scrape_errors_total", source="spans")] == 1
    assert key("ipftrace_spans_exported_total") not in samples
    assert samples[key("ipftrace_events_total")] == 0


def test_openmetrics_rendering_keeps_the_names():
    m = ExporterMetrics(FLOWS)
    text = generate_openmetrics(m.registry).decode()
    assert "# TYPE ipftrace_function_hits counter" in text
    assert 'ipftrace_paths_total{flow="icmp",outcome="timeout"} 0' in text
    assert text.endswith("# EOF\n")


def test_own_registry_not_the_global_one():
    m = ExporterMetrics(FLOWS)
    assert m.registry is not REGISTRY
    assert "ipftrace_build_info" not in generate_latest(REGISTRY).decode()


def test_registering_does_not_read_the_kernel_maps():
    class Exploding(DictReader):
        def hits(self):  # type: ignore[override]
            raise AssertionError("read at registration")

    collector = IpftraceCollector(FLOWS)
    collector.set_kernel(KernelCounters(Exploding(), NAMES))
    m = ExporterMetrics(FLOWS)
    m.registry.unregister(m.collector)
    m.registry.register(collector)  # describe(), not collect()


def test_untraced_packets_are_counted_per_flow_and_reason(metrics, reader):
    reader.untraced_counts.update({(0, "sampled_out"): 9, (0, "ring_full"): 2, (1, "ring_full"): 1})
    _, samples = scrape(metrics)
    assert series(samples, "ipftrace_packets_untraced_total") == {
        frozenset({("flow", "icmp"), ("reason", "sampled_out")}): 9,
        frozenset({("flow", "icmp"), ("reason", "ring_full")}): 2,
        frozenset({("flow", "web"), ("reason", "ring_full")}): 1,
        frozenset({("flow", "web"), ("reason", "sampled_out")}): 0,  # every flow and reason has a series
    }


def test_matched_packets_are_counted_per_flow_with_a_series_for_every_flow(metrics, reader):
    reader.matched_counts.update({0: 12})
    _, samples = scrape(metrics)
    assert series(samples, "ipftrace_packets_matched_total") == {
        frozenset({("flow", "icmp")}): 12,
        frozenset({("flow", "web")}): 0,
    }
