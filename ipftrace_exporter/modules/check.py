"""Compile modules' C on its own, so that a compile error names the module that caused it."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import KernelError
from ..kernel.headers import HeaderTree
from ..program import ModuleCode, Program, bpf_source
from .base import ModuleError
from .loader import LoadedModule

_COMPILER_PREFIX = "the BPF program did not compile: "


def check_program(codes: Sequence[ModuleCode]) -> str:
    """A small C program holding the program's structs, these modules' code and one entry point calling their
    hooks (no BCC auto-attach prefix: compiled, never loaded)."""
    body = bpf_source()
    structs = body[: body.index("BPF_RINGBUF_OUTPUT")]  # the same split as program.render
    declarations = "\n".join(code.declarations for code in codes if code.declarations)
    match = "\n".join(code.match_body for code in codes if code.match_body)
    data = "\n".join(code.data_body for code in codes if code.data_body)
    return "\n".join([
        "/* ipftrace-exporter: module compile check */",
        structs,
        declarations,
        "static __always_inline int ipft_check_match(struct sk_buff *skb, const struct ipft_tuple *t)",
        f"{{\n{match}\n    return 1;\n}}",
        "static __always_inline void ipft_check_data(struct sk_buff *skb, const struct ipft_tuple *t, u8 *data)",
        f"{{\n{data}\n}}",
        "int ipft_module_check(struct bpf_raw_tracepoint_args *ctx)",
        "{",
        "    struct sk_buff *skb = (struct sk_buff *)ctx->args[0];",
        "    struct ipft_tuple t = {};",
        "    u8 data[64] = {};",
        "    if (!ipft_check_match(skb, &t))",
        "        return 0;",
        "    ipft_check_data(skb, &t, data);",
        "    return data[0];",
        "}",
        "",
    ])


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
