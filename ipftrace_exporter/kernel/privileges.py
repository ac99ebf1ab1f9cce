"""Whether this process may load and attach BPF programs: root, CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON
(Linux 5.8+). Read from /proc/self/status (path injectable for tests) before anything is compiled, so the user
learns what is missing instead of a permission error from deep inside BCC or the header cache."""

from __future__ import annotations

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
NEEDED = {CAP_BPF: "CAP_BPF", CAP_PERFMON: "CAP_PERFMON"}


def effective_capabilities(status_path: str = "/proc/self/status") -> int | None:
    """The CapEff bit mask, or None when it cannot be read."""
    try:
        with open(status_path, encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        return None
    return None


def missing_privileges(status_path: str = "/proc/self/status") -> str | None:
    """One line naming what this process lacks to trace, or None when it may (or when that cannot be told)."""
    caps = effective_capabilities(status_path)
    if caps is None or caps & (1 << CAP_SYS_ADMIN):
        return None
    missing = [name for bit, name in NEEDED.items() if not caps & (1 << bit)]
    if not missing:
        return None
    return (f"not permitted to load BPF programs: run as root, or with CAP_BPF and CAP_PERFMON "
            f"(this process lacks {' and '.join(missing)})")
