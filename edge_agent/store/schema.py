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


# Index i holds the migration from user_version i to i + 1. Append, never edit.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1, _v2]
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
