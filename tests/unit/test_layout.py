"""The package's layout is its data flow (README, "Architecture"): each module belongs to one stage, and no module
imports from a later stage. A new module must be placed in STAGES."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ipftrace_exporter"

# stage -> its modules, in the order data and dependencies flow
STAGES: dict[str, tuple[str, ...]] = {
    "shared": ("errors", "fsutil", "cache", "progress", "protocols", "probes", "names", "manifest", "ringbuf",
               "events"),
    "kernel side": ("kernel", "kernel.btf", "kernel.symbols", "kernel.headers", "kernel.privileges", "kernel.view",
                    "tracepoints", "pcapfilter", "flows", "program", "compilerexit", "collector", "modules", "modules.base",
                    "modules.loader", "modules.check", "modules.gso", "modules.mark", "modules.netdev", "modules.tcp",
                    "plan"),
    "assembly": ("paths",),
    "boundary": ("config",),
    "export": ("lossreport", "output", "metrics", "spans", "otlp", "webconfig", "httpserver"),
    "app": ("tracer", "survey", "daemon", "cli", "entry"),
}
RANK = {module: rank for rank, modules in enumerate(STAGES.values()) for module in modules}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path) -> set[str]:
    """The package's modules that `path` imports (relative imports)."""
    package = module_name(path).split(".") if path.name == "__init__.py" else module_name(path).split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = ".".join([*base, *([node.module] if node.module else [])])
            if target:
                out.add(target)
            else:  # `from . import x`
                out.update(alias.name for alias in node.names)
    return out


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py") if module_name(path)}


def test_every_module_has_a_stage() -> None:
    assert set(modules()) - set(RANK) == set()
    assert set(RANK) - set(modules()) == set()  # no stale entry


def test_no_module_imports_from_a_later_stage() -> None:
    later = []
    for name, path in modules().items():
        for target in imported(path):
            target = target if target in RANK else target.rsplit(".", 1)[0]
            if target in RANK and RANK[target] > RANK[name]:
                later.append(f"{name} ({list(STAGES)[RANK[name]]}) imports {target} ({list(STAGES)[RANK[target]]})")
    assert not later, later


def test_only_the_collector_imports_bcc() -> None:
    users = [name for name, path in modules().items()
             if any(isinstance(node, (ast.Import, ast.ImportFrom))
                    and any(alias.name == "bcc" or alias.name.startswith("bcc.") for alias in node.names)
                    or (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "bcc")
                    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))))]
    assert users == ["collector"]
