"""Mapping device timestamps (u32 microseconds that wrap) onto host time."""

from __future__ import annotations

WRAP = 1 << 32


class DeviceClock:
    """Unwraps a device's 32-bit µs counter and tracks its offset (and so its drift) to host time.

    The offset follows the minimum observed `host - device` delay, because queueing
    on the link only ever adds delay; it creeps up slowly so drift of the device's
    oscillator (tens of ppm) is followed. A jump of more than `reset_s` (device
    reboot, counter reset) re-anchors immediately.
    """

    def __init__(self, *, creep: float = 0.002, reset_s: float = 1.0) -> None:
        self._last_raw: int | None = None
        self._epoch = 0
        self.offset_s: float | None = None
        self._creep = creep
        self._reset_s = reset_s
        self.resets = 0

    def unwrap(self, raw_us: int) -> int:
        """Device time in µs as a monotonically growing integer across wraps."""
        # A big step back is a wrap; a small one (reordering, reboot) keeps the epoch.
        if self._last_raw is not None and self._last_raw - raw_us > WRAP // 2:
            self._epoch += WRAP
        self._last_raw = raw_us
        return self._epoch + raw_us

    def observe(self, device_s: float, host_s: float) -> float:
        """Feed one (device, host) pair for the newest sample; returns the offset to add."""
        delay = host_s - device_s
        if self.offset_s is None or abs(delay - self.offset_s) > self._reset_s:
            if self.offset_s is not None:
                self.resets += 1
            self.offset_s = delay
        elif delay < self.offset_s:
            self.offset_s = delay
        else:
            self.offset_s += (delay - self.offset_s) * self._creep
        return self.offset_s
