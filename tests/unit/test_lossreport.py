"""The loss warning and exit summary from counter readings (the kernel side is tests/kernel/test_loss_report.py)."""

from __future__ import annotations

import pytest

from ipftrace_exporter.lossreport import KernelCounts, LossReport


class Readings:
    """Counter readings handed out in turn, the last one repeated; a clock moved by hand."""

    def __init__(self, *counts: KernelCounts) -> None:
        self.counts = list(counts)
        self.reads = 0
        self.now = 100.0

    def read(self) -> KernelCounts:
        self.reads += 1
        return self.counts[min(self.reads - 1, len(self.counts) - 1)]

    def clock(self) -> float:
        return self.now


def counts(matched: int = 0, lost: int = 0, ring_full: int = 0, sampled_out: int = 0) -> KernelCounts:
    return KernelCounts(matched=matched, lost_events=lost, untraced={"sampled_out": sampled_out, "ring_full": ring_full})


class FakeCounters:
    def totals(self) -> dict[str, int]:
        return {"events": 50, "lost": 7, "matched": 9, "track_full": 0}

    def untraced(self) -> list[tuple[int, str, int]]:
        return [(0, "ring_full", 2), (1, "ring_full", 3), (1, "sampled_out", 4)]


def test_a_reading_sums_the_flows() -> None:
    assert KernelCounts.read(FakeCounters()) == counts(matched=9, lost=7, ring_full=5, sampled_out=4)


def test_no_warning_without_loss_and_none_before_the_interval() -> None:
    readings = Readings(counts(), counts(matched=10), counts(matched=10, lost=3, ring_full=1))
    report = LossReport(readings.read, readings.clock)
    readings.now += 0.5
    assert report.check() is None and readings.reads == 1  # too soon: the counters are not read
    readings.now += 0.6
    assert report.check() is None  # read: nothing lost
    readings.now += 1.0
    warning = report.check()
    assert warning is not None
    assert "lost 3 events in the last 1.0 s" in warning and "1 matching packets were not traced" in warning


def test_the_warning_comes_at_most_once_per_interval_and_counts_since_the_last_one() -> None:
    readings = Readings(counts(), counts(lost=100, ring_full=10), counts(lost=250, ring_full=30))
    report = LossReport(readings.read, readings.clock)
    readings.now += 1.0
    assert "lost 100 events" in (report.check() or "")
    readings.now += 0.2
    assert report.check() is None
    readings.now += 1.0
    assert "lost 150 events in the last 1.2 s" in (report.check() or "")


def test_the_summary_counts_from_the_start_and_names_every_reason() -> None:
    readings = Readings(counts(matched=5, lost=1), counts(matched=20_005, lost=150_001, ring_full=11_427, sampled_out=3))
    report = LossReport(readings.read, readings.clock)
    assert report.summary(printed=8573, truncated=12) == (
        "8,573 paths printed (12 truncated); the kernel matched 20,000 packets, 3 sampled out, "
        "11,427 not traced (ring buffer full), lost 150,000 events")


def test_the_summary_of_a_clean_run_says_nothing_was_lost() -> None:
    readings = Readings(counts(), counts(matched=1))
    assert LossReport(readings.read, readings.clock).summary(printed=1, truncated=0) == (
        "1 path printed; the kernel matched 1 packet, lost no events")


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_s must be positive"):
        LossReport(counts, interval_s=0)


def test_the_summary_says_how_many_paths_printed_were_not_packets_of_their_own() -> None:
    readings = Readings(counts(), counts(matched=4))
    assert LossReport(readings.read, readings.clock).summary(printed=6, truncated=1, not_packets=2) == (
        "6 paths printed (1 truncated; 2 not a packet of their own: continuations, clones); the kernel matched "
        "4 packets, lost no events")
