"""What the command-line tracer says about what it could not trace: a warning on stderr at most once a second
while the kernel loses events (the ring buffer is full because the reader is behind), and one summary line at
exit. Both read the kernel's own counters, so nothing lost goes unsaid."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .events import UNTRACED_REASONS

UNTRACED_WORDS = {"ring_full": "not traced (ring buffer full)", "sampled_out": "sampled out"}
WARN_INTERVAL_S = 1.0


class LossCounters(Protocol):
    """The kernel counters a loss report reads (collector.BpfCounters)."""

    def totals(self) -> Mapping[str, int]: ...

    def untraced(self) -> Iterable[tuple[int, str, int]]: ...


@dataclass(frozen=True, slots=True)
class KernelCounts:
    """One reading of the kernel's counters, summed over flows and CPUs."""

    matched: int = 0  # packets that matched a flow
    lost_events: int = 0  # events the ring buffer had no room for
    untraced: Mapping[str, int] = field(default_factory=dict)  # reason -> matched packets sent without a path

    @classmethod
    def read(cls, counters: LossCounters) -> KernelCounts:
        totals = counters.totals()
        untraced = dict.fromkeys(UNTRACED_REASONS, 0)
        for _flow, reason, count in counters.untraced():
            untraced[reason] = untraced.get(reason, 0) + count
        return cls(matched=totals.get("matched", 0), lost_events=totals.get("lost", 0), untraced=untraced)


def _untraced_words(untraced: Mapping[str, int]) -> list[str]:
    return [f"{count:,} {UNTRACED_WORDS.get(reason, reason)}" for reason, count in untraced.items() if count]


class LossReport:
    """Turns counter readings into the warning and the exit summary; `check()` is cheap to call in every poll
    loop (it reads the counters at most once per `interval_s`)."""

    def __init__(self, read: Callable[[], KernelCounts], clock: Callable[[], float] = time.monotonic,
                 interval_s: float = WARN_INTERVAL_S) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self._read = read
        self._clock = clock
        self._interval_s = interval_s
        self._start = read()  # counts before tracing began (zero for a fresh program)
        self._last = self._start
        self._last_at = clock()

    def check(self) -> str | None:
        """A warning if the kernel lost events since the last reading (at most one per interval), else None."""
        now = self._clock()
        if now - self._last_at < self._interval_s:
            return None
        current = self._read()
        previous, elapsed = self._last, now - self._last_at
        self._last, self._last_at = current, now
        lost = current.lost_events - previous.lost_events
        if lost <= 0:
            return None
        packets = current.untraced.get("ring_full", 0) - previous.untraced.get("ring_full", 0)
        return (f"the tracer is falling behind: the kernel lost {lost:,} events in the last {elapsed:.1f} s "
                f"(ring buffer full); {packets:,} matching packets were not traced, and paths that lost an event "
                "end truncated")

    def summary(self, printed: int, truncated: int, not_packets: int = 0) -> str:
        """One line for the end of a run: paths printed, packets matched, what was not traced, events lost.
        `not_packets` of the paths printed were not packets of their own (continuations of a path that timed out,
        clones whose packet was printed before or never seen)."""
        end = self._read()
        matched = end.matched - self._start.matched
        lost = end.lost_events - self._start.lost_events
        untraced = {reason: count - self._start.untraced.get(reason, 0) for reason, count in end.untraced.items()}
        printed_words = f"{printed:,} path{'s' if printed != 1 else ''} printed"
        notes = [f"{truncated:,} truncated"] if truncated else []
        if not_packets:
            own = "its" if not_packets == 1 else "their"
            notes.append(f"{not_packets:,} not a packet of {own} own: continuations, clones")
        if notes:
            printed_words += f" ({'; '.join(notes)})"
        kernel = [f"the kernel matched {matched:,} packet{'s' if matched != 1 else ''}", *_untraced_words(untraced)]
        kernel.append(f"lost {lost:,} events" if lost else "lost no events")
        return f"{printed_words}; {', '.join(kernel)}"
