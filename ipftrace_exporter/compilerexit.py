"""Say why the process ended when the BPF compiler ends it.

LLVM, inside BCC, ends the process with exit(1) on a fatal error (a program past the 512-byte BPF stack is one)
while its output goes to the capture that keeps BCC's own printing from reaching the user: the process would end
without a word. While a compile runs, a forked watcher waits on a pipe the compiling process holds open; if that
process ends inside the compile, the watcher prints the compiler's first error as one line on the real stderr."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

_COMPILE_DONE = b"."


def first_error(lines: list[str]) -> str:
    """The first compiler error in `lines` (the text after "error:"), else the last line."""
    for line in lines:
        if "error:" in line:
            return line.split("error:", 1)[1].strip()
    return lines[-1].strip() if lines else "no compiler output"


def _one_line(text: str) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in text)


def _watch(lifeline: int, capture: int, stderr: int, what: str) -> None:
    """The watcher's whole life: wait until the compile is done, or the compiling process is gone."""
    if os.read(lifeline, 1) == _COMPILE_DONE:
        return
    size = os.fstat(capture).st_size
    lines = os.pread(capture, size, 0).decode(errors="replace").splitlines() if size else []
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "ipftrace"
    os.write(stderr, f"{prog}: error: {what}: the BPF compiler ended the process: "
                     f"{_one_line(first_error(lines))}\n".encode())


@contextlib.contextmanager
def watched_compile(capture: int, stderr: int, what: str) -> Iterator[None]:
    """While the block runs, a watcher process prints `what` and the compiler's first error (read from the file at
    fd `capture`) to fd `stderr` should the process end inside the block. Without fork, the block runs unwatched."""
    lifeline, holder = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(lifeline)
        os.close(holder)
        yield
        return
    if pid == 0:  # the watcher: no Python clean-up of the compiling process's state, ever
        try:
            os.close(holder)
            _watch(lifeline, capture, stderr, what)
        finally:
            os._exit(0)
    os.close(lifeline)
    try:
        yield
    finally:
        os.write(holder, _COMPILE_DONE)
        os.close(holder)
        os.waitpid(pid, 0)
