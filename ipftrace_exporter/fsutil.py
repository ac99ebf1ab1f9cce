"""Files a root daemon writes or trusts: never through a planted symlink, never from a directory others can write.

`write_file_atomic` writes a new file under a random name created with O_EXCL (mkstemp: a symlink or file planted
at a predictable `.tmp` name is never followed or reused), then renames it over the target; rename replaces a
symlink at the target itself, it does not follow it. `untrusted_reason` says why a directory or file must not be
trusted by a process running as root: owned by another user, or writable by group or others.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


def write_file_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with a file holding `data`, atomically and without following symlinks. Raises OSError."""
    target = Path(path)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), mode)
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def untrusted_reason(path: str | os.PathLike[str], uid: int | None = None) -> str | None:
    """None when `path` (a directory or file; symlinks are followed, then the target is judged) is owned by root
    or `uid` (default: ours) and not writable by group or others; else why not, in a few words. A path that
    does not exist is reported too."""
    uid = os.getuid() if uid is None else uid
    try:
        info = os.stat(path)
    except OSError as err:
        return err.strerror or str(err)
    if info.st_uid not in (0, uid):
        return f"owned by uid {info.st_uid}, not root"
    writers = [who for who, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if info.st_mode & bit]
    if writers:
        return f"writable by {' and '.join(writers)} (mode {stat.S_IMODE(info.st_mode):04o})"
    return None
