"""Durable file writes: what a power cut may interrupt leaves the old file or the new one."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a creation or rename inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(
    path: Path,
    data: bytes | str,
    *,
    mode: int = 0o644,
    owner: tuple[int | None, int | None] | None = None,
) -> None:
    """Write a temporary file, fsync it, rename it over `path`, fsync the directory.

    Args:
        path: The file to replace (its directory must exist).
        data: Its new content; text is written as UTF-8.
        mode: Permission bits, set exactly (not filtered by the umask).
        owner: (uid, gid) to give the file before it appears; None keeps either.
    """
    body = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            if owner is not None:
                uid, gid = owner
                os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        # A failed write (no permission to chown, disk full) leaves no stray file behind.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
