"""Pseudo-terminal plumbing: a pty pair and the ``/dev/serial/by-id``-like symlink to it.

Shared by the IMU device emulator and the camera emulator.
"""

from __future__ import annotations

import contextlib
import os
import threading
import tty
from pathlib import Path

__all__ = ["Pty", "point_symlink", "remove_symlink"]


class Pty:
    """One pseudo-terminal pair: we write to the master, the gateway opens the slave path."""

    __slots__ = ("master", "path", "slave")

    def __init__(self) -> None:
        master, slave = os.openpty()
        try:
            # Raw mode: no CR/LF translation, no XON/XOFF, no echo, so every byte value
            # passes unchanged even to a reader that does not configure the port itself.
            tty.setraw(slave)
            os.set_blocking(master, False)
            self.path = os.ttyname(slave)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self.master = master
        # Holding the slave open keeps the pty alive while no reader is attached, so writes
        # queue up (and later fail with EAGAIN) instead of failing with EIO.
        self.slave = slave

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


def point_symlink(link: Path, target: str) -> None:
    """Atomically make ``link`` a symlink to ``target``, creating its directory if needed."""
    if os.path.lexists(link) and not link.is_symlink():
        raise FileExistsError(f"{link} exists and is not a symlink; refusing to replace it")
    link.parent.mkdir(parents=True, exist_ok=True)
    temporary = link.with_name(f".{link.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    os.symlink(target, temporary)
    os.replace(temporary, link)


def remove_symlink(link: Path, target: str) -> None:
    """Remove ``link`` if it still points to ``target`` (someone may have repointed it)."""
    with contextlib.suppress(OSError):
        if os.readlink(link) == target:
            link.unlink()
