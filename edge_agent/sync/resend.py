"""Gap repair and fleet re-announce: the gateway's side of a consumer that lost something.

`sync.resend {topic, from_seq, to_seq}` queues delivered messages the gateway still keeps
(`store.delivered`) again, unchanged, and answers which part of the range was queued,
which is still on its way, which is no longer held and which was never issued (see
docs/mqtt.md). A message on `<mqtt.topic_prefix>/announce` makes the gateway publish its
birth again and queue a heartbeat, so a consumer that starts (on a broker that gives
retained messages to exact-topic subscribers only) learns the fleet's state.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from edge_agent.config import AgentConfig
from edge_agent.contract.ranges import MAX_RESEND_SEQS
from edge_agent.errors import CommandError
from edge_agent.events import Emit
from edge_agent.metrics import Inc, noop_inc
from edge_agent.periodic import StoreCall
from edge_agent.registry import CommandRegistry
from edge_agent.store.delivered import RESENDABLE_KINDS, ResendOutcome, resend_range
from edge_agent.sync.limits import bounded

log = logging.getLogger(__name__)

MAX_SEQS = MAX_RESEND_SEQS
"""Most seqs one `sync.resend` request may name (the consumer's requests keep within it)."""

MAX_SEQ = (1 << 63) - 1
"""SQLite's largest integer: no seq can be above it."""

CHUNK_SEQS = 250
"""Seqs handled per store transaction, so one request never makes one big transaction."""

ANNOUNCE_INTERVAL_S = 10.0
"""At most one re-announce handled per this many seconds."""

ANNOUNCE_DELAY_S = 2.0
"""A re-announce waits uniform [0, this] seconds, so a fleet does not answer in one burst."""

MAX_ANNOUNCE_BYTES = 1024
"""A larger message on the announce topic is not one the consumer sends: ignored."""


@dataclass
class ResendStats:
    """What the resend command and the announce listener did since start."""

    requests: int = 0
    resent: int = 0
    announces: int = 0
    announces_ignored: int = 0


def _seq_arg(args: dict[str, Any], name: str) -> int:
    value = args.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CommandError("bad_request", f"args.{name} must be an integer, not {bounded(value)!r}")
    if not 1 <= value <= MAX_SEQ:
        raise CommandError("bad_request", f"args.{name} must be 1..{MAX_SEQ}, not {bounded(value)}")
    return value


class Resender:
    """The `sync.resend` command.

    Args:
        config: The running config (topic root).
        call: The store's `call`.
        notify: Wakes the uplink (rows were queued).
        emit: Port for `uplink.resend`.
        inc: Counter port (`mqtt_resent`).
    """

    def __init__(
        self,
        config: Callable[[], AgentConfig],
        call: StoreCall,
        notify: Callable[[], None],
        emit: Emit,
        inc: Inc | None = None,
    ) -> None:
        self.config = config
        self.call = call
        self.notify = notify
        self.emit = emit
        self.inc: Inc = inc if inc is not None else noop_inc
        self.stats = ResendStats()

    def register(self, registry: CommandRegistry) -> None:
        """Add `sync.resend` to both doors (MQTT and the control socket)."""
        registry.register("sync.resend", self.resend)

    def parse(self, args: dict[str, Any]) -> tuple[str, str, int, int]:
        """The topic, its kind and the range a request names.

        Raises:
            CommandError: `bad_request` with what is wrong.
        """
        root = self.config().topic_root
        topic = args.get("topic")
        if not isinstance(topic, str):
            raise CommandError(
                "bad_request", f'args.topic must be a topic of this gateway, e.g. "{root}/events"'
            )
        kind = topic[len(root) + 1 :] if topic.startswith(root + "/") else None
        if kind not in RESENDABLE_KINDS:
            kinds = ", ".join(f"{root}/{k}" for k in sorted(RESENDABLE_KINDS))
            raise CommandError(
                "bad_request",
                f"{bounded(topic)!r} is not a topic this gateway keeps messages of; one of "
                f"{kinds} (status is a state: ask `status` or publish to the announce topic)",
            )
        first, last = _seq_arg(args, "from_seq"), _seq_arg(args, "to_seq")
        if last < first:
            raise CommandError("bad_request", f"args.to_seq ({last}) is below from_seq ({first})")
        if last - first + 1 > MAX_SEQS:
            raise CommandError(
                "bad_request", f"at most {MAX_SEQS} seqs per request, not {last - first + 1}"
            )
        return topic, kind, first, last

    async def resend(self, args: dict[str, Any]) -> dict[str, Any]:
        """Queue the kept messages of the range again; answer where every seq stands."""
        topic, kind, first, last = self.parse(args)
        outcome = ResendOutcome()
        for start in range(first, last + 1, CHUNK_SEQS):
            end = min(last, start + CHUNK_SEQS - 1)
            outcome.add(await self.call(resend_range(topic, kind, start, end)))
        resent = ResendOutcome.count(outcome.resent)
        evicted = ResendOutcome.count(outcome.evicted)
        self.stats.requests += 1
        self.stats.resent += resent
        if resent:
            self.inc("mqtt_resent", resent, kind=kind)
            self.notify()
        self.emit(
            "uplink.resend",
            "warning" if evicted else "info",
            topic=topic,
            from_seq=first,
            to_seq=last,
            resent=resent,
            evicted=evicted,
        )
        return {
            "topic": topic,
            "from_seq": first,
            "to_seq": last,
            "resent": outcome.resent,
            "pending": outcome.pending,
            "evicted": outcome.evicted,
            "unissued": outcome.unissued,
        }


class Announcer:
    """Answers `<mqtt.topic_prefix>/announce`: the birth again and a heartbeat now.

    Args:
        config: The running config (prefix, `commands.enabled`).
        republish: Publishes the current connection's birth again (False: not connected).
        beat: Queues one heartbeat now.
        stats: Where the counts go (shared with the `Resender`, shown under `mqtt`).
        inc: Counter port (`mqtt_announces{outcome}`).
        rng: Source of the random delay (tests seed it).
    """

    def __init__(
        self,
        config: Callable[[], AgentConfig],
        republish: Callable[[], bool],
        beat: Callable[[], Awaitable[None]],
        stats: ResendStats,
        inc: Inc | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.republish = republish
        self.beat = beat
        self.stats = stats
        self.inc: Inc = inc if inc is not None else noop_inc
        self._rng = rng or random.Random()
        self._last: float | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def topic(self) -> str:
        """The fleet-wide topic a consumer publishes to."""
        return f"{self.config().mqtt.topic_prefix}/announce"

    def on_connected(self, client: Any) -> None:
        """Subscribe on every new connection (clean start), like the command filter."""
        if self.config().commands.enabled:
            client.subscribe(self.topic, qos=1)

    def on_message(self, payload: bytes, retained: bool) -> None:
        """A message on the announce topic (loop thread): answer it, at most once per 10 s.

        A retained message (left on the broker by someone) would re-announce at every
        connection, where the birth goes out anyway: ignored, as is a message over 1 KiB.
        """
        now = time.monotonic()
        if (
            retained
            or len(payload) > MAX_ANNOUNCE_BYTES
            or not self.config().commands.enabled
            or (self._last is not None and now - self._last < ANNOUNCE_INTERVAL_S)
        ):
            self.stats.announces_ignored += 1
            self.inc("mqtt_announces", outcome="ignored")
            return
        self._last = now
        self.stats.announces += 1
        self.inc("mqtt_announces", outcome="handled")
        delay = self._rng.uniform(0.0, ANNOUNCE_DELAY_S)
        self._task = asyncio.get_running_loop().create_task(self._answer(delay), name="announce")

    async def _answer(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            if not self.republish():
                log.info("announce: not connected; the birth goes out with the next connection")
            await self.beat()
        except Exception:  # contained: a failed answer must not reach the uplink
            log.exception("announce: answering failed")

    async def close(self) -> None:
        """Cancel an answer in progress; safe to call twice."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
