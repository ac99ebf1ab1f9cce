"""The progress line and the interruptible start (no root needed: the slow step is a stand-in)."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import pytest

from ipftrace_exporter.progress import ProgressLine, run_interruptibly


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_redraws_in_place_and_clears() -> None:
    stream = _Tty()
    line = ProgressLine(stream, enabled=True)
    line.show("compiling... 0.1 s")
    line.show("compiling... 0.2 s")
    line.clear()
    assert stream.getvalue() == "\rcompiling... 0.1 s\x1b[K\rcompiling... 0.2 s\x1b[K\r\x1b[K"


def test_progress_line_is_silent_when_not_a_terminal() -> None:
    stream = io.StringIO()
    line = ProgressLine(stream)
    line.show("compiling")
    line.clear()
    assert not line.enabled and stream.getvalue() == ""


def test_the_step_result_and_its_errors_reach_the_caller() -> None:
    shown: list[str] = []
    line = ProgressLine(_Tty(), enabled=True)
    line.show = shown.append  # type: ignore[method-assign]
    assert run_interruptibly(lambda: time.sleep(0.25) or 7, lambda: False, lambda t: f"{t:.1f}", line,
                             interval=0.05) == 7
    assert len(shown) >= 3
    with pytest.raises(ZeroDivisionError):
        run_interruptibly(lambda: 1 // 0, lambda: False, str, line)


def test_a_stop_during_the_step_exits_130_at_once() -> None:
    code = (
        "import threading, time\n"
        "from ipftrace_exporter.progress import ProgressLine, run_interruptibly\n"
        "stop = threading.Event(); threading.Timer(0.2, stop.set).start()\n"
        "run_interruptibly(lambda: time.sleep(30), stop.is_set, str, ProgressLine(),\n"
        "                  on_interrupt=lambda: print('cleaned', flush=True))\n"
        "print('not reached')\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=20)
    assert done.returncode == 130
    assert done.stdout == "cleaned\n" and done.stderr == ""
    assert time.monotonic() - started < 10
