"""The only module that imports BCC: compile the rendered program, attach its probes, poll the ring buffer for raw
records, read the counter maps, detach. Everything it hands out is plain bytes and ints."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

from .errors import AttachError, KernelError
from .kernel.headers import HeaderTree
from .probes import ProbeKind
from .program import Program, ProbeSource

log = logging.getLogger(__name__)

STAT_EVENTS, STAT_LOST, STAT_MATCHED, STAT_TRACK_FULL = range(4)
BASE_CFLAGS = ("-w", "-Wno-unused-value")


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Capture what the C library (clang inside BCC) writes to fd 2; yields a list filled with its lines."""
    lines: list[str] = []
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode(errors="replace").splitlines())


def _first_error(lines: list[str]) -> str:
    for line in lines:
        if "error:" in line:
            return line.split("error:", 1)[1].strip()
    return lines[-1].strip() if lines else "no compiler output"


def _import_bcc():  # type: ignore[no-untyped-def]
    try:
        import bcc  # noqa: PLC0415 - the one place BCC is imported
    except ImportError as err:
        raise KernelError(f"BCC's Python module is not importable ({err}): run scripts/setup.sh") from None
    return bcc


@dataclass(slots=True)
class AttachReport:
    """Which probes attached and which failed (with the kernel's reason)."""

    attached: list[ProbeSource] = field(default_factory=list)
    failed: list[tuple[ProbeSource, str]] = field(default_factory=list)


def compile_check(header_dir: str, text: str, cflags: Iterable[str] = ()) -> bool:
    """True when BCC compiles `text` against the header tree (nothing is loaded into the kernel)."""
    bcc = _import_bcc()
    previous = os.environ.get("BCC_KERNEL_SOURCE")
    os.environ["BCC_KERNEL_SOURCE"] = header_dir
    try:
        module = bcc.BPF(text=text, cflags=[*BASE_CFLAGS, *cflags])
        module.cleanup()
        return True
    except Exception:  # BCC raises bare Exception on compile errors
        return False
    finally:
        if previous is None:
            os.environ.pop("BCC_KERNEL_SOURCE", None)
        else:
            os.environ["BCC_KERNEL_SOURCE"] = previous


class Collector:
    """Compiles and attaches a Program, then moves raw records from the ring buffer to the caller."""

    def __init__(self, program: Program, headers: HeaderTree) -> None:
        self.program = program
        self.headers = headers
        self._bpf = None  # type: ignore[var-annotated]
        self._records: list[bytes] = []
        self._lock = threading.Lock()
        self.closed = False

    # ---- life cycle ---------------------------------------------------------------------------------
    def compile(self) -> None:
        """Compile the program (raises KernelError with the compiler's first error line)."""
        bcc = _import_bcc()
        os.environ["BCC_KERNEL_SOURCE"] = self.headers.path
        with _captured_stderr() as output:
            try:
                self._bpf = bcc.BPF(text=self.program.text, cflags=[*BASE_CFLAGS, *self.headers.cflags])
                failed = False
            except Exception:  # BCC: bare Exception("Failed to compile BPF module <text>")
                failed = True
        if failed:
            log.debug("compiler output:\n%s", "\n".join(output))
            raise KernelError(f"the BPF program did not compile: {_first_error(output)} (headers: {self.headers.path})")

    def attach(self) -> AttachReport:
        """Attach every probe; failures are collected, not raised, unless none attached."""
        if self._bpf is None:
            self.compile()
        bpf = self._bpf
        report = AttachReport()
        for source in self.program.sources:
            try:
                self._attach_one(bpf, source)
            except Exception as err:  # BCC raises bare Exception with the kernel's message
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                report.failed.append((source, reason))
                log.debug("probe %s did not attach: %s", source.probe.name, reason)
            else:
                report.attached.append(source)
        if not report.attached:
            self.close()
            first = report.failed[0][1] if report.failed else "no probes"
            raise AttachError(f"no probe could be attached ({len(report.failed)} failed; first: {first})")
        bpf["events"].open_ring_buffer(self._on_record)
        return report

    @staticmethod
    def _attach_one(bpf, source: ProbeSource) -> None:  # type: ignore[no-untyped-def]
        kind = source.probe.kind
        if kind is ProbeKind.TRACEPOINT:
            bpf.attach_raw_tracepoint(tp=source.target, fn_name=source.entry_name)
        elif kind is ProbeKind.KPROBE:
            bpf.attach_kprobe(event=source.target, fn_name=source.entry_name)
        else:
            raise KernelError(f"attaching {kind.value} probes is not supported by this collector")

    def close(self) -> None:
        """Detach every probe and free the maps (idempotent)."""
        if self._bpf is not None and not self.closed:
            try:
                self._bpf.cleanup()
            finally:
                self.closed = True
                self._bpf = None

    def __enter__(self) -> "Collector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- data ---------------------------------------------------------------------------------------
    def _on_record(self, _ctx, data, size) -> int:  # type: ignore[no-untyped-def]
        self._records.append(ctypes.string_at(data, size))
        return 0

    def poll(self, timeout_ms: int = 100) -> list[bytes]:
        """Wait up to timeout_ms for records; returns the raw records read (possibly none)."""
        if self._bpf is None:
            return []
        with self._lock:
            self._bpf.ring_buffer_poll(timeout_ms)
            records, self._records = self._records, []
        return records

    def counters(self) -> "BpfCounters":
        """A reader of the kernel's counter maps (for metrics at scrape time)."""
        if self._bpf is None:
            raise KernelError("the collector is not loaded")
        return BpfCounters(self._bpf, len(self.program.sources))


class BpfCounters:
    """Reads the per-CPU counter maps, summing over CPUs. Implements metrics.CounterReader."""

    def __init__(self, bpf, num_probes: int) -> None:  # type: ignore[no-untyped-def]
        self._bpf = bpf
        self._num_probes = num_probes

    def hits(self) -> Iterable[tuple[int, int, int]]:
        """(flow_id, probe_id, count) for every non-zero slot."""
        out = []
        for key, values in self._bpf["hits"].items():
            total = sum(values)
            if total:
                slot = key.value
                out.append((slot // self._num_probes, slot % self._num_probes, total))
        return out

    def drops(self) -> Iterable[tuple[int, int, int, int]]:
        """(flow_id, location, reason, count)."""
        out = []
        for key, values in self._bpf["drops"].items():
            total = sum(values)
            if total:
                out.append((key.flow_id, key.location, key.reason, total))
        return out

    def totals(self) -> Mapping[str, int]:
        """{'events', 'lost', 'matched', 'track_full'} summed over CPUs."""
        table = self._bpf["stats"]
        names = {STAT_EVENTS: "events", STAT_LOST: "lost", STAT_MATCHED: "matched", STAT_TRACK_FULL: "track_full"}
        return {name: int(sum(table[ctypes.c_int(index)])) for index, name in names.items()}
