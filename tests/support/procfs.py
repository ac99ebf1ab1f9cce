"""Process facts from /proc for tests and benchmarks: BPF programs held, resident memory."""

from __future__ import annotations

import os
import re
from pathlib import Path


def _fdinfos(pid: int) -> list[str]:
    """The texts of /proc/PID/fdinfo/*; empty when the process is gone (an fd closed meanwhile is skipped)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return []
    texts = []
    for fd in fds:
        try:
            texts.append(Path(f"/proc/{pid}/fdinfo/{fd}").read_text())
        except OSError:
            continue
    return texts


def program_ids(pid: int) -> set[int]:
    """BPF program ids a process holds (from /proc/PID/fdinfo); empty when the process is gone."""
    ids: set[int] = set()
    for text in _fdinfos(pid):
        match = re.search(r"^prog_id:\s*(\d+)", text, re.MULTILINE)
        if match:
            ids.add(int(match.group(1)))
    return ids


def link_programs(pid: int) -> dict[int, str]:
    """program id -> link type (e.g. `tracing` for fentry) of the BPF links a process holds; empty when it is
    gone."""
    links: dict[int, str] = {}
    for text in _fdinfos(pid):
        link_type = re.search(r"^link_type:\s*(\S+)", text, re.MULTILINE)
        prog_id = re.search(r"^prog_id:\s*(\d+)", text, re.MULTILINE)
        if link_type and prog_id:
            links[int(prog_id.group(1))] = link_type.group(1)
    return links


def rss_kib(pid: int | str = "self") -> int:
    """VmRSS of a process, KiB."""
    with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")
