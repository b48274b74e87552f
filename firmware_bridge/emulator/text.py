"""A sketch printing numbers: the wire format of the ``text`` profile.

What an Arduino running the sketch in ``docs/sensors.md`` (or an Edge Impulse data-forwarder
sketch) prints: optionally a header line of channel names, then one line per sample of
``ax,ay,az`` in m/s² and ``gx,gy,gz`` in °/s with four decimals. With ``garbage_every`` it
also prints, every that many samples, one line of the junk real serial ports deliver (a
boot banner, a NaN, a line cut short, binary noise, an endless line), so the gateway's
refusal of bad lines can be watched on a desk.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from firmware_bridge.emulator.motion import GRAVITY, MotionSource
from firmware_bridge.profiles.channels import Quantizer
from firmware_bridge.profiles.text import default_channels
from firmware_bridge.protocol.v1 import Hello

__all__ = ["GARBAGE_LINES", "TextEncoder", "encode_text"]

_TO_MS2 = {"m/s^2": 1.0, "m/s2": 1.0, "g": GRAVITY}
_TO_DPS = {"rad/s": 180.0 / math.pi, "deg/s": 1.0, "dps": 1.0}

GARBAGE_LINES: tuple[bytes, ...] = (
    b"MPU6050 ready\r\n",
    b"nan,0.0,9.81,0.0,0.0,0.0\r\n",
    b"0.12,0.0\r\n",
    b"\xff\xfe\x00\x13\x37 noise\r\n",
    b"1e12,0.0,9.81,0.0,0.0,0.0\r\n",
    b"9" * 5000 + b"\r\n",
    b"0.1,0.2,inf,0.0,0.0,0.0\r\n",
)
"""One of each kind of line the ``text`` profile refuses, in the order they are sent."""


class TextEncoder:
    """Turns a motion source into printed lines, like a sketch on a USB serial port.

    Args:
        source: Motion to print (m/s² or g; rad/s or °/s).
        device_id: The id the gateway's profile announces (for tests and tools).
        rate_hz: Lines per second; the source's rate by default.
        batch: Lines per write; about a tenth of a second's worth by default.
        header: Print a header line of channel names first.
        garbage_every: Also print one bad line every this many samples (0: never).
        decimals: Digits after the decimal point.
    """

    def __init__(
        self,
        source: MotionSource,
        *,
        device_id: str,
        rate_hz: float | None = None,
        batch: int | None = None,
        header: bool = True,
        garbage_every: int = 0,
        decimals: int = 4,
    ) -> None:
        rate = float(source.rate_hz if rate_hz is None else rate_hz)
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"rate_hz must be a positive number, got {rate}")
        if garbage_every < 0 or not 0 <= decimals <= 9:
            raise ValueError("garbage_every must be >= 0 and decimals 0..9")
        self.source = source
        self.rate_hz = rate
        self.batch = max(1, round(rate / 10)) if batch is None else batch
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1 sample, got {self.batch}")
        self.header = header
        self.garbage_every = garbage_every
        self.decimals = decimals
        self.dropped_samples = 0
        self.sample_index = 0
        self.garbage_sent = 0
        names = [c.lower() for c in source.channels]
        self._columns: list[tuple[int | None, float]] = []
        for axis, factors in (("ax", _TO_MS2), ("ay", _TO_MS2), ("az", _TO_MS2),
                              ("gx", _TO_DPS), ("gy", _TO_DPS), ("gz", _TO_DPS)):  # fmt: skip
            if axis in names:
                index = names.index(axis)
                self._columns.append((index, factors.get(source.units[index].strip().lower(), 1)))
            else:
                self._columns.append((None, 0.0))
        channels = Quantizer(default_channels(6)).info
        self.hello = Hello(device_id, "text", rate, channels)

    def hello_frame(self) -> bytes:
        """The header line, if one is printed (a sketch prints it once, in ``setup()``)."""
        return b"ax,ay,az,gx,gy,gz\r\n" if self.header else b""

    def values(self, n: int) -> npt.NDArray[np.float64]:
        """The next ``n`` samples in printed units: m/s² and °/s, ``(n, 6)``."""
        raw, _labels = self.source.read(n)
        out = np.zeros((n, 6), dtype=np.float64)
        for j, (index, factor) in enumerate(self._columns):
            if index is not None:
                out[:, j] = raw[:, index] * factor
        return out

    def encode(self, n: int) -> list[bytes]:
        """The lines of the next ``n`` samples, one entry per sample (junk lines attached)."""
        values = self.values(n)
        fmt = f"%.{self.decimals}f"
        lines: list[bytes] = []
        for row in values:
            line = (",".join(fmt % v for v in row) + "\r\n").encode("ascii")
            self.sample_index += 1
            if self.garbage_every and self.sample_index % self.garbage_every == 0:
                line += GARBAGE_LINES[self.garbage_sent % len(GARBAGE_LINES)]
                self.garbage_sent += 1
            lines.append(line)
        return lines

    def next_frames(self, n_samples: int | None = None) -> list[tuple[bytes, int]]:
        """The next batch as ``(bytes of one sample, 1)`` pairs, so drops count per sample."""
        return [(b, 1) for b in self.encode(self.batch if n_samples is None else n_samples)]


def encode_text(
    source: MotionSource,
    n_samples: int,
    *,
    header: bool = True,
    garbage_every: int = 0,
    decimals: int = 4,
) -> bytes:
    """The exact bytes an emulated sketch prints for ``n_samples`` samples (header first)."""
    encoder = TextEncoder(
        source, device_id="emu", header=header, garbage_every=garbage_every, decimals=decimals
    )
    return encoder.hello_frame() + b"".join(encoder.encode(n_samples))
