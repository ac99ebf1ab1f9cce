"""Custom match/data modules (`-m`). Built-ins and the module API live here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import UsageError
from ..events import Event
from ..program import ModuleCode


@dataclass(frozen=True)
class LoadedModule:
    """A module ready for use: its C code and its decoder."""

    name: str
    code: ModuleCode
    describe: Callable[[bytes], str]


def load_modules(specs: Sequence[str]) -> list[LoadedModule]:
    """Resolve module specs such as 'gso' or 'mark=0x10/0xff'."""
    for spec in specs:
        name = spec.split("=", 1)[0]
        raise UsageError(f"module {name!r}: unknown module")
    return []


def data_text(modules: Sequence[LoadedModule]) -> Callable[[Event], str]:
    """The `Custom Data` text of an event for these modules."""
    def render(event: Event) -> str:
        return " ".join(module.describe(event.data) for module in modules)
    return render
