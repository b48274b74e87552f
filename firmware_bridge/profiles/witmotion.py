"""Profile `witmotion`: WitMotion WT901-family IMUs on a serial port (UART, USB-serial, SPP).

Wire format, from the WT901 datasheet (v20-0702, section 5.1 "Output Data Format"): the
device sends 11-byte packets ``0x55 TYPE D0L D0H D1L D1H D2L D2H D3L D3H SUM`` with
little-endian signed 16-bit values and ``SUM = (0x55 + TYPE + D0L + … + D3H) & 0xFF``.
Each output cycle (10 Hz by default, up to 200 Hz) sends one packet per enabled content,
in ascending type order:

=====  ==================  =====================================================
TYPE   content             physical value (datasheet formula)
=====  ==================  =====================================================
0x51   acceleration        ``a = ((AxH<<8)|AxL) / 32768 * 16 g``; D3 = temperature
                           ``T = ((TH<<8)|TL) / 100 °C``
0x52   angular velocity    ``w = ((wxH<<8)|wxL) / 32768 * 2000 °/s``
0x53   angle               ``Roll = ((RollH<<8)|RollL) / 32768 * 180 °`` (and Pitch,
                           Yaw); D3 = firmware version
0x54   magnetic field      ``H = (HxH<<8)|HxL`` (raw LSB)
=====  ==================  =====================================================

Types 0x50 (time), 0x55 (port status), 0x56 … 0x5A (pressure, GPS, quaternion, …) are
well-formed but unused here and are counted as ``unknown_packets``.

One sample is one cycle: it starts at the lowest configured type (0x51 for the default
``acc, gyro, angle``) and is complete when every configured type has arrived. A cycle with
a packet lost to a bad checksum is dropped whole (``incomplete_samples``), never filled in.
The device has no clock, so samples are stamped by :class:`~firmware_bridge.profiles.base.
HostClock` at the configured or learned rate.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, field_validator

from firmware_bridge.profiles.base import HostTimedConfig, HostTimedProfile
from firmware_bridge.protocol.v1 import ChannelInfo

HEADER = 0x55
"""First byte of every packet."""
PACKET_SIZE = 11
"""Bytes per packet, header and checksum included."""
ACC, GYRO, ANGLE, MAG = 0x51, 0x52, 0x53, 0x54
"""Packet types carrying the outputs this profile decodes."""
_FIRST_TYPE, _LAST_TYPE = 0x50, 0x5F

ACC_FULL_SCALE_G = 16.0
"""±16 g: the accelerometer's range in the datasheet formula."""
GYRO_FULL_SCALE_DPS = 2000.0
"""±2000 °/s: the gyroscope's range in the datasheet formula."""
ANGLE_FULL_SCALE_DEG = 180.0
"""±180°: the angle range in the datasheet formula."""

RATES_HZ = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 125.0, 200.0)
"""Output rates a WT901 can be set to (register RATE, 0x03)."""

Output = Literal["acc", "gyro", "angle", "mag"]
_DEFAULT_OUTPUTS: tuple[Output, ...] = ("acc", "gyro", "angle")

_OUTPUT_TYPE: dict[str, int] = {"acc": ACC, "gyro": GYRO, "angle": ANGLE, "mag": MAG}
_OUTPUT_CHANNELS: dict[str, tuple[ChannelInfo, ...]] = {
    "acc": tuple(ChannelInfo(n, "g", ACC_FULL_SCALE_G / 32768) for n in ("ax", "ay", "az")),
    "gyro": tuple(ChannelInfo(n, "deg/s", GYRO_FULL_SCALE_DPS / 32768) for n in ("gx", "gy", "gz")),
    "angle": tuple(
        ChannelInfo(n, "deg", ANGLE_FULL_SCALE_DEG / 32768) for n in ("roll", "pitch", "yaw")
    ),
    # The datasheet gives no unit; a unit no model expects keeps raw counts out of models.
    "mag": tuple(ChannelInfo(n, "LSB", 1.0) for n in ("mx", "my", "mz")),
}


class WitMotionConfig(HostTimedConfig):
    """WitMotion WT901 / HWT901B / WT901C and kin: 11-byte 0x55 packets on a serial port."""

    protocol: Literal["witmotion"] = Field(description="Device profile.")
    outputs: list[Output] = Field(
        default_factory=lambda: list(_DEFAULT_OUTPUTS),
        min_length=1,
        description="Packets that make up one sample, as enabled on the device (acc 0x51, "
        "gyro 0x52, angle 0x53, mag 0x54); channels follow in that order.",
    )

    default_baudrate: ClassVar[int | None] = 9600  # the WT901's factory setting

    @field_validator("outputs")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"outputs must not repeat, got {value}")
        return value


class WitMotionProfile(HostTimedProfile):
    """Decoder of the WT901 serial protocol; see the module docstring for the format."""

    protocol: ClassVar[str] = "witmotion"
    supported_rates: ClassVar[tuple[float, ...]] = RATES_HZ
    firmware: ClassVar[str] = "witmotion-wt901"

    def __init__(self, config: Any, *, device_id: str) -> None:
        super().__init__(config, device_id=device_id)
        configured: list[str] = getattr(config, "outputs", list(_DEFAULT_OUTPUTS))
        outputs = sorted(configured, key=_OUTPUT_TYPE.__getitem__)
        self.outputs: tuple[str, ...] = tuple(outputs)
        self.channels = tuple(c for o in outputs for c in _OUTPUT_CHANNELS[o])
        self._types = tuple(_OUTPUT_TYPE[o] for o in outputs)
        self._slot = {t: i for i, t in enumerate(self._types)}
        self._start = self._types[0]
        self._tail = b""
        self._synced = False  # bytes before the first valid packet are not errors
        self._partial = np.zeros((len(self._types), 3), dtype=np.int16)
        self._have = 0  # bit i set: slot i filled in the current cycle
        self._full = (1 << len(self._types)) - 1
        self._in_cycle = False
        self._rows: list[npt.NDArray[np.int16]] = []
        self.temperature_c: float | None = None

    def reset(self) -> None:
        """After a reconnect: drop the partial packet and cycle."""
        super().reset()
        self._tail = b""
        self._synced = False
        self._have = 0
        self._in_cycle = False

    # -- bytes → packets -------------------------------------------------------------------

    def _decode(self, data: bytes) -> npt.NDArray[np.int16]:
        buf = self._tail + data if self._tail else data
        size = len(buf)
        pos = 0
        blocks: list[npt.NDArray[np.int16]] = []
        while size - pos >= PACKET_SIZE:
            m = (size - pos) // PACKET_SIZE
            block = np.frombuffer(buf, np.uint8, count=m * PACKET_SIZE, offset=pos).reshape(
                m, PACKET_SIZE
            )
            valid = _valid(block)
            k = m if valid.all() else int(np.argmin(valid))
            if k:
                self._synced = True
                blocks.extend(self._packets(block[:k]))
                pos += k * PACKET_SIZE
            if k == m:
                break
            pos = self._resync(buf, pos)
        self._tail = buf[pos:]
        if self._rows:
            blocks.append(np.stack(self._rows))
            self._rows = []
        if not blocks:
            return np.empty((0, len(self.channels)), dtype=np.int16)
        return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)

    def _resync(self, buf: bytes, pos: int) -> int:
        """Skip from an invalid packet at ``pos`` to the next valid one (or to a partial tail)."""
        stats = self.stats
        if self._synced:
            stats.resyncs += 1
            if buf[pos] == HEADER and _FIRST_TYPE <= buf[pos + 1] <= _LAST_TYPE:
                stats.crc_errors += 1
            if self._in_cycle:  # the cycle under way lost a packet
                stats.incomplete_samples += 1
                self._in_cycle = False
                self._have = 0
        self._synced = False
        size = len(buf)
        start = pos
        at = pos + 1
        while True:
            at = buf.find(b"\x55", at)
            if at < 0 or size - at < PACKET_SIZE:
                end = size if at < 0 else at
                stats.garbage_bytes += end - start
                return end
            if _valid_at(buf, at):
                stats.garbage_bytes += at - start
                return at
            at += 1

    def _packets(self, block: npt.NDArray[np.uint8]) -> list[npt.NDArray[np.int16]]:
        """Turn valid packets into samples; returns whole blocks assembled without a loop."""
        self.stats.packets_ok += len(block)
        types = block[:, 1]
        values = np.ascontiguousarray(block[:, 2:10]).view("<i2")  # (n, 4)
        acc_rows = np.flatnonzero(types == ACC)
        if len(acc_rows):
            self.temperature_c = int(values[acc_rows[-1], 3]) / 100
        out: list[npt.NDArray[np.int16]] = []
        i, n = 0, len(types)
        while i < n:
            if not self._have and types[i] == self._start:
                j, samples = self._whole_cycles(types, values, i)
                if j > i:
                    if self._rows:  # keep order with samples assembled one by one
                        out.append(np.stack(self._rows))
                        self._rows = []
                    out.append(samples)
                    i = j
                    continue
            self._one(int(types[i]), values[i])
            i += 1
        return out

    def _whole_cycles(
        self, types: npt.NDArray[np.uint8], values: npt.NDArray[np.int16], i: int
    ) -> tuple[int, npt.NDArray[np.int16]]:
        """Vectorized path: cycles from ``i`` that repeat one packet pattern exactly."""
        rest = types[i:]
        starts = np.flatnonzero(rest == self._start)
        if len(starts) < 2:
            return i, _EMPTY
        period = int(starts[1])
        cycles = len(rest) // period
        pattern = rest[:period]
        body = rest[: cycles * period].reshape(cycles, period)
        if not (body == pattern).all():
            return i, _EMPTY
        columns: list[int] = []
        for t in self._types:
            where = np.flatnonzero(pattern == t)
            if len(where) != 1:
                return i, _EMPTY
            columns.append(int(where[0]))
        vals = values[i : i + cycles * period, :3].reshape(cycles, period, 3)
        samples = vals[:, columns, :].reshape(cycles, 3 * len(columns))
        self.stats.unknown_packets += cycles * (period - len(columns))
        return i + cycles * period, np.ascontiguousarray(samples)

    def _one(self, kind: int, vals: npt.NDArray[np.int16]) -> None:
        """Slow path: one packet into the cycle under way."""
        slot = self._slot.get(kind)
        if slot is None:
            self.stats.unknown_packets += 1
            return
        bit = 1 << slot
        if kind == self._start:
            if self._have:
                self.stats.incomplete_samples += 1
            self._have = 0
            self._in_cycle = True
        elif not self._in_cycle:
            return  # the start of this cycle was before we synced: not a sample
        elif self._have & bit:
            self.stats.incomplete_samples += 1  # a packet repeated: part of the cycle was lost
            self._have = 0
            self._in_cycle = False
            return
        self._partial[slot] = vals[:3]
        self._have |= bit
        if self._have == self._full:
            self._rows.append(self._partial.reshape(-1).copy())
            self._have = 0
            self._in_cycle = False


_EMPTY = np.empty((0, 0), dtype=np.int16)


def _valid(block: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    """Per row: header byte, type in the 0x50 … 0x5F family, and the 8-bit sum."""
    total = block[:, :10].sum(axis=1, dtype=np.uint32)
    kind = block[:, 1]
    valid: npt.NDArray[np.bool_] = (
        (block[:, 0] == HEADER)
        & (kind >= _FIRST_TYPE)
        & (kind <= _LAST_TYPE)
        & ((total & 0xFF) == block[:, 10])
    )
    return valid


def _valid_at(buf: bytes, at: int) -> bool:
    kind = buf[at + 1]
    return (
        buf[at] == HEADER
        and _FIRST_TYPE <= kind <= _LAST_TYPE
        and sum(buf[at : at + 10]) & 0xFF == buf[at + 10]
    )
