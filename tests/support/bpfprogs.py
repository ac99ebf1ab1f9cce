"""Which BPF programs a process holds (for tests and benchmarks that check nothing of ours is left loaded)."""

from __future__ import annotations

import os
import re
from pathlib import Path


def program_ids(pid: int) -> set[int]:
    """BPF program ids a process holds (from /proc/PID/fdinfo); empty when the process is gone."""
    ids: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return ids
    for fd in fds:
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        match = re.search(r"^prog_id:\s*(\d+)", text, re.MULTILINE)
        if match:
            ids.add(int(match.group(1)))
    return ids
