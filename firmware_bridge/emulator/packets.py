"""A board sending a fixed binary struct: the wire format of the ``struct`` profiles.

The encoder builds packets from the same config the gateway decodes them with (sync bytes,
length field, fields, counter, checksum), so any layout a technician writes down can be
played on a desk before the real board arrives. Channels named like the motion source's
(``ax`` … ``gz``) carry its values converted to the channel's unit and divided by its scale;
other fields are zero; the counter counts packets. ``lose_every`` leaves out every N-th
packet while the counter goes on, like a radio losing notifications.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import numpy.typing as npt

from firmware_bridge.emulator.motion import GRAVITY, MotionSource
from firmware_bridge.profiles.checksums import compute
from firmware_bridge.profiles.struct_layout import Layout, StructLayoutConfig
from firmware_bridge.protocol.v1 import Hello

__all__ = ["StructEncoder", "encode_struct"]

# Factor from a source unit to a channel unit.
_CONVERT = {
    ("m/s^2", "m/s^2"): 1.0,
    ("m/s^2", "g"): 1 / GRAVITY,
    ("g", "m/s^2"): GRAVITY,
    ("g", "g"): 1.0,
    ("rad/s", "rad/s"): 1.0,
    ("rad/s", "deg/s"): 180 / math.pi,
    ("rad/s", "dps"): 180 / math.pi,
    ("deg/s", "deg/s"): 1.0,
    ("deg/s", "rad/s"): math.pi / 180,
}


class StructEncoder:
    """Turns a motion source into packets of a configured layout.

    Args:
        source: Motion to encode.
        config: The layout (a ``struct`` or ``struct-ble`` profile config).
        device_id: The id the gateway's profile announces (for tests and tools).
        rate_hz: Packets per second; the source's rate by default.
        batch: Packets per write; about a tenth of a second's worth by default.
        lose_every: Leave out every N-th packet, counter still advancing (0: never).
        garbage_every: Also send a few bytes of line noise (a false sync start among them)
            after every N-th packet (0: never).
    """

    def __init__(
        self,
        source: MotionSource,
        config: StructLayoutConfig,
        *,
        device_id: str,
        rate_hz: float | None = None,
        batch: int | None = None,
        lose_every: int = 0,
        garbage_every: int = 0,
    ) -> None:
        rate = float(source.rate_hz if rate_hz is None else rate_hz)
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"rate_hz must be a positive number, got {rate}")
        if lose_every < 0 or garbage_every < 0:
            raise ValueError("lose_every and garbage_every must be >= 0")
        self.source = source
        self.config = config
        self.layout = Layout(config)
        self.rate_hz = rate
        self.batch = max(1, round(rate / 10)) if batch is None else batch
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1 sample, got {self.batch}")
        self.lose_every = lose_every
        self.garbage_every = garbage_every
        self.garbage = b"\x00\xff\x13" + self.layout.sync[:1] + b"\x37\x01"
        self.dropped_samples = 0
        self.sample_index = 0
        self.packets_lost = 0
        names = [c.lower() for c in source.channels]
        specs = {c.name: c for c in self.layout.channel_specs}
        self._columns: list[tuple[str, int, float, float, float]] = []
        for name in self.layout.channel_names:
            spec = specs[name]
            if name.lower() not in names:
                continue
            index = names.index(name.lower())
            unit = source.units[index].strip().lower()
            factor = _CONVERT.get((unit, spec.resolved_unit.lower()), 1.0)
            self._columns.append((name, index, factor, spec.scale, spec.offset))
        self.hello = Hello(device_id, "struct", rate, self.layout.quantizer.info)

    def hello_frame(self) -> bytes:
        return b""  # a struct device announces nothing

    def packets(self, n: int) -> list[bytes]:
        """The next ``n`` packets (lost ones included; :meth:`encode` leaves them out)."""
        layout = self.layout
        values, _labels = self.source.read(n)
        fields = np.zeros(n, dtype=layout.dtype)
        for name, index, factor, scale, offset in self._columns:
            raw = (values[:, index].astype(np.float64) * factor - offset) / scale
            fields[name] = _fit(raw, layout.dtype[name])
        if layout.counter is not None:
            counter = np.arange(self.sample_index, self.sample_index + n) % layout.counter_modulus
            fields[layout.counter] = counter.astype(layout.dtype[layout.counter])
        self.sample_index += n
        head = layout.sync
        if layout.length is not None:
            head += layout.length.pack(layout.fields_size + layout.length_offset)
        out: list[bytes] = []
        body_bytes = fields.tobytes()
        size = layout.fields_size
        for i in range(n):
            packet = head + body_bytes[i * size : (i + 1) * size]
            if layout.checksum_format is not None:
                value = compute(layout.checksum, packet[layout.checksum_start :])
                packet += struct.pack(layout.checksum_format, value)
            out.append(packet)
        return out

    def encode(self, n: int) -> list[bytes]:
        """The bytes of the next ``n`` samples, one entry per sample (b"" for a lost one)."""
        start = self.sample_index
        packets = self.packets(n)
        for i in range(n):
            index = start + i + 1
            if self.lose_every and index % self.lose_every == 0:
                packets[i] = b""
                self.packets_lost += 1
            elif self.garbage_every and index % self.garbage_every == 0:
                packets[i] += self.garbage
        return packets

    def next_frames(self, n_samples: int | None = None) -> list[tuple[bytes, int]]:
        """The next batch as ``(packet, 1)`` pairs, lost packets left out."""
        return [(p, 1) for p in self.encode(self.batch if n_samples is None else n_samples) if p]


def _fit(raw: npt.NDArray[np.float64], dtype: Any) -> npt.NDArray[Any]:
    """Round to the field's type and saturate at its range, as firmware casting would."""
    kind = np.dtype(dtype)
    if kind.kind in "iu":
        info = np.iinfo(kind)
        return np.clip(np.rint(raw), info.min, info.max).astype(kind)
    return raw.astype(kind)


def encode_struct(
    source: MotionSource,
    config: StructLayoutConfig,
    n_samples: int,
    *,
    lose_every: int = 0,
    garbage_every: int = 0,
) -> bytes:
    """The exact bytes an emulated board sends for ``n_samples`` packets (lost ones left out)."""
    encoder = StructEncoder(
        source, config, device_id="emu", lose_every=lose_every, garbage_every=garbage_every
    )
    return b"".join(encoder.encode(n_samples))
