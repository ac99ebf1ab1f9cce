"""The only module that imports BCC: compile the rendered program, load and attach its probes (raw tracepoints,
kprobes, kfunc/fentry), poll the ring buffer for raw records, read the counter maps, detach. It also verifies
programs without attaching them (load through the kernel verifier) and tells in milliseconds whether the kernel
accepts kfunc programs at all. Everything it hands out is plain bytes, ints and strings."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import platform
import resource
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Self

from .compilerexit import first_error, watched_compile
from .errors import AttachError, KernelError
from .events import RECORD_SIZE, UNTRACED_REASONS
from .kernel.headers import HeaderTree
from .probes import ProbeKind
from .program import (
    KFUNC_PROBE_PLACEHOLDER,
    ROLE_CODES,
    ProbeSource,
    Program,
    kfunc_probe_constant,
    patch_ld_imm64,
)
from .ringbuf import FRAME_HEADER_SIZE, RingReader, direct_read_supported, frame_size

log = logging.getLogger(__name__)

STAT_EVENTS, STAT_LOST, STAT_MATCHED, STAT_TRACK_FULL = range(4)
MAX_RECORDS_PER_POLL = 8192
BASE_CFLAGS = ("-w", "-Wno-unused-value")
# BPF program types (enum bpf_prog_type) the collector loads.
PROG_KPROBE, PROG_RAW_TRACEPOINT, PROG_TRACING = 2, 17, 26
PROG_TYPES = {ProbeKind.KPROBE: PROG_KPROBE, ProbeKind.TRACEPOINT: PROG_RAW_TRACEPOINT, ProbeKind.KFUNC: PROG_TRACING}
# errno values meaning "the kernel does not allow this program type here" (not a verifier verdict).
REFUSAL_ERRNOS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, 524})  # 524: ENOTSUPP (kernel-internal)
# Functions tried, in order, by the kfunc trial load (the first one BTF has is used).
KFUNC_TRIAL_FUNCTIONS = ("ip_rcv", "netif_receive_skb", "__netif_receive_skb", "ip_output", "consume_skb")
# `r0 = 0; exit`: the smallest program the verifier accepts.
_TRIVIAL_PROGRAM = bytes([0xB7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])
LOADED, ATTACHED, REFUSED, REJECTED = "loaded", "attached", "refused", "rejected"
# bpf(2): the command and the attach types the raw loader uses (uapi/linux/bpf.h).
BPF_PROG_LOAD, BPF_LINK_CREATE = 5, 28
ATTACH_TRACE_RAW_TP, ATTACH_TRACE_FENTRY, ATTACH_TRACE_KPROBE_MULTI = 23, 24, 42
_NR_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351, "riscv64": 280}
_VERIFIER_LOG_SIZE = 1 << 20


class _ProgLoadAttr(ctypes.Structure):
    """The BPF_PROG_LOAD part of union bpf_attr (fields up to log_true_size, Linux 6.4; older kernels accept
    the zero tail)."""

    _fields_ = [
        ("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32), ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64), ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16), ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32), ("prog_btf_fd", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32), ("func_info", ctypes.c_uint64), ("func_info_cnt", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32), ("line_info", ctypes.c_uint64), ("line_info_cnt", ctypes.c_uint32),
        ("attach_btf_id", ctypes.c_uint32), ("attach_prog_fd", ctypes.c_uint32), ("core_relo_cnt", ctypes.c_uint32),
        ("fd_array", ctypes.c_uint64), ("core_relos", ctypes.c_uint64), ("core_relo_rec_size", ctypes.c_uint32),
        ("log_true_size", ctypes.c_uint32),
    ]


def _bpf(command: int, attr: ctypes.Structure) -> int:
    """bpf(2): the result (an fd or 0), or -errno."""
    number = _NR_BPF.get(platform.machine())
    if number is None:
        raise KernelError(f"no bpf(2) syscall number known for {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.syscall(number, command, ctypes.byref(attr), ctypes.sizeof(attr))
    return int(result) if result >= 0 else -(ctypes.get_errno() or errno.EINVAL)


def load_raw_program(insns: int, size: int, license_text: bytes, name: str, prog_type: int, attach_type: int,
                     btf_id: int = 0) -> int:
    """bpf(BPF_PROG_LOAD) of compiled instructions with an expected attach type, bound to vmlinux BTF id `btf_id`
    where the type needs one (fentry: a FUNC; tp_btf: a btf_trace_* typedef; kprobe-multi: none). BCC derives the
    id from the program's name by parsing vmlinux BTF on every load; taking it from our own BTF reader makes
    hundreds of loads cheap. Returns the fd; raises LoadFailure with the verifier's last words."""
    license_buffer = ctypes.create_string_buffer(license_text)
    attr = _ProgLoadAttr(prog_type=prog_type, insn_cnt=size // 8, insns=insns,
                         license=ctypes.addressof(license_buffer), expected_attach_type=attach_type,
                         attach_btf_id=btf_id, prog_name=name.encode()[:15])
    fd = _bpf(BPF_PROG_LOAD, attr)
    if fd >= 0:
        return fd
    failure = -fd
    if failure in REFUSAL_ERRNOS:
        raise LoadFailure(name, failure)
    log_buffer = ctypes.create_string_buffer(_VERIFIER_LOG_SIZE)
    attr.log_level, attr.log_size, attr.log_buf = 1, _VERIFIER_LOG_SIZE, ctypes.addressof(log_buffer)
    fd = _bpf(BPF_PROG_LOAD, attr)
    if fd >= 0:  # loads with a log: take it
        return fd
    lines = log_buffer.value.decode(errors="replace").splitlines()
    log.debug("verifier log of %s:\n%s", name, "\n".join(lines[-40:]))
    raise LoadFailure(name, -fd or failure, _last_words(lines))


class _KprobeMultiLinkAttr(ctypes.Structure):
    """The BPF_LINK_CREATE part of union bpf_attr for BPF_TRACE_KPROBE_MULTI (Linux 5.18+)."""

    _fields_ = [
        ("prog_fd", ctypes.c_uint32), ("target_fd", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32), ("multi_flags", ctypes.c_uint32), ("cnt", ctypes.c_uint32),
        ("syms", ctypes.c_uint64), ("addrs", ctypes.c_uint64), ("cookies", ctypes.c_uint64),
    ]


class LinkFailure(KernelError):
    """The kernel refused a BPF link: `errno` says why."""

    def __init__(self, message: str, number: int) -> None:
        super().__init__(message)
        self.errno = number


def link_kprobe_multi(prog_fd: int, functions: Sequence[str]) -> int:
    """One kprobe-multi link attaching `prog_fd` (loaded with expected attach type BPF_TRACE_KPROBE_MULTI) to
    every function in `functions` at once (the kernel resolves the names through ftrace). Returns the link fd
    (closing it detaches all of them); raises LinkFailure when the kernel refuses the set."""
    names = [ctypes.c_char_p(name.encode()) for name in functions]
    array = (ctypes.c_char_p * len(names))(*names)
    attr = _KprobeMultiLinkAttr(prog_fd=prog_fd, attach_type=ATTACH_TRACE_KPROBE_MULTI, cnt=len(names),
                                syms=ctypes.addressof(array))
    fd = _bpf(BPF_LINK_CREATE, attr)
    if fd < 0:
        raise LinkFailure(f"kprobe-multi link for {len(names)} function{'s' if len(names) != 1 else ''} failed ({_errno_text(-fd)})", -fd)
    return fd


@functools.lru_cache(maxsize=8)
def kprobe_multi_refusal(functions: Sequence[str] = KFUNC_TRIAL_FUNCTIONS) -> str | None:
    """Why this kernel makes no kprobe-multi links (before 5.18, or built without CONFIG_FPROBE as Debian's 6.1),
    or None when it made one: a two-instruction program linked to the first of `functions` it knows, then
    closed. Costs milliseconds."""
    code = ctypes.create_string_buffer(_TRIVIAL_PROGRAM, len(_TRIVIAL_PROGRAM))
    try:
        prog = load_raw_program(ctypes.addressof(code), len(_TRIVIAL_PROGRAM), b"GPL", "ipft_multi_try", PROG_KPROBE,
                                ATTACH_TRACE_KPROBE_MULTI)
    except LoadFailure as failure:
        return f"a kprobe-multi program did not load: {failure.describe()}"
    try:
        for function in functions:
            try:
                os.close(link_kprobe_multi(prog, [function]))
                return None
            except LinkFailure as failure:
                if failure.errno in (errno.ENOENT, errno.ESRCH, errno.EINVAL):
                    continue  # not traceable on this kernel: try the next one
                return str(failure) + (" (the kernel is built without CONFIG_FPROBE)"
                                       if failure.errno == errno.EOPNOTSUPP else "")
        return f"none of {', '.join(functions)} could be linked"
    finally:
        os.close(prog)


def raise_open_file_limit(needed: int) -> None:
    """Raise RLIMIT_NOFILE to at least `needed` (per-function kprobes and fentry links hold one fd each); as
    root the hard limit is raised too. Logged, never fatal: attaching then fails per probe with EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed <= soft:
        return
    want_hard = hard if hard == resource.RLIM_INFINITY or hard >= needed else needed
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, want_hard))
    except (ValueError, OSError) as err:
        capped = hard if hard != resource.RLIM_INFINITY else needed
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, capped), hard))
        except (ValueError, OSError):
            pass
        log.warning("could not raise the open-file limit to %d (%s): some probes may fail to attach", needed, err)
        return
    log.debug("open-file limit raised from %d to %d", soft, needed)


@contextlib.contextmanager
def _captured_stderr(compiling: str = "") -> Iterator[list[str]]:
    """Capture what the C library (clang inside BCC) writes to fd 2; yields a list filled with its lines. With
    `compiling` (what is compiled), should the compiler end the process meanwhile, that is said in one line."""
    lines: list[str] = []
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        watch = watched_compile(sink.fileno(), saved, compiling) if compiling else contextlib.nullcontext()
        try:
            with watch:
                os.dup2(sink.fileno(), 2)
                try:
                    yield lines
                finally:
                    os.dup2(saved, 2)
        finally:
            os.close(saved)
        sink.seek(0)
        lines.extend(sink.read().decode(errors="replace").splitlines())


def _import_bcc():  # type: ignore[no-untyped-def]
    try:
        import bcc
    except ImportError as err:
        raise KernelError(f"BCC's Python module is not importable ({err}): run scripts/setup.sh") from None
    return bcc


def _errno_text(number: int) -> str:
    name = errno.errorcode.get(number, "ENOTSUPP" if number == 524 else str(number))
    return f"{name}: {os.strerror(number)}" if number in errno.errorcode else name


class LoadFailure(Exception):
    """The kernel did not load a BPF program: `errno` and the verifier's last words."""

    def __init__(self, name: str, number: int, detail: str = "") -> None:
        self.name = name
        self.errno = number
        self.detail = detail
        super().__init__(self.describe())

    @property
    def refused(self) -> bool:
        """True when the kernel refuses this program type outright (EPERM, ENOTSUPP): not a verifier verdict."""
        return self.errno in REFUSAL_ERRNOS

    def describe(self) -> str:
        """One line: what the kernel answered."""
        if self.errno == errno.EPERM:
            what = "the kernel refused to load it (EPERM: not permitted on this kernel)"
        elif self.refused:
            what = f"the kernel does not support it ({_errno_text(self.errno)})"
        elif self.errno == errno.ENOENT:
            what = "not found (ENOENT: no such function in the kernel's BTF)"
        else:
            what = f"the verifier rejected it ({_errno_text(self.errno)})"
        return f"{what}{': ' + self.detail if self.detail else ''}"


@dataclass(slots=True)
class AttachReport:
    """Which probes attached and which failed (with the kernel's reason)."""

    attached: list[ProbeSource] = field(default_factory=list)
    failed: list[tuple[ProbeSource, str]] = field(default_factory=list)
    multi_links: int = 0  # kprobe-multi links made (each attaches many functions in one call)


@dataclass(frozen=True, slots=True)
class ProgramCheck:
    """What the kernel said when one entry point was loaded without attaching it."""

    entry: str  # the C entry point
    kind: ProbeKind
    status: str  # LOADED (verifier accepted), ATTACHED (and a trial attach worked), REFUSED (type not allowed), REJECTED
    reason: str  # the kernel's answer ("" when loaded)
    sources: tuple[ProbeSource, ...]  # the probes that run this entry point
    load_name: str = ""  # the name it was loaded under (kfunc: kfunc__<function>, which selects the BTF id)

    @property
    def ok(self) -> bool:
        """True when the program compiled and the kernel did not find fault with it (loaded, or type refused)."""
        return self.status != REJECTED


@dataclass(slots=True)
class VerifyReport:
    """Per entry point: compiled (always: verify raises otherwise) and loaded, refused or rejected."""

    checks: list[ProgramCheck] = field(default_factory=list)

    def by_kind(self, kind: ProbeKind) -> list[ProgramCheck]:
        """The checks of one probe kind."""
        return [check for check in self.checks if check.kind is kind]

    def for_source(self, source: ProbeSource) -> ProgramCheck | None:
        """The check of the program `source` runs (its entry point; for kfunc, its role's copy of it)."""
        return next((check for check in self.checks if source in check.sources), None)

    @property
    def rejected(self) -> list[ProgramCheck]:
        """Entry points the verifier rejected (a bug in the program, never expected)."""
        return [check for check in self.checks if check.status == REJECTED]


@contextlib.contextmanager
def _kernel_source(path: str) -> Iterator[None]:
    """BCC_KERNEL_SOURCE=path while BCC compiles (it reads it then), restored afterwards so child processes and
    later header choices do not inherit it."""
    previous = os.environ.get("BCC_KERNEL_SOURCE")
    os.environ["BCC_KERNEL_SOURCE"] = path
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("BCC_KERNEL_SOURCE", None)
        else:
            os.environ["BCC_KERNEL_SOURCE"] = previous


def compile_check(header_dir: str, text: str, cflags: Iterable[str] = ()) -> bool:
    """True when BCC compiles `text` against the header tree (nothing is loaded into the kernel). The compiler's
    complaints are logged at debug level, not printed."""
    bcc = _import_bcc()
    with _kernel_source(header_dir), _captured_stderr("a compile check") as output:
        try:
            module = bcc.BPF(text=text.encode(), cflags=[*BASE_CFLAGS, *cflags])
            module.cleanup()
            ok = True
        except Exception:  # noqa: BLE001 - BCC raises bare Exception on compile errors
            ok = False
    if not ok:
        log.debug("compile check against %s failed: %s", header_dir, first_error(output))
    return ok


def _bcc_lib():  # type: ignore[no-untyped-def]
    lib = _import_bcc().libbcc.lib
    if not getattr(lib.bcc_prog_load, "argtypes", None):
        lib.bcc_prog_load.restype = ctypes.c_int
        lib.bcc_prog_load.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p,
                                      ctypes.c_uint, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return lib


def _failed_errno(result: int) -> int:
    """BCC's load calls return -errno, or -1 with errno set."""
    return -result if result < -1 else (ctypes.get_errno() or errno.EINVAL)


def _last_words(lines: list[str]) -> str:
    """The useful line of what BCC/libbpf/the verifier printed."""
    useful = [line.strip() for line in lines if line.strip() and not line.startswith("processed ")]
    for line in reversed(useful):
        if not line.startswith(("bpf: Failed to load program", "libbpf:")):
            return line[:200]
    return useful[-1][:200] if useful else ""


@functools.lru_cache(maxsize=8)
def kfunc_refusal(functions: Sequence[str] = KFUNC_TRIAL_FUNCTIONS) -> str | None:
    """Why this kernel will not run kfunc (fentry) programs, or None when it loads one. Costs milliseconds: a
    two-instruction program is loaded as `kfunc__<function>` for the first of `functions` that BTF has."""
    lib = _bcc_lib()
    code = ctypes.create_string_buffer(_TRIVIAL_PROGRAM, len(_TRIVIAL_PROGRAM))
    for function in functions:
        with _captured_stderr() as output:
            fd = lib.bcc_prog_load(PROG_TRACING, f"kfunc__{function}".encode(), code, len(_TRIVIAL_PROGRAM), b"GPL",
                                   0, 0, None, 0)
            number = _failed_errno(fd) if fd < 0 else 0
        if fd >= 0:
            os.close(fd)
            return None
        if number == errno.ENOENT:
            continue  # not in this kernel's BTF: try the next one
        failure = LoadFailure(f"kfunc__{function}", number, "" if number in REFUSAL_ERRNOS else _last_words(output))
        return f"a minimal kfunc program for {function} did not load: {failure.describe()}"
    return f"none of {', '.join(functions)} is in the kernel's BTF, so no kfunc program can be tried"


class Collector:
    """Compiles a Program, loads and attaches its probes, then moves raw records from the ring buffer to the caller.

    `addresses` maps kernel function names to their kallsyms addresses: kprobe entry points find their probe by
    the traced function's address (see program.py), so a kprobe function without an address cannot be probed.
    `btf_ids` maps kernel function names to their vmlinux BTF FUNC ids: kfunc programs are then loaded directly
    (see load_raw_program); without an id BCC's loader looks it up by name (one BTF parse per function).
    """

    def __init__(self, program: Program, headers: HeaderTree,
                 addresses: Mapping[str, Sequence[int]] | None = None,
                 btf_ids: Mapping[str, int] | None = None, kprobe_multi: bool = False) -> None:
        self.program = program
        self.headers = headers
        self.addresses = addresses or {}
        self.btf_ids = btf_ids or {}
        self.kprobe_multi = kprobe_multi  # attach shared kprobe entry points with one kprobe-multi link each
        self._links: list[int] = []  # kprobe-multi link fds (closing one detaches all its functions)
        self._bpf = None  # type: ignore[var-annotated]
        self._reader: RingReader | None = None  # direct reader of the ring buffer's mapping (x86)
        self._records: list[bytes] = []  # frames from libbpf's callback (elsewhere)
        # the last poll stopped at its batch limit (MAX_RECORDS_PER_POLL): older records may be waiting
        self.backlog = False
        self._lock = threading.Lock()
        self.closed = False

    # ---- life cycle ---------------------------------------------------------------------------------
    def compile(self) -> None:
        """Compile the program (raises KernelError with the compiler's first error line). Nothing is loaded."""
        if self._bpf is not None:
            return
        bcc = _import_bcc()

        class _Module(bcc.BPF):  # type: ignore[misc,name-defined]
            def _trace_autoload(self) -> None:  # we load and attach explicitly (and can tell why it failed)
                return None

        with _kernel_source(self.headers.path), _captured_stderr("the BPF program") as output:
            try:
                self._bpf = _Module(text=self.program.text.encode(), cflags=[*BASE_CFLAGS, *self.headers.cflags])
                failed = False
            except Exception:  # noqa: BLE001 - BCC: bare Exception("Failed to compile BPF module <text>")
                failed = True
        if failed:
            log.debug("compiler output:\n%s", "\n".join(output))
            raise KernelError(f"the BPF program did not compile: {first_error(output)} (headers: {self.headers.path})")
        self.closed = False

    def _load(self, entry: str, kind: ProbeKind, name: str | None = None) -> int:
        """Load entry point `entry` (as program `name`) through BCC's loader; returns the fd (kept until close).
        Raises LoadFailure."""
        load_name = name or entry
        return self._load_once(entry, load_name, functools.partial(self._bcc_load, PROG_TYPES[kind], load_name))

    def _bcc_load(self, prog_type: int, name: str, start: int, size: int) -> int:
        """The instructions at `start` loaded by BCC's loader as program `name` (a kfunc__<function> name selects
        the function's BTF id). Raises LoadFailure."""
        bpf, lib = self._bpf, _bcc_lib()
        with _captured_stderr() as output:
            fd = lib.bcc_func_load(bpf.module, prog_type, name.encode(), start, size,
                                   lib.bpf_module_license(bpf.module), lib.bpf_module_kern_version(bpf.module),
                                   0, None, 0, None, 0xFFFFFFFF)
            number = _failed_errno(fd) if fd < 0 else 0
        if fd < 0:
            log.debug("loading %s: errno %d\n%s", name, number, "\n".join(output))
            detail = "" if number in REFUSAL_ERRNOS else _last_words(output)
            raise LoadFailure(name, number, detail)
        return int(fd)

    def _load_kfunc_copy(self, source: ProbeSource, name: str, attach_type: int, btf_id: int | None) -> int:
        """Load the copy of `source`'s kfunc entry point made for its function (its role and probe id in place of
        program.KFUNC_PROBE_PLACEHOLDER) as program `name`: bound to `btf_id` with the raw loader, or by name
        through BCC's without one. The fd is kept until close. Raises LoadFailure."""
        def load(start: int, size: int) -> int:
            try:
                code = patch_ld_imm64(ctypes.string_at(start, size), KFUNC_PROBE_PLACEHOLDER,
                                      kfunc_probe_constant(source))
            except ValueError as err:
                raise KernelError(f"{source.entry_name}: {err}") from None
            patched = ctypes.create_string_buffer(code, len(code))
            if btf_id is None:
                return self._bcc_load(PROG_TRACING, name, ctypes.addressof(patched), size)
            module_license = _bcc_lib().bpf_module_license(self._bpf.module)
            return load_raw_program(ctypes.addressof(patched), size, module_license, name, PROG_TRACING,
                                    attach_type, btf_id)

        return self._load_once(source.entry_name, name, load)

    def _load_once(self, entry: str, name: str, load: Callable[[int, int], int]) -> int:
        """The fd of program `name` made from entry point `entry`: loaded by `load(start, size)` the first time,
        then kept in BCC's table (closed by cleanup) and reused."""
        bpf = self._bpf
        known = bpf.funcs.get(name.encode())
        if known is not None:
            return int(known.fd)
        lib = _bcc_lib()
        start = lib.bpf_function_start(bpf.module, entry.encode())
        if not start:
            raise KernelError(f"entry point {entry} is not in the compiled program")
        fd = load(start, lib.bpf_function_size(bpf.module, entry.encode()))
        bpf.funcs[name.encode()] = _import_bcc().BPF.Function(bpf, name.encode(), fd)
        return fd

    def _load_kfunc(self, source: ProbeSource) -> tuple[str, int]:
        """Load `source`'s function's copy of its entry point as that function's fentry program: (name, fd)."""
        name = f"kfunc__{source.target}"
        return name, self._load_kfunc_copy(source, name, ATTACH_TRACE_FENTRY, self.btf_ids.get(source.target))

    def verify_tp_btf(self, stand_ins: Mapping[int, tuple[str, int]]) -> VerifyReport:
        """Load each kfunc entry point, once per role among its functions (each role is a copy of its own), as a
        tp_btf program on a stand-in tracepoint whose sk_buff sits at the same argument (`stand_ins`: skb
        position -> (tracepoint, btf_trace_* typedef id)). fentry and tp_btf programs see the same BTF-typed u64
        argument array, so this runs the verifier over the kfunc body on kernels that refuse fentry. Positions
        without a stand-in are reported REFUSED with the reason."""
        self.compile()
        report = VerifyReport()
        for entry, sources in self._checked_groups():
            if sources[0].probe.kind is not ProbeKind.KFUNC:
                continue
            stand_in = stand_ins.get(sources[0].skb_arg + 1)
            if stand_in is None:
                report.checks.append(ProgramCheck(entry, ProbeKind.KFUNC, REFUSED,
                                                  f"no tracepoint has an sk_buff at argument {sources[0].skb_arg + 1}",
                                                  sources))
                continue
            tracepoint, btf_id = stand_in
            name = f"tp_btf__{tracepoint}"
            try:
                self._load_kfunc_copy(sources[0], name, ATTACH_TRACE_RAW_TP, btf_id)
            except LoadFailure as failure:
                status = REFUSED if failure.refused else REJECTED
                report.checks.append(ProgramCheck(entry, ProbeKind.KFUNC, status, failure.describe(), sources, name))
            else:
                report.checks.append(ProgramCheck(entry, ProbeKind.KFUNC, LOADED, "", sources, name))
                self._forget(name)
        return report

    def _checked_groups(self) -> Iterator[tuple[str, tuple[ProbeSource, ...]]]:
        """(entry point, its probes) as the verifier checks them: a kfunc entry point once per role among its
        functions (the copies of one role walk the same path), every other one once."""
        for entry, sources in self.program.entries().items():
            if sources[0].probe.kind is not ProbeKind.KFUNC:
                yield entry, sources
                continue
            by_role: dict[int, list[ProbeSource]] = {}
            for source in sources:
                by_role.setdefault(ROLE_CODES[source.probe.role], []).append(source)
            for group in by_role.values():
                yield entry, tuple(group)

    def _forget(self, name: str) -> None:
        function = self._bpf.funcs.pop(name.encode(), None) if self._bpf is not None else None
        if function is not None:
            os.close(function.fd)

    def verify(self, try_tracepoints: bool = False) -> VerifyReport:
        """Compile, then load every entry point through the kernel verifier without attaching it, and unload.
        A kfunc entry point is loaded once per role among its functions, as the first such function's fentry
        program. With `try_tracepoints`, each raw tracepoint is also attached and detached at once (status
        ATTACHED). Raises KernelError only when the program does not compile; the kernel's verdicts are in the
        report."""
        self.compile()
        report = VerifyReport()
        refused: dict[ProbeKind, str] = {}
        for entry, sources in self._checked_groups():
            kind = sources[0].probe.kind
            name = f"kfunc__{sources[0].target}" if kind is ProbeKind.KFUNC else entry
            if kind in refused:  # the kernel refuses this program type: asking again changes nothing
                report.checks.append(ProgramCheck(entry, kind, REFUSED, refused[kind], sources, name))
                continue
            try:
                if kind is ProbeKind.KFUNC:
                    self._load_kfunc(sources[0])
                else:
                    self._load(entry, kind, name)
            except LoadFailure as failure:
                status = REFUSED if failure.refused else REJECTED
                if failure.refused:
                    refused[kind] = failure.describe()
                report.checks.append(ProgramCheck(entry, kind, status, failure.describe(), sources, name))
            else:
                status, reason = LOADED, ""
                if try_tracepoints and kind is ProbeKind.TRACEPOINT:
                    status, reason = self._try_attach(entry, sources[0].target)
                report.checks.append(ProgramCheck(entry, kind, status, reason, sources, name))
                self._forget(name)
        return report

    def _try_attach(self, entry: str, tracepoint: str) -> tuple[str, str]:
        bpf = self._bpf
        try:
            bpf.attach_raw_tracepoint(tp=tracepoint.encode(), fn_name=entry.encode())
        except Exception as err:  # noqa: BLE001 - BCC: bare Exception
            return LOADED, f"attach failed: {str(err).strip().splitlines()[0] if str(err).strip() else err!r}"
        bpf.detach_raw_tracepoint(tp=tracepoint.encode())
        return ATTACHED, ""

    def attach(self) -> AttachReport:
        """Load and attach every probe; failures are collected, not raised, unless none attached. What BCC and
        libbcc print while attaching is logged at debug level, never shown raw."""
        self.compile()
        report = AttachReport()
        unmapped = self._fill_function_map()
        functions = sum(1 for source in self.program.sources if source.is_function)
        raise_open_file_limit(functions * 2 + 256)  # per-function kprobes and fentry links hold fds
        kprobes = sum(1 for source in self.program.sources if source.probe.kind is ProbeKind.KPROBE)
        if kprobes and kprobes + 64 > _import_bcc().BPF.get_probe_limit():
            os.environ["BCC_PROBE_LIMIT"] = str(kprobes + 64)  # BCC caps open kprobes per process (default 1000)
        with _captured_stderr() as output:
            self._attach_each(report, self._attach_multi(report, unmapped), unmapped)
        if output:
            log.debug("BCC while attaching:\n%s", "\n".join(output[-200:]))
        if not report.attached:
            self.close()
            first = report.failed[0][1] if report.failed else "no probes"
            raise AttachError(f"no probe could be attached ({len(report.failed)} failed; first: {first})")
        self._open_ring_buffer()
        self._arm()
        _release_free_heap()
        return report

    def _arm(self) -> None:
        """Switch every attached probe on at once (they do nothing until then)."""
        table = self._bpf[b"ipft_armed"]
        table[table.Key(0)] = table.Leaf(1)

    def _attach_multi(self, report: AttachReport, unmapped: Mapping[str, str]) -> list[ProbeSource]:
        """With kprobe_multi: one link per shared kprobe entry point for all its functions. Returns the sources
        still to attach one by one (all of them without kprobe_multi, and a group whose link the kernel
        refused)."""
        if not self.kprobe_multi:
            return list(self.program.sources)
        pending: list[ProbeSource] = []
        for entry, sources in self.program.entries().items():
            if sources[0].probe.kind is not ProbeKind.KPROBE:
                pending.extend(sources)
                continue
            wanted = [source for source in sources if source.target not in unmapped]
            if not wanted:
                pending.extend(sources)
                continue
            try:
                name = f"{entry}__multi"
                fd = self._load_once(entry, name, functools.partial(self._load_kprobe_multi, name))
                self._links.append(link_kprobe_multi(fd, sorted({source.target for source in wanted})))
            except (LoadFailure, KernelError) as err:
                log.debug("kprobe-multi for %s: %s; attaching its %d functions one by one", entry, err, len(wanted))
                pending.extend(sources)
                continue
            report.attached.extend(wanted)
            report.multi_links += 1
            pending.extend(source for source in sources if source.target in unmapped)
        return pending

    def _load_kprobe_multi(self, name: str, start: int, size: int) -> int:
        module_license = _bcc_lib().bpf_module_license(self._bpf.module)
        return load_raw_program(start, size, module_license, name, PROG_KPROBE, ATTACH_TRACE_KPROBE_MULTI)

    def _attach_each(self, report: AttachReport, sources: Sequence[ProbeSource], unmapped: Mapping[str, str]) -> None:
        """Attach `sources` one probe each. fentry programs (one verifier pass per function, and on older kernels
        an RCU-tasks grace period per attach) are loaded and attached from several threads once the first has
        shown that the kernel takes them; everything else, and fentry without a known BTF id (BCC's loader),
        in order."""
        refused: dict[ProbeKind, str] = {}
        concurrent: list[ProbeSource] = []
        attached_kinds: set[ProbeKind] = set()

        def settle(source: ProbeSource, reason: str | None, refusal: bool) -> None:
            if reason is None:
                report.attached.append(source)
                attached_kinds.add(source.probe.kind)
                return
            report.failed.append((source, reason))
            if refusal:
                refused[source.probe.kind] = reason

        for source in sources:
            kind = source.probe.kind
            if source.target in unmapped:
                report.failed.append((source, unmapped[source.target]))
            elif kind in refused:
                report.failed.append((source, refused[kind]))
            elif kind is ProbeKind.KFUNC and self.btf_ids.get(source.target) and kind in attached_kinds:
                concurrent.append(source)
            else:
                settle(source, *self._attach_outcome(source))
        if not concurrent:
            return
        with ThreadPoolExecutor(ATTACH_THREADS, thread_name_prefix="ipftrace-attach") as pool:
            for source, outcome in zip(concurrent, pool.map(self._attach_outcome, concurrent)):
                settle(source, *outcome)

    def _attach_outcome(self, source: ProbeSource) -> tuple[str | None, bool]:
        """Load and attach one probe: (why it failed, or None; whether the kernel refuses its program type)."""
        try:
            self._attach_one(self._bpf, source)
        except LoadFailure as failure:
            log.debug("probe %s was not loaded: %s", source.probe.name, failure.describe())
            return failure.describe(), failure.refused
        except Exception as err:  # noqa: BLE001 - BCC raises bare Exception with the kernel's message
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            log.debug("probe %s did not attach: %s", source.probe.name, reason)
            return reason, False
        return None, False

    def _open_ring_buffer(self) -> None:
        """Read the ring buffer through its mapping where the CPU allows it (many records per copy), else through
        libbpf's callback (one ctypes call per record)."""
        table = self._bpf[b"events"]
        if direct_read_supported():
            try:
                self._reader = RingReader(table.map_fd, table.max_entries, RECORD_SIZE)
                return
            except OSError as err:
                log.warning("the ring buffer could not be mapped (%s); reading it through libbpf", err)
        table.open_ring_buffer(self._on_record)

    def _fill_function_map(self) -> dict[str, str]:
        """Write address -> (probe id, role) for the kprobe entry points; returns {function: why} for functions
        that cannot be probed (no address)."""
        shared = self.program.function_sources()
        if not shared:
            return {}
        table = self._bpf[b"ipft_funcs"]
        unmapped: dict[str, str] = {}
        for source in shared:
            addresses = [address for address in self.addresses.get(source.target, ()) if address]
            written = 0
            for address in addresses:
                try:
                    table[table.Key(address)] = table.Leaf(source.probe.id, ROLE_CODES[source.probe.role])
                    written += 1
                except Exception as err:  # noqa: BLE001 - map full: BCC raises bare Exception
                    log.debug("function %s at 0x%x: %s", source.target, address, err)
            if not written:
                unmapped[source.target] = ("no kallsyms address (symbol missing or addresses hidden)"
                                           if not addresses else "the function map is full")
        return unmapped

    def _attach_one(self, bpf, source: ProbeSource) -> None:  # type: ignore[no-untyped-def]
        kind = source.probe.kind
        if kind is ProbeKind.TRACEPOINT:
            self._load(source.entry_name, kind)
            bpf.attach_raw_tracepoint(tp=source.target.encode(), fn_name=source.entry_name.encode())
        elif kind is ProbeKind.KPROBE:
            self._load(source.entry_name, kind)
            try:
                bpf.attach_kprobe(event=source.target.encode(), fn_name=source.entry_name.encode())
            except Exception:  # noqa: BLE001 - BCC: bare Exception; libbcc printed the errno (captured)
                raise KernelError("kprobe attach failed: not traceable here (inlined, notrace, or a name shared "
                                  "by several static functions)") from None
        elif kind is ProbeKind.KFUNC:
            name, fd = self._load_kfunc(source)
            link = _bcc_lib().bpf_attach_kfunc(fd)
            if link < 0:
                self._forget(name)
                raise KernelError(f"fentry attach failed ({_errno_text(_failed_errno(link))}): "
                                  "not traceable (inlined, notrace, or busy)")
            bpf.kfunc_entry_fds[name.encode()] = link  # BPF.cleanup() closes it: detached
        else:
            raise KernelError(f"attaching {kind.value} probes is not supported by this collector")

    def close(self) -> None:
        """Detach every probe and free the maps (idempotent)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        for link in self._links:
            os.close(link)
        self._links.clear()
        if self._bpf is not None and not self.closed:
            try:
                with _captured_stderr() as output:
                    _close_kprobes_concurrently(self._bpf)
                    self._bpf.cleanup()
                if output:
                    log.debug("BCC while detaching:\n%s", "\n".join(output[-50:]))
            finally:
                self.closed = True
                self._bpf = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- data ---------------------------------------------------------------------------------------
    def _on_record(self, _ctx, data, size) -> int:  # type: ignore[no-untyped-def]
        records = self._records
        # libbpf hands out the record; the ring's header sits just before it
        records.append(ctypes.string_at(data - FRAME_HEADER_SIZE, frame_size(size)))
        # A negative answer stops this poll: the rest waits in the ring buffer for the next one, so one poll's
        # batch (and the memory it holds) is bounded however fast the kernel writes.
        return -1 if len(records) >= MAX_RECORDS_PER_POLL else 0

    def poll(self, timeout_ms: int = 100) -> bytes:
        """Wait up to timeout_ms for records; returns those read as back-to-back ring-buffer frames (8-byte
        header + record each; `events.decode_frames`), at most MAX_RECORDS_PER_POLL, possibly none."""
        if self._bpf is None:
            self.backlog = False
            return b""
        with self._lock:
            reader = self._reader
            if reader is not None:
                frames = reader.read(MAX_RECORDS_PER_POLL) if reader.wait(timeout_ms) else b""
                self.backlog = len(frames) >= MAX_RECORDS_PER_POLL * reader.stride
                return frames
            self._bpf.ring_buffer_poll(timeout_ms)
            if not self._records:  # the kernel wakes readers only past a fill threshold: look anyway
                self._bpf.ring_buffer_consume()
            records, self._records = self._records, []
            self.backlog = len(records) >= MAX_RECORDS_PER_POLL
        return b"".join(records)

    def drain(self) -> bytes:
        """Records waiting in the ring buffer, without waiting (on shutdown): at most MAX_RECORDS_PER_POLL."""
        if self._bpf is None:
            return b""
        with self._lock:
            if self._reader is not None:
                return self._reader.read(MAX_RECORDS_PER_POLL)
            self._bpf.ring_buffer_consume()
            records, self._records = self._records, []
        return b"".join(records)

    def counters(self) -> BpfCounters:
        """A reader of the kernel's counter maps (for metrics at scrape time)."""
        if self._bpf is None:
            raise KernelError("the collector is not loaded")
        return BpfCounters(self._bpf, len(self.program.sources))


DETACH_THREADS = 16
# Threads loading and attaching fentry programs: the verifier is CPU-bound and an attach on kernels before 5.12
# mostly waits for an RCU-tasks grace period, so twice the CPUs this process may run on, at most 4 (each
# verifier pass holds its own state in kernel memory). 1.6x faster on 5.10 with 2 CPUs (bench/RESULTS.md).
ATTACH_THREADS = min(4, 2 * len(os.sched_getaffinity(0)))


def _release_free_heap() -> None:
    """Hand the heap that clang/LLVM freed after compiling back to the system (glibc `malloc_trim`): about
    40 MiB of the daemon's resident memory (bench/RESULTS.md, Footprint). Nothing where libc has no such call."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)


def _close_kprobes_concurrently(bpf) -> None:  # type: ignore[no-untyped-def]
    """Close per-function kprobe events from several threads before BCC's cleanup would close them one by one:
    each close unregisters a kprobe and waits for an RCU grace period, so 1,500 of them take minutes in a row
    (seen under QEMU), while concurrent waits share grace periods. Only kprobe-PMU events (every kernel since
    4.17) are closed here; BCC's cleanup then finds nothing left to do for them."""
    events = [(event, fd) for event, fds in bpf.kprobe_fds.items() for fd in fds.values()]
    if len(events) < DETACH_THREADS or not os.path.exists("/sys/bus/event_source/devices/kprobe/type"):
        return
    lib = _import_bcc().libbcc.lib
    with ThreadPoolExecutor(DETACH_THREADS, thread_name_prefix="ipftrace-detach") as pool:
        list(pool.map(lambda item: lib.bpf_close_perf_event_fd(item[1]), events))
    for event in {event for event, _ in events}:
        lib.bpf_detach_kprobe(event)
    bpf.kprobe_fds.clear()


class BpfCounters:
    """Reads the per-CPU counter maps, summing over CPUs. Implements metrics.CounterReader."""

    def __init__(self, bpf, num_probes: int) -> None:  # type: ignore[no-untyped-def]
        self._bpf = bpf
        self._num_probes = num_probes

    def hits(self) -> Iterable[tuple[int, int, int]]:
        """(flow_id, probe_id, count) for every non-zero slot."""
        out = []
        for key, values in self._bpf[b"hits"].items():
            total = sum(values)
            if total:
                slot = key.value
                out.append((slot // self._num_probes, slot % self._num_probes, total))
        return out

    def drops(self) -> Iterable[tuple[int, int, int, int]]:
        """(flow_id, location, reason, count)."""
        out = []
        for key, values in self._bpf[b"drops"].items():
            total = sum(values)
            if total:
                out.append((key.flow_id, key.location, key.reason, total))
        return out

    def matched(self) -> Iterable[tuple[int, int]]:
        """(flow_id, count) of packets matched, for every non-zero slot."""
        out = []
        for key, values in self._bpf[b"matched"].items():
            total = sum(values)
            if total:
                out.append((key.value, total))
        return out

    def untraced(self) -> Iterable[tuple[int, str, int]]:
        """(flow_id, reason, count) of matching packets that were not traced, for every non-zero slot."""
        out = []
        for key, values in self._bpf[b"untraced"].items():
            total = sum(values)
            if total:
                flow_id, reason = divmod(key.value, len(UNTRACED_REASONS))
                out.append((flow_id, UNTRACED_REASONS[reason], total))
        return out

    def totals(self) -> Mapping[str, int]:
        """{'events', 'lost', 'matched', 'track_full'} summed over CPUs."""
        table = self._bpf[b"stats"]
        names = {STAT_EVENTS: "events", STAT_LOST: "lost", STAT_MATCHED: "matched", STAT_TRACK_FULL: "track_full"}
        return {name: int(sum(table[ctypes.c_int(index)])) for index, name in names.items()}
