"""The BTF-derived header tree: stand-ins for helper ids BCC knows and an older kernel lacks."""

from __future__ import annotations

from pathlib import Path

from ipftrace_exporter.kernel.headers import _STAND_INS, COMPAT_HEADER, bcc_helper_ids, helper_id_stand_ins

VMLINUX_6_1 = """
enum bpf_func_id {
	BPF_FUNC_unspec = 0,
	BPF_FUNC_map_lookup_elem = 1,
	BPF_FUNC_user_ringbuf_drain = 209,
	__BPF_FUNC_MAX_ID = 210,
};
"""


def test_helper_ids_the_kernel_lacks_get_numbers_past_its_last_helper() -> None:
    text = helper_id_stand_ins(VMLINUX_6_1, {"map_lookup_elem", "cgrp_storage_get", "cgrp_storage_delete"})
    assert "BPF_FUNC_cgrp_storage_delete = 210" in text
    assert "BPF_FUNC_cgrp_storage_get = 211" in text
    assert "map_lookup_elem" not in text  # the kernel has it: declaring it again would not compile


def test_no_stand_ins_when_the_kernel_knows_every_helper() -> None:
    text = helper_id_stand_ins(VMLINUX_6_1, {"map_lookup_elem"})
    assert "enum" not in text and text.startswith("/*")


def test_helper_ids_are_read_from_the_text_embedded_in_libbcc(tmp_path: Path) -> None:
    library = tmp_path / "libbcc.so.0"
    library.write_bytes(b"\x7fELF\0junk static long (*bpf_cgrp_storage_get)(void *) = (void *)BPF_FUNC_cgrp_storage_get;"
                        b"\0 (void *) BPF_FUNC_map_lookup_elem;\0")
    assert bcc_helper_ids([str(library)]) == {"cgrp_storage_get", "map_lookup_elem"}
    assert bcc_helper_ids([str(tmp_path / "absent*.so")]) == set()


def test_the_bpf_header_stand_in_includes_the_compat_header() -> None:
    assert f"#include <{COMPAT_HEADER}>" in _STAND_INS["uapi/linux/bpf.h"]
