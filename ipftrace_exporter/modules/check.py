"""Compile modules' C on its own, so that a compile error names the module that caused it."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import KernelError
from ..kernel.headers import HeaderTree
from ..program import ModuleCode, Program, module_splices, splice
from .base import ModuleError
from .loader import LoadedModule

_COMPILER_PREFIX = "the BPF program did not compile: "


# The check's one entry point: the modules' hooks as the program calls them (compiled, never loaded).
CHECK_ENTRY = """\
int ipft_module_check(struct bpf_raw_tracepoint_args *ctx)
{
    struct sk_buff *skb = (struct sk_buff *)ctx->args[0];
    struct ipft_tuple t = {};
    u8 data[64] = {};
    if (!ipft_module_match(skb, &t))
        return 0;
    ipft_module_data(skb, &t, data);
    return data[0];
}
"""


def check_program(codes: Sequence[ModuleCode]) -> str:
    """The program's C file rendered as the program is (program.splice, program.module_splices) with
    IPFT_MODULE_CHECK defined: its structs, these modules' code in the program's hooks, and one entry point calling
    the hooks; no maps, flows or probes."""
    return splice({
        "settings": "/* ipftrace-exporter: module compile check */\n#define IPFT_MODULE_CHECK 1",
        **module_splices(codes),
        "flows": "",
        "functions": "",
        "entries": CHECK_ENTRY,
    })


def _compile_error(text: str, headers: HeaderTree) -> str | None:
    """The compiler's first error line for `text`, or None when it compiles."""
    from ..collector import Collector

    collector = Collector(Program(text), headers)
    try:
        collector.compile()
    except KernelError as err:
        message = str(err)
        message = message.removeprefix(_COMPILER_PREFIX)
        return message
    finally:
        collector.close()
    return None


def check_modules(modules: Sequence[LoadedModule], headers: HeaderTree) -> None:
    """Compile all modules' C together; if that fails, each alone, and raise ModuleError naming the module (or
    the modules that only fail together) with the compiler's first error line."""
    if not modules:
        return
    error = _compile_error(check_program([m.code for m in modules]), headers)
    if error is None:
        return
    if len(modules) == 1:
        raise ModuleError(f"module {modules[0].name!r}: its C code does not compile: {error}")
    for module in modules:
        alone = _compile_error(check_program([module.code]), headers)
        if alone is not None:
            raise ModuleError(f"module {module.name!r}: its C code does not compile: {alone}")
    names = ", ".join(repr(m.name) for m in modules)
    raise ModuleError(f"modules {names}: their C code does not compile together: {error}")
