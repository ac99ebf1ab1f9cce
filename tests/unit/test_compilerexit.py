"""The watcher that says why the process ended when the BPF compiler ends it (compilerexit.watched_compile)."""

from __future__ import annotations

import subprocess
import sys

from ipftrace_exporter.compilerexit import first_error

SCRIPT = """
import os, sys, tempfile
from ipftrace_exporter.compilerexit import watched_compile
with tempfile.TemporaryFile() as capture:
    with watched_compile(capture.fileno(), 2, "the BPF program"):
        os.write(capture.fileno(), b"warning: something\\n/virtual/main.c:1:1: error: stack limit exceeded\\n")
        if sys.argv[1] == "die":
            os._exit(1)  # as LLVM's exit(1): no Python clean-up
print("compiled")
"""


def run(mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT, mode], check=False, capture_output=True, text=True,
                          timeout=30)


def test_a_process_ended_inside_a_compile_says_so_in_one_line() -> None:
    done = run("die")
    assert done.returncode == 1
    assert done.stderr == "-c: error: the BPF program: the BPF compiler ended the process: stack limit exceeded\n"


def test_a_compile_that_returns_says_nothing() -> None:
    done = run("live")
    assert (done.returncode, done.stdout, done.stderr) == (0, "compiled\n", "")


def test_the_first_error_is_the_text_after_error_else_the_last_line() -> None:
    assert first_error(["a", "x.c:1: error: bad thing", "error: later"]) == "bad thing"
    assert first_error(["first", "last "]) == "last"
    assert first_error([]) == "no compiler output"
