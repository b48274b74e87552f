"""SQL of window results and summaries: insert, pack for upload, and the upload cursor.

Results are committed one row per window; `pack_results` moves the rows past the upload
cursor (`meta.results_cursor`) into columnar `results` outbox messages in the same
transaction that advances the cursor, so a row is packed exactly once.
"""

from __future__ import annotations

import json
from itertools import repeat
from typing import TYPE_CHECKING, Any

from edge_agent.store.txn import Op, Txn

if TYPE_CHECKING:
    from edge_agent.pipeline.results import ResultBatch


def insert_results(batches: list[ResultBatch]) -> Op[list[ResultBatch]]:
    """Insert window results; returns the batches (for the on-commit latency accounting)."""

    def op(txn: Txn) -> list[ResultBatch]:
        for b in batches:
            labels = b.labels
            names = [labels[i] for i in b.label_index.tolist()] if labels else repeat(None)
            txn.conn.executemany(
                "INSERT INTO results(sensor, model, model_version, t_start, t_end, label, "
                "confidence) VALUES (?, ?, ?, ?, ?, ?, ?)",
                zip(
                    repeat(b.sensor),
                    repeat(b.model),
                    repeat(b.version),
                    b.t_start.tolist(),
                    b.t_end.tolist(),
                    names,
                    b.confidence.tolist(),
                    strict=False,
                ),
            )
        return batches

    return op


def pack_results(limit: int, *, compress: bool = False) -> Op[int]:
    """Move committed results not yet uploaded into `results` outbox messages (columnar)."""

    def op(txn: Txn) -> int:
        row = txn.conn.execute("SELECT value FROM meta WHERE key = 'results_cursor'").fetchone()
        cursor = int(row[0]) if row else 0
        rows = txn.conn.execute(
            "SELECT id, sensor, model, model_version, t_start, t_end, label, confidence "
            "FROM results WHERE id > ? ORDER BY id LIMIT ?",
            (cursor, limit),
        ).fetchall()
        if not rows:
            return 0
        groups: dict[tuple[str, str, str], list[tuple[Any, ...]]] = {}
        for r in rows:
            groups.setdefault((r[1], r[2], r[3]), []).append(r)
        for (sensor, model, version), items in groups.items():
            txn.enqueue(
                "results",
                {
                    "sensor": sensor,
                    "model": model,
                    "model_version": version,
                    "count": len(items),
                    "windows": {
                        "t_start": [round(r[4], 3) for r in items],
                        "t_end": [round(r[5], 3) for r in items],
                        "label": [r[6] for r in items],
                        "confidence": [round(r[7], 4) for r in items],
                    },
                },
                compress=compress,
            )
        txn.conn.execute(
            "INSERT INTO meta(key, value) VALUES ('results_cursor', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (str(rows[-1][0]),),
        )
        return len(rows)

    return op


def skip_results_upload() -> Op[None]:
    """Mark every stored result as handled when per-window upload is off."""

    def op(txn: Txn) -> None:
        txn.conn.execute(
            "INSERT INTO meta(key, value) SELECT 'results_cursor', COALESCE(MAX(id), 0) "
            "FROM results WHERE true ON CONFLICT(key) DO UPDATE SET value = excluded.value"
        )

    return op


def insert_summaries(bodies: list[dict[str, Any]]) -> Op[int]:
    """Store summaries and queue them for upload in one transaction."""

    def op(txn: Txn) -> int:
        for body in bodies:
            txn.conn.execute(
                "INSERT INTO summaries(sensor, model, model_version, t_start, t_end, body) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    body["sensor"],
                    body["model"],
                    body["model_version"],
                    body["interval_start"],
                    body["interval_end"],
                    json.dumps(body),
                ),
            )
            txn.enqueue("summary", body)
        return len(bodies)

    return op
