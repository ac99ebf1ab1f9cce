"""Modules: decoders on bytes recorded from the kernel, option parsing, loading (built-in, entry point, file),
data offsets, rendered C, and module data in text, JSON and span attributes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from ipftrace_exporter.config import ModuleSpec
from ipftrace_exporter.errors import UsageError
from ipftrace_exporter.events import MODULE_DATA_SIZE
from ipftrace_exporter.kernel.btf import FALLBACK_GSO_TYPES
from ipftrace_exporter.modules import (
    BUILTINS,
    ENTRY_POINT_GROUP,
    LoadedModule,
    Module,
    ModuleContext,
    ModuleError,
    allocate,
    data_text,
    event_attributes,
    find_module,
    load_modules,
    parse_uint,
    parse_value_mask,
)
from ipftrace_exporter.modules.check import check_program
from ipftrace_exporter.modules.gso import GsoModule
from ipftrace_exporter.modules.loader import render_module
from ipftrace_exporter.modules.tcp import TcpModule
from ipftrace_exporter.names import Names
from ipftrace_exporter.output import PathFormatter
from ipftrace_exporter.paths import PathAssembler, PathLimits
from ipftrace_exporter.spans import SpanEncoder, WallClock
from tests.support.otlp_receiver import attributes

from .helpers import CONSUME, PROBES, RECEIVE, event

# The 64 bytes of custom data of real events, recorded with `-m gso -m mark -m netdev -m tcp` (offsets 0, 12, 16,
# 40) on a veth pair, Linux 6.18: a GSO data segment leaving ns a with SO_MARK 0x10 ...
GSO_SEGMENT = bytes.fromhex(
    "1a550000a8050f00010000001000000002000000950100f06970667432313038347837377661000001000000"
    "b4f23dbc2f2e2cca8018003f0000000000000000")
# ... and a pure ACK leaving ns b.
PURE_ACK = bytes.fromhex(
    "42000000000001000100000000000000020000001e0200f069706674323130383478373776620000010000002f2e2cca"
    "b4f1e8e48010004e0000000000000000")
ALL_FOUR = ["gso", "mark", "netdev", "tcp"]


@pytest.fixture
def context() -> ModuleContext:
    """No BTF: modules fall back to a 64-bit layout and the built-in GSO names."""
    return ModuleContext(btf_path="/nonexistent/vmlinux")


@pytest.fixture
def four(context: ModuleContext) -> list[LoadedModule]:
    return load_modules(ALL_FOUR, context)


def fields_by_module(modules: list[LoadedModule], data: bytes) -> dict[str, dict[str, object]]:
    return {module.name: module.fields(data) for module in modules}


# ---- decoders on recorded bytes ------------------------------------------------------------------------------

def test_recorded_gso_segment_decodes_to_size_segments_type_mark_device_and_tcp(four: list[LoadedModule]) -> None:
    assert len(GSO_SEGMENT) == MODULE_DATA_SIZE
    assert fields_by_module(four, GSO_SEGMENT) == {
        "gso": {"len": 21786, "gso_size": 1448, "gso_segs": 15, "gso_type": "SKB_GSO_TCPV4"},
        "mark": {"mark": 0x10},
        "netdev": {"ifindex": 2, "name": "ipft21084x77va", "netns": 4026532245},
        "tcp": {"flags": "PSH|ACK", "seq": 3035774396, "ack": 791555274, "window": 63},
    }


def test_recorded_events_render_the_seed_custom_data_text(four: list[LoadedModule]) -> None:
    gso, mark, netdev, tcp = four
    assert gso.describe(GSO_SEGMENT) == "(len: 21786 gso_size: 1448 gso_segs: 15 gso_type: SKB_GSO_TCPV4)"
    assert gso.describe(PURE_ACK) == "(len: 66 gso_size: 0 gso_segs: 1 gso_type: SKB_GSO_TCPV4)"
    assert mark.describe(PURE_ACK) == "(mark: 0x0)"
    assert netdev.describe(PURE_ACK) == "(dev: ipft21084x77vb ifindex: 2 netns: 4026532382)"
    assert tcp.describe(PURE_ACK) == "(flags: ACK seq: 791555274 ack: 3035752676 win: 78)"


def test_gso_type_bits_are_named_and_joined_and_zero_is_empty(context: ModuleContext) -> None:
    module = GsoModule(None, context)
    both = (0x10 | 0x2).to_bytes(4, "little")
    assert module.decode(bytes(8) + both)["gso_type"] == "SKB_GSO_DODGY|SKB_GSO_TCPV6"
    assert module.decode(bytes(12))["gso_type"] == ""
    assert module.text(module.decode(bytes(12))) == "(len: 0 gso_size: 0 gso_segs: 0 gso_type: )"
    unknown = (1 << 29).to_bytes(4, "little")
    assert module.decode(bytes(8) + unknown)["gso_type"] == "0x20000000"


def test_gso_names_come_from_the_kernel_btf_when_it_is_readable() -> None:
    class FakeBtf:
        def gso_types(self) -> dict[int, str]:
            return {1: "SKB_GSO_TCPV4", 1 << 19: "SKB_GSO_TCP_ACCECN"}

        def find(self, name: str, *kinds: int) -> list[int]:
            return []

    context = ModuleContext(btf=FakeBtf)  # type: ignore[arg-type]
    module = GsoModule(None, context)
    assert module.decode(bytes(8) + (1 << 19 | 1).to_bytes(4, "little"))["gso_type"] == \
        "SKB_GSO_TCPV4|SKB_GSO_TCP_ACCECN"


def test_without_btf_gso_names_fall_back_and_skb_end_is_an_offset(context: ModuleContext) -> None:
    assert context.btf() is None
    assert context.gso_types() == FALLBACK_GSO_TYPES
    module = GsoModule(None, context)
    assert not module.end_is_pointer
    assert "head + end" in module.c_data()


def test_tcp_decodes_syn_and_the_accurate_ecn_bit_and_nothing_for_non_tcp(context: ModuleContext) -> None:
    module = TcpModule(None, context)
    syn = bytes([1, 0, 0, 0]) + (1000).to_bytes(4, "big") + bytes(4) + bytes([0xa0, 0x02]) + (64240).to_bytes(2, "big")
    assert module.decode(syn) == {"flags": "SYN", "seq": 1000, "ack": 0, "window": 64240}
    ae = bytes([1, 0, 0, 0]) + bytes(8) + bytes([0x51, 0x12]) + bytes(2)
    assert module.decode(ae)["flags"] == "SYN|ACK|AE"
    assert module.decode(bytes(16)) == {}
    assert module.text({}) == ""


def test_netdev_without_a_device_says_nothing(four: list[LoadedModule]) -> None:
    netdev = four[2]
    assert netdev.fields(bytes(MODULE_DATA_SIZE)) == {}
    assert netdev.describe(bytes(MODULE_DATA_SIZE)) == ""


# ---- options -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("0x10/0xff", (0x10, 0xFF)), ("16", (16, 0xFFFFFFFF)), ("0b1/1", (1, 1)), (" 0x10 / 0xf0 ", (0x10, 0xF0)),
])
def test_value_mask_options_parse(text: str, expected: tuple[int, int]) -> None:
    assert parse_value_mask(text, "mark") == expected


@pytest.mark.parametrize(("arg", "why"), [
    ("0x1g", "is not a number"),
    ("-1", "out of range"),
    ("0x100000000", "out of range"),
    ("0x110/0xff", "outside the mask"),
    ("0x10/zz", "not a number"),
    ("0x10;return 1", "not a number"),
    ("", "empty option"),
])
def test_bad_mark_options_are_one_error_naming_the_module(arg: str, why: str, context: ModuleContext) -> None:
    with pytest.raises(ModuleError, match=rf"^module 'mark': .*{why}") as info:
        load_modules([f"mark={arg}"], context)
    assert isinstance(info.value, UsageError)  # exit code 2 in the CLI
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["gso", "netdev", "tcp"])
def test_modules_without_options_refuse_one(name: str, context: ModuleContext) -> None:
    with pytest.raises(ModuleError, match=rf"^module '{name}': takes no option"):
        load_modules([f"{name}=1"], context)


def test_parse_uint_checks_the_width() -> None:
    assert parse_uint("0xffff", "x", bits=16) == 0xFFFF
    with pytest.raises(ValueError, match="out of range"):
        parse_uint("0x10000", "x", bits=16)


def test_mark_match_puts_only_validated_numbers_in_the_c(context: ModuleContext) -> None:
    (mark,) = load_modules(["mark=16/0xff"], context)
    assert "if ((mark & 0xffU) != 0x10U)" in mark.code.declarations
    assert mark.code.match_body.strip().startswith("if (!ipft_hook_mark_match(skb, t))")
    (plain,) = load_modules(["mark"], context)
    assert plain.code.match_body == ""  # no option: data only, every packet traced


# ---- loading -------------------------------------------------------------------------------------------------

def test_builtins_are_found_by_name() -> None:
    assert sorted(BUILTINS) == ["gso", "mark", "netdev", "tcp"]
    for name in BUILTINS:
        assert find_module(name).name == name


def test_unknown_module_is_one_error_naming_it_and_the_known_ones(context: ModuleContext) -> None:
    with pytest.raises(ModuleError, match=r"^module 'nosuch': unknown module \(known: gso, mark, netdev, tcp"):
        load_modules(["nosuch"], context)
    with pytest.raises(ModuleError, match="not a module name"):
        load_modules(["Bad Name"], context)


def test_a_module_given_twice_is_an_error(context: ModuleContext) -> None:
    with pytest.raises(ModuleError, match="^module 'gso': given more than once"):
        load_modules(["gso", "gso"], context)


def test_config_module_specs_load_like_flags(context: ModuleContext) -> None:
    loaded = load_modules([ModuleSpec.parse("mark=0x10/0xff"), ModuleSpec.parse("gso")], context)
    assert [m.name for m in loaded] == ["mark", "gso"]
    assert loaded[0].spec == "mark=0x10/0xff"


HELLO = """
from ipftrace_exporter.modules import Module

class Hello(Module):
    name = "hello"
    data_size = 2
    align = 2

    def c_data(self):
        return "data[0] = 'h'; data[1] = 'i';"

    def decode(self, data):
        return {"greeting": data.decode()}
"""


def test_a_module_is_loaded_from_a_file_in_a_module_dir(tmp_path: Path, context: ModuleContext) -> None:
    path = tmp_path / "hello.py"
    path.write_text(HELLO)
    _gso, hello = load_modules(["gso", "hello"], context, [tmp_path])
    assert (hello.name, hello.offset, hello.size) == ("hello", 12, 2)
    data = bytes(12) + b"hi" + bytes(50)
    assert hello.fields(data) == {"greeting": "hi"}
    assert hello.describe(data) == "(greeting: hi)"
    assert "ipft_hook_hello_data(skb, t, data + 12);" in hello.code.data_body


def test_module_file_errors_name_the_module(tmp_path: Path, context: ModuleContext) -> None:
    dirs = [tmp_path]
    with pytest.raises(ModuleError, match=f"^module 'missing': unknown module .*nor missing.py in {tmp_path}"):
        load_modules(["missing"], context, dirs)
    (tmp_path / "broken.py").write_text("def (:\n")
    with pytest.raises(ModuleError, match="^module 'broken': SyntaxError"):
        load_modules(["broken"], context, dirs)
    (tmp_path / "two.py").write_text(HELLO + "\nclass Other(Hello):\n    name = 'other'\n")
    with pytest.raises(ModuleError, match="defines 2 Module subclasses; set MODULE"):
        load_modules(["two"], context, dirs)
    (tmp_path / "chosen.py").write_text(HELLO + "\nclass Other(Hello):\n    name = 'other'\nMODULE = Other\n")
    assert load_modules(["chosen"], context, dirs)[0].name == "other"
    (tmp_path / "badname.py").write_text(HELLO.replace('"hello"', '"Hello-1"'))
    with pytest.raises(ModuleError, match="name 'Hello-1' must match"):
        load_modules(["badname"], context, dirs)


@pytest.mark.parametrize("spec", ["/tmp/evil.py", "./evil.py", "evil.py", "sub/evil", "/tmp/evil.py=x"])
def test_a_module_path_is_refused_even_when_the_file_exists(tmp_path: Path, context: ModuleContext,
                                                            spec: str) -> None:
    evil = tmp_path / "evil.py"
    evil.write_text("raise SystemExit('executed')\n")  # would end the test run if it were imported
    spec = spec.replace("/tmp/", f"{tmp_path}/")
    with pytest.raises(ModuleError, match="module files are not loaded from paths: .*--module-dir"):
        load_modules([spec], context, [tmp_path])


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o1777])
def test_a_module_dir_others_can_write_is_refused(tmp_path: Path, context: ModuleContext, mode: int) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hello.py").write_text(HELLO)
    shared.chmod(mode)
    with pytest.raises(ModuleError, match=r"^module 'hello': directory .* is writable by .*: not loaded"):
        load_modules(["hello"], context, [shared])
    shared.chmod(0o755)
    (shared / "hello.py").chmod(0o666)
    with pytest.raises(ModuleError, match=r"^module 'hello': file .*hello.py' is writable by group and others"):
        load_modules(["hello"], context, [shared])
    (shared / "hello.py").chmod(0o644)
    assert load_modules(["hello"], context, [shared])[0].name == "hello"


def test_a_module_file_owned_by_another_user_is_refused(tmp_path: Path, context: ModuleContext) -> None:
    import os

    (tmp_path / "hello.py").write_text(HELLO)
    if os.getuid() != 0:
        pytest.skip("needs root to give the file away")
    os.chown(tmp_path / "hello.py", 4242, 4242)
    with pytest.raises(ModuleError, match="owned by uid 4242, not root"):
        load_modules(["hello"], context, [tmp_path])


def test_a_module_is_found_through_its_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   context: ModuleContext) -> None:
    (tmp_path / "hello_plugin.py").write_text(HELLO)
    dist = tmp_path / "hello_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hello-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nhello = hello_plugin:Hello\n"
                                           "broken = hello_plugin:Nothing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (hello,) = load_modules(["hello"], context)
    assert hello.name == "hello"
    with pytest.raises(ModuleError, match="^module 'broken': entry point 'hello_plugin:Nothing' does not load"):
        load_modules(["broken"], context)
    with pytest.raises(ModuleError, match=r"known: broken, gso, hello, mark, netdev, tcp;"):
        load_modules(["absent"], context)


def test_option_errors_of_a_plugin_name_it(tmp_path: Path, context: ModuleContext) -> None:
    path = tmp_path / "strict.py"
    path.write_text(HELLO + textwrap.dedent("""
        class Strict(Hello):
            name = "strict"
            def configure(self, arg):
                raise ValueError("level must be 1-3")
        MODULE = Strict
    """))
    with pytest.raises(ModuleError, match="^module 'strict': bad option 'x': level must be 1-3"):
        load_modules(["strict=x"], context, [tmp_path])


# ---- offsets -------------------------------------------------------------------------------------------------

def test_offsets_do_not_overlap_and_respect_alignment(four: list[LoadedModule]) -> None:
    assert [(m.name, m.offset, m.size) for m in four] == [
        ("gso", 0, 12), ("mark", 12, 4), ("netdev", 16, 24), ("tcp", 40, 16)]
    for module in four:
        assert f"data + {module.offset});" in module.code.data_body


def sized(name: str, size: int, alignment: int = 4) -> Module:
    class Sized(Module):
        pass

    Sized.name, Sized.data_size, Sized.align = name, size, alignment
    return Sized(None, ModuleContext(btf_path="/nonexistent"))


def test_allocation_pads_to_each_modules_alignment() -> None:
    assert allocate([sized("a", 1, 1), sized("b", 8, 8), sized("c", 0), sized("d", 2, 2)]) == [0, 8, 16, 16]


def test_modules_that_need_more_than_64_bytes_fail_clearly() -> None:
    assert allocate([sized("a", 32), sized("b", 32)]) == [0, 32]
    with pytest.raises(ModuleError, match=r"need 68 bytes .*'a' 33, 'b' 32.*at most 64 fit"):
        allocate([sized("a", 33), sized("b", 32)])


def test_data_code_without_data_size_is_refused() -> None:
    module = sized("x", 0)
    module.c_data = lambda: "data[0] = 1;"  # type: ignore[method-assign]
    with pytest.raises(ModuleError, match="^module 'x': has C data code but data_size 0"):
        render_module(module, 0)


def test_the_compile_check_program_calls_every_hook(four: list[LoadedModule]) -> None:
    text = check_program([m.code for m in four])
    assert "struct ipft_tuple {" in text
    assert text.count("#define IPFT_MOD_READ(") == 1  # the helpers stand once, in the C file
    for module in four:
        assert f"ipft_hook_{module.name}_data(skb, t, data + {module.offset});" in text
    assert "ipft_hook_mark_match" not in text  # mark without option has no match hook
    assert "int ipft_module_check(struct bpf_raw_tracepoint_args *ctx)" in text


def test_the_compile_check_and_the_program_carry_the_same_module_hooks(four: list[LoadedModule]) -> None:
    from ipftrace_exporter.flows import FlowSpec
    from ipftrace_exporter.probes import Probe, ProbeKind
    from ipftrace_exporter.program import ProbeSource, render

    codes = [m.code for m in four]
    checked = check_program(codes)
    source = ProbeSource(Probe(0, "skb:consume_skb", ProbeKind.TRACEPOINT, 1), "consume_skb", 0)
    program = render([source], [FlowSpec(name="any")], modules=codes).text

    def hooks(text: str) -> str:
        start = text.index("/* module gso:")
        return text[start:text.index("#ifndef IPFT_MODULE_CHECK")]

    assert hooks(checked) == hooks(program)
    assert "static __always_inline int ipft_module_match(" in hooks(program)
    assert "#define IPFT_MODULE_CHECK 1" in checked and "IPFT_MODULE_CHECK 1" not in program
    assert "BPF_RINGBUF_OUTPUT" in checked.split("#ifndef IPFT_MODULE_CHECK", 1)[1]  # left out by the guard


# ---- text, JSON, span attributes -----------------------------------------------------------------------------

NAMES = Names(["default"], PROBES, {3: "NO_SOCKET"}, lambda address: "f")


def recorded_path():  # type: ignore[no-untyped-def]
    assembler = PathAssembler(PROBES, PathLimits(settle_ns=0), NAMES, clock=lambda: 10**12)
    done = assembler.add_many([event(1, RECEIVE, first=True, proto=6, sport=55682, dport=18500, data=GSO_SEGMENT),
                               event(2, CONSUME, data=PURE_ACK)])
    return (done + assembler.expire())[0]


def test_custom_data_column_joins_the_modules_texts(four: list[LoadedModule]) -> None:
    text = PathFormatter(NAMES, data_text(four)).text(recorded_path())
    lines = text.splitlines()
    assert lines[1].endswith("Custom Data")
    assert lines[2].endswith("  (len: 21786 gso_size: 1448 gso_segs: 15 gso_type: SKB_GSO_TCPV4) (mark: 0x10) "
                             "(dev: ipft21084x77va ifindex: 2 netns: 4026532245) "
                             "(flags: PSH|ACK seq: 3035774396 ack: 791555274 win: 63)")


def test_json_carries_text_and_structured_fields_per_module(four: list[LoadedModule]) -> None:
    record = json.loads(PathFormatter(NAMES, data_text(four)).json(recorded_path()))
    first, second = record["events"]
    assert first["modules"]["gso"] == {"len": 21786, "gso_size": 1448, "gso_segs": 15, "gso_type": "SKB_GSO_TCPV4"}
    assert first["modules"]["netdev"]["name"] == "ipft21084x77va"
    assert second["modules"]["tcp"]["flags"] == "ACK"
    assert first["data"].startswith("(len: 21786 ")


def test_span_attributes_are_named_after_module_and_field(four: list[LoadedModule]) -> None:
    encoder = SpanEncoder(NAMES, WallClock(0), {"service.name": "t"}, event_attributes(four))
    request = encoder.encode([recorded_path()])
    spans = request.resource_spans[0].scope_spans[0].spans
    children = [attributes(span.attributes) for span in spans if span.parent_span_id]
    assert len(children) == 2
    first = children[0]
    assert first["ipftrace.gso.gso_size"] == 1448
    assert first["ipftrace.gso.gso_type"] == "SKB_GSO_TCPV4"
    assert first["ipftrace.mark.mark"] == 0x10
    assert first["ipftrace.netdev.name"] == "ipft21084x77va"
    assert first["ipftrace.netdev.netns"] == 4026532245
    assert first["ipftrace.tcp.flags"] == "PSH|ACK"
    assert first["ipftrace.tcp.seq"] == 3035774396
    assert children[1]["ipftrace.gso.len"] == 66


def test_no_modules_means_no_attributes_and_no_text() -> None:
    assert event_attributes([])(event(1, RECEIVE)) == {}
    assert data_text([])(event(1, RECEIVE)) == ""


def test_a_failing_plugin_decoder_or_formatter_does_not_stop_the_output(tmp_path: Path,
                                                                       context: ModuleContext) -> None:
    path = tmp_path / "fragile.py"
    path.write_text(HELLO + textwrap.dedent("""
        class Fragile(Hello):
            name = "fragile"
            def decode(self, data):
                if data == b"hi":
                    return {"greeting": "hi"}
                raise KeyError("unexpected")
            def text(self, fields):
                return fields["missing"]
        MODULE = Fragile
    """))
    (fragile,) = load_modules(["fragile"], context, [tmp_path])
    assert fragile.fields(bytes(64)) == {"decode_error": "KeyError: 'unexpected'"}
    assert fragile.describe(b"hi" + bytes(62)) == "(greeting: hi)"
