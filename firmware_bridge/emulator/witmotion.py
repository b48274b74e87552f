"""WitMotion devices: the vendor wire formats of the ``witmotion`` / ``witmotion-ble`` profiles."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from firmware_bridge.emulator.motion import GRAVITY, MotionSource
from firmware_bridge.protocol.v1 import ChannelInfo, Hello

__all__ = ["WitMotionEncoder", "encode_witmotion", "witmotion_packets"]

_WIT_ACC_G = 16.0
_WIT_GYRO_DPS = 2000.0
_WIT_ANGLE_DEG = 180.0
_WIT_TYPES = {"acc": 0x51, "gyro": 0x52, "angle": 0x53, "mag": 0x54}
_TO_G = {"m/s^2": 1.0 / GRAVITY, "m/s2": 1.0 / GRAVITY, "g": 1.0}
_TO_DPS = {"rad/s": 180.0 / math.pi, "deg/s": 1.0, "dps": 1.0, "°/s": 1.0}


def _wit_raw(values: npt.NDArray[np.floating], full_scale: float) -> npt.NDArray[np.int16]:
    """Datasheet formula inverted: ``raw = value / full_scale * 32768``, saturating."""
    raw: npt.NDArray[np.int16] = np.clip(
        np.rint(values / full_scale * 32768.0), -32768, 32767
    ).astype(np.int16)
    return raw


class _WitMotionMotion:
    """Physical values a WT901 would report for a motion source: g, °/s and Euler angles.

    Roll and pitch follow gravity on the accelerometer, yaw integrates the z rate; that is
    what the device's fusion reports when it is not moving fast.
    """

    def __init__(self, source: MotionSource, rate_hz: float) -> None:
        names = [c.lower() for c in source.channels]
        self.source = source
        self.rate_hz = rate_hz
        self._columns: list[tuple[int | None, float]] = []
        for axis, factors in (("ax", _TO_G), ("ay", _TO_G), ("az", _TO_G),
                              ("gx", _TO_DPS), ("gy", _TO_DPS), ("gz", _TO_DPS)):  # fmt: skip
            if axis in names:
                index = names.index(axis)
                unit = source.units[index].strip().lower()
                self._columns.append((index, factors.get(unit, 1.0)))
            else:
                self._columns.append((None, 0.0))
        self._yaw = 0.0

    def read(self, n: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Next ``n`` samples: ``(n, 6)`` acc (g) + gyro (°/s), and ``(n, 3)`` angles (°)."""
        values, _labels = self.source.read(n)
        out = np.zeros((n, 6), dtype=np.float64)
        for j, (index, factor) in enumerate(self._columns):
            if index is not None:
                out[:, j] = values[:, index] * factor
        ax, ay, az = out[:, 0], out[:, 1], out[:, 2]
        roll = np.degrees(np.arctan2(ay, az))
        pitch = np.degrees(np.arctan2(-ax, np.hypot(ay, az)))
        yaw = self._yaw + np.cumsum(out[:, 5]) / self.rate_hz
        self._yaw = float(yaw[-1]) if n else self._yaw
        yaw = (yaw + 180.0) % 360.0 - 180.0
        return out, np.stack([roll, pitch, yaw], axis=1)


def witmotion_packets(kind: int, values: npt.NDArray[np.integer]) -> bytes:
    """Return 11-byte WT901 packets of one type, one per row of four int16 values.

    ``0x55 TYPE D0L D0H … D3L D3H SUM`` with ``SUM`` the low byte of the sum of the first
    ten bytes, as in the WT901 datasheet, section 5.1.
    """
    rows = np.asarray(values, dtype="<i2").reshape(-1, 4)
    packets = np.empty((len(rows), 11), dtype=np.uint8)
    packets[:, 0] = 0x55
    packets[:, 1] = kind
    packets[:, 2:10] = rows.view(np.uint8).reshape(-1, 8)
    packets[:, 10] = packets[:, :10].sum(axis=1, dtype=np.uint32) & 0xFF
    return packets.tobytes()


class WitMotionEncoder:
    """Turns a motion source into WT901 serial packets or WT901BLE notifications.

    Serial: per sample one 11-byte packet per output (0x51 acc with temperature, 0x52 gyro,
    0x53 angle with a version word, 0x54 mag). BLE: one 20-byte ``0x55 0x61`` packet per
    sample. Neither format has timestamps or sequence numbers, like the real devices.
    """

    def __init__(
        self,
        source: MotionSource,
        *,
        wire: str,
        device_id: str,
        rate_hz: float | None,
        batch: int | None,
        outputs: Sequence[str] = ("acc", "gyro", "angle"),
        temperature_c: float = 25.0,
    ) -> None:
        rate = float(source.rate_hz if rate_hz is None else rate_hz)
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"rate_hz must be a positive number, got {rate}")
        unknown = [o for o in outputs if o not in _WIT_TYPES]
        if unknown or not outputs:
            raise ValueError(f"outputs must be a non-empty subset of {tuple(_WIT_TYPES)}")
        self.wire = wire
        self.rate_hz = rate
        self.batch = max(1, round(rate / 10)) if batch is None else batch
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1 sample, got {self.batch}")
        self.outputs = tuple(sorted(outputs, key=_WIT_TYPES.__getitem__))
        self.temperature_raw = round(temperature_c * 100)
        self.motion = _WitMotionMotion(source, rate)
        self.dropped_samples = 0
        self.sample_index = 0
        self.hello = self._hello(device_id)

    def _hello(self, device_id: str) -> Hello:
        """The layout the gateway's profile announces for this device (for tests and tools)."""
        acc = tuple(ChannelInfo(n, "g", _WIT_ACC_G / 32768) for n in ("ax", "ay", "az"))
        gyro = tuple(ChannelInfo(n, "deg/s", _WIT_GYRO_DPS / 32768) for n in ("gx", "gy", "gz"))
        angle = tuple(
            ChannelInfo(n, "deg", _WIT_ANGLE_DEG / 32768) for n in ("roll", "pitch", "yaw")
        )
        mag = tuple(ChannelInfo(n, "LSB", 1.0) for n in ("mx", "my", "mz"))
        if self.wire == "witmotion-ble":
            channels = acc + gyro + angle
        else:
            parts = {"acc": acc, "gyro": gyro, "angle": angle, "mag": mag}
            channels = tuple(c for o in self.outputs for c in parts[o])
        return Hello(device_id, f"emulated-{self.wire}", self.rate_hz, channels)

    def hello_frame(self) -> bytes:
        return b""  # these devices announce nothing

    def encode(self, n: int) -> list[bytes]:
        """The bytes of the next ``n`` samples, one entry per sample."""
        motion, angles = self.motion.read(n)
        acc = _wit_raw(motion[:, :3], _WIT_ACC_G)
        gyro = _wit_raw(motion[:, 3:], _WIT_GYRO_DPS)
        angle = _wit_raw(angles, _WIT_ANGLE_DEG)
        self.sample_index += n
        if self.wire == "witmotion-ble":
            packets = np.empty((n, 20), dtype=np.uint8)
            packets[:, 0] = 0x55
            packets[:, 1] = 0x61
            body = np.concatenate([acc, gyro, angle], axis=1).astype("<i2")
            packets[:, 2:] = body.view(np.uint8).reshape(n, 18)
            raw = packets.tobytes()
            return [raw[i * 20 : (i + 1) * 20] for i in range(n)]
        fourth = np.full((n, 1), self.temperature_raw, dtype=np.int16)
        columns = {
            "acc": np.concatenate([acc, fourth], axis=1),
            "gyro": np.concatenate([gyro, fourth], axis=1),
            "angle": np.concatenate([angle, np.full((n, 1), 0x1000, dtype=np.int16)], axis=1),
            "mag": np.zeros((n, 4), dtype=np.int16),
        }
        per_type = [
            np.frombuffer(witmotion_packets(_WIT_TYPES[o], columns[o]), np.uint8).reshape(n, 11)
            for o in self.outputs
        ]
        raw = np.stack(per_type, axis=1).tobytes()
        size = 11 * len(self.outputs)
        return [raw[i * size : (i + 1) * size] for i in range(n)]

    def next_frames(self, n_samples: int | None = None) -> list[tuple[bytes, int]]:
        """The next batch as ``(bytes of one sample, 1)`` pairs, so drops count per sample."""
        return [(b, 1) for b in self.encode(self.batch if n_samples is None else n_samples)]


def encode_witmotion(
    source: MotionSource,
    n_samples: int,
    *,
    wire: str = "witmotion",
    rate_hz: float | None = None,
    outputs: Sequence[str] = ("acc", "gyro", "angle"),
) -> bytes:
    """Return the exact bytes an emulated WitMotion device sends for ``n_samples`` samples.

    Args:
        source: Motion to encode (m/s^2 or g; rad/s or °/s).
        n_samples: Samples to encode.
        wire: ``"witmotion"`` (WT901 serial packets) or ``"witmotion-ble"`` (WT901BLE).
        rate_hz: Rate used to integrate yaw; the source's by default.
        outputs: Serial packets per sample, from ``acc``, ``gyro``, ``angle``, ``mag``.

    Raises:
        ValueError: An argument is out of range.
    """
    if wire not in ("witmotion", "witmotion-ble"):
        raise ValueError(f"wire must be 'witmotion' or 'witmotion-ble', got {wire!r}")
    encoder = WitMotionEncoder(
        source, wire=wire, device_id="emu", rate_hz=rate_hz, batch=None, outputs=outputs
    )
    parts: list[bytes] = []
    remaining = n_samples
    while remaining > 0:
        take = min(remaining, 4096)
        parts.extend(encoder.encode(take))
        remaining -= take
    return b"".join(parts)
