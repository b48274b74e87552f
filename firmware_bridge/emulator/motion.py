"""What an emulated device samples: the motion source protocol and the int16 scaling."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["GRAVITY", "MotionSource", "default_scales"]

GRAVITY = 9.80665
"""Standard gravity in m/s^2."""

_INT16_SPAN = 32768.0


class MotionSource(Protocol):
    """Where an emulated device gets its samples from.

    ``read`` never runs dry: finite sources loop, so an emulator can stream for as long as a
    test or benchmark needs.
    """

    @property
    def channels(self) -> tuple[str, ...]:
        """Channel names, in sample order."""
        ...

    @property
    def units(self) -> tuple[str, ...]:
        """Physical unit of each channel."""
        ...

    @property
    def full_scale(self) -> tuple[float, ...]:
        """Largest magnitude each channel may reach; sets the int16 scale on the wire."""
        ...

    @property
    def rate_hz(self) -> float:
        """Sample rate the data was produced at."""
        ...

    def read(self, n: int) -> tuple[npt.NDArray[np.float32], list[str | None]]:
        """Return the next ``n`` samples as ``(n, channels)`` physical values and their labels."""
        ...


def default_scales(source: MotionSource) -> tuple[float, ...]:
    """Return a per-channel LSB size that maps each channel's full scale onto int16."""
    return tuple(full / _INT16_SPAN for full in source.full_scale)
