"""What arrived, taken apart: telemetry to store, a payload to reject, or something else.

Pure: no database and no MQTT. Validation is the contract's (`edge_agent.contract`):
the payload models, zlib decoding, topic layout.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from edge_agent.contract.payloads import (
    Envelope,
    EventPayload,
    PayloadError,
    StatusPayload,
    decode_payload,
    event_body,
    parse_payload,
)
from edge_agent.contract.topics import TopicName, parse_topic

__all__ = [
    "Inbound",
    "Rejected",
    "Telemetry",
    "Unrelated",
    "classify",
    "eviction_of",
    "reply_root",
]


@dataclass(frozen=True)
class Inbound:
    """One MQTT message as it arrived (paho's thread hands these to the writer)."""

    topic: str
    payload: bytes
    retained: bool
    received: float
    content_encoding: str | None = None
    correlation: bytes | None = None


@dataclass(frozen=True)
class Telemetry:
    """A valid telemetry message of one gateway."""

    inbound: Inbound
    name: TopicName
    payload: Envelope
    message: dict[str, Any]

    @property
    def stream(self) -> tuple[str, str]:
        """(device, topic): the key of its seq stream."""
        return (self.name.device, self.inbound.topic)

    @property
    def gateway(self) -> tuple[str, str, str]:
        return (self.name.tenant, self.name.site, self.name.device)

    def json(self) -> str:
        return json.dumps(self.message, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class Rejected:
    """A message on a telemetry topic that breaks the contract."""

    inbound: Inbound
    reason: str


@dataclass(frozen=True)
class Unrelated:
    """Not telemetry: commands, replies, anything else under the subscription."""

    inbound: Inbound


def classify(inbound: Inbound, prefix: str) -> Telemetry | Rejected | Unrelated:
    """Decode and validate one message against the contract."""
    name = parse_topic(inbound.topic, prefix)
    if name is None:
        return Unrelated(inbound)
    try:
        message = decode_payload(inbound.payload, inbound.content_encoding, name.kind)
        payload = parse_payload(name.kind, message)
        if payload.device != name.device:
            raise PayloadError(
                name.kind,
                [f"device: {payload.device!r} does not match the topic's {name.device!r}"],
            )
        if isinstance(payload, StatusPayload) and (
            (payload.tenant, payload.site) != (name.tenant, name.site)
        ):
            raise PayloadError(name.kind, ["tenant/site do not match the topic's"])
        _storable(name.kind, payload, message)
    except PayloadError as err:
        return Rejected(inbound, str(err))
    except RecursionError:
        return Rejected(inbound, f"{name.kind} payload: nested too deeply")
    return Telemetry(inbound, name, payload, message)


MAX_SEQ = 2**63 - 1
"""PostgreSQL's bigint."""


def _storable(kind: str, payload: Envelope, message: Any) -> None:
    """What the contract's models let through but PostgreSQL cannot hold: numbers beyond
    bigint, NaN or infinity (JSON has neither; Python's parser takes them), NUL in text."""
    if payload.seq > MAX_SEQ:
        raise PayloadError(kind, [f"seq: {payload.seq} is beyond {MAX_SEQ}"])
    try:
        json.dumps(message, allow_nan=False)
    except ValueError as err:
        raise PayloadError(kind, ["a number is NaN or infinite"]) from err
    if _has_nul(message):
        raise PayloadError(kind, ["a string holds a NUL character"])


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def eviction_of(item: Telemetry) -> tuple[str, int, int, str] | None:
    """An `outbox.evicted` event as (topic of the stream, seq_from, seq_to, reason)."""
    payload = item.payload
    if not isinstance(payload, EventPayload) or payload.event != "outbox.evicted":
        return None
    body = event_body(payload)  # validated against OutboxEvictedBody by parse_payload
    root = item.inbound.topic.rsplit("/", 1)[0]
    return (f"{root}/{body['topic']}", int(body["seq_from"]), int(body["seq_to"]), body["reason"])


def reply_root(topic: str, prefix: str, names: tuple[str, ...]) -> str | None:
    """The gateway root of a 3.1.1-style reply topic `<root>/reply/<name>` (one of
    `names`, the spellings of one command), else None."""
    head = re.escape(prefix.rstrip("/"))
    spelled = "|".join(re.escape(n) for n in names)
    match = re.fullmatch(rf"({head}/[^/]+/[^/]+/[^/]+)/reply/(?:{spelled})", topic)
    return match.group(1) if match else None
