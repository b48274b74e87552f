"""Profile `witmotion-ble`: WitMotion WT901BLE (WT901BLECL, BWT901BLE) over GATT notifications.

Wire format, from the WT901BLECL datasheet (v20-0707, section 6.1 "Data Format"): by default
the module notifies 20-byte packets ``0x55 0x61`` followed by nine little-endian int16
values, acceleration X Y Z, angular velocity X Y Z and angle X Y Z:

* ``a = ((axH<<8)|axL) / 32768 * 16 g``
* ``w = ((wxH<<8)|wxL) / 32768 * 2000 °/s``
* ``Roll = ((RollH<<8)|RollL) / 32768 * 180 °`` (Pitch and Yaw alike)

``0x55 0x71`` packets are replies to register reads (magnetometer, quaternion, …), sent
only on request; they are counted as ``unknown_packets``. The packets carry no checksum, so
a header is trusted only where a notification starts or the previous packet ended; bytes
that fit neither are skipped as ``garbage_bytes``. Notifications come from characteristic
FFE4 of service FFE5. The device has no clock: samples are stamped by the host clock.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from firmware_bridge.profiles.base import HostTimedConfig, HostTimedProfile
from firmware_bridge.profiles.witmotion import (
    ACC_FULL_SCALE_G,
    ANGLE_FULL_SCALE_DEG,
    GYRO_FULL_SCALE_DPS,
    HEADER,
    RATES_HZ,
)
from firmware_bridge.protocol.v1 import ChannelInfo

DATA_FLAG = 0x61
"""Second byte of the default acceleration / angular velocity / angle packet."""
REGISTER_FLAG = 0x71
"""Second byte of a register-read reply."""
PACKET_SIZE = 20
"""Bytes per packet."""
SERVICE_UUID = "0000ffe5-0000-1000-8000-00805f9a34fb"
"""GATT service of the WT901BLE data channel.

WitMotion's UUIDs end in ``…805f9a34fb``, not on the Bluetooth base ``…805f9b34fb``, so the
16-bit short form ``ffe5`` does not name them: always use the full form.
"""
NOTIFY_UUID = "0000ffe4-0000-1000-8000-00805f9a34fb"
"""Characteristic whose notifications carry the packets."""
WRITE_UUID = "0000ffe9-0000-1000-8000-00805f9a34fb"
"""Characteristic that takes configuration commands (``FF AA …``); unused by the gateway."""

CHANNELS = (
    *(ChannelInfo(n, "g", ACC_FULL_SCALE_G / 32768) for n in ("ax", "ay", "az")),
    *(ChannelInfo(n, "deg/s", GYRO_FULL_SCALE_DPS / 32768) for n in ("gx", "gy", "gz")),
    *(ChannelInfo(n, "deg", ANGLE_FULL_SCALE_DEG / 32768) for n in ("roll", "pitch", "yaw")),
)
"""The nine channels of a 0x61 packet, in packet order."""

_DATA_HEADER = bytes((HEADER, DATA_FLAG))
_HEADERS = (_DATA_HEADER, bytes((HEADER, REGISTER_FLAG)))


class WitMotionBleConfig(HostTimedConfig):
    """WitMotion WT901BLE family: 20-byte 0x55 0x61 notifications over BLE."""

    protocol: Literal["witmotion-ble"] = Field(description="Device profile.")

    ble_service_uuid: ClassVar[str | None] = SERVICE_UUID
    ble_notify_uuids: ClassVar[tuple[str, ...]] = (NOTIFY_UUID,)


class WitMotionBleProfile(HostTimedProfile):
    """Decoder of the WT901BLE notification format; see the module docstring."""

    protocol: ClassVar[str] = "witmotion-ble"
    supported_rates: ClassVar[tuple[float, ...]] = RATES_HZ
    firmware: ClassVar[str] = "witmotion-wt901ble"
    channels = CHANNELS

    def __init__(self, config: Any, *, device_id: str) -> None:
        super().__init__(config, device_id=device_id)
        self._tail = b""
        self._synced = False

    def reset(self) -> None:
        """After a reconnect: drop a partial packet."""
        super().reset()
        self._tail = b""
        self._synced = False

    def _decode(self, data: bytes) -> npt.NDArray[np.int16]:
        if not self._tail and len(data) == PACKET_SIZE and data[:2] == _DATA_HEADER:
            # The usual case: one notification, one packet.
            self._synced = True
            self.stats.packets_ok += 1
            return np.frombuffer(data, "<i2", offset=2).reshape(1, 9)
        # A read that starts with a header is a packet boundary (one notification, one
        # packet); bytes left from the previous read that do not complete it are stale.
        if self._tail and data[:2] in _HEADERS and len(data) % PACKET_SIZE == 0:
            self.stats.garbage_bytes += len(self._tail)
            self._tail = b""
        buf = self._tail + data if self._tail else data
        size = len(buf)
        pos = 0
        blocks: list[npt.NDArray[np.int16]] = []
        while size - pos >= PACKET_SIZE:
            m = (size - pos) // PACKET_SIZE
            block = np.frombuffer(buf, np.uint8, count=m * PACKET_SIZE, offset=pos).reshape(
                m, PACKET_SIZE
            )
            flags = block[:, 1]
            valid = (block[:, 0] == HEADER) & ((flags == DATA_FLAG) | (flags == REGISTER_FLAG))
            k = m if valid.all() else int(np.argmin(valid))
            if k:
                self._synced = True
                good = block[:k]
                data_rows = good[good[:, 1] == DATA_FLAG]
                self.stats.packets_ok += k
                self.stats.unknown_packets += k - len(data_rows)
                if len(data_rows):
                    blocks.append(np.ascontiguousarray(data_rows[:, 2:]).view("<i2"))
                pos += k * PACKET_SIZE
            if k == m:
                break
            pos = self._resync(buf, pos)
        self._tail = buf[pos:]
        if not blocks:
            return np.empty((0, len(CHANNELS)), dtype=np.int16)
        return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)

    def _resync(self, buf: bytes, pos: int) -> int:
        """Skip to the next header that ends the buffer or is followed by another header."""
        if self._synced:
            self.stats.resyncs += 1
        self._synced = False
        size = len(buf)
        at = pos + 1
        while True:
            candidates = [i for i in (buf.find(h, at) for h in _HEADERS) if i >= 0]
            if not candidates:
                self.stats.garbage_bytes += size - pos
                return size
            at = min(candidates)
            after = at + PACKET_SIZE
            if after >= size - 1 or buf[after : after + 2] in _HEADERS:
                # A packet that ends the read, or runs into the next header: believable.
                # One still incomplete waits in the tail for the rest.
                self.stats.garbage_bytes += at - pos
                return at
            at += 1
