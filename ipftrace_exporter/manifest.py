"""Seed-format function manifests: load and validate, reconcile with BTF and kallsyms, discover, dump.

The format is the seed's YAML::

    functions:
      - name: ip_rcv
        skb_pos: 1          # 1-based position of the struct sk_buff * argument (1-5: kprobe registers)
      - name: dev_hard_start_xmit
        skb_pos: 1
        egress: true        # optional: reaching this function ends the packet's path
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol

import yaml

from ipftrace_exporter.config import MAX_CONFIG_BYTES, BoundedLoader
from ipftrace_exporter.errors import UsageError

log = logging.getLogger(__name__)

MIN_SKB_POS = 1
MAX_SKB_POS = 5  # kprobes read the skb from argument registers 1-5
MANIFEST_KEYS = frozenset({"functions"})
ENTRY_KEYS = frozenset({"name", "skb_pos", "egress"})
# Device transmit: the packet leaves the host here (the seed's egress function).
DEFAULT_EGRESS = frozenset({"dev_hard_start_xmit"})
# Tracepoint glue (runs only for an attached tracepoint program or perf event): never discovered.
TRACING_GLUE_PREFIXES = ("__bpf_trace_", "__probestub_", "trace_event_raw_event_", "perf_trace_")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_YAML_WORDS = frozenset({"yes", "no", "true", "false", "on", "off", "null"})  # plain scalars YAML retypes


class SkbFunctionSource(Protocol):
    """What reconcile/discover need from BTF (ipftrace_exporter.kernel.btf.Btf)."""

    def skb_functions(self) -> dict[str, int]: ...

    def function_params(self, name: str) -> list[tuple[str, str]] | None: ...


class SymbolSource(Protocol):
    """What reconcile/discover need from kallsyms (ipftrace_exporter.kernel.symbols.KernelSymbols)."""

    def __contains__(self, name: object) -> bool: ...


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """One kernel function to probe: its name, the skb argument position and whether it ends the path."""

    name: str
    skb_pos: int
    egress: bool = False


@dataclass(frozen=True)
class Manifest:
    """A validated manifest: where it came from and its functions in file order."""

    source: str
    functions: tuple[FunctionSpec, ...]

    def names(self) -> list[str]:
        """Function names in file order."""
        return [spec.name for spec in self.functions]


@dataclass
class ManifestPlan:
    """What to probe on this kernel after reconciling a manifest with BTF and kallsyms."""

    functions: list[FunctionSpec] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # not in BTF or not in kallsyms: skipped
    corrected: list[tuple[str, int, int]] = field(default_factory=list)  # (name, manifest pos, BTF pos)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why) present but unusable

    @property
    def skipped_count(self) -> int:
        """Functions of the manifest that will not be probed (missing or unusable)."""
        return len(self.missing) + len(self.skipped)


# ---- loading ------------------------------------------------------------------------------------


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate the manifest at `path`; UsageError (one line naming file and entry) if bad."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)  # never more (a full manifest for ~2300 functions is ~100 KB)
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise UsageError(f"manifest {source}: file not found") from None
    except IsADirectoryError:
        raise UsageError(f"manifest {source}: is a directory, expected a YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"manifest {source}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UsageError(f"manifest {source}: larger than {MAX_CONFIG_BYTES // 1024} KiB: not a manifest")
    return parse_manifest(text, source)


def parse_manifest(text: str, source: str = "<manifest>") -> Manifest:
    """Validate manifest YAML `text`; `source` names it in error messages."""
    try:
        loader = BoundedLoader(text)  # depth and alias expansion bounded, as for configs
    except yaml.YAMLError as exc:  # the reader rejects control characters before parsing starts
        raise UsageError(f"manifest {source}: not valid YAML: {_yaml_problem(exc)}") from None
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise UsageError(f"manifest {source}: not valid YAML: {_yaml_problem(exc)}") from None
    finally:
        loader.dispose()
    if data is None:
        raise UsageError(f"manifest {source}: is empty; expected a mapping with a 'functions' list")
    if not isinstance(data, dict):
        raise UsageError(f"manifest {source}: expected a mapping with a 'functions' list, got {_kind(data)}")
    unknown = sorted(str(key) for key in data if key not in MANIFEST_KEYS)
    if unknown:
        raise UsageError(f"manifest {source}: unknown top-level key {unknown[0]!r} (allowed: functions)")
    entries = data.get("functions")
    if not isinstance(entries, list):
        what = "missing" if "functions" not in data else f"{_kind(entries)}, not a list"
        raise UsageError(f"manifest {source}: 'functions' list is {what}")
    if not entries:
        raise UsageError(f"manifest {source}: 'functions' list is empty")
    lines = _entry_lines(node)
    functions: list[FunctionSpec] = []
    first_index: dict[str, int] = {}
    for index, entry in enumerate(entries):
        where = f"manifest {source}" + (f" line {lines[index]}" if index < len(lines) else "")
        spec = _entry(entry, index, where)
        if spec.name in first_index:
            raise UsageError(
                f"{where}: functions[{index}] ({spec.name}): duplicate of functions[{first_index[spec.name]}]"
            )
        first_index[spec.name] = index
        functions.append(spec)
    return Manifest(source, tuple(functions))


def _entry(entry: Any, index: int, where: str) -> FunctionSpec:
    label = f"functions[{index}]"
    if not isinstance(entry, dict):
        raise UsageError(f"{where}: {label}: expected a mapping with name and skb_pos, got {_kind(entry)}")
    name = entry.get("name")
    if name is None:
        raise UsageError(f"{where}: {label}: missing 'name'")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):  # (match: `$` lets a trailing "\n" in)
        raise UsageError(f"{where}: {label}: name {name!r} is not a kernel function name")
    label = f"{label} ({name})"
    unknown = sorted(str(key) for key in entry if key not in ENTRY_KEYS)
    if unknown:
        raise UsageError(f"{where}: {label}: unknown key {unknown[0]!r} (allowed: name, skb_pos, egress)")
    if "skb_pos" not in entry:
        raise UsageError(f"{where}: {label}: missing 'skb_pos'")
    skb_pos = entry["skb_pos"]
    if isinstance(skb_pos, bool) or not isinstance(skb_pos, int) or not MIN_SKB_POS <= skb_pos <= MAX_SKB_POS:
        raise UsageError(
            f"{where}: {label}: skb_pos must be an integer {MIN_SKB_POS}-{MAX_SKB_POS}, got {skb_pos!r}"
        )
    egress = entry.get("egress", False)
    if not isinstance(egress, bool):
        raise UsageError(f"{where}: {label}: egress must be true or false, got {egress!r}")
    return FunctionSpec(name, skb_pos, egress)


def _entry_lines(node: yaml.Node | None) -> list[int]:
    """1-based line of each entry of the 'functions' sequence (for error messages)."""
    if not isinstance(node, yaml.MappingNode):
        return []
    for key, value in node.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "functions" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def _yaml_problem(exc: yaml.YAMLError) -> str:
    context = getattr(exc, "context", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if context:
        problem = f"{context}, {problem}"
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else str(problem)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def default_manifest_path() -> str:
    """Path of the curated IPv4/IPv6 receive and transmit manifest shipped with the package."""
    return str(resources.files("ipftrace_exporter").joinpath("manifests", "default.yaml"))


# ---- reconciling with the running kernel ----------------------------------------------------------


_WARNED: set[str] = set()


def _warn_once(message: str, *args: object) -> None:
    """A manifest warning, once per process: plans are made again for each backend tried and by -l."""
    text = message % args
    if text not in _WARNED:
        _WARNED.add(text)
        log.warning("%s", text)


def reconcile(
    manifest: Manifest,
    btf: SkbFunctionSource | None,
    symbols: SymbolSource | None,
    max_skb_pos: int = MAX_SKB_POS,
) -> ManifestPlan:
    """Check `manifest` against this kernel: BTF positions win (one warning each), absent functions skipped.

    A function is absent when BTF (if given) has no such FUNC or kallsyms (if given) has no such text
    symbol (inlined, renamed, or a compiler clone such as `foo.isra.0`): one warning each, listed in
    `plan.missing`. A function BTF knows but without a `struct sk_buff *` parameter, or whose BTF
    position is above `max_skb_pos`, is skipped with a warning and listed in `plan.skipped`.
    """
    plan = ManifestPlan()
    skb_functions = btf.skb_functions() if btf is not None else {}
    for spec in manifest.functions:
        if btf is not None and spec.name not in skb_functions:
            if btf.function_params(spec.name) is None:
                _warn_once("manifest %s: %s is not in this kernel's BTF; skipped", manifest.source, spec.name)
                plan.missing.append(spec.name)
            else:
                why = "has no struct sk_buff * parameter in BTF"
                _warn_once("manifest %s: %s %s; skipped", manifest.source, spec.name, why)
                plan.skipped.append((spec.name, why))
            continue
        if symbols is not None and spec.name not in symbols:
            _warn_once(
                "manifest %s: %s is not in kallsyms (inlined or renamed on this kernel); skipped",
                manifest.source, spec.name,
            )
            plan.missing.append(spec.name)
            continue
        skb_pos = spec.skb_pos
        if btf is not None:
            btf_pos = skb_functions[spec.name]
            if btf_pos != spec.skb_pos:
                _warn_once(
                    "manifest %s: %s has skb_pos %d but BTF says %d; using %d",
                    manifest.source, spec.name, spec.skb_pos, btf_pos, btf_pos,
                )
                plan.corrected.append((spec.name, spec.skb_pos, btf_pos))
                skb_pos = btf_pos
            if skb_pos > max_skb_pos:
                why = f"skb is argument {skb_pos} in BTF, beyond the {max_skb_pos} a probe can read"
                _warn_once("manifest %s: %s: %s; skipped", manifest.source, spec.name, why)
                plan.skipped.append((spec.name, why))
                continue
        plan.functions.append(FunctionSpec(spec.name, skb_pos, spec.egress))
    return plan


def discover(
    btf: SkbFunctionSource,
    symbols: SymbolSource | None,
    max_skb_pos: int = MAX_SKB_POS,
    egress: Iterable[str] = DEFAULT_EGRESS,
) -> list[FunctionSpec]:
    """Every BTF function with a `struct sk_buff *` in arguments 1..max_skb_pos that kallsyms has, by name.

    Functions named in `egress` (default: device transmit, as the seed's manifests) are marked egress.
    Tracepoint glue (TRACING_GLUE_PREFIXES) is left out.
    """
    egress_names = frozenset(egress)
    return [
        FunctionSpec(name, pos, name in egress_names)
        for name, pos in sorted(btf.skb_functions().items())
        if MIN_SKB_POS <= pos <= max_skb_pos
        and not name.startswith(TRACING_GLUE_PREFIXES)
        and (symbols is None or name in symbols)
    ]


# ---- writing --------------------------------------------------------------------------------------


def dump_manifest(functions: Iterable[FunctionSpec], comment: str | None = None) -> str:
    """Seed-format YAML for `functions` (what `ipftrace -l -o yaml` prints); `comment` becomes # lines."""
    lines: list[str] = []
    if comment:
        lines.extend(f"# {line}".rstrip() for line in comment.splitlines())
    specs = list(functions)
    if not specs:
        lines.append("functions: []")
    else:
        lines.append("functions:")
        for spec in specs:
            name = spec.name if _plain_yaml(spec.name) else json.dumps(spec.name)
            lines.append(f"  - name: {name}")
            lines.append(f"    skb_pos: {spec.skb_pos}")
            if spec.egress:
                lines.append("    egress: true")
    return "\n".join(lines) + "\n"


def _plain_yaml(name: str) -> bool:
    """True when `name` can be written unquoted and reads back as the same string."""
    return bool(_NAME_RE.match(name)) and name.lower() not in _YAML_WORDS
