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
        return json.dumps(self.message, separators=(",", ":"))


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
    except PayloadError as err:
        return Rejected(inbound, str(err))
    return Telemetry(inbound, name, payload, message)


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
