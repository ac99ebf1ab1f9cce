"""The kernel record format and its constants are written twice, in C (bpf/ipftrace.bpf.c) and in Python: these
tests parse the C and fail when the two disagree."""

from __future__ import annotations

import re

from ipftrace_exporter import collector, events, paths
from ipftrace_exporter.probes import ProbeRole
from ipftrace_exporter.program import ROLE_CODES, bpf_source

C_TYPES = {"u64": "Q", "u32": "I", "u16": "H", "u8": "B"}


def c_struct_format(text: str, name: str) -> str:
    """struct.Struct format (little endian) of a C struct made of uN fields and uN arrays."""
    body = re.search(rf"struct {name} \{{(.*?)\}};", text, re.DOTALL)
    assert body, name
    out = "<"
    for line in body.group(1).splitlines():
        line = line.split("/*")[0].strip().rstrip(";")
        if not line:
            continue
        ctype, declarator = line.split(None, 1)
        array = re.fullmatch(r"(\w+)\[(\d+)\]", declarator)
        if array:
            out += f"{array.group(2)}s" if ctype == "u8" else C_TYPES[ctype] * int(array.group(2))
        else:
            out += C_TYPES[ctype] * len(declarator.split(","))
    return out


def defines(text: str, prefix: str) -> dict[str, int]:
    return {name: int(value, 0) for name, value in re.findall(rf"#define ({prefix}\w+) (\d+|0x[0-9a-fA-F]+)", text)}


def test_the_record_struct_and_events_record_agree() -> None:
    assert c_struct_format(bpf_source(), "ipft_event") == events.RECORD.format


def test_flags_agree() -> None:
    flags = defines(bpf_source(), "IPFT_FLAG_")
    assert flags == {f"IPFT_{name}": getattr(events, name) for name in dir(events) if name.startswith("FLAG_")}
    assert defines(bpf_source(), "IPFT_LOST_") == {"IPFT_LOST_SHIFT": events.LOST_SHIFT}
    assert max(flags.values()) < 1 << events.LOST_SHIFT  # the lost count sits above every flag


# roles the kernel treats alike, by the name of their shared code in the C file
KERNEL_ROLE_NAMES = {ProbeRole.RELEASE: "NO_START", ProbeRole.PREPARE: "NO_START"}


def test_roles_agree() -> None:
    roles = defines(bpf_source(), "IPFT_ROLE_")
    assert roles == {f"IPFT_ROLE_{KERNEL_ROLE_NAMES.get(role, role.name)}": code for role, code in ROLE_CODES.items()}
    assert set(ROLE_CODES) == set(ProbeRole)


def test_stat_indices_agree() -> None:
    stats = defines(bpf_source(), "IPFT_STAT_")
    assert stats == {"IPFT_STAT_EVENTS": collector.STAT_EVENTS, "IPFT_STAT_LOST": collector.STAT_LOST,
                     "IPFT_STAT_MATCHED": collector.STAT_MATCHED, "IPFT_STAT_TRACK_FULL": collector.STAT_TRACK_FULL}


def test_untraced_reasons_agree() -> None:
    found = defines(bpf_source(), "IPFT_UNTRACED_")
    count = found.pop("IPFT_UNTRACED_REASONS")
    assert count == len(events.UNTRACED_REASONS)
    assert found == {f"IPFT_UNTRACED_{reason.upper()}": index for index, reason in enumerate(events.UNTRACED_REASONS)}


def test_the_parser_sees_a_disagreement() -> None:
    changed = bpf_source().replace("    u32 flags;\n    u8 data[64];", "    u16 flags;\n    u8 data[64];")
    assert c_struct_format(changed, "ipft_event") != events.RECORD.format


def test_an_orphan_waits_in_user_space_as_long_as_the_kernel_would_join_it() -> None:
    assert defines(bpf_source(), "IPFT_ORPHAN_WINDOW_") == {"IPFT_ORPHAN_WINDOW_NS": paths.ORPHAN_WAIT_NS}
