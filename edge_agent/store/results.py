"""SQL of window results and summaries: insert, pack for upload, and the upload cursor.

Results are committed one row per window; `pack_results` moves the rows past the upload
cursor (`meta.results_cursor`) into columnar `results` outbox messages in the same
transaction that advances the cursor, so a row is packed exactly once.

NaN and infinity never reach a row: windows whose times or confidence are not finite are
quarantined at insert (the pipeline refuses such model output before, with `model.failed`;
this is the last line). A row that cannot be packed anyway (written by something else, or
damaged) is quarantined when it is read, and the rows around it are packed.
"""

from __future__ import annotations

from itertools import repeat
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.store.checks import result_problem
from edge_agent.store.meta import RESULTS_CURSOR, results_cursor, set_meta
from edge_agent.store.txn import Op, Txn, dumps

if TYPE_CHECKING:
    from edge_agent.pipeline.results import ResultBatch


def insert_results(batches: list[ResultBatch]) -> Op[list[ResultBatch]]:
    """Insert window results; returns the batches (for the on-commit latency accounting).

    Windows with a time or confidence that is not finite are quarantined, not inserted.
    """

    def op(txn: Txn) -> list[ResultBatch]:
        for b in batches:
            labels = b.labels
            names = [labels[i] for i in b.label_index.tolist()] if labels else repeat(None)
            rows = zip(
                repeat(b.sensor),
                repeat(b.model),
                repeat(b.version),
                b.t_start.tolist(),
                b.t_end.tolist(),
                names,
                b.confidence.tolist(),
                strict=False,
            )
            finite = np.isfinite(b.t_start) & np.isfinite(b.t_end) & np.isfinite(b.confidence)
            if not finite.all():
                rows = _quarantine_windows(txn, b, list(rows), finite)
            txn.conn.executemany(
                "INSERT INTO results(sensor, model, model_version, t_start, t_end, label, "
                "confidence) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return batches

    return op


def _quarantine_windows(
    txn: Txn, batch: ResultBatch, rows: list[tuple[Any, ...]], finite: np.ndarray[Any, Any]
) -> Any:
    """Quarantine the windows of `rows` that are not finite (one entry); return the rest."""
    bad = [r for r, ok in zip(rows, finite.tolist(), strict=True) if not ok]
    txn.quarantine(
        "results",
        f"{batch.sensor}/{batch.model}@{batch.version}",
        f"{len(bad)} window(s) with a time or confidence that is not finite",
        bad[:8],
    )
    return [r for r, ok in zip(rows, finite.tolist(), strict=True) if ok]


# `store.checks.result_problem` in SQL (run in C for every row; Python only for the few that
# fail, to word the reason): names non-empty text, numbers finite, label text or NULL.
_FINITE = "typeof({0}) IN ('integer', 'real') AND abs({0}) <= 1.7976931348623157e308"
_SANE = (
    "("
    + " AND ".join(
        [
            *(f"typeof({c}) = 'text' AND {c} <> ''" for c in ("sensor", "model", "model_version")),
            *(_FINITE.format(c) for c in ("t_start", "t_end", "confidence")),
            "(label IS NULL OR typeof(label) = 'text')",
        ]
    )
    + ")"
)


_PACK_SQL = (
    "SELECT id, sensor, model, model_version, t_start, t_end, label, confidence, "
    + _SANE
    + " FROM results WHERE id > ? ORDER BY id LIMIT ?"
)


def pack_results(limit: int, *, compress: bool = False) -> Op[int]:
    """Move committed results not yet uploaded into `results` outbox messages (columnar).

    Returns how many rows the cursor moved past (packed or quarantined): fewer than
    `limit` means everything committed so far is handled.
    """

    def op(txn: Txn) -> int:
        cursor = results_cursor(txn)
        rows = txn.conn.execute(_PACK_SQL, (cursor, limit)).fetchall()
        if not rows:
            return 0
        groups: dict[tuple[str, str, str], list[tuple[Any, ...]]] = {}
        poisoned: list[int] = []
        for r in rows:
            if not r[8]:  # the reason, from the same check in Python
                problem = result_problem(r[:8]) or "refused by the store's check"
                txn.quarantine("results", r[0], problem, r[:8])
                poisoned.append(r[0])
                continue
            groups.setdefault((r[1], r[2], r[3]), []).append(r)
        if poisoned:
            txn.conn.executemany("DELETE FROM results WHERE id = ?", [(i,) for i in poisoned])
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
        set_meta(txn, RESULTS_CURSOR, str(rows[-1][0]))
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
    """Store summaries and queue them for upload in one transaction.

    A summary JSON cannot carry (a NaN or infinite figure) is quarantined instead.
    Returns how many were stored.
    """

    def op(txn: Txn) -> int:
        stored = 0
        for body in bodies:
            try:
                text = dumps(body).decode()
            except (ValueError, TypeError, RecursionError) as err:
                txn.quarantine("summaries", body.get("sensor"), f"not JSON: {err}", body)
                continue
            txn.conn.execute(
                "INSERT INTO summaries(sensor, model, model_version, t_start, t_end, body) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    body["sensor"],
                    body["model"],
                    body["model_version"],
                    body["interval_start"],
                    body["interval_end"],
                    text,
                ),
            )
            txn.enqueue("summary", body)
            stored += 1
        return stored

    return op
