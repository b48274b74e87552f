"""Synthetic motion: labelled IMU data from a small physical model of a waist-worn sensor."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from firmware_bridge.emulator.motion import GRAVITY

__all__ = ["ACTIVITIES", "SyntheticMotion"]

ACTIVITIES = ("standing", "sitting", "lying", "walking", "running")
"""Activities :class:`SyntheticMotion` can produce; also its labels."""


class _Gait:
    """Trunk motion of one gait: step rate, centre-of-mass bounce and trunk sway amplitudes."""

    __slots__ = ("ap", "impact", "ml", "pitch_deg", "roll_deg", "step_hz", "vertical_m", "yaw_deg")

    def __init__(
        self,
        *,
        step_hz: float,
        vertical_m: float,
        ap: float,
        ml: float,
        impact: float,
        pitch_deg: float,
        roll_deg: float,
        yaw_deg: float,
    ) -> None:
        self.step_hz = step_hz
        self.vertical_m = vertical_m
        self.ap = ap
        self.ml = ml
        self.impact = impact
        self.pitch_deg = pitch_deg
        self.roll_deg = roll_deg
        self.yaw_deg = yaw_deg


# Typical figures for a sensor at the lower back: the centre of mass rises and falls once
# per step, the trunk rolls and yaws once per stride (two steps).
_GAITS = {
    "walking": _Gait(
        step_hz=1.9, vertical_m=0.025, ap=1.5, ml=0.8, impact=0.25,
        pitch_deg=2.0, roll_deg=3.0, yaw_deg=5.0,
    ),
    "running": _Gait(
        step_hz=2.8, vertical_m=0.04, ap=3.0, ml=1.5, impact=0.5,
        pitch_deg=4.0, roll_deg=5.0, yaw_deg=8.0,
    ),
}  # fmt: skip


class SyntheticMotion:
    """Labelled accelerometer and gyroscope data from a simple model of a waist-worn IMU.

    Axes: x points up along the trunk when standing, y forward, z to the left. The
    accelerometer reads specific force in m/s^2 (so +9.81 on x when standing still), the
    gyroscope body rates in rad/s. Each segment of about ``segment_s`` seconds has one
    activity: still postures (standing, sitting reclined, lying on the back or a side) with
    postural sway and sensor noise, or walking / running with a per-step bounce of the
    centre of mass and per-stride trunk sway. Orientation and angular rate come from the
    same angle trajectories, so gravity on the accelerometer moves consistently with the
    gyroscope; motion fades out and in around each change, as people pause between
    activities. The output depends only on ``seed``, not on how it is read.

    Attributes:
        channels: ``("ax", "ay", "az", "gx", "gy", "gz")``.
        units: m/s^2 for accel, rad/s for gyro.
        full_scale: ±16 g and ±2000 °/s, a common IMU configuration.
        rate_hz: Sample rate.
        activities: Activities segments are drawn from.
    """

    channels = ("ax", "ay", "az", "gx", "gy", "gz")
    units = ("m/s^2",) * 3 + ("rad/s",) * 3
    full_scale = (16 * GRAVITY,) * 3 + (math.radians(2000.0),) * 3

    _TRANSITION_S = 1.0
    _ACCEL_NOISE = 0.03
    _GYRO_NOISE = 0.005

    def __init__(
        self,
        rate_hz: float = 100.0,
        seed: int = 0,
        *,
        activities: Sequence[str] = ACTIVITIES,
        segment_s: float = 30.0,
    ) -> None:
        """Set up the generator.

        Args:
            rate_hz: Sample rate.
            seed: Seed of everything random; equal seeds give equal data.
            activities: Names from :data:`ACTIVITIES` to draw segments from.
            segment_s: Mean segment length; actual lengths vary by ±25 %.

        Raises:
            ValueError: An argument is out of range or an activity is unknown.
        """
        if not rate_hz > 0 or not math.isfinite(rate_hz):
            raise ValueError(f"rate_hz must be a positive number, got {rate_hz}")
        if not segment_s > 0:
            raise ValueError(f"segment_s must be positive, got {segment_s}")
        unknown = [name for name in activities if name not in ACTIVITIES]
        if unknown or not activities:
            raise ValueError(
                f"activities must be a non-empty subset of {ACTIVITIES}, got {unknown}"
            )
        self.rate_hz = float(rate_hz)
        self.activities = tuple(activities)
        self.segment_s = float(segment_s)
        self._rng = np.random.default_rng(seed)
        self._gyro_bias = self._rng.normal(0.0, 0.01, 3)
        self._activity: str | None = None
        self._posture = (0.0, 0.0)  # (pitch, roll) in radians at the end of the last segment
        self._segment = np.empty((0, 6), dtype=np.float32)
        self._label = ""
        self._position = 0

    def __repr__(self) -> str:
        return f"SyntheticMotion(rate_hz={self.rate_hz:g}, activities={self.activities})"

    def skip(self, samples: int) -> None:
        """Generate and discard ``samples`` samples, e.g. to start mid-stream."""
        while samples > 0:
            if self._position >= len(self._segment):
                self._next_segment()
            take = min(samples, len(self._segment) - self._position)
            self._position += take
            samples -= take

    def read(self, n: int) -> tuple[npt.NDArray[np.float32], list[str | None]]:
        """Return the next ``n`` samples and their activity labels."""
        out = np.empty((n, 6), dtype=np.float32)
        labels: list[str | None] = []
        filled = 0
        while filled < n:
            if self._position >= len(self._segment):
                self._next_segment()
            take = min(n - filled, len(self._segment) - self._position)
            out[filled : filled + take] = self._segment[self._position : self._position + take]
            labels.extend([self._label] * take)
            self._position += take
            filled += take
        return out, labels

    def _next_segment(self) -> None:
        rng = self._rng
        choices = [a for a in self.activities if a != self._activity] or list(self.activities)
        activity = str(rng.choice(choices))
        n = max(2, round(self.segment_s * rng.uniform(0.75, 1.25) * self.rate_hz))
        t = np.arange(n) / self.rate_hz
        duration = n / self.rate_hz

        pitch, roll = self._target_posture(activity)
        # Smooth posture change at the start, motion envelope fading in and out at the ends.
        ramp = _smoothstep(t / self._TRANSITION_S)
        envelope = ramp * _smoothstep((duration - t) / self._TRANSITION_S)
        base_pitch = self._posture[0] + (pitch - self._posture[0]) * ramp
        base_roll = self._posture[1] + (roll - self._posture[1]) * ramp
        self._posture = (pitch, roll)

        linear = np.zeros((n, 3))
        gait = _GAITS.get(activity)
        if gait is not None:
            step_hz = gait.step_hz * rng.uniform(0.93, 1.07)
            size = rng.uniform(0.85, 1.15)
            phase = 2 * np.pi * step_hz * t + rng.uniform(0, 2 * np.pi)
            stride = phase / 2
            omega = 2 * np.pi * step_hz
            linear[:, 0] = -gait.vertical_m * omega**2 * np.sin(phase)
            linear[:, 0] += gait.impact * gait.vertical_m * omega**2 * np.sin(2 * phase)
            linear[:, 1] = gait.ap * np.sin(phase + np.pi / 2)
            linear[:, 2] = gait.ml * np.sin(stride)
            linear *= (size * envelope)[:, None]
            sway_pitch = np.radians(gait.pitch_deg) * np.sin(phase + np.pi / 4)
            sway_roll = np.radians(gait.roll_deg) * np.sin(stride)
            sway_yaw = np.radians(gait.yaw_deg) * np.sin(stride + np.pi / 2)
        else:
            # Postural sway standing, breathing when sitting or lying: slow and tiny.
            amplitude = np.radians(0.5 if activity == "standing" else 0.2)
            sway_hz = rng.uniform(0.2, 0.35)
            phase = 2 * np.pi * sway_hz * t + rng.uniform(0, 2 * np.pi)
            sway_pitch = amplitude * np.sin(phase)
            sway_roll = 0.8 * amplitude * np.sin(1.3 * phase)
            sway_yaw = 0.3 * amplitude * np.sin(0.7 * phase)
        theta = base_pitch + envelope * sway_pitch
        lateral = envelope * sway_roll
        yaw = envelope * sway_yaw

        # Gravity ("up" seen from the sensor): lateral lean about y, pitch about z, then the
        # roll of a lying trunk about its own long axis.
        cos_l, sin_l = np.cos(lateral), np.sin(lateral)
        w0 = np.cos(theta) * cos_l
        w1 = np.sin(theta) * cos_l
        w2 = -sin_l
        up = np.stack(
            [w0, np.cos(base_roll) * w1 - np.sin(base_roll) * w2,
             np.sin(base_roll) * w1 + np.cos(base_roll) * w2],
            axis=1,
        )  # fmt: skip
        accel = GRAVITY * up + linear + rng.normal(0.0, self._ACCEL_NOISE, (n, 3))
        dt = 1.0 / self.rate_hz
        gyro = np.stack(
            [np.gradient(yaw + base_roll, dt), np.gradient(lateral, dt), np.gradient(theta, dt)],
            axis=1,
        )
        gyro += self._gyro_bias + rng.normal(0.0, self._GYRO_NOISE, (n, 3))

        self._segment = np.concatenate([accel, gyro], axis=1).astype(np.float32)
        self._label = activity
        self._activity = activity
        self._position = 0

    def _target_posture(self, activity: str) -> tuple[float, float]:
        """Return (pitch, roll) of the trunk for an activity, with some person-to-person spread."""
        rng = self._rng
        if activity == "lying":
            side = float(rng.choice([0.0, 90.0, -90.0]))  # back, left side, right side
            return math.radians(90.0 + rng.normal(0, 5)), math.radians(side + rng.normal(0, 5))
        if activity == "sitting":
            return math.radians(rng.normal(20.0, 5.0)), math.radians(rng.normal(0, 3))
        if activity in _GAITS:
            return math.radians(rng.normal(-5.0, 2.0)), math.radians(rng.normal(0, 2))
        return math.radians(rng.normal(0.0, 3.0)), math.radians(rng.normal(0, 3))


def _smoothstep(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)
