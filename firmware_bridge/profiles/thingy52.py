"""Profile `thingy52`: Nordic Thingy:52, raw motion data over its Motion Service.

From Nordic's Thingy:52 firmware (``Nordic-Thingy52-FW``, ``include/ble_services/ble_tms.h``,
``source/ble_services/ble_tms.c``, ``source/modules/m_motion.c``):

* Services share the vendor base UUID ``EF68xxxx-9B35-4933-9B10-52FFA9740042``. The Motion
  Service is ``0x0400``; its raw data characteristic ``0x0406`` notifies ``ble_tms_raw_t``;
  the device advertises the Configuration Service ``0x0100``, which is how a scan knows it.
* ``ble_tms_raw_t`` is 18 bytes, packed: accelerometer, gyroscope, compass, each ``x y z``
  as little-endian ``int16_t``.
* The motion driver delivers 16Q16 values in g, °/s and µT; ``m_motion.c`` shifts them right
  by ``RAW_Q_FORMAT_*_INTEGER_BITS`` (accelerometer 6, gyroscope 11, compass 12), so the
  notified values are fixed-point with 10, 5 and 4 fractional bits:
  ``a = raw / 2**10 g``, ``w = raw / 2**5 °/s``, ``B = raw / 2**4 µT``.
* The rate is the Motion configuration's ``motion_freq_hz``: 1 … 200 Hz, 10 Hz by default
  (``MOTION_DEFAULT_CONFIG`` in ``m_motion.h``).

The notification has no counter or checksum; the device has no clock of ours, so samples
are stamped by the host clock. A notification that is not whole 18-byte records is counted
(``bad_notifications``) and dropped. The int16 values travel unchanged: the HELLO announces
the Q-format LSBs as scales.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from firmware_bridge.profiles.base import HostTimedConfig
from firmware_bridge.profiles.struct_layout import (
    StructBleConfig,
    StructBleProfile,
    StructLayoutConfig,
)

BASE_UUID = "ef68{:04x}-9b35-4933-9b10-52ffa9740042"
"""The Thingy's vendor base UUID, with the 16-bit service or characteristic id in place."""
CONFIGURATION_SERVICE_UUID = BASE_UUID.format(0x0100)
"""Thingy Configuration Service: the UUID the device advertises."""
MOTION_SERVICE_UUID = BASE_UUID.format(0x0400)
"""Thingy Motion Service."""
RAW_DATA_UUID = BASE_UUID.format(0x0406)
"""Raw data characteristic of the Motion Service (accelerometer, gyroscope, compass)."""
MOTION_CONFIG_UUID = BASE_UUID.format(0x0401)
"""Motion configuration characteristic (``motion_freq_hz`` among others); unused here."""

ACC_FRACTION_BITS = 10
"""Accelerometer: 16Q16 shifted right by 6 integer bits leaves Q6.10 (g)."""
GYRO_FRACTION_BITS = 5
"""Gyroscope: shifted right by 11 leaves Q11.5 (°/s)."""
COMPASS_FRACTION_BITS = 4
"""Compass: shifted right by 12 leaves Q12.4 (µT)."""
RECORD_SIZE = 18
"""Bytes of one ``ble_tms_raw_t``."""

RATES_HZ = (1.0, 2.0, 5.0, 10.0, 20.0, 25.0, 50.0, 100.0, 200.0)
"""Rates ``motion_freq_hz`` is usually set to (any integer 1 … 200 is valid)."""

_SCALES = (
    ("g", 2.0**-ACC_FRACTION_BITS, ("ax", "ay", "az")),
    ("deg/s", 2.0**-GYRO_FRACTION_BITS, ("gx", "gy", "gz")),
    ("uT", 2.0**-COMPASS_FRACTION_BITS, ("mx", "my", "mz")),
)

_LAYOUT = StructBleConfig.model_validate(
    {
        "protocol": "struct-ble",
        "format": "<9h",
        "fields": [n for _, _, names in _SCALES for n in names],
        "channels": [
            {"name": n, "unit": unit, "scale": scale}
            for unit, scale, names in _SCALES
            for n in names
        ],
    }
)
"""``ble_tms_raw_t`` as a struct layout: nine int16, each exact at its Q-format LSB."""


class Thingy52Config(HostTimedConfig):
    """Nordic Thingy:52: raw accelerometer, gyroscope and compass over its Motion Service."""

    protocol: Literal["thingy52"] = Field(description="Device profile.")

    ble_service_uuid: ClassVar[str | None] = CONFIGURATION_SERVICE_UUID
    ble_notify_uuids: ClassVar[tuple[str, ...]] = (RAW_DATA_UUID,)


class Thingy52Profile(StructBleProfile):
    """Decoder of the Thingy:52 raw data characteristic; see the module docstring."""

    protocol: ClassVar[str] = "thingy52"
    firmware: ClassVar[str] = "nordic-thingy52"
    supported_rates: ClassVar[tuple[float, ...]] = RATES_HZ
    snap_tolerance: ClassVar[float] = 0.05

    @classmethod
    def layout_config(cls, config: Any) -> StructLayoutConfig:
        """The fixed ``ble_tms_raw_t`` layout, whatever the sensor's config."""
        return _LAYOUT
