"""Feedback while the slow part runs: a progress line on a terminal, and Ctrl-C honoured at any moment.

`run_interruptibly()` runs a slow step (compiling with BCC, which releases the GIL) in a worker thread while the
main thread redraws one stderr line and watches a stop flag. A stop during the step exits at once with 130:
nothing is attached yet, or what is attached hangs on file descriptors the kernel releases with the process
(raw tracepoint, perf-event kprobe and fentry links all do), so no half-finished state survives.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO, TypeVar

_T = TypeVar("_T")
EXIT_INTERRUPTED = 130


class ProgressLine:
    """One stderr line redrawn in place (`\\r`, erase to end of line); silent unless the stream is a terminal.
    Log records clear it first, so a log line never lands in the middle of it."""

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._lock = threading.Lock()
        self._shown = False

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            self.stream.write(f"\r{text}\x1b[K")
            self.stream.flush()
            self._shown = True

    def clear(self) -> None:
        if not self.enabled:
            return
        with self._lock:
            if self._shown:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self._shown = False

    def filter(self, _record: logging.LogRecord) -> bool:
        """A logging filter (add it to a handler): clears the line before each record."""
        self.clear()
        return True


def run_interruptibly(step: Callable[[], _T], stopped: Callable[[], bool], describe: Callable[[float], str],
                      progress: ProgressLine, on_interrupt: Callable[[], None] = lambda: None,
                      interval: float = 0.1) -> _T:
    """step() in a worker thread; the progress line shows describe(elapsed seconds) meanwhile. If stopped()
    turns true before step returns: on_interrupt(), then exit the process with 130 (no traceback); after it
    returns, the caller sees the stop flag itself and detaches in order. Exceptions of step are raised here."""
    result: list[_T] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            result.append(step())
        except BaseException as err:  # noqa: BLE001 - handed to the main thread as is
            failure.append(err)

    started = time.monotonic()
    worker = threading.Thread(target=work, name="ipftrace-start", daemon=True)
    worker.start()
    handler = _stderr_handler()
    if handler is not None:
        handler.addFilter(progress.filter)
    try:
        while worker.is_alive():
            if stopped():
                progress.clear()
                on_interrupt()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(EXIT_INTERRUPTED)
            progress.show(describe(time.monotonic() - started))
            worker.join(interval)
    finally:
        progress.clear()
        if handler is not None:
            handler.removeFilter(progress.filter)
    if failure:
        raise failure[0]
    return result[0]


def _stderr_handler() -> logging.Handler | None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stderr, sys.__stderr__):
            return handler
    return None
