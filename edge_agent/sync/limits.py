"""What the command doors accept: a size cap, a per-gateway rate, and bounded replies.

A request is checked before it is parsed: first the gateway's token bucket (so a flood of
any size costs one comparison per message), then its size against `commands.max_request_bytes`
(bulk commands, `model.chunk` and the face gallery batches, have their own, larger
`max_bulk_request_bytes`). Refusals
of a flood are themselves limited: at most `rate_per_s` `rate_limited` answers a second, and
one audit event per episode (the rest are counted), so a hostile peer cannot turn the
gateway into an amplifier of replies or events.

Replies never echo unbounded input: echoed fields, error messages and error details are
cut to a short prefix (:func:`bounded`, :func:`bounded_error`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from edge_agent.errors import CommandError
from edge_agent.metrics import Inc

__all__ = [
    "BULK_COMMANDS",
    "ECHO_CHARS",
    "MESSAGE_CHARS",
    "NAME_CHARS",
    "DoorLimits",
    "LimitStats",
    "Refusal",
    "TokenBucket",
    "bounded",
    "bounded_error",
    "loads_finite",
    "reply_topic",
]

ECHO_CHARS = 256
"""Longest echoed value (as JSON text) in a reply; longer ones are cut with a marker."""
MESSAGE_CHARS = 512
"""Longest error message in a reply."""
DETAILS_CHARS = 4096
"""Longest error details (as JSON text) in a reply."""
NAME_CHARS = 128
"""Longest command name or request id repeated in a reply or an event."""
MAX_CORRELATION_BYTES = 256
"""Longest MQTT 5 correlation data echoed back; longer requests are refused `too_large`."""
BULK_COMMANDS = frozenset({"model.chunk", "faces.add", "faces.replace"})
"""Commands that carry bulk data (a piece of a bundle, a batch of face templates) and use
`max_bulk_request_bytes`."""

_CUT = "…"


class LimitsConfig(Protocol):
    """The `[commands]` keys the doors read (a `CommandsConfig`)."""

    @property
    def max_request_bytes(self) -> int: ...
    @property
    def max_bulk_request_bytes(self) -> int: ...
    @property
    def rate_per_s(self) -> float: ...
    @property
    def burst(self) -> int: ...


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; one request takes one token.

    Args:
        rate: Tokens added per second.
        burst: Most tokens held (requests accepted back to back).
        now: Time of creation (monotonic seconds); the bucket starts full.
    """

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = now

    def configure(self, rate: float, burst: float) -> None:
        """Follow a reloaded config; the tokens saved so far are kept (capped)."""
        self.rate, self.burst = rate, burst
        self._tokens = min(self._tokens, float(burst))

    def take(self, now: float) -> float:
        """Take a token: 0.0 when granted, else the seconds until one is available."""
        elapsed = max(0.0, now - self._at)
        self._at = now
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


@dataclass
class LimitStats:
    """What the doors refused.

    Attributes:
        too_large: Requests over their size limit.
        rate_limited: Requests over the gateway's rate.
        unanswered: Rate-limited requests not even answered (refusals are limited too).
    """

    too_large: int = 0
    rate_limited: int = 0
    unanswered: int = 0


@dataclass(frozen=True)
class Refusal:
    """A request refused at the door.

    Attributes:
        error: The error to answer with.
        answer: Whether to send that answer at all (a flood's refusals are limited).
        audit: Whether to record an audit event (once per episode of a flood).
    """

    error: CommandError
    answer: bool
    audit: bool


class DoorLimits:
    """The size cap and the per-gateway rate of one command door.

    Args:
        config: Returns the current `[commands]` section (it may change on reload).
        clock: Monotonic clock (a test may pass its own).
        inc: Counter port: `commands_refused{reason=too_large|rate_limited|unanswered}`.
    """

    def __init__(
        self,
        config: Callable[[], LimitsConfig],
        clock: Callable[[], float] = time.monotonic,
        inc: Inc | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._inc = inc
        now = clock()
        current = config()
        self._requests = TokenBucket(current.rate_per_s, current.burst, now)
        self._refusals = TokenBucket(current.rate_per_s, current.burst, now)
        self._flooding = False
        self.stats = LimitStats()

    def size_limit(self, name: str) -> int:
        """Largest request accepted for command `name`."""
        config = self._config()
        if name in BULK_COMMANDS:
            return max(config.max_bulk_request_bytes, config.max_request_bytes)
        return config.max_request_bytes

    def check(self, name: str, size: int) -> Refusal | None:
        """Admit a request of `size` bytes for `name`, or say how to refuse it."""
        config = self._config()
        now = self._clock()
        for bucket in (self._requests, self._refusals):
            if bucket.rate != config.rate_per_s or bucket.burst != config.burst:
                bucket.configure(config.rate_per_s, config.burst)
        wait = self._requests.take(now)
        if wait > 0:
            self.stats.rate_limited += 1
            self._count("rate_limited")
            audit = not self._flooding
            self._flooding = True
            answer = self._refusals.take(now) == 0
            if not answer:
                self.stats.unanswered += 1
                self._count("unanswered")
            error = CommandError(
                "rate_limited",
                f"more than {config.rate_per_s:g} requests a second (burst {config.burst}); "
                "retry later",
                {"retry_after_s": round(max(wait, 0.001), 3)},
            )
            return Refusal(error, answer, audit)
        self._flooding = False
        limit = self.size_limit(name)
        if size > limit:
            key = "max_bulk_request_bytes" if name in BULK_COMMANDS else "max_request_bytes"
            return self.refuse_too_large(name, f"request of {size} bytes", limit, f"commands.{key}")
        return None

    def refuse_too_large(
        self, name: str, what: str, limit: int, setting: str | None = None
    ) -> Refusal:
        """The refusal of a request (or a part of it, `what`) over `limit` bytes."""
        self.stats.too_large += 1
        self._count("too_large")
        where = f" ({setting})" if setting else ""
        error = CommandError(
            "too_large",
            f"{what} exceeds the {limit}-byte limit{where}",
            {"command": bounded(name, NAME_CHARS), "limit": limit},
        )
        return Refusal(error, True, True)

    def _count(self, reason: str) -> None:
        if self._inc is not None:
            self._inc("commands_refused", reason=reason)


def bounded(value: Any, limit: int = ECHO_CHARS) -> Any:
    """`value` if its JSON text fits in `limit` characters, else a cut string of it.

    Text is cut to `limit` characters plus a marker; any other value too long (a list, an
    object) becomes the cut text of its JSON. Non-finite floats become None.
    """
    if value is None or isinstance(value, bool | int):
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
            return bounded(str(value), limit)
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + _CUT
    try:
        text = json.dumps(value, default=str, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        text = str(value)[: limit + 1]
    else:
        if len(text) <= limit:
            return value
    return text[:limit] + _CUT


def bounded_error(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The `error` object of a reply, with the message and details cut to a short prefix."""
    return {
        "code": bounded(code, 64),
        "message": bounded(message, MESSAGE_CHARS),
        "details": bounded(details, DETAILS_CHARS),
    }


def reply_topic(candidate: Any, default: str) -> str:
    """The response topic a request asked for, if it is a topic one may publish to."""
    if (
        isinstance(candidate, str)
        and candidate
        and len(candidate.encode("utf-8", "surrogatepass")) <= 65535
        and not any(c in candidate for c in "+#\x00")
    ):
        return candidate
    return default


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a request may carry")


def loads_finite(data: bytes | bytearray | str) -> Any:
    """`json.loads` that refuses NaN and ±Infinity (Python's json accepts them).

    Raises:
        ValueError: not JSON, not UTF-8, a non-finite number, or nested too deeply.
    """
    try:
        return json.loads(data, parse_constant=_no_constant)
    except RecursionError as err:
        raise ValueError("nested too deeply") from err
