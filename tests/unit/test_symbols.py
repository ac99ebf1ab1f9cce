"""kallsyms reader: a recorded file (core, padding, aliases, modules, zeroed addresses) and the live one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ipftrace_exporter.errors import KernelError
from ipftrace_exporter.kernel.symbols import KernelSymbols, Symbol

KALLSYMS = "/proc/kallsyms"

RECORDED = """\
ffffffff81000000 T _stext
ffffffff81000000 T _text
ffffffff81000010 T __pfx_ip_rcv_core
ffffffff81000020 t ip_rcv_core
ffffffff81000100 T __pfx_ip_rcv
ffffffff81000110 T ip_rcv
ffffffff81000200 t ip_rcv_finish_core.isra.0
ffffffff81000300 W weak_function
ffffffff81000400 T _etext
ffffffff82000000 D init_net
ffffffff82000100 b some_bss
ffffffffc0a02000 t veth_poll\t[veth]
ffffffffc0a01000 t veth_xmit\t[veth]
ffffffffc0a01800 d veth_ops\t[veth]
ffffffffc0b00000 T nf_hook_thing\t[nf_tables]
"""


def recorded(tmp_path: Path, text: str = RECORDED) -> KernelSymbols:
    path = tmp_path / "kallsyms"
    path.write_text(text)
    return KernelSymbols(str(path))


def test_function_name_finds_the_containing_function(tmp_path: Path) -> None:
    symbols = recorded(tmp_path)
    assert symbols.function_name(0xFFFFFFFF81000110) == "ip_rcv"
    assert symbols.function_name(0xFFFFFFFF81000030) == "ip_rcv_core"
    assert symbols.function_name(0xFFFFFFFF81000150) == "ip_rcv"
    assert symbols.function_name(0xFFFFFFFF81000250) == "ip_rcv_finish_core.isra.0"
    assert symbols.function_name(0xFFFFFFFF81000310) == "weak_function"


def test_resolve_gives_offset_and_module(tmp_path: Path) -> None:
    symbols = recorded(tmp_path)
    assert symbols.resolve(0xFFFFFFFF81000115) == Symbol("ip_rcv", 5, "")
    assert symbols.resolve(0xFFFFFFFFC0A01004) == Symbol("veth_xmit", 4, "veth")


def test_module_symbols_are_sorted_and_suffix_stripped(tmp_path: Path) -> None:
    symbols = recorded(tmp_path)
    assert symbols.function_name(0xFFFFFFFFC0A01010) == "veth_xmit"
    assert symbols.function_name(0xFFFFFFFFC0A02040) == "veth_poll"
    assert symbols.function_name(0xFFFFFFFFC0B00008) == "nf_hook_thing"
    assert symbols.module_of("veth_xmit") == "veth"
    assert symbols.module_of("ip_rcv") == ""
    assert symbols.module_of("init_net") is None
    assert "veth_xmit" in symbols


def test_addresses_outside_functions_are_hex(tmp_path: Path) -> None:
    symbols = recorded(tmp_path)
    assert symbols.function_name(0x1000) == "0x1000"  # below every symbol
    assert symbols.function_name(0xFFFFFFFF81000500) == "0xffffffff81000500"  # after _etext
    assert symbols.function_name(0xFFFFFFFF82000008) == "0xffffffff82000008"  # data
    assert symbols.function_name(0xFFFFFFFFC0A01900) == "0xffffffffc0a01900"  # module data
    assert symbols.function_name(0xFFFFFFFF81000104) == "0xffffffff81000104"  # padding before ip_rcv
    assert symbols.resolve(0) is None


def test_aliases_resolve_to_the_first_name(tmp_path: Path) -> None:
    assert recorded(tmp_path).function_name(0xFFFFFFFF81000004) == "_stext"


def test_names_are_functions_only(tmp_path: Path) -> None:
    names = recorded(tmp_path).names()
    assert {"ip_rcv", "ip_rcv_core", "weak_function", "veth_xmit", "nf_hook_thing"} <= names
    assert "ip_rcv_finish_core.isra.0" in names and "ip_rcv_finish_core" not in names
    assert not names & {"__pfx_ip_rcv", "_etext", "init_net", "some_bss", "veth_ops"}


def test_zeroed_addresses_give_names_but_no_address_and_one_warning(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    zeroed = "".join("0000000000000000" + line[16:] + "\n" for line in RECORDED.splitlines())
    symbols = recorded(tmp_path, zeroed)
    with caplog.at_level("WARNING"):
        assert symbols.addresses_hidden
        assert "ip_rcv" in symbols and "veth_xmit" in symbols
        assert symbols.function_name(0xFFFFFFFF81000110) == "unknown"  # never the kernel address itself
        assert symbols.function_name(0xFFFFFFFF81000120) == "unknown"
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "CAP_SYSLOG" in warnings[0].getMessage()


def test_blank_and_malformed_lines_are_ignored(tmp_path: Path) -> None:
    symbols = recorded(tmp_path, "\nnot-hex T foo\nffffffff81000000\nffffffff81000000 T bar\n")
    assert symbols.names() == frozenset({"bar"})
    assert symbols.function_name(0xFFFFFFFF81000001) == "bar"


def test_missing_file_raises_kernel_error(tmp_path: Path) -> None:
    with pytest.raises(KernelError, match="cannot read kernel symbols from .*nope"):
        KernelSymbols(str(tmp_path / "nope"))


def test_file_is_read_once(tmp_path: Path) -> None:
    symbols = recorded(tmp_path)
    assert "ip_rcv" in symbols
    (tmp_path / "kallsyms").write_text("ffffffff81000000 T other\n")
    assert "ip_rcv" in symbols and "other" not in symbols


@pytest.mark.skipif(not os.access(KALLSYMS, os.R_OK), reason=f"{KALLSYMS} not readable")
def test_live_kallsyms_resolves_ip_rcv() -> None:
    symbols = KernelSymbols()
    assert "ip_rcv" in symbols and "__pfx_ip_rcv" not in symbols
    if symbols.addresses_hidden:
        pytest.skip("kallsyms addresses are hidden (kptr_restrict)")
    with open(KALLSYMS) as f:
        address = next(int(line.split()[0], 16) for line in f if line.split()[2] == "ip_rcv")
    assert symbols.function_name(address + 4) == "ip_rcv"
