"""Topics whose publishes the broker refuses (an MQTT 5 PUBACK with a reason code >= 0x80).

A refusal is the broker's answer about a topic (an ACL, a quota), not about one message:
re-sending at once would be refused again, in a loop, while the outbox grows. So a refused
topic is parked: its rows stay in the outbox (left only to the disk cap's eviction), the
uplink stops publishing them, and once the topic's capped, jittered backoff has elapsed a
single row goes out as a probe. An accepted probe releases the topic; another refusal
doubles the wait. MQTT 3.1.1 has no reason code in PUBACK: a broker that drops a publish
there acknowledges it as delivered, and nothing of this applies (see docs/mqtt.md).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class _Parked:
    reason: str
    since: float
    retry_at: float
    failures: int = 1
    refusals: int = 1
    probe: int | None = None  # the row sent as a probe, while its PUBACK is awaited


@dataclass
class RefusedTopics:
    """Which topics are parked, and when each may send one probe.

    Args:
        minimum: First retry delay, seconds.
        maximum: Cap of the retry delay, seconds.
        rng: Random source of the jitter (seeded in tests).
    """

    minimum: float
    maximum: float
    rng: random.Random = field(default_factory=random.Random)
    parked: dict[str, _Parked] = field(default_factory=dict)
    total: int = 0

    def _delay(self, failures: int) -> float:
        ceiling = min(max(self.maximum, self.minimum), self.minimum * 2 ** min(failures - 1, 32))
        return self.rng.uniform(self.minimum, ceiling)

    def refused(self, topic: str, reason: str, now: float) -> bool:
        """Count a refused publish of `topic`; True when this starts a new episode."""
        self.total += 1
        parked = self.parked.get(topic)
        if parked is None:
            self.parked[topic] = _Parked(reason, time.time(), now + self._delay(1))
            return True
        parked.refusals += 1
        parked.reason = reason
        if parked.probe is not None or parked.retry_at <= now:
            # The probe (or a publish that was in flight when the topic was parked) failed.
            parked.probe = None
            parked.failures += 1
            parked.retry_at = now + self._delay(parked.failures)
        return False

    def accepted(self, topic: str) -> bool:
        """A publish of `topic` was acknowledged; True when that ends a refusal episode."""
        return self.parked.pop(topic, None) is not None

    def may_send(self, topic: str, row_id: int, now: float) -> bool:
        """Whether a row of `topic` may be published now (a parked topic sends one probe)."""
        parked = self.parked.get(topic)
        if parked is None:
            return True
        if parked.probe is None and now >= parked.retry_at:
            parked.probe = row_id
            return True
        return False

    def lost(self, row_id: int) -> None:
        """The connection closed with `row_id` unanswered: a probe may go out again."""
        for parked in self.parked.values():
            if parked.probe == row_id:
                parked.probe = None

    def held(self, now: float) -> set[str]:
        """Topics not to fetch from the outbox now (parked, not yet due for a probe)."""
        return {
            topic
            for topic, parked in self.parked.items()
            if parked.probe is not None or now < parked.retry_at
        }

    def next_due(self, now: float) -> float | None:
        """Seconds until the first parked topic may probe; None when none waits."""
        waits = [p.retry_at - now for p in self.parked.values() if p.probe is None]
        return max(0.0, min(waits)) if waits else None

    def health(self, now: float) -> dict[str, Any]:
        """Per parked topic: reason, refusals, since (Unix s), seconds to the next probe."""
        return {
            topic: {
                "reason": p.reason,
                "refusals": p.refusals,
                "since": round(p.since, 3),
                "retry_in_s": round(max(0.0, p.retry_at - now), 1),
            }
            for topic, p in self.parked.items()
        }
