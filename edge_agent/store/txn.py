"""What a store operation sees: one open transaction, the outbox envelope and sequences.

Kept apart from the writer (`store.db`) so the modules of operations (`retention`,
`results`) depend on this one and the writer can depend on them, with no circle.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class TxnOwner(Protocol):
    """What a transaction needs from the store that opened it."""

    device_id: str
    topic_root: str
    seq_cache: dict[str, int]
    """Committed sequence number of each topic kind."""


# Lower numbers leave the outbox first.
PRIORITY = {"status": 0, "events": 1, "heartbeat": 1, "summary": 2, "results": 3}
# Priority 0 in the outbox is reserved for notices that must never be evicted.


# The most of a quarantined row kept for inspection (its repr, characters).
QUARANTINE_CONTENT_CHARS = 4096


def dumps(body: Mapping[str, Any]) -> bytes:
    """Compact JSON, the encoding of every uplink payload.

    Raises:
        ValueError: a float is NaN or infinite (JSON has no such numbers).
        TypeError: a value is not JSON-able.
    """
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A row moved to the `quarantine` table, announced once the transaction committed."""

    source: str
    """Table the row came from (or was meant for): `results`, `outbox`, `meta`, ..."""
    key: str | None
    """Its id or key, when it had one."""
    reason: str


class Txn:
    """What an operation sees: the connection, inside the writer's open transaction."""

    def __init__(self, store: TxnOwner, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._store = store
        self.pending_seq: dict[str, int] = {}
        self.quarantined: list[Quarantined] = []

    def quarantine(self, source: str, key: object, reason: str, content: object) -> None:
        """Move a row that cannot be used aside: into `quarantine`, with the reason.

        The caller deletes the row from its table (or does not insert it) in the same
        transaction; the store announces it (`store.quarantined`) after the commit.
        """
        text = repr(content)
        if len(text) > QUARANTINE_CONTENT_CHARS:
            text = text[:QUARANTINE_CONTENT_CHARS] + "..."
        row_key = None if key is None else str(key)
        self.conn.execute(
            "INSERT INTO quarantine(ts, source, row_key, reason, content) VALUES (?, ?, ?, ?, ?)",
            (time.time(), source, row_key, reason, text),
        )
        self.quarantined.append(Quarantined(source, row_key, reason))

    def next_seq(self, kind: str) -> int:
        """Allocate the next sequence number of a topic kind; durable with this transaction."""
        current = self.pending_seq.get(kind, self._store.seq_cache.get(kind, 0))
        seq = current + 1
        self.pending_seq[kind] = seq
        self.conn.execute(
            "INSERT INTO topic_seq(topic, seq) VALUES (?, ?) "
            "ON CONFLICT(topic) DO UPDATE SET seq = excluded.seq",
            (kind, seq),
        )
        return seq

    def _unallocate(self, kind: str, seq: int) -> None:
        """Give back the sequence number just allocated (the message was not queued)."""
        self.pending_seq[kind] = seq - 1
        self.conn.execute("UPDATE topic_seq SET seq = ? WHERE topic = ?", (seq - 1, kind))

    def envelope(self, kind: str, body: dict[str, Any]) -> tuple[int, str, dict[str, Any]]:
        """Wrap a body in the uplink envelope: device, seq, msg_id, ts."""
        seq = self.next_seq(kind)
        msg_id = uuid.uuid4().hex
        message = {
            "device": self._store.device_id,
            "seq": seq,
            "msg_id": msg_id,
            "ts": round(time.time(), 6),
            **body,
        }
        return seq, msg_id, message

    def enqueue(
        self,
        kind: str,
        body: dict[str, Any],
        *,
        retain: bool = False,
        compress: bool = False,
        priority: int | None = None,
    ) -> int:
        """Put one uplink message in the outbox; returns its sequence number.

        A body JSON cannot carry (a NaN or infinite float, a value that is not JSON-able)
        is quarantined instead of queued, without using a sequence number: returns 0.
        """
        seq, msg_id, message = self.envelope(kind, body)
        try:
            payload = dumps(message)
        except (ValueError, TypeError, RecursionError) as err:
            self._unallocate(kind, seq)
            self.quarantine("outbox", kind, f"not JSON: {err}", body)
            return 0
        encoding = None
        if compress:
            payload = zlib.compress(payload, 6)
            encoding = "zlib"
        self.conn.execute(
            "INSERT INTO outbox(topic, kind, priority, seq, msg_id, payload, created, retain, "
            "encoding, crc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                f"{self._store.topic_root}/{kind}",
                kind,
                PRIORITY.get(kind, 5) if priority is None else priority,
                seq,
                msg_id,
                payload,
                time.time(),
                int(retain),
                encoding,
                zlib.crc32(payload),
            ),
        )
        return seq


Op = Callable[[Txn], T]
