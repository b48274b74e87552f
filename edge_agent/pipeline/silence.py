"""Silence detection: a stream that stops delivering samples becomes a fault event.

The expected rate of a stream is what its device declared (HELLO) until enough data has
been seen to learn it. A stream is silent when no data arrived for ``limit_s`` (2 s by
default) or for three sample periods of a slower device, whichever is longer, so a 0.2 Hz
sensor is not reported between two samples. Each stream raises ``sensor.silent`` once per
silence and ``sensor.recovered`` when data returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_PERIODS = 3.0  # sample periods of silence tolerated from a device slower than the limit


@dataclass
class SilenceWatch:
    """The watchdog state of one stream; :meth:`check` is called a few times a second.

    Attributes:
        limit_s: Configured silence limit.
        silent_since: Host time of the last data when the stream went silent, else None.
        learned_rate_hz: Samples per second measured while data flowed (0 until known).
    """

    limit_s: float = 2.0
    silent_since: float | None = None
    learned_rate_hz: float = 0.0
    _mark_time: float | None = None
    _mark_samples: int = 0

    def effective_limit(self, declared_rate_hz: float | None) -> float:
        """The silence limit for the expected rate: learned if known, else declared."""
        rate = self.learned_rate_hz or declared_rate_hz or 0.0
        return max(self.limit_s, _PERIODS / rate) if rate > 0 else self.limit_s

    def check(
        self,
        now: float,
        last_data: float | None,
        samples: int,
        declared_rate_hz: float | None = None,
    ) -> tuple[str, dict[str, Any]] | None:
        """Return an event ``(kind, body)`` when the stream went silent or recovered.

        Args:
            now: Host monotonic time.
            last_data: Host time the stream last delivered samples (None: never).
            samples: Samples delivered so far (to learn the rate).
            declared_rate_hz: Rate the device announced, if any.
        """
        if last_data is None:
            return None
        self._learn(now, last_data, samples)
        limit = self.effective_limit(declared_rate_hz)
        quiet = now - last_data
        if self.silent_since is None:
            if quiet <= limit:
                return None
            self.silent_since = last_data
            return "sensor.silent", {
                "seconds_since_data": round(quiet, 3),
                "limit_s": round(limit, 3),
                "expected_rate_hz": round(self.learned_rate_hz or declared_rate_hz or 0.0, 3),
            }
        if last_data > self.silent_since:
            silent_for = last_data - self.silent_since
            self.silent_since = None
            self._mark_time = None  # the gap says nothing about the rate
            return "sensor.recovered", {"silent_for_s": round(silent_for, 3)}
        return None

    def _learn(self, now: float, last_data: float, samples: int) -> None:
        """Average samples per second over spans of at least two seconds of flowing data."""
        if self._mark_time is None or samples <= 0 or samples < self._mark_samples:
            # Frames before the device's HELLO arrive but are not counted: start after them.
            self._mark_time = last_data if samples > 0 else None
            self._mark_samples = samples
            return
        span = last_data - self._mark_time
        if span >= 2.0 and now - last_data <= self.limit_s:
            rate = (samples - self._mark_samples) / span
            if rate > 0:
                self.learned_rate_hz = (
                    rate if not self.learned_rate_hz else 0.7 * self.learned_rate_hz + 0.3 * rate
                )
            self._mark_time, self._mark_samples = last_data, samples
