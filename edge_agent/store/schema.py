"""Schema of the local database and its migrations, tracked by `PRAGMA user_version`."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite_utils


def _v1(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key")
    db.table("results").create(
        {
            "id": int,
            "sensor": str,
            "model": str,
            "model_version": str,
            "t_start": float,
            "t_end": float,
            "label": str,
            "confidence": float,
        },
        pk="id",
        not_null={"sensor", "model", "model_version", "t_start", "t_end"},
    )
    db.table("results").create_index(["sensor", "t_end"])
    db.table("summaries").create(
        {
            "id": int,
            "sensor": str,
            "model": str,
            "model_version": str,
            "t_start": float,
            "t_end": float,
            "body": str,
        },
        pk="id",
    )
    db.table("events").create(
        {"id": int, "ts": float, "kind": str, "sensor": str, "severity": str, "body": str},
        pk="id",
    )
    db.table("outbox").create(
        {
            "id": int,
            "topic": str,
            "kind": str,
            "priority": int,
            "seq": int,
            "msg_id": str,
            "payload": bytes,
            "created": float,
            "retain": int,
        },
        pk="id",
        not_null={"topic", "kind", "priority", "seq", "msg_id", "payload", "created"},
        defaults={"retain": 0},
    )
    db.table("outbox").create_index(["priority", "id"])
    db.table("topic_seq").create({"topic": str, "seq": int}, pk="topic", not_null={"seq"})


def _v2(db: sqlite_utils.Database) -> None:
    # Payload encoding of compressed outbox rows (NULL: plain JSON).
    db.table("outbox").add_column("encoding", str)
    # Everything dropped by policy (disk cap, age), by class, reported in heartbeats.
    db.table("dropped").create({"class": str, "count": int}, pk="class")


def _rebuild_autoincrement(db: sqlite_utils.Database, table: str, floor: int) -> None:
    """Recreate `table` with AUTOINCREMENT ids, keeping its rows and indexes."""
    conn = db.conn
    sql = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()[0]
    indexes = [
        row[0]
        for row in conn.execute(
            "SELECT sql FROM sqlite_master "
            "WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
            (table,),
        )
    ]
    new_sql = sql.replace('"id" INTEGER PRIMARY KEY', '"id" INTEGER PRIMARY KEY AUTOINCREMENT', 1)
    new_sql = new_sql.replace(f'"{table}"', f'"{table}_v3"', 1)
    conn.execute(new_sql)
    conn.execute(f'INSERT INTO "{table}_v3" SELECT * FROM "{table}"')
    conn.execute(f'DROP TABLE "{table}"')
    conn.execute(f'ALTER TABLE "{table}_v3" RENAME TO "{table}"')
    for index in indexes:
        conn.execute(index)
    top = conn.execute(f'SELECT COALESCE(MAX(id), 0) FROM "{table}"').fetchone()[0]
    conn.execute("DELETE FROM sqlite_sequence WHERE name = ?", (table,))
    conn.execute(
        "INSERT INTO sqlite_sequence(name, seq) VALUES (?, ?)", (table, max(int(top), floor))
    )


def _v3(db: sqlite_utils.Database) -> None:
    # Ids of the outbox and of results must never be reused: the uplink tells rows in
    # flight and rows being deleted apart by id, and the results upload cursor is an id.
    # A plain INTEGER PRIMARY KEY reuses ids once the newest rows are deleted.
    cursor = db.conn.execute("SELECT value FROM meta WHERE key = 'results_cursor'").fetchone()
    try:
        floor = int(cursor[0]) if cursor else 0
    except (TypeError, ValueError):  # a poisoned cursor is repaired after the migrations
        floor = 0
    _rebuild_autoincrement(db, "results", floor)
    _rebuild_autoincrement(db, "outbox", 0)


def _v4(db: sqlite_utils.Database) -> None:
    # The age cap runs every 10 s: without these it scanned all local history each time.
    db.table("results").create_index(["t_end"])
    db.table("summaries").create_index(["t_end"])
    db.table("events").create_index(["ts"])
    db.table("outbox").create_index(["created"])


def _v5(db: sqlite_utils.Database) -> None:
    # Rows read back from the store that cannot be packed or sent (a NULL, NaN or text where
    # a number belongs, a payload that is not JSON, a meta value that is not an integer) are
    # moved here with the reason, so they can be inspected and never stall the flow.
    db.conn.execute(
        "CREATE TABLE quarantine (id INTEGER PRIMARY KEY AUTOINCREMENT, ts FLOAT NOT NULL, "
        "source TEXT NOT NULL, row_key TEXT, reason TEXT NOT NULL, content TEXT)"
    )
    # CRC-32 of the payload as written: a row whose payload still matches it was encoded by
    # the store itself and need not be parsed again before it is sent (NULL: check it all).
    db.table("outbox").add_column("crc", int)


def _v6(db: sqlite_utils.Database) -> None:
    # Messages the broker acknowledged, kept for `sync.keep_delivered_s` so a consumer that
    # lost some (a broker that dropped acknowledged messages) can ask for them again
    # (`sync.resend`) and get the same seq, msg_id and payload bytes.
    db.conn.execute(
        "CREATE TABLE delivered (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
        "kind TEXT NOT NULL, seq INTEGER NOT NULL, msg_id TEXT NOT NULL, payload BLOB NOT NULL, "
        "encoding TEXT, crc INTEGER, created FLOAT NOT NULL, delivered_at FLOAT NOT NULL, "
        "UNIQUE (topic, seq))"
    )
    db.conn.execute("CREATE INDEX delivered_at ON delivered (delivered_at)")
    # A resend request asks which seqs of a topic are still queued.
    db.conn.execute("CREATE INDEX outbox_topic_seq ON outbox (topic, seq)")


# Index i holds the migration from user_version i to i + 1. Append, never edit.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1, _v2, _v3, _v4, _v5, _v6]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to `SCHEMA_VERSION`, one transaction per step.

    sqlite-utils is imported only when a migration is due: an up-to-date database (every
    start but the first after an upgrade) does not pay its memory.

    Returns:
        The version the database had before.

    Raises:
        RuntimeError: the database is newer than this edge-agent (a downgrade).
    """
    before = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if before > SCHEMA_VERSION:
        raise RuntimeError(
            f"database schema {before} is newer than this edge-agent supports "
            f"({SCHEMA_VERSION}); upgrade edge-agent or point storage.path elsewhere"
        )
    if before == SCHEMA_VERSION:
        return before
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    for version in range(before, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[version](db)
            conn.execute(f"PRAGMA user_version = {version + 1}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return before
