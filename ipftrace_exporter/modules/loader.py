"""Finding modules (built-in name, entry point, `<name>.py` in a directory the operator names with `--module-dir`),
giving each its own bytes of the 64, rendering their C, and decoding events' custom data for text, JSON and span
attributes.

Least privilege: a module runs as root with the daemon's capabilities, so its code comes only from the package,
from installed distributions (entry points), or from a directory given on the command line, never from a path in a
config value or a `-m` argument; that directory and the file must be owned by root (or us) and writable by no one
else (fsutil.untrusted_reason)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol

from ..cache import BoundedCache
from ..events import Event
from ..fsutil import untrusted_reason
from ..program import ModuleCode
from .base import (
    DATA_SIZE,
    MODULE_NAME,
    Fields,
    FieldValue,
    Module,
    ModuleContext,
    ModuleError,
    check_module_class,
)

ENTRY_POINT_GROUP = "ipftrace_exporter.modules"
BUILTINS: dict[str, str] = {
    "gso": "ipftrace_exporter.modules.gso:GsoModule",
    "mark": "ipftrace_exporter.modules.mark:MarkModule",
    "netdev": "ipftrace_exporter.modules.netdev:NetdevModule",
    "tcp": "ipftrace_exporter.modules.tcp:TcpModule",
}
_CACHE_LIMIT = 4096  # decoded custom data kept per distinct 64-byte value


class SpecLike(Protocol):
    """config.ModuleSpec's shape: the text as written, the name, and the option text after '='."""

    text: str
    name: str
    arg: str | None


def split_spec(spec: str | SpecLike) -> tuple[str, str | None, str]:
    """'mark=0x10/0xff' (or a config.ModuleSpec) -> (name, option text or None, text as written)."""
    if not isinstance(spec, str):
        return spec.name, spec.arg, spec.text
    name, sep, arg = spec.strip().partition("=")
    name = name.strip()
    if not name:
        raise ModuleError(f"module spec {spec!r}: empty module name (NAME or NAME=OPTIONS)")
    return name, (arg.strip() if sep else None), spec.strip()


def is_path(name: str) -> bool:
    """True when a module name is a path to a Python file rather than a registered name."""
    return "/" in name or name.endswith(".py")


def _import_builtin(target: str) -> type[Module]:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)  # type: ignore[no-any-return]


def entry_point_names() -> list[str]:
    """Names registered under the `ipftrace_exporter.modules` entry-point group."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def _from_entry_point(name: str) -> type[Module] | None:
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        return None
    try:
        loaded = found[0].load()
    except Exception as err:  # noqa: BLE001 - any import-time failure of third-party code
        raise ModuleError(f"module {name!r}: entry point {found[0].value!r} does not load: "
                          f"{type(err).__name__}: {err}") from None
    return check_module_class(loaded, name)


def _in_module_dirs(name: str, module_dirs: Sequence[str | Path]) -> Path | None:
    """The first `<dir>/<name>.py` that exists; ModuleError when it (or its directory) others could write."""
    for directory in module_dirs:
        path = Path(directory) / f"{name}.py"
        if not path.is_file():
            continue
        for what, checked in (("directory", Path(directory)), ("file", path)):
            reason = untrusted_reason(checked)
            if reason is not None:
                raise ModuleError(f"module {name!r}: {what} {str(checked)!r} is {reason}: not loaded "
                                  "(module code runs as root)")
        return path
    return None


def _from_file(path: Path, path_text: str) -> type[Module]:
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    module_name = f"ipftrace_exporter_user_module_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModuleError(f"module {path_text!r}: cannot be imported")
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = loaded
    try:
        spec.loader.exec_module(loaded)
    except Exception as err:  # noqa: BLE001 - any failure of the user's file
        sys.modules.pop(module_name, None)
        raise ModuleError(f"module {path_text!r}: {type(err).__name__}: {err}") from None
    chosen = getattr(loaded, "MODULE", None)
    if chosen is None:
        defined = [value for value in vars(loaded).values()
                   if isinstance(value, type) and issubclass(value, Module) and value is not Module
                   and value.__module__ == module_name]
        if len(defined) != 1:
            raise ModuleError(f"module {path_text!r}: defines {len(defined)} Module subclasses; "
                              "set MODULE = <the class> to choose one")
        chosen = defined[0]
    return check_module_class(chosen, path_text)


PATH_REFUSED = ("module files are not loaded from paths: put {file} in a directory and give that with "
                "--module-dir, then name the module ({stem})")


def find_module(name: str, module_dirs: Sequence[str | Path] = ()) -> type[Module]:
    """The Module class for a built-in name, an entry-point name, or `<name>.py` in one of `module_dirs`."""
    if is_path(name):
        stem = Path(name).stem
        raise ModuleError(f"module {name!r}: " + PATH_REFUSED.format(file=Path(name).name, stem=stem))
    if not MODULE_NAME.fullmatch(name):
        raise ModuleError(f"module {name!r}: not a module name (lower-case letters, digits, '_')")
    if name in BUILTINS:
        return _import_builtin(BUILTINS[name])
    cls = _from_entry_point(name)
    if cls is not None:
        return cls
    path = _in_module_dirs(name, module_dirs)
    if path is not None:
        return _from_file(path, name)
    known = ", ".join(sorted(set(BUILTINS) | set(entry_point_names())))
    where = f"nor {name}.py in {', '.join(str(d) for d in module_dirs)}" if module_dirs else "or --module-dir"
    raise ModuleError(f"module {name!r}: unknown module (known: {known}; {where})")


def allocate(modules: Sequence[Module]) -> list[int]:
    """Each module's offset in the 64 bytes of custom data (aligned, not overlapping). ModuleError when they do
    not fit."""
    offsets = []
    end = 0
    for module in modules:
        start = -(-end // module.align) * module.align if module.data_size else end
        offsets.append(start)
        end = start + module.data_size
    if end > DATA_SIZE:
        sizes = ", ".join(f"{m.name!r} {m.data_size}" for m in modules)
        raise ModuleError(f"modules need {end} bytes of custom data with alignment ({sizes}); "
                          f"at most {DATA_SIZE} fit: load fewer modules")
    return offsets


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" if line.strip() else "" for line in text.strip("\n").splitlines())


def render_module(module: Module, offset: int) -> ModuleCode:
    """The C of one module at its data offset: its declarations and hook functions, and the calls to them."""
    name = module.name
    declarations = module.c_declarations()
    match = module.c_match()
    data = module.c_data()
    for what, text in (("c_declarations", declarations), ("c_match", match), ("c_data", data)):
        if not isinstance(text, str):
            raise ModuleError(f"module {name!r}: {what}() returned {type(text).__name__}, not C text")
    if data.strip() and not module.data_size:
        raise ModuleError(f"module {name!r}: has C data code but data_size 0")
    parts = [f"/* module {name}: custom data bytes {offset}..{offset + module.data_size} */"]
    if declarations.strip():
        parts.append(declarations.strip("\n"))
    match_body = data_body = ""
    if match.strip():
        parts.append(f"static __always_inline int ipft_hook_{name}_match(struct sk_buff *skb, "
                     f"const struct ipft_tuple *t)\n{{\n{_indent(match)}\n    return 1;\n}}")
        match_body = f"    if (!ipft_hook_{name}_match(skb, t))\n        return 0;"
    if data.strip():
        parts.append(f"static __always_inline void ipft_hook_{name}_data(struct sk_buff *skb, "
                     f"const struct ipft_tuple *t, u8 *data)\n{{\n{_indent(data)}\n}}")
        data_body = f"    ipft_hook_{name}_data(skb, t, data + {int(offset)});"
    return ModuleCode("\n".join(parts) + "\n", match_body, data_body)


class LoadedModule:
    """A module ready for use: the instance, its byte range in the custom data, its C code and decoders."""

    __slots__ = ("_stop", "code", "module", "offset", "spec")

    def __init__(self, module: Module, offset: int, spec: str = "") -> None:
        self.module = module
        self.offset = offset
        self.spec = spec or module.name
        self._stop = offset + module.data_size
        self.code = render_module(module, offset)

    @property
    def name(self) -> str:
        """The module's name (`ipftrace.<name>.*` attributes, `modules.<name>` in JSON)."""
        return self.module.name

    @property
    def size(self) -> int:
        """How many bytes of custom data it owns."""
        return self.module.data_size

    def fields(self, data: bytes) -> Fields:
        """An event's 64 bytes of custom data -> this module's fields."""
        if not self.size:
            return {}
        try:
            return self.module.decode(bytes(data[self.offset:self._stop]))
        except Exception as err:  # noqa: BLE001 - a third-party decoder must not stop the output
            return {"decode_error": f"{type(err).__name__}: {err}"}

    def describe(self, data: bytes) -> str:
        """An event's 64 bytes of custom data -> this module's `Custom Data` text ('' when it has no fields)."""
        return self.text(self.fields(data))

    def text(self, fields: Fields) -> str:
        """Decoded fields -> text ('' for none; the default form when the module's own `text` fails)."""
        if not fields:
            return ""
        try:
            return self.module.text(fields)
        except Exception:  # noqa: BLE001 - a third-party formatter must not stop the output
            return Module.text(self.module, fields)

    def __repr__(self) -> str:
        return f"LoadedModule({self.spec!r}, offset={self.offset}, size={self.size})"


def load_modules(specs: Iterable[str | SpecLike], context: ModuleContext | None = None,
                 module_dirs: Sequence[str | Path] = ()) -> list[LoadedModule]:
    """Resolve specs such as 'gso' or 'mark=0x10/0xff' (or config.ModuleSpec) into loaded modules with
    non-overlapping data ranges; names not built in nor installed are looked up as `<name>.py` in `module_dirs`
    (operator-given directories). Raises ModuleError (a UsageError) naming the module."""
    context = context or ModuleContext()
    instances: list[tuple[Module, str]] = []
    seen: set[str] = set()
    for spec in specs:
        name, arg, text = split_spec(spec)
        cls = find_module(name, module_dirs)
        if cls.name in seen:
            raise ModuleError(f"module {cls.name!r}: given more than once")
        seen.add(cls.name)
        try:
            instance = cls(arg, context)
        except ModuleError:
            raise
        except ValueError as err:
            raise ModuleError(f"module {cls.name!r}: bad option {arg!r}: {err}") from None
        except Exception as err:  # noqa: BLE001 - third-party constructors
            raise ModuleError(f"module {cls.name!r}: {type(err).__name__}: {err}") from None
        instances.append((instance, text))
    offsets = allocate([instance for instance, _ in instances])
    return [LoadedModule(instance, offset, text) for (instance, text), offset in zip(instances, offsets)]


class ModuleData:
    """Decodes events' custom data for a set of loaded modules. Calling it gives the `Custom Data` text
    (output.PathFormatter's data_text); `fields` gives {module: {field: value}} for JSON; `attributes` gives
    `ipftrace.<module>.<field>` span attributes (spans.SpanEncoder's event_attributes)."""

    def __init__(self, modules: Sequence[LoadedModule]) -> None:
        self.modules = tuple(modules)
        # by the event's 64 data bytes: packets of a flow mostly repeat them
        self._fields: BoundedCache[bytes, dict[str, Fields]] = BoundedCache(_CACHE_LIMIT, self._decode)
        self._texts: BoundedCache[bytes, str] = BoundedCache(_CACHE_LIMIT, self._text)
        self._attributes: BoundedCache[bytes, dict[str, FieldValue]] = BoundedCache(_CACHE_LIMIT, self._attribute)

    def fields(self, event: Event) -> dict[str, Fields]:
        """{module name: fields} for one event (modules with nothing to say are left out)."""
        return self._fields[event.data]

    def __call__(self, event: Event) -> str:
        """The `Custom Data` text of an event: each module's text, space-separated."""
        return self._texts[event.data]

    def attributes(self, event: Event) -> dict[str, FieldValue]:
        """`ipftrace.<module>.<field>` -> value for one event."""
        return self._attributes[event.data]

    def _decode(self, data: bytes) -> dict[str, Fields]:
        found = {}
        for module in self.modules:
            values = module.fields(data)
            if values:
                found[module.name] = values
        return found

    def _text(self, data: bytes) -> str:
        decoded = self._fields[data]
        pieces = [module.text(decoded[module.name]) for module in self.modules if module.name in decoded]
        return " ".join(piece for piece in pieces if piece)

    def _attribute(self, data: bytes) -> dict[str, FieldValue]:
        return {f"ipftrace.{name}.{field}": value
                for name, values in self._fields[data].items() for field, value in values.items()}


def data_text(modules: Sequence[LoadedModule]) -> ModuleData:
    """The `Custom Data` text of an event for these modules (a callable; its `.fields` feeds JSON output)."""
    return ModuleData(modules)


def event_attributes(modules: Sequence[LoadedModule]) -> Callable[[Event], dict[str, FieldValue]]:
    """Span attributes `ipftrace.<module>.<field>` of an event, for spans.SpanEncoder(event_attributes=...)."""
    return ModuleData(modules).attributes
