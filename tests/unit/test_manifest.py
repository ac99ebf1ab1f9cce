"""Seed manifests: validation errors, reconciling with BTF/kallsyms, discovery, dumping, the default manifest."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from ipftrace_exporter.errors import UsageError
from ipftrace_exporter.manifest import (
    FunctionSpec,
    Manifest,
    default_manifest_path,
    discover,
    dump_manifest,
    load_manifest,
    parse_manifest,
    reconcile,
)

REPO = Path(__file__).resolve().parents[2]
VMLINUX = "/sys/kernel/btf/vmlinux"
KALLSYMS = "/proc/kallsyms"
needs_kernel = pytest.mark.skipif(
    not (os.access(VMLINUX, os.R_OK) and os.access(KALLSYMS, os.R_OK)),
    reason=f"{VMLINUX} or {KALLSYMS} missing or unreadable",
)

SEED = """\
functions:
  - name: ip_rcv
    skb_pos: 1

  - name: ip_output
    skb_pos: 3

  - name: dev_hard_start_xmit
    skb_pos: 1
    egress: true
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    return path


# ---- loading and validation ---------------------------------------------------------------------------


def test_seed_format_loads(tmp_path: Path) -> None:
    manifest = load_manifest(write(tmp_path, SEED))
    assert manifest.functions == (
        FunctionSpec("ip_rcv", 1), FunctionSpec("ip_output", 3), FunctionSpec("dev_hard_start_xmit", 1, True))
    assert manifest.source.endswith("m.yaml")
    assert manifest.names() == ["ip_rcv", "ip_output", "dev_hard_start_xmit"]


BAD = [
    ("functions: [\n  - name: ip_rcv\n", "not valid YAML"),
    ("", "is empty"),
    ("# only a comment\n", "is empty"),
    ("- name: ip_rcv\n  skb_pos: 1\n", "expected a mapping with a 'functions' list, got a list"),
    ("functions: []\nprobes: []\n", "unknown top-level key 'probes'"),
    ("function:\n  - name: ip_rcv\n    skb_pos: 1\n", "unknown top-level key 'function'"),
    ("{}\n", "'functions' list is missing"),
    ("functions:\n  ip_rcv: 1\n", "'functions' list is a mapping, not a list"),
    ("functions: []\n", "'functions' list is empty"),
    ("functions:\n  - ip_rcv\n", "functions[0]: expected a mapping with name and skb_pos, got a string"),
    ("functions:\n  - skb_pos: 1\n", "line 2: functions[0]: missing 'name'"),
    ("functions:\n  - name: ip rcv\n    skb_pos: 1\n", "name 'ip rcv' is not a kernel function name"),
    ("functions:\n  - name: 42\n    skb_pos: 1\n", "name 42 is not a kernel function name"),
    ('functions:\n  - {name: "ip_rcv\\n", skb_pos: 1}\n', "name 'ip_rcv\\n' is not a kernel function name"),
    ("functions:\n  - name: ip_rcv\n", "functions[0] (ip_rcv): missing 'skb_pos'"),
    ("functions:\n  - name: ip_rcv\n    skb_pos: 0\n", "functions[0] (ip_rcv): skb_pos must be an integer 1-5, got 0"),
    ("functions:\n  - name: ip_rcv\n    skb_pos: 6\n", "skb_pos must be an integer 1-5, got 6"),
    ("functions:\n  - name: ip_rcv\n    skb_pos: '1'\n", "skb_pos must be an integer 1-5, got '1'"),
    ("functions:\n  - name: ip_rcv\n    skb_pos: true\n", "skb_pos must be an integer 1-5, got True"),
    ("functions:\n  - name: ip_rcv\n    skb_pos: 1.0\n", "skb_pos must be an integer 1-5, got 1.0"),
    ("functions:\n  - name: ip_rcv\n    skb_pos: 1\n    egress: 1\n", "egress must be true or false, got 1"),
    ("functions:\n  - name: ip_rcv\n    skb_pos: 1\n    skb_position: 2\n", "unknown key 'skb_position'"),
    (
        (
            "functions:\n  - name: ip_rcv\n    skb_pos: 1\n  - name: ip_output\n    skb_pos: 3\n"
            "  - name: ip_rcv\n    skb_pos: 1\n"
        ),
        "line 6: functions[2] (ip_rcv): duplicate of functions[0]",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_manifest_raises_one_line_usage_error(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as info:
        load_manifest(path)
    text_of_error = str(info.value)
    assert message in text_of_error
    assert text_of_error.startswith(f"manifest {path}")
    assert "\n" not in text_of_error


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"manifest .*nope\.yaml: file not found"):
        load_manifest(tmp_path / "nope.yaml")


def test_directory_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory"):
        load_manifest(tmp_path)


# ---- reconcile ----------------------------------------------------------------------------------------


class FakeBtf:
    """BTF as reconcile/discover see it: skb positions and which functions exist at all."""

    def __init__(self, skb: dict[str, int], others: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.skb = skb
        self.others = others

    def skb_functions(self) -> dict[str, int]:
        return dict(self.skb)

    def function_params(self, name: str) -> list[tuple[str, str]] | None:
        if name in self.skb:
            return [("skb", "struct sk_buff *")]
        return [("x", "int")] if name in self.others else None


def manifest_of(*specs: FunctionSpec) -> Manifest:
    return Manifest("test.yaml", specs)


def test_reconcile_btf_position_wins_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    btf = FakeBtf({"ip_rcv": 1, "ip_output": 3})
    with caplog.at_level(logging.WARNING):
        plan = reconcile(manifest_of(FunctionSpec("ip_rcv", 1), FunctionSpec("ip_output", 1)), btf,
                         {"ip_rcv", "ip_output"})
    assert plan.functions == [FunctionSpec("ip_rcv", 1), FunctionSpec("ip_output", 3)]
    assert plan.corrected == [("ip_output", 1, 3)]
    assert plan.missing == [] and plan.skipped == []
    assert [r.getMessage() for r in caplog.records] == [
        "manifest test.yaml: ip_output has skb_pos 1 but BTF says 3; using 3"]


def test_reconcile_skips_and_counts_absent_functions(caplog: pytest.LogCaptureFixture) -> None:
    btf = FakeBtf({"ip_rcv": 1, "inlined": 1, "far": 7}, others={"no_skb"})
    specs = [FunctionSpec("ip_rcv", 1), FunctionSpec("gone", 1), FunctionSpec("inlined", 1),
             FunctionSpec("no_skb", 1), FunctionSpec("far", 2), FunctionSpec("also_gone", 2, True)]
    with caplog.at_level(logging.WARNING):
        plan = reconcile(manifest_of(*specs), btf, {"ip_rcv", "far", "no_skb"})
    assert plan.functions == [FunctionSpec("ip_rcv", 1)]
    assert plan.missing == ["gone", "inlined", "also_gone"]
    assert [name for name, _ in plan.skipped] == ["no_skb", "far"]
    assert plan.skipped_count == 5
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 6  # one per problem: gone, inlined, no_skb, far (correction + skip), also_gone
    assert "manifest test.yaml: gone is not in this kernel's BTF; skipped" in messages
    assert any("inlined is not in kallsyms" in m for m in messages)
    assert any("no_skb has no struct sk_buff * parameter" in m for m in messages)
    assert any("far: skb is argument 7 in BTF" in m for m in messages)


def test_reconcile_without_btf_trusts_the_manifest_and_checks_kallsyms() -> None:
    plan = reconcile(manifest_of(FunctionSpec("ip_rcv", 2, True), FunctionSpec("gone", 1)), None, {"ip_rcv"})
    assert plan.functions == [FunctionSpec("ip_rcv", 2, True)]
    assert plan.missing == ["gone"]


def test_reconcile_keeps_egress() -> None:
    plan = reconcile(manifest_of(FunctionSpec("dev_hard_start_xmit", 1, True)),
                     FakeBtf({"dev_hard_start_xmit": 1}), None)
    assert plan.functions == [FunctionSpec("dev_hard_start_xmit", 1, True)]


# ---- discover and dump ----------------------------------------------------------------------------------


def test_discover_filters_by_position_kallsyms_and_glue() -> None:
    btf = FakeBtf({"b_fn": 2, "a_fn": 1, "far": 6, "not_in_kallsyms": 1, "__bpf_trace_kfree_skb": 2,
                   "dev_hard_start_xmit": 1})
    found = discover(btf, {"a_fn", "b_fn", "far", "__bpf_trace_kfree_skb", "dev_hard_start_xmit"})
    assert found == [FunctionSpec("a_fn", 1), FunctionSpec("b_fn", 2), FunctionSpec("dev_hard_start_xmit", 1, True)]


def test_dump_manifest_round_trips(tmp_path: Path) -> None:
    specs = [FunctionSpec("ip_rcv", 1), FunctionSpec("foo.isra.0", 2), FunctionSpec("dev_hard_start_xmit", 1, True)]
    text = dump_manifest(specs, comment="generated for Linux 6.18\nby a test")
    assert text.startswith("# generated for Linux 6.18\n# by a test\nfunctions:\n  - name: ip_rcv\n    skb_pos: 1\n")
    assert "    egress: true\n" in text
    assert load_manifest(write(tmp_path, text)).functions == tuple(specs)


def test_dump_manifest_quotes_names_yaml_would_retype() -> None:
    text = dump_manifest([FunctionSpec("yes", 1), FunctionSpec("null", 1)])
    assert parse_manifest(text).names() == ["yes", "null"]


# ---- the shipped default manifest and the running kernel ---------------------------------------------------


def test_default_manifest_is_valid_and_linked_from_the_top_level() -> None:
    manifest = load_manifest(default_manifest_path())
    link = REPO / "manifests" / "default.yaml"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert link.resolve() == Path(default_manifest_path()).resolve()
    names = manifest.names()
    for required in ("ip_rcv", "ip_local_deliver", "ip_output", "ip_finish_output2", "__dev_queue_xmit",
                     "dev_hard_start_xmit", "ipv6_rcv", "ip6_output", "udp_rcv", "tcp_v4_rcv", "icmp_rcv"):
        assert required in names
    assert [spec.name for spec in manifest.functions if spec.egress] == ["dev_hard_start_xmit"]


@pytest.fixture(scope="module")
def kernel():  # type: ignore[no-untyped-def]
    from ipftrace_exporter.kernel.btf import Btf
    from ipftrace_exporter.kernel.symbols import KernelSymbols

    if not (os.access(VMLINUX, os.R_OK) and os.access(KALLSYMS, os.R_OK)):
        pytest.skip(f"{VMLINUX} or {KALLSYMS} missing or unreadable")
    return Btf.load(VMLINUX), KernelSymbols(KALLSYMS)


@needs_kernel
def test_default_manifest_functions_all_exist_on_this_kernel(kernel, caplog) -> None:  # type: ignore[no-untyped-def]
    btf, symbols = kernel
    manifest = load_manifest(default_manifest_path())
    skb_functions = btf.skb_functions()
    for spec in manifest.functions:
        assert skb_functions.get(spec.name) == spec.skb_pos, spec.name
        assert spec.name in symbols, spec.name
    with caplog.at_level(logging.WARNING):
        plan = reconcile(manifest, btf, symbols)
    assert plan.functions == list(manifest.functions)
    assert plan.missing == [] and plan.corrected == [] and plan.skipped == []
    assert caplog.records == []


@needs_kernel
def test_reconcile_on_this_kernel_corrects_ip_output(kernel, caplog) -> None:  # type: ignore[no-untyped-def]
    btf, symbols = kernel
    manifest = parse_manifest("functions:\n  - name: ip_output\n    skb_pos: 1\n"
                              "  - name: no_such_function_here\n    skb_pos: 1\n", "k.yaml")
    with caplog.at_level(logging.WARNING):
        plan = reconcile(manifest, btf, symbols)
    assert plan.functions == [FunctionSpec("ip_output", 3)]
    assert plan.missing == ["no_such_function_here"]
    assert len(caplog.records) == 2


@needs_kernel
def test_discover_on_this_kernel(kernel) -> None:  # type: ignore[no-untyped-def]
    btf, symbols = kernel
    found = discover(btf, symbols)
    by_name = {spec.name: spec for spec in found}
    assert by_name["ip_rcv"].skb_pos == 1 and by_name["ip_output"].skb_pos == 3
    assert by_name["dev_hard_start_xmit"].egress
    assert all(1 <= spec.skb_pos <= 5 and spec.name in symbols for spec in found)
    assert not any(name.startswith("__bpf_trace_") for name in by_name)
    assert [spec.name for spec in found] == sorted(by_name)
    assert len(found) > 500


def test_a_missing_function_is_warned_once_however_often_it_is_planned(caplog: pytest.LogCaptureFixture) -> None:
    manifest = manifest_of(FunctionSpec("ipft_gone", 1))
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # -l, then one plan per backend tried
            assert reconcile(manifest, FakeBtf({"ip_rcv": 1}), None).missing == ["ipft_gone"]
    assert [r.getMessage() for r in caplog.records] == [
        "manifest test.yaml: ipft_gone is not in this kernel's BTF; skipped"]
