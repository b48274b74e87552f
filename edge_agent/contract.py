"""The reference consumer: checks what a gateway publishes against docs/mqtt.md.

A cloud service can use it as is; the end-to-end tests use it against a real broker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

KINDS = ("status", "events", "heartbeat", "summary", "results")
ENVELOPE = ("device", "seq", "msg_id", "ts")


@dataclass
class TopicState:
    """What the consumer knows of one topic."""

    last_seq: int | None = None
    received: int = 0
    duplicates: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)
    regressions: int = 0


@dataclass
class ContractChecker:
    """Feed it every (topic, payload) of one gateway; it keeps what it saw and every violation.

    Messages may arrive out of order only as QoS 1 re-sends, which repeat a `msg_id`.
    """

    topics: dict[str, TopicState] = field(default_factory=dict)
    seen_ids: set[str] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)
    accepted: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def feed(self, topic: str, payload: bytes | str | dict[str, Any]) -> dict[str, Any] | None:
        """Check one message; returns it when it is new, None for a duplicate or a violation."""
        kind = topic.rsplit("/", 1)[-1]
        if kind not in KINDS:
            self.violations.append(f"{topic}: unknown topic kind {kind!r}")
            return None
        try:
            message = payload if isinstance(payload, dict) else json.loads(payload)
        except (ValueError, UnicodeDecodeError) as err:
            self.violations.append(f"{topic}: payload is not JSON ({err})")
            return None
        if not isinstance(message, dict):
            self.violations.append(f"{topic}: payload is not a JSON object")
            return None
        missing = [k for k in ENVELOPE if k not in message]
        if missing:
            self.violations.append(f"{topic}: envelope lacks {missing}")
            return None
        seq, msg_id = message["seq"], message["msg_id"]
        if not isinstance(seq, int) or seq < 1:
            self.violations.append(f"{topic}: seq {seq!r} is not a positive integer")
            return None
        state = self.topics.setdefault(topic, TopicState())
        if msg_id in self.seen_ids:
            state.duplicates += 1
            return None
        self.seen_ids.add(msg_id)
        if state.last_seq is not None:
            if seq > state.last_seq + 1:
                state.gaps.append((state.last_seq + 1, seq - 1))
                self.violations.append(f"{topic}: seq gap {state.last_seq + 1}..{seq - 1}")
            elif seq <= state.last_seq:
                state.regressions += 1
                self.violations.append(
                    f"{topic}: seq went from {state.last_seq} to {seq} with a new msg_id "
                    "(gateway store reset?)"
                )
        state.last_seq = seq if state.last_seq is None else max(seq, state.last_seq)
        state.received += 1
        self.accepted.append((topic, message))
        return message

    def of(self, kind: str) -> list[dict[str, Any]]:
        """Accepted messages of one topic kind, in arrival order."""
        return [m for t, m in self.accepted if t.rsplit("/", 1)[-1] == kind]
