"""Kernel headers for BCC: real ones when their struct sk_buff layout is this kernel's, else a tree built from BTF.

The BTF-derived tree (see the README, "Header-less BCC") holds include/vmlinux.h from `bpftool btf dump`, generated/autoconf.h from
/proc/config.gz, linux/kconfig.h, linux/version.h, and one-line stand-ins for the other headers BCC's helpers.h
includes. It is cached per kernel release and BTF digest, so a changed BTF rebuilds it.
"""

from __future__ import annotations

import atexit
import glob
import gzip
import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import KernelError
from ..fsutil import untrusted_reason

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "/var/cache/ipftrace-exporter"
CACHE_ENV = "IPFTRACE_CACHE_DIR"
BTF_PATH = "/sys/kernel/btf/vmlinux"
CONFIG_GZ = "/proc/config.gz"
# The BTF tree's vmlinux.h already defines the UAPI bpf types: keep BCC from including its own copy.
BTF_TREE_CFLAGS = ("-D_UAPI__LINUX_BPF_H__", "-DIPFT_BTF_HEADERS=1")
# Bumped when the tree's contents change, so a cache built by an older release is not reused.
TREE_FORMAT = 2
# Where BCC's library (whose built-in helpers.h names every helper id BCC knows) is looked for.
LIBBCC_GLOBS = ("/usr/lib/*/libbcc.so.0", "/usr/lib/libbcc.so.0", "/usr/lib64/libbcc.so.0", "/usr/local/lib/libbcc.so.0")
COMPAT_HEADER = "ipft_bcc_compat.h"
_HELPER_ID_RE = re.compile(rb"\bBPF_FUNC_([a-z][a-z0-9_]*)")
_BTF_HELPER_RE = re.compile(r"\bBPF_FUNC_([a-z][a-z0-9_]*) = (\d+)")

_KCONFIG_H = """\
#ifndef _LINUX_KCONFIG_H
#define _LINUX_KCONFIG_H
#include <generated/autoconf.h>
#define __ARG_PLACEHOLDER_1 0,
#define __take_second_arg(__ignored, val, ...) val
#define __is_defined(x) ___is_defined(x)
#define ___is_defined(val) ____is_defined(__ARG_PLACEHOLDER_##val)
#define ____is_defined(arg1_or_junk) __take_second_arg(arg1_or_junk 1, 0)
#define __or(x, y) ___or(x, y)
#define ___or(x, y) ____or(__ARG_PLACEHOLDER_##x, y)
#define ____or(arg1_or_junk, y) __take_second_arg(arg1_or_junk 1, y)
#define IS_BUILTIN(option) __is_defined(option)
#define IS_MODULE(option) __is_defined(option##_MODULE)
#define IS_ENABLED(option) __or(IS_BUILTIN(option), IS_MODULE(option))
#endif
"""

_STAND_INS = {
    "uapi/linux/bpf.h": f"#include <vmlinux.h>\n#include <{COMPAT_HEADER}>\n",
    "uapi/linux/ptrace.h": "/* stand-in: types come from vmlinux.h */\n",
    "uapi/linux/if_packet.h": "/* stand-in */\n",
    "uapi/linux/if_ether.h": "/* stand-in */\n",
    "linux/types.h": "/* stand-in: types come from vmlinux.h */\n",
    "linux/bpf_common.h": "/* stand-in */\n",
    "linux/log2.h": "/* stand-in */\n",
    "asm/page.h": "#ifndef PAGE_SIZE\n#define PAGE_SIZE 4096\n#endif\n",
}


@dataclass(frozen=True, slots=True)
class HeaderTree:
    """Where BCC finds kernel headers (BCC_KERNEL_SOURCE) and the cflags that go with them."""

    path: str
    kind: str  # "btf" (built from BTF) or "kernel" (real headers)
    cflags: tuple[str, ...] = ()


def autoconf_from_config(config_text: str) -> str:
    """The C text of generated/autoconf.h for a kernel .config."""
    lines = ["/* generated from /proc/config.gz by ipftrace-exporter */"]
    for raw in config_text.splitlines():
        if not raw.startswith("CONFIG_") or "=" not in raw:
            continue
        name, value = raw.split("=", 1)
        if value == "y":
            lines.append(f"#define {name} 1")
        elif value == "m":
            lines.append(f"#define {name}_MODULE 1")
        elif value != "n":
            lines.append(f"#define {name} {value}")
    return "\n".join(lines) + "\n"


def version_header(release: str) -> str:
    """The C text of linux/version.h for a release string such as '6.18.44-fc'."""
    numbers = []
    for part in release.split("-")[0].split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        numbers.append(int(digits or 0))
    while len(numbers) < 3:
        numbers.append(0)
    major, minor, patch = numbers
    code = (major << 16) + (minor << 8) + min(patch, 255)
    return (
        f"#define LINUX_VERSION_CODE {code}\n"
        "#define KERNEL_VERSION(a, b, c) (((a) << 16) + ((b) << 8) + ((c) > 255 ? 255 : (c)))\n"
    )


def bcc_helper_ids(library_globs: Iterable[str] = LIBBCC_GLOBS) -> set[str]:
    """Names of the BPF helper ids (`BPF_FUNC_<name>`) BCC's built-in helpers.h refers to, read from the text
    embedded in libbcc. Empty when the library is not found (the tree then has no stand-ins, as before)."""
    for pattern in library_globs:
        for path in sorted(glob.glob(pattern)):
            try:
                data = Path(path).read_bytes()
            except OSError:
                continue
            return {match.decode() for match in _HELPER_ID_RE.findall(data)}
    return set()


def helper_id_stand_ins(vmlinux_h: str, wanted: Iterable[str]) -> str:
    """C text declaring the helper ids in `wanted` that this kernel's `enum bpf_func_id` (in the BTF dump
    `vmlinux_h`) lacks. BCC's helpers.h takes the address of every helper it knows, so a kernel older than the
    BCC release would not compile; the stand-ins get numbers past the kernel's last helper, which it would
    refuse if a program called one (ours call none of them)."""
    known = {name: int(number) for name, number in _BTF_HELPER_RE.findall(vmlinux_h)}
    missing = sorted(set(wanted) - set(known))
    lines = ["/* generated by ipftrace-exporter: helper ids BCC's helpers.h names and this kernel lacks */",
             "#ifndef IPFT_BCC_COMPAT_H", "#define IPFT_BCC_COMPAT_H"]
    if missing:
        first = max(known.values(), default=0) + 1
        entries = ",\n".join(f"    BPF_FUNC_{name} = {first + index}" for index, name in enumerate(missing))
        lines.append(f"enum ipft_missing_bpf_func_id {{\n{entries}\n}};")
    lines.append("#endif")
    return "\n".join(lines) + "\n"


def btf_digest(btf_path: str = BTF_PATH) -> str:
    """A short digest of the kernel's BTF: the cache key changes when the BTF does."""
    try:
        data = Path(btf_path).read_bytes()
    except OSError as err:
        raise KernelError(f"cannot read BTF at {btf_path}: {err.strerror}") from None
    return hashlib.sha256(data).hexdigest()[:16]


class HeaderTreeBuilder:
    """Builds (or finds in the cache) the BTF-derived header tree for the running kernel."""

    def __init__(
        self,
        cache_dir: str | None = None,
        btf_path: str = BTF_PATH,
        config_path: str = CONFIG_GZ,
        release: str | None = None,
        bpftool: str | None = None,
        helper_ids: Callable[[], set[str]] = bcc_helper_ids,
    ) -> None:
        self.cache_dir = Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)
        self.btf_path = btf_path
        self.config_path = config_path
        self.release = release or platform.release()
        self.bpftool = bpftool or shutil.which("bpftool") or "/usr/sbin/bpftool"
        self.helper_ids = helper_ids

    def tree_path(self) -> Path:
        """The cache directory for this kernel release and BTF."""
        return self.cache_dir / f"{self.release}-{btf_digest(self.btf_path)}-v{TREE_FORMAT}"

    def ensure(self) -> HeaderTree:
        """The cached tree, built first if absent. Raises KernelError with one line on failure."""
        self.cache_dir = trusted_cache_dir(self.cache_dir)
        target = self.tree_path()
        if (target / "include" / "vmlinux.h").is_file():
            return HeaderTree(str(target), "btf", BTF_TREE_CFLAGS)
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".build-", dir=self.cache_dir))
        except OSError as err:
            raise KernelError(f"cannot write the header cache {self.cache_dir}: {err.strerror} (set {CACHE_ENV})") from None
        try:
            self._build(staging)
            try:
                staging.rename(target)
            except OSError:
                if not (target / "include" / "vmlinux.h").is_file():  # lost a race to another process: fine
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("built BTF-derived kernel headers for %s in %s (no matching kernel headers installed)",
                 self.release, target)
        return HeaderTree(str(target), "btf", BTF_TREE_CFLAGS)

    def _build(self, root: Path) -> None:
        include = root / "include"
        for sub in ("generated", "linux", "uapi/linux", "asm"):
            (include / sub).mkdir(parents=True, exist_ok=True)
        try:
            dump = subprocess.run(
                [self.bpftool, "btf", "dump", "file", self.btf_path, "format", "c"],
                check=True, capture_output=True, timeout=60,
            )
        except FileNotFoundError:
            raise KernelError(f"bpftool not found at {self.bpftool}: install Debian's bpftool") from None
        except subprocess.CalledProcessError as err:
            message = err.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["failed"]
            raise KernelError(f"bpftool could not dump BTF from {self.btf_path}: {message[0]}") from None
        (include / "vmlinux.h").write_bytes(dump.stdout)
        compat = helper_id_stand_ins(dump.stdout.decode(errors="replace"), self.helper_ids())
        (include / COMPAT_HEADER).write_text(compat)
        (include / "generated" / "autoconf.h").write_text(autoconf_from_config(self._config_text()))
        (include / "linux" / "kconfig.h").write_text(_KCONFIG_H)
        (include / "linux" / "version.h").write_text(version_header(self.release))
        for relative, text in _STAND_INS.items():
            (include / relative).write_text(text)

    def _config_text(self) -> str:
        for candidate in (self.config_path, f"/boot/config-{self.release}"):
            try:
                if candidate.endswith(".gz"):
                    with gzip.open(candidate, "rt") as handle:
                        return handle.read()
                return Path(candidate).read_text()
            except OSError:
                continue
        log.warning("no kernel config (%s or /boot/config-%s): CONFIG_* macros will be undefined",
                    self.config_path, self.release)
        return ""


def trusted_cache_dir(cache_dir: Path) -> Path:
    """`cache_dir` (created 0755 if absent) when root or we own it and neither group nor others can write it;
    else, with one warning, a new private directory (0700, removed at exit) to build the tree in. A header tree
    someone else could plant there would be compiled into a program the kernel runs on our behalf."""
    try:
        cache_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError:
        pass  # reported below, or by the build when not even a private directory helps
    reason = untrusted_reason(cache_dir)
    if reason is None:
        return cache_dir
    private = Path(tempfile.mkdtemp(prefix="ipftrace-headers-"))
    atexit.register(shutil.rmtree, private, ignore_errors=True)
    log.warning("header cache %s is not used (%s): building kernel headers in %s instead (set %s to a directory "
                "only root can write)", cache_dir, reason, private, CACHE_ENV)
    return private


def real_header_candidates(release: str | None = None) -> list[str]:
    """Kernel source/build trees BCC would use, in BCC's order, that exist on this host."""
    release = release or platform.release()
    found = []
    explicit = os.environ.get("BCC_KERNEL_SOURCE")
    if explicit:
        found.append(explicit)
    for name in ("source", "build"):
        path = f"/lib/modules/{release}/{name}"
        if os.path.isdir(os.path.join(path, "include")):
            found.append(path)
    return found


def layout_check_source(offsets: dict[str, int]) -> str:
    """C text that compiles only when struct sk_buff has these member offsets (used to vet real headers)."""
    lines = ["#include <linux/skbuff.h>"]
    for member, offset in sorted(offsets.items()):
        lines.append(
            f"_Static_assert(__builtin_offsetof(struct sk_buff, {member}) == {int(offset)}, \"sk_buff.{member}\");"
        )
    return "\n".join(lines) + "\n"


def choose_header_tree(
    builder: HeaderTreeBuilder,
    skb_offsets: Callable[[], dict[str, int]],
    compiles: Callable[[str, str], bool],
) -> HeaderTree:
    """Real headers if one candidate's sk_buff layout matches BTF (checked by compiling static asserts), else the
    BTF tree. `compiles(source_dir, text)` compiles C text with BCC against a header tree."""
    candidates = real_header_candidates(builder.release)
    if candidates:
        check = layout_check_source(skb_offsets())
        for candidate in candidates:
            if compiles(candidate, check):
                log.info("using kernel headers in %s (struct sk_buff layout matches BTF)", candidate)
                return HeaderTree(candidate, "kernel", ())
            log.warning("kernel headers in %s do not match the running kernel's struct sk_buff (BTF); not used",
                        candidate)
    return builder.ensure()
