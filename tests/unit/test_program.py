"""Program rendering for the function backends (pure: no BCC, no kernel) and the collector's load verdicts."""

from __future__ import annotations

import errno
import re

import pytest

from ipftrace_exporter.collector import LOADED, REFUSED, REJECTED, LoadFailure, ProgramCheck, VerifyReport
from ipftrace_exporter.flows import FlowSpec
from ipftrace_exporter.probes import Probe, ProbeKind, ProbeRole
from ipftrace_exporter.program import (
    FUNC_ADDRESS_SLOTS,
    KFUNC_PROBE_PLACEHOLDER,
    SPLICE_POINTS,
    ProbeSource,
    ProgramOptions,
    ProgramTemplate,
    bpf_source,
    kfunc_probe_constant,
    patch_ld_imm64,
    render,
    splice,
)

FLOWS = (FlowSpec(name="any"),)


def function_sources(kind: ProbeKind, positions: list[int]) -> list[ProbeSource]:
    sources = []
    for index, position in enumerate(positions):
        role = ProbeRole.EGRESS if index == len(positions) - 1 else ProbeRole.STEP
        probe = Probe(index, f"fn{index}", kind, position, role)
        sources.append(ProbeSource(probe, f"fn{index}", position - 1))
    return sources


def with_free_tracepoint(sources: list[ProbeSource]) -> list[ProbeSource]:
    probe = Probe(len(sources), "skb:kfree_skb", ProbeKind.TRACEPOINT, 1, ProbeRole.DROP)
    return [*sources, ProbeSource(probe, "kfree_skb", 0, location_arg=1, reason_arg=2)]


def definitions(text: str) -> list[str]:
    return re.findall(r"^int (\w+)\(", text, re.MULTILINE)


def test_kprobe_functions_share_one_entry_point_per_skb_position() -> None:
    sources = with_free_tracepoint(function_sources(ProbeKind.KPROBE, [1, 1, 2, 3, 1, 2]))
    program = render(sources, FLOWS)
    assert definitions(program.text) == ["ipft_kprobe_arg1", "ipft_kprobe_arg2", "ipft_kprobe_arg3",
                                         "ipft_tracepoint_6"]
    assert "PT_REGS_PARM2(ctx)" in program.text and "PT_REGS_PARM4" not in program.text
    assert "#define IPFT_KPROBE_IP(ctx) bpf_get_func_ip(ctx)" in program.text
    assert "BPF_HASH(ipft_funcs, u64, struct ipft_func, IPFT_FUNC_SLOTS);" in program.text
    assert f"#define IPFT_FUNC_SLOTS {max(64, FUNC_ADDRESS_SLOTS * 6)}\n" in program.text
    assert "#define IPFT_HAS_FUNCTIONS 1\n" in program.text
    entries = program.entries()
    assert [s.target for s in entries["ipft_kprobe_arg1"]] == ["fn0", "fn1", "fn4"]
    assert len(program.function_sources()) == 6


def test_kfunc_functions_share_entry_points_that_read_the_skb_from_its_btf_position() -> None:
    program = render(function_sources(ProbeKind.KFUNC, [2, 1, 7]), FLOWS)
    assert definitions(program.text) == ["ipft_kfunc_arg2", "ipft_kfunc_arg1", "ipft_kfunc_arg7"]
    assert "ipft_kfunc(ctx, (struct sk_buff *)ctx[1], (u32)probe, (int)(probe >> 32));" in program.text
    assert "(struct sk_buff *)ctx[6]" in program.text  # fentry reads any argument, not just registers 1-5


@pytest.mark.parametrize("func_ip", ["helper", "regs"])
def test_kfunc_entry_points_take_their_probe_from_a_placeholder_on_every_kernel(func_ip: str) -> None:
    """Each function loads its own copy (fentry), with its role and probe id in place of the placeholder: no
    lookup by address, no bpf_get_func_ip, no function map."""
    program = render(function_sources(ProbeKind.KFUNC, [1, 1, 2]), FLOWS, ProgramOptions(func_ip=func_ip))
    assert definitions(program.text) == ["ipft_kfunc_arg1", "ipft_kfunc_arg2"]  # still shared per position
    assert program.text.count("u64 probe = ipft_kfunc_probe();") == 2
    assert "bpf_get_func_ip" not in program.text and "ipft_function(ctx" not in program.text
    assert "#define IPFT_HAS_FUNCTIONS" not in program.text and not program.function_sources()


def test_the_c_file_loads_the_placeholder_the_collector_replaces() -> None:
    assert f'asm volatile("%0 = {KFUNC_PROBE_PLACEHOLDER:#x} ll" : "=r"(probe));' in bpf_source()


def test_a_kfunc_copy_s_constant_holds_its_role_above_its_probe_id() -> None:
    drop = ProbeSource(Probe(7, "kfree_skb", ProbeKind.KFUNC, 1, ProbeRole.DROP), "kfree_skb", 0)
    prepare = ProbeSource(Probe(70000, "udp_send_skb", ProbeKind.KFUNC, 1, ProbeRole.PREPARE), "udp_send_skb", 0)
    assert kfunc_probe_constant(drop) == (2 << 32) | 7
    assert kfunc_probe_constant(prepare) == (4 << 32) | 70000  # prepare and release are one role to the kernel


def test_without_the_func_ip_helper_kprobes_use_the_instruction_pointer() -> None:
    kprobe = render(function_sources(ProbeKind.KPROBE, [1, 1]), FLOWS, ProgramOptions(func_ip="regs"))
    assert definitions(kprobe.text) == ["ipft_kprobe_arg1"]
    assert "(PT_REGS_IP(ctx) - 1)" in kprobe.text and "bpf_get_func_ip" not in kprobe.text


def test_the_placeholder_is_replaced_in_every_64_bit_load_of_it_and_nowhere_else() -> None:
    low, high = KFUNC_PROBE_PLACEHOLDER & 0xFFFFFFFF, KFUNC_PROBE_PLACEHOLDER >> 32
    ld_imm64 = bytes([0x18, 0x01, 0, 0]) + low.to_bytes(4, "little") + bytes(4) + high.to_bytes(4, "little")
    mov = bytes([0xB7, 0x00, 0, 0]) + low.to_bytes(4, "little")  # r0 = low 32 bits only: not the placeholder
    code = mov + ld_imm64 + mov + ld_imm64
    patched = patch_ld_imm64(code, KFUNC_PROBE_PLACEHOLDER, 0xFFFFFFFF81234560)
    assert patched[8:24] == bytes([0x18, 0x01, 0, 0]) + (0x81234560).to_bytes(4, "little") + bytes(4) + \
        (0xFFFFFFFF).to_bytes(4, "little")
    assert patched[:8] == mov and patched[24:32] == mov and patched[32:] == patched[8:24]
    with pytest.raises(ValueError, match="not found"):
        patch_ld_imm64(mov * 4, KFUNC_PROBE_PLACEHOLDER, 1)


def test_a_tracepoint_only_program_has_no_function_map() -> None:
    program = render(with_free_tracepoint([]), FLOWS)
    assert "#define IPFT_HAS_FUNCTIONS" not in program.text  # the map and ipft_function() are #ifdef'd out
    assert "#define IPFT_FUNC_SLOTS" not in program.text and "#define IPFT_KPROBE_IP" not in program.text
    assert definitions(program.text) == ["ipft_tracepoint_0"]


def test_kprobes_reach_only_five_register_arguments() -> None:
    with pytest.raises(ValueError, match="arguments 1-5, skb is 6"):
        render(function_sources(ProbeKind.KPROBE, [6]), FLOWS)


def test_unknown_func_ip_mode_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="func_ip"):
        ProgramOptions(func_ip="guess")


@pytest.mark.parametrize(("number", "refused", "words"), [
    (errno.EPERM, True, "EPERM"),
    (524, True, "ENOTSUPP"),
    (errno.EOPNOTSUPP, True, "does not support"),
    (errno.EACCES, False, "verifier rejected"),
    (errno.EINVAL, False, "verifier rejected"),
    (errno.ENOENT, False, "no such function"),
])
def test_a_load_failure_tells_a_refusal_from_a_verifier_verdict(number: int, refused: bool, words: str) -> None:
    failure = LoadFailure("kfunc__ip_rcv", number, "R1 invalid mem access" if not refused else "")
    assert failure.refused is refused
    assert words in failure.describe()


def test_verify_report_finds_the_check_of_a_probe_by_its_entry_point() -> None:
    program = render(function_sources(ProbeKind.KPROBE, [1, 2]), FLOWS)
    first, second = program.sources
    report = VerifyReport([
        ProgramCheck("ipft_kprobe_arg1", ProbeKind.KPROBE, LOADED, "", (first,)),
        ProgramCheck("ipft_kprobe_arg2", ProbeKind.KPROBE, REJECTED, "bad", (second,)),
        ProgramCheck("ipft_kfunc_arg1", ProbeKind.KFUNC, REFUSED, "EPERM", ()),
    ])
    assert report.for_source(first).status == LOADED  # type: ignore[union-attr]
    assert [check.entry for check in report.rejected] == ["ipft_kprobe_arg2"]
    assert [check.ok for check in report.by_kind(ProbeKind.KFUNC)] == [True]


def test_the_c_side_knows_the_same_icmp_protocols_as_python() -> None:
    import re as _re

    from ipftrace_exporter.program import bpf_source
    from ipftrace_exporter.protocols import ICMP_PROTOCOLS

    (body,) = _re.findall(r"#define IPFT_IS_ICMP\(l4proto\) \((.*)\)", bpf_source())
    assert {int(n) for n in _re.findall(r"\(l4proto\) == (\d+)", body)} == ICMP_PROTOCOLS


def test_a_tracepoint_entry_passes_its_device_argument_and_others_pass_none() -> None:
    xmit = ProbeSource(Probe(0, "net:net_dev_xmit", ProbeKind.TRACEPOINT, 1), "net_dev_xmit", 0, device_arg=2)
    text = render(with_free_tracepoint([xmit]), FLOWS).text
    assert "ipft_handle(ctx, (struct sk_buff *)ctx->args[0], 0, 0, 0, 0, 0, (struct net_device *)ctx->args[2], 1);" in text
    assert "ipft_handle(ctx, (struct sk_buff *)ctx->args[0], 1, 0, 2, (u64)ctx->args[1], (u32)ctx->args[2], 0, 1);" in text


def test_the_socket_read_tracepoint_tells_the_kernel_so_and_functions_are_no_tracepoints() -> None:
    read = ProbeSource(Probe(0, "skb:skb_copy_datagram_iovec", ProbeKind.TRACEPOINT, 1), "skb_copy_datagram_iovec", 0)
    text = render(with_free_tracepoint([read]), FLOWS).text
    assert "ipft_handle(ctx, (struct sk_buff *)ctx->args[0], 0, 0, 0, 0, 0, 0, 2);" in text  # IPFT_TP_SOCKET_READ
    assert "ipft_hit(ctx, skb, 0, 0, IPFT_ROLE_STEP, 0, 0, 0, IPFT_TP_NONE, ip, 0);" in text  # a kprobe: no read


def test_the_cloned_bit_from_btf_is_written_into_the_program() -> None:
    sources = with_free_tracepoint([])
    assert "#define IPFT_CLONED_BIT 1026" in render(sources, FLOWS, ProgramOptions(cloned_bit=1026)).text
    assert "#define IPFT_CLONED_BIT -1" in render(sources, FLOWS).text
    with pytest.raises(ValueError, match="cloned_bit"):
        ProgramOptions(cloned_bit=-3)


# ---- the splice points --------------------------------------------------------------------------------------

MARKER = re.compile(r"/\* @ipft:\w+ \*/")


def filled(**overrides: str) -> dict[str, str]:
    return {name: f"/* fill {name} */" for name in SPLICE_POINTS} | overrides


def test_each_splice_point_stands_once_in_the_c_file_in_order() -> None:
    found = re.findall(r"^[ \t]*/\* @ipft:(\w+) \*/[ \t]*$", bpf_source(), re.MULTILINE)
    assert found == list(SPLICE_POINTS)


def test_every_point_is_filled_once_and_no_marker_is_left() -> None:
    text = splice(filled())
    for name in SPLICE_POINTS:
        assert text.count(f"/* fill {name} */\n") == 1
    assert not MARKER.search(text)
    assert text.index("/* fill settings */") < text.index("struct ipft_tuple {") < text.index("/* fill flows */")
    assert text.index("/* fill functions */") < text.index("#ifdef IPFT_HAS_FUNCTIONS") < text.index("/* fill entries */")


def test_an_empty_fill_removes_the_marker_line() -> None:
    text = splice(filled(module_match=""))
    assert not MARKER.search(text)
    assert "int ipft_module_match(struct sk_buff *skb, const struct ipft_tuple *t)\n{\n    return 1;\n}" in text


def test_a_rendered_program_has_no_marker_left() -> None:
    sources = with_free_tracepoint(function_sources(ProbeKind.KPROBE, [1, 2]))
    text = render(sources, FLOWS).text
    assert not MARKER.search(text) and "@ipft:" not in text
    # defined before its first use (ipft_handle keeps the function backends' own steps under it)
    assert text.index("ipft_match_headers") < text.index("BPF_RINGBUF_OUTPUT")
    assert text.index("#define IPFT_HAS_FUNCTIONS") < text.index("#ifdef IPFT_HAS_FUNCTIONS")


def test_an_unknown_splice_name_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="no splice point 'prelude'"):
        splice(filled(prelude="x"))


def test_a_point_without_a_fill_is_refused_by_name() -> None:
    fills = filled()
    del fills["flows"]
    with pytest.raises(ValueError, match="splice point 'flows' is not filled"):
        splice(fills)


def test_a_template_missing_a_point_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="splice point 'entries' is missing"):
        ProgramTemplate("/* @ipft:settings */\nint x;\n", ("settings", "entries"))


def test_a_template_with_a_point_twice_or_an_unknown_marker_is_refused() -> None:
    with pytest.raises(ValueError, match="'settings' stands more than once"):
        ProgramTemplate("/* @ipft:settings */\n/* @ipft:settings */\n", ("settings",))
    with pytest.raises(ValueError, match="splice point 'other' in the program text is not one of settings"):
        ProgramTemplate("/* @ipft:settings */\n  /* @ipft:other */\n", ("settings",))
