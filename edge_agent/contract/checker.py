"""`ContractChecker`: the contract rules over messages kept in memory (for tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge_agent.contract.payloads import (
    KINDS,
    PayloadError,
    decode_payload,
    parse_payload,
    undocumented_keys,
)
from edge_agent.contract.ranges import subtract
from edge_agent.contract.topics import parse_topic

ENVELOPE = ("device", "seq", "msg_id", "ts")
"""Keys every payload starts with."""
__all__ = ["ENVELOPE", "ContractChecker", "TopicState"]


@dataclass
class TopicState:
    """What the consumer knows of one topic."""

    last_seq: int | None = None
    received: int = 0
    duplicates: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)
    regressions: int = 0
    max_duplicate_lag: int = 0
    """Largest `last_seq - seq` of a duplicate: how far back re-sends reached."""
    evicted: list[tuple[int, int]] = field(default_factory=list)
    """Seq ranges the gateway announced as dropped by policy (`outbox.evicted`)."""
    evicted_gaps: list[tuple[int, int]] = field(default_factory=list)
    """Gaps fully explained by announced evictions (not violations)."""


@dataclass
class ContractChecker:
    """Feed it every (topic, payload) of one gateway; it keeps what it saw and every violation.

    Messages may arrive out of order only as QoS 1 re-sends, which repeat a `msg_id`.

    Attributes:
        validate: Also check each payload against the models of `edge_agent.contract.payloads`
            (off by default: the envelope and sequence rules only).
        prefix: When set, topics are parsed as `<prefix>/<tenant>/<site>/<device>/<kind>`
            and anything else (remote commands, replies) is counted in `ignored`.
    """

    validate: bool = False
    prefix: str | None = None
    topics: dict[str, TopicState] = field(default_factory=dict)
    seen_ids: set[str] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)
    accepted: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    undocumented: dict[str, set[str]] = field(default_factory=dict)
    ignored: int = 0

    def feed(self, topic: str, payload: bytes | str | dict[str, Any]) -> dict[str, Any] | None:
        """Check one message; returns it when it is new, None for a duplicate or a violation."""
        if self.prefix is not None:
            name = parse_topic(topic, self.prefix)
            if name is None:
                self.ignored += 1
                return None
            kind = name.kind
        else:
            kind = topic.rsplit("/", 1)[-1]
        if kind not in KINDS:
            self.violations.append(f"{topic}: unknown topic kind {kind!r}")
            return None
        if isinstance(payload, dict):
            message: Any = payload
        else:
            try:
                raw = payload.encode() if isinstance(payload, str) else payload
                message = decode_payload(raw, kind=kind)
            except PayloadError as err:
                self.violations.append(f"{topic}: payload is not JSON ({'; '.join(err.problems)})")
                return None
        if not isinstance(message, dict):
            self.violations.append(f"{topic}: payload is not a JSON object")
            return None
        missing = [k for k in ENVELOPE if k not in message]
        if missing:
            self.violations.append(f"{topic}: envelope lacks {missing}")
            return None
        seq, msg_id = message["seq"], message["msg_id"]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            self.violations.append(f"{topic}: seq {seq!r} is not a positive integer")
            return None
        parsed = None
        if self.validate:
            try:
                parsed = parse_payload(kind, message)
            except PayloadError as err:
                self.violations.append(f"{topic}: {err}")
                return None
            extra = undocumented_keys(parsed)
            if extra:
                self.undocumented.setdefault(kind, set()).update(extra)
        state = self.topics.setdefault(topic, TopicState())
        if msg_id in self.seen_ids:
            state.duplicates += 1
            if state.last_seq is not None:
                state.max_duplicate_lag = max(state.max_duplicate_lag, state.last_seq - seq)
            return None
        self.seen_ids.add(msg_id)
        if kind == "events" and message.get("event") == "outbox.evicted":
            self._note_eviction(topic, message)
        if kind == "status":
            # A state topic: seq numbers connections; online and offline of one connection
            # share it, and a connection that was never accepted leaves its number unused.
            if state.last_seq is not None and seq < state.last_seq:
                state.regressions += 1
                self.violations.append(f"{topic}: status seq went back to {seq}")
        elif state.last_seq is not None:
            if seq > state.last_seq + 1:
                gap = (state.last_seq + 1, seq - 1)
                if subtract([gap], state.evicted):
                    state.gaps.append(gap)
                    self.violations.append(f"{topic}: seq gap {gap[0]}..{gap[1]}")
                else:
                    state.evicted_gaps.append(gap)
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

    def _note_eviction(self, topic: str, message: dict[str, Any]) -> None:
        kind, lo, hi = message.get("topic"), message.get("seq_from"), message.get("seq_to")
        if kind in KINDS and isinstance(lo, int) and isinstance(hi, int) and lo <= hi:
            target = topic.rsplit("/", 1)[0] + f"/{kind}"
            self.topics.setdefault(target, TopicState()).evicted.append((lo, hi))

    def of(self, kind: str) -> list[dict[str, Any]]:
        """Accepted messages of one topic kind, in arrival order."""
        return [m for t, m in self.accepted if t.rsplit("/", 1)[-1] == kind]


# -- the SQLite ledger ----------------------------------------------------------------------------
