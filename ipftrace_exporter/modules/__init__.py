"""Custom match/data modules (`-m`): the API (base.py), the loader (loader.py) and the built-ins gso, mark, netdev
and tcp. A module is found by built-in name, by the entry-point group `ipftrace_exporter.modules`, or by a path to a
.py file; `NAME=OPTIONS` passes options (e.g. `mark=0x10/0xff`)."""

from __future__ import annotations

from .base import (
    Fields,
    FieldValue,
    Module,
    ModuleContext,
    ModuleError,
    parse_options,
    parse_uint,
    parse_value_mask,
)
from .check import check_modules
from .loader import (
    BUILTINS,
    ENTRY_POINT_GROUP,
    LoadedModule,
    ModuleData,
    allocate,
    data_text,
    event_attributes,
    find_module,
    load_modules,
)

__all__ = [
    "BUILTINS",
    "ENTRY_POINT_GROUP",
    "FieldValue",
    "Fields",
    "LoadedModule",
    "Module",
    "ModuleContext",
    "ModuleData",
    "ModuleError",
    "allocate",
    "check_modules",
    "data_text",
    "event_attributes",
    "find_module",
    "load_modules",
    "parse_options",
    "parse_uint",
    "parse_value_mask",
]
