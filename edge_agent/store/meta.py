"""The `meta` table: small named values (upload cursor, status reservation), read safely.

A value that does not parse is never fatal: it is quarantined with the reason and replaced
by a repair chosen for that key (see docs/reliability.md, "No poison rows").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from edge_agent.store.checks import parse_count
from edge_agent.store.txn import Txn

RESULTS_CURSOR = "results_cursor"
"""Id of the last window result packed for upload."""


def set_meta(txn: Txn, key: str, value: str) -> None:
    """Write one value."""
    txn.conn.execute(
        "INSERT INTO meta(key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def get_count(txn: Txn, key: str, *, default: int, repair: Callable[[Txn], int]) -> int:
    """A non-negative integer value; `default` when absent.

    A value that is not one is quarantined and replaced by `repair(txn)`, which is stored.
    """
    row = txn.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    if row is None:
        return default
    try:
        return parse_count(row[0])
    except ValueError as err:
        fixed = repair(txn)
        txn.quarantine("meta", key, f"not an integer: {err}; set to {fixed}", row[0])
        set_meta(txn, key, str(fixed))
        return fixed


def get_json(
    txn: Txn, key: str, check: Callable[[dict[str, Any]], object]
) -> dict[str, Any] | None:
    """A JSON object value, or None when absent or unusable.

    `check` raises (KeyError, TypeError, ValueError) when the object lacks what the caller
    needs; such a value, or one that is not a JSON object, is quarantined and deleted.
    """
    row = txn.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    if row is None:
        return None
    try:
        value = json.loads(row[0])
        if not isinstance(value, dict):
            raise TypeError(f"a JSON {type(value).__name__}, not an object")
        check(value)
    except (KeyError, TypeError, ValueError, RecursionError) as err:
        txn.quarantine("meta", key, f"unusable value: {type(err).__name__}: {err}", row[0])
        txn.conn.execute("DELETE FROM meta WHERE key = ?", (key,))
        return None
    return value


def _cursor_past_everything(txn: Txn) -> int:
    row = txn.conn.execute("SELECT COALESCE(MAX(id), 0) FROM results").fetchone()
    return int(row[0])


def results_cursor(txn: Txn) -> int:
    """The upload cursor of window results (0 on a new database).

    A poisoned cursor is moved past every stored result: re-sending the whole local
    history could flood the broker with duplicates the consumer cannot recognise, so
    results not yet packed at that moment are not uploaded (announced by the quarantine).
    """
    return get_count(txn, RESULTS_CURSOR, default=0, repair=_cursor_past_everything)
