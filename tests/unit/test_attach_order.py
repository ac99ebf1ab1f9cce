"""The collector's attach loop (pure: the load-and-attach of one probe is replaced, no BCC, no kernel): fentry
programs go to several threads only once the first one attached, the report keeps the probes' order, and a
refusal of the program type is asked once."""

from __future__ import annotations

import errno
import threading

from ipftrace_exporter.collector import AttachReport, Collector, LoadFailure
from ipftrace_exporter.flows import FlowSpec
from ipftrace_exporter.probes import Probe, ProbeKind, ProbeRole
from ipftrace_exporter.program import ProbeSource, render


def sources_of(kind: ProbeKind, count: int) -> list[ProbeSource]:
    return [ProbeSource(Probe(index, f"fn{index}", kind, 1, ProbeRole.STEP), f"fn{index}", 0) for index in range(count)]


class RecordingCollector(Collector):
    """Attaches nothing: notes which thread was asked for each function and answers `verdicts[function]`."""

    def __init__(self, sources: list[ProbeSource], btf_ids: dict[str, int],
                 verdicts: dict[str, LoadFailure | None] | None = None) -> None:
        super().__init__(render(sources, (FlowSpec(name="any"),)), headers=None, btf_ids=btf_ids)  # type: ignore[arg-type]
        self.verdicts = verdicts or {}
        self.asked: dict[str, str] = {}
        self.barrier = threading.Barrier(2, timeout=10)

    def _attach_one(self, bpf, source: ProbeSource) -> None:  # type: ignore[no-untyped-def]
        self.asked[source.target] = threading.current_thread().name
        if source.target in ("fn1", "fn2"):  # two fentry loads in flight at once, or this times out
            self.barrier.wait()
        failure = self.verdicts.get(source.target)
        if failure is not None:
            raise failure


def attach(collector: RecordingCollector, sources: list[ProbeSource]) -> AttachReport:
    report = AttachReport()
    collector._attach_each(report, sources, {})
    return report


def test_fentry_programs_after_the_first_load_and_attach_side_by_side_in_the_report_s_order() -> None:
    sources = sources_of(ProbeKind.KFUNC, 12)
    rejection = LoadFailure("kfunc__fn5", errno.EINVAL, "R1 invalid mem access")
    collector = RecordingCollector(sources, {s.target: 100 + s.probe.id for s in sources}, {"fn5": rejection})
    report = attach(collector, sources)
    assert collector.asked["fn0"] == threading.current_thread().name
    assert all(collector.asked[s.target].startswith("ipftrace-attach") for s in sources[1:])
    assert [s.target for s in report.attached] == [s.target for s in sources if s.target != "fn5"]
    assert [(s.target, reason) for s, reason in report.failed] == [("fn5", rejection.describe())]


def test_a_refused_fentry_is_asked_once_and_its_reason_given_for_every_function() -> None:
    sources = sources_of(ProbeKind.KFUNC, 4)
    refusal = LoadFailure("kfunc__fn0", errno.EPERM)
    collector = RecordingCollector(sources, {s.target: 1 for s in sources}, {"fn0": refusal})
    report = attach(collector, sources)
    assert list(collector.asked) == ["fn0"]
    assert not report.attached
    assert [reason for _, reason in report.failed] == [refusal.describe()] * 4


def test_fentry_without_a_btf_id_and_other_kinds_attach_in_order_on_the_calling_thread() -> None:
    kprobes = sources_of(ProbeKind.KPROBE, 3)
    collector = RecordingCollector(kprobes, {})
    collector.barrier = threading.Barrier(1)  # in order: fn1 must not wait for fn2
    report = attach(collector, kprobes)
    assert set(collector.asked.values()) == {threading.current_thread().name}
    assert [s.target for s in report.attached] == ["fn0", "fn1", "fn2"]
    fentries = sources_of(ProbeKind.KFUNC, 3)
    collector = RecordingCollector(fentries, {"fn0": 7})
    collector.barrier = threading.Barrier(1)
    attach(collector, fentries)
    assert set(collector.asked.values()) == {threading.current_thread().name}
