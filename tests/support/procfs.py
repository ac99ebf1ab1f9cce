"""Process facts from /proc for tests and benchmarks: BPF programs held, resident memory."""

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


def rss_kib(pid: int | str = "self") -> int:
    """VmRSS of a process, KiB."""
    with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")
