"""Channels described in config: names, units, scales and the int16 resolution they travel at.

Profiles whose devices send physical values (numbers printed by a sketch, fields of a binary
struct) describe each channel in config rather than code. The pipeline's frames carry int16
samples with an LSB scale per channel (protocol v1), so every such value is quantised once:
``int16 = round(value / lsb)`` with ``lsb = full_scale / 32767``. ``full_scale`` is the
largest magnitude the channel can reach; a value beyond it is not a reading the sensor can
give and is refused (counted), never clipped into something plausible.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from firmware_bridge.protocol.v1 import MAX_CHANNELS, MAX_SCALE, MIN_SCALE, ChannelInfo

__all__ = [
    "INT16_MAX",
    "ChannelSpec",
    "Quantizer",
    "default_full_scale",
    "default_unit",
    "distinct_names",
]

INT16_MAX = 32767
"""Largest int16 magnitude used for a full-scale value (symmetric around zero)."""

GRAVITY = 9.80665
"""Standard gravity, m/s^2."""

# The usual ranges of a MEMS IMU (±16 g, ±2000 °/s, a magnetometer's ±4900 µT): generous
# enough for any reading, fine enough (0.5 mg, 0.06 °/s) for any model.
_UNIT_FULL_SCALE = {
    "m/s^2": 16 * GRAVITY,
    "m/s2": 16 * GRAVITY,
    "g": 16.0,
    "deg/s": 2000.0,
    "dps": 2000.0,
    "rad/s": math.radians(2000.0),
    "ut": 4900.0,
    "µt": 4900.0,
    "deg": 360.0,
    "degc": 200.0,
    "°c": 200.0,
}

_AXIS = r"[_-]?[xyz]"
_NAME_UNITS = (
    (re.compile(rf"^(a|acc|accel|accelerometer){_AXIS}$"), "m/s^2"),
    (re.compile(rf"^(g|gyr|gyro|gyroscope){_AXIS}$"), "deg/s"),
    (re.compile(rf"^(m|mag|magnetometer){_AXIS}$"), "uT"),
)

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$"
"""A channel name: a letter or underscore, then letters, digits, ``_ . -``; at most 32."""


def default_unit(name: str) -> str:
    """The unit a conventional channel name implies: ``ax`` m/s², ``gy`` deg/s, ``mz`` µT.

    These are the units Edge Impulse's data-forwarder sketches print (accelerometer in
    m/s², gyroscope in °/s, magnetometer in µT); other names have no implied unit.
    """
    lowered = name.lower()
    for pattern, unit in _NAME_UNITS:
        if pattern.match(lowered):
            return unit
    return ""


def default_full_scale(unit: str) -> float:
    """The usual range of ``unit`` (±16 g, ±2000 °/s, ±4900 µT), else the int16 range.

    An unknown unit gets 32767: integer counts (raw ADC or IMU registers) then pass exactly.
    Values with decimals in another unit need ``full_scale`` set to keep their resolution.
    """
    return _UNIT_FULL_SCALE.get(unit.strip().lower(), float(INT16_MAX))


class ChannelSpec(BaseModel):
    """One channel of a device whose values are described in config."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    name: str = Field(pattern=NAME_PATTERN, description="Channel name, e.g. 'ax'.")
    unit: str | None = Field(
        default=None,
        max_length=16,
        description="Physical unit after scaling, e.g. 'm/s^2', 'g', 'deg/s', 'uT' "
        "(default: implied by the name: a* m/s^2, g* deg/s, m* uT; else none).",
    )
    scale: float = Field(
        default=1.0,
        description="Factor from the device's number to the unit (e.g. 1/16384 for raw "
        "counts of a ±2 g accelerometer); finite, magnitude 1e-12..1e6.",
    )
    offset: float = Field(default=0.0, description="Added after scaling.")
    full_scale: float | None = Field(
        default=None,
        gt=0,
        le=1e9,
        description="Largest magnitude the channel reaches, in its unit; sets the resolution "
        "(full_scale / 32767) and values beyond it are refused (default: the unit's usual "
        "range: 16 g, 2000 deg/s, 4900 uT, else 32767).",
    )

    @field_validator("scale")
    @classmethod
    def _sane_scale(cls, value: float) -> float:
        if not MIN_SCALE <= abs(value) <= MAX_SCALE:
            raise ValueError(f"scale must have magnitude {MIN_SCALE:g}..{MAX_SCALE:g}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def resolved_unit(self) -> str:
        """The configured unit, else the one the name implies."""
        return self.unit if self.unit is not None else default_unit(self.name)


def distinct_names(channels: Sequence[ChannelSpec]) -> None:
    """Refuse repeated names and more channels than a HELLO can announce.

    Raises:
        ValueError: naming the problem.
    """
    names = [c.name for c in channels]
    if len(set(names)) != len(names):
        raise ValueError(f"channel names must not repeat, got {names}")
    if not 1 <= len(names) <= MAX_CHANNELS:
        raise ValueError(f"1..{MAX_CHANNELS} channels, got {len(names)}")


class Quantizer:
    """Turns physical values into the int16 samples and LSB scales a HELLO announces.

    Args:
        channels: The channels, in sample order.
        full_scales: Per channel, the full scale to use where the spec sets none.
        exact: Per channel, whether the device's numbers are integers that fit int16 with
            no offset: then, unless ``full_scale`` is set, the LSB is the channel's scale
            itself and every reading passes unchanged.
    """

    def __init__(
        self,
        channels: Sequence[ChannelSpec],
        full_scales: Sequence[float] | None = None,
        exact: Sequence[bool] | None = None,
    ) -> None:
        fallback = full_scales or [default_full_scale(c.resolved_unit) for c in channels]
        exact = exact or [False] * len(channels)
        full: list[float] = []
        lsb: list[float] = []
        for spec, default, whole in zip(channels, fallback, exact, strict=True):
            if spec.full_scale is None and whole and spec.offset == 0:
                full.append(32768 * abs(spec.scale))
                lsb.append(abs(spec.scale))
            else:
                full.append(spec.full_scale or default)
                lsb.append(full[-1] / INT16_MAX)
        self.full_scale = np.array(full, dtype=np.float64)
        # The HELLO carries each scale as float32: quantise with exactly that value (rounded
        # up, so the full scale still fits in int16), and a decoded sample is within half an
        # announced LSB of the value, whatever the magnitude.
        announced = np.array(lsb, dtype=np.float32)
        short = announced.astype(np.float64) < np.array(lsb)
        announced[short] = np.nextafter(announced[short], np.float32(np.inf))
        self.lsb = announced.astype(np.float64)
        self.scale = np.array([c.scale for c in channels], dtype=np.float64)
        self.offset = np.array([c.offset for c in channels], dtype=np.float64)
        self.info = tuple(
            ChannelInfo(c.name, c.resolved_unit, float(lsb))
            for c, lsb in zip(channels, self.lsb, strict=True)
        )

    def physical(self, raw: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """The device's numbers ``(n, channels)`` in physical units (scale, then offset)."""
        out: npt.NDArray[np.float64] = raw * self.scale + self.offset
        return out

    def quantize(
        self, values: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.bool_]]:
        """Physical values ``(n, channels)`` → the int16 rows that make sense, and their mask.

        A row is refused (left out) when any value is not finite or lies beyond its
        channel's full scale: a sensor cannot read that, the number was garbled on the way.
        """
        with np.errstate(invalid="ignore", over="ignore"):
            ok: npt.NDArray[np.bool_] = np.asarray(
                np.isfinite(values).all(axis=1)
                & (np.abs(values) <= self.full_scale * (1 + 1e-9)).all(axis=1),
                dtype=np.bool_,
            )
            counts: npt.NDArray[np.int16] = np.clip(
                np.rint(values[ok] / self.lsb), -INT16_MAX - 1, INT16_MAX
            ).astype(np.int16)
        return counts, ok
