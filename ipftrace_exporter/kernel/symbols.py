"""Kernel symbols from /proc/kallsyms: address → function name, and the set of traceable text symbols."""

from __future__ import annotations

import bisect
import logging
import os
import threading
from typing import NamedTuple

from ipftrace_exporter.errors import KernelError

DEFAULT_PATH = "/proc/kallsyms"
HIDDEN_NAME = "unknown"  # what an address resolves to when kallsyms hides addresses (never the raw pointer)

log = logging.getLogger(__name__)

_TEXT_TYPES = frozenset("tTwW")
# Markers that end a text region: an address at or after one (and before the next function) is in no function.
_END_MARKERS = frozenset({"_etext", "_einittext", "__entry_text_end", "__irqentry_text_end",
                          "__softirqentry_text_end"})
# Padding before each function (CONFIG_CALL_PADDING / CFI); not a function of its own.
_PADDING_PREFIXES = ("__pfx_", "__cfi_")


class Symbol(NamedTuple):
    """One resolved address: the function, the offset into it and its module ('' for vmlinux)."""

    name: str
    offset: int
    module: str


class KernelSymbols:
    """kallsyms reader: `function_name(address)` and the names of text symbols; loaded lazily, once."""

    def __init__(self, path: str = DEFAULT_PATH) -> None:
        if not os.access(path, os.R_OK):
            raise KernelError(f"cannot read kernel symbols from {path}: missing or not readable")
        self._path = path
        self._loaded = False
        self._addresses: list[int] = []
        self._entries: list[tuple[str, str]] = []  # (name or "" for a non-function boundary, module)
        self._names: dict[str, str] = {}  # text symbol → module ('' for vmlinux)
        self._zeroed = False
        self._warned = False
        self._lock = threading.Lock()

    @property
    def path(self) -> str:
        """The kallsyms file this reader uses."""
        return self._path

    def load(self) -> None:
        """Read kallsyms now (about half a second for 200k symbols) instead of on first use; thread-safe."""
        self._load()

    def _load(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if not self._loaded:
                self._read()

    def _read(self) -> None:
        try:
            with open(self._path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError as exc:
            raise KernelError(f"cannot read kernel symbols from {self._path}: {exc.strerror or exc}") from None
        table: list[tuple[int, int, str, str]] = []
        names: dict[str, str] = {}
        nonzero = False
        for line in lines:
            parts = line.split()
            if len(parts) < 3:
                continue
            try:
                address = int(parts[0], 16)
            except ValueError:
                continue
            kind, name = parts[1], parts[2]
            module = parts[3][1:-1] if len(parts) > 3 and parts[3].startswith("[") else ""
            is_text = kind in _TEXT_TYPES
            is_function = is_text and name not in _END_MARKERS and not name.startswith(_PADDING_PREFIXES)
            if is_function:
                names.setdefault(name, module)
            if address:
                nonzero = True
            # Sort key: address, then functions before boundaries, then file order (first alias wins).
            table.append((address, 0 if is_function else 1, name if is_function else "", module))
        table.sort(key=lambda row: (row[0], row[1]))
        addresses: list[int] = []
        entries: list[tuple[str, str]] = []
        for address, _, name, module in table:
            if addresses and addresses[-1] == address:
                continue  # aliases: keep the first function name at this address
            addresses.append(address)
            entries.append((name, module))
        self._addresses = addresses
        self._entries = entries
        self._names = names
        self._zeroed = not nonzero
        self._loaded = True

    @property
    def addresses_hidden(self) -> bool:
        """True when every address reads as zero (kptr_restrict, or not root): names only."""
        self._load()
        return self._zeroed

    def resolve(self, address: int) -> Symbol | None:
        """The function containing `address` with the offset into it, or None when unknown."""
        self._load()
        if self._zeroed or address <= 0:
            return None
        index = bisect.bisect_right(self._addresses, address) - 1
        if index < 0:
            return None
        name, module = self._entries[index]
        if not name:
            return None
        return Symbol(name, address - self._addresses[index], module)

    def function_name(self, address: int) -> str:
        """Name of the text symbol containing `address`; "0x..." hex when unknown; HIDDEN_NAME when kallsyms hides
        addresses (a raw kernel address in a metric label or span would help whoever reads it defeat KASLR, and
        without CAP_SYSLOG the reader is not meant to learn it)."""
        symbol = self.resolve(address)
        if symbol is not None:
            return symbol.name
        if not self._zeroed:
            return f"0x{address:x}"
        if not self._warned:  # here, not when reading: kallsyms is read while BCC compiles, with stderr captured
            self._warned = True
            log.warning("%s lists every address as 0 (kernel.kptr_restrict; grant CAP_SYSLOG): the functions that "
                        "dropped packets cannot be named and are labelled %r", self._path, HIDDEN_NAME)
        return HIDDEN_NAME

    def module_of(self, name: str) -> str | None:
        """The module defining text symbol `name` ('' for vmlinux), or None when not a text symbol."""
        self._load()
        return self._names.get(name)

    def __contains__(self, name: object) -> bool:
        """True when `name` is a text symbol (a function a probe can name) of the running kernel."""
        self._load()
        return name in self._names

    def names(self) -> frozenset[str]:
        """Every function (text symbol, padding and section markers excluded) of vmlinux and modules."""
        self._load()
        return frozenset(self._names)
