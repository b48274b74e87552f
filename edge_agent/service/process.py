"""Process-wide settings and figures: malloc arenas, resident memory."""

from __future__ import annotations

import contextlib
import ctypes
import os


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas before the link, store and inference threads start.

    glibc gives each thread that allocates its own arena; with a dozen threads allocating
    small buffers the untouched-but-resident remains add megabytes for nothing. This is
    what `MALLOC_ARENA_MAX=2` does, applied from inside so every way of starting the
    daemon gets it. No effect (and no error) on other C libraries.
    """
    with contextlib.suppress(OSError, AttributeError):
        # The process's own symbols: find_library would run ldconfig in a subprocess at start.
        libc = ctypes.CDLL(None)
        m_arena_max = -8  # from glibc's malloc.h
        libc.mallopt(m_arena_max, arenas)


def rss_mb() -> float:
    """Resident memory of this process in MB (0 where /proc is not available)."""
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open("/proc/self/statm", encoding="ascii") as fh,
    ):
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    return 0.0
