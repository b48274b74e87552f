"""A genuinely full filesystem for tests: a small tmpfs, where this process may mount one.

A tmpfs with `size=` returns ENOSPC exactly as a full SD card does, and SQLite turns that
into `SQLITE_FULL`. Mounting needs root (CAP_SYS_ADMIN); where it is refused, callers fall
back to SQLite's own `PRAGMA max_page_count` (via `storage.max_bytes`), which yields the
same `SQLITE_FULL` code without the filesystem being full. Each test says which boundary
it ran against.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def small_filesystem(where: Path, size_mb: int) -> Iterator[bool]:
    """Mount a tmpfs of `size_mb` MiB at `where`; yields whether it is mounted.

    `EDGE_TEST_NO_MOUNT=1` forces the fallback (to run it where mounting works).
    """
    where.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    if mount is None or os.geteuid() != 0 or os.environ.get("EDGE_TEST_NO_MOUNT") == "1":
        yield False
        return
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill(path: Path) -> int:
    """Write `path` until the filesystem has no byte left; returns the bytes written."""
    written = 0
    block = b"\0" * (1 << 20)
    with path.open("wb", buffering=0) as fh:
        for size in (1 << 20, 1 << 12, 1):
            while True:
                try:
                    written += fh.write(block[:size])
                except OSError as err:
                    if err.errno != errno.ENOSPC:
                        raise
                    break
    return written
