"""What a process lacks to trace, read from a recorded /proc/self/status."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipftrace_exporter.kernel.privileges import missing_privileges


@pytest.mark.parametrize(("capeff", "missing"), [
    ("000001ffffffffff", None),  # root
    ("0000000000200000", None),  # CAP_SYS_ADMIN alone (kernels before 5.8 need it)
    ("000000c000000000", None),  # CAP_BPF + CAP_PERFMON
    ("0000000000000000", "lacks CAP_BPF and CAP_PERFMON"),
    ("0000008000000000", "lacks CAP_PERFMON"),
    ("0000004000000000", "lacks CAP_BPF"),
])
def test_missing_capabilities_are_named(tmp_path: Path, capeff: str, missing: str | None) -> None:
    status = tmp_path / "status"
    status.write_text(f"Name:\tipftrace\nCapInh:\t0000000000000000\nCapEff:\t{capeff}\n")
    message = missing_privileges(str(status))
    if missing is None:
        assert message is None
    else:
        assert message is not None and missing in message and "run as root" in message


def test_an_unreadable_status_is_no_verdict(tmp_path: Path) -> None:
    assert missing_privileges(str(tmp_path / "absent")) is None
