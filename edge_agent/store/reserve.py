"""A few megabytes held next to the database, given back when the disk is full.

Freeing space in SQLite needs space: a delete writes its pages to the write-ahead log
before the file can shrink. On a disk that is completely full that write fails, so
eviction cannot run — the loop a full gateway used to be stuck in. The reserve is an
ordinary file with its blocks allocated; releasing it on `SQLITE_FULL` lends eviction the
room it needs, and it is taken again once the disk has room for it twice over.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

_BLOCK = 1 << 20


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still allocate on the filesystem of `directory`."""
    st = os.statvfs(directory)
    return int(st.f_bavail * st.f_frsize)


class SpaceReserve:
    """A file of `size` bytes (0: no reserve) whose space eviction can borrow.

    Args:
        path: The reserve file (next to the database, on the same filesystem).
        size: Bytes to hold.
    """

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = max(0, int(size))

    @property
    def held(self) -> bool:
        """Whether the reserve is in place (always true when it is disabled)."""
        if self.size == 0:
            return True
        try:
            return self.path.stat().st_size >= self.size
        except OSError:
            return False

    def shortfall(self) -> int:
        """While the reserve is out: bytes missing for one reserve's worth of free space."""
        if self.held:
            return 0
        try:
            return max(0, self.size - free_bytes(self.path.parent))
        except OSError:
            return 0

    def release(self) -> bool:
        """Give the reserve's space back to the filesystem; True when there was one."""
        if self.size == 0:
            return False
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        except OSError as err:
            log.error("store: cannot release the space reserve %s: %s", self.path, err)
            return False
        return True

    def ensure(self) -> bool:
        """Take the reserve if it is missing and the disk has room for it twice over.

        Returns whether the reserve is held. Never raises: a reserve that cannot be
        written now is tried again later.
        """
        if self.held:
            return True
        try:
            if free_bytes(self.path.parent) < 2 * self.size:
                return False
            self._write()
        except OSError as err:
            with contextlib.suppress(OSError):
                self.path.unlink()
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                log.warning("store: cannot write the space reserve %s: %s", self.path, err)
            return False
        return True

    def _write(self) -> None:
        """Allocate real blocks (not a sparse file), durably, under a temporary name."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, self.size)
            except OSError as err:
                if err.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise
                # A filesystem without fallocate: write the zeros ourselves.
                zeros = bytes(_BLOCK)
                left = self.size
                while left > 0:
                    left -= os.write(fd, zeros[: min(left, _BLOCK)])
            os.fsync(fd)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        os.close(fd)
        os.replace(tmp, self.path)
