"""The health sections, the heartbeat's body and the store's writer watch, on a real SQLite
store (no daemon, no broker: an uplink that was never built is the `None` case)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edge_agent import __version__
from edge_agent.errors import StoreError
from edge_agent.health import HealthBoard
from edge_agent.health_providers import HeartbeatBody, mqtt_health, sample_counts, store_health
from edge_agent.metrics import Counters
from edge_agent.store.db import Store


def _store(tmp_path: Path) -> Store:
    return Store(tmp_path / "agent.db", device_id="gw-1", topic_root="t/gw-1")


def test_mqtt_health_without_a_session_reads_disconnected() -> None:
    """Before the uplink exists, the section says so instead of failing."""
    health = mqtt_health(None)
    assert health["connected"] is False
    assert health["published"] == 0
    assert health["acked"] == 0
    assert health["refusals"] == 0
    assert health["refused"] == {}


def test_sample_counts_of_no_streams_is_empty() -> None:
    """No stream yet: no sensor is counted."""
    assert sample_counts({}) == {}


def test_store_section_and_heartbeat_body(tmp_path: Path) -> None:
    """The store's section reports its figures and what retention dropped; the heartbeat
    carries the board's sections, without the store's `pending` and the session's
    `connected_since`, and lists only components that failed at least once."""
    store = _store(tmp_path)
    store.open()
    try:
        board = HealthBoard(Counters())
        board.provide("sensors", lambda: {"imu-1": {"state": "open"}})
        board.provide("store", lambda: store_health(store, {"results": 3}))
        board.provide("mqtt", lambda: mqtt_health(None))
        board.provide(
            "components",
            lambda: {"pipeline": {"restarts": 0}, "mqtt": {"restarts": 2}},
        )
        section = store_health(store, {"results": 3})
        assert section["dropped"] == {"results": 3}
        assert section["pending"] == 0
        assert section["disk_full"] is False
        body = asyncio.run(HeartbeatBody(store.call, board, 0.0, lambda: 7)())
    finally:
        store.close()
    assert body["version"] == __version__
    assert body["windows_committed"] == 7
    assert body["outbox_depth"] == 0
    assert body["uptime_s"] > 0
    assert body["rss_mb"] > 0
    assert body["sensors"] == {"imu-1": {"state": "open"}}
    assert "pending" not in body["store"]
    assert body["store"]["dropped"] == {"results": 3}
    assert "connected_since" not in body["mqtt"]
    assert body["mqtt"]["connected"] is False
    assert body["components"] == {"mqtt": {"restarts": 2}}
    assert body["health"] == {"state": "healthy", "degraded": []}
    assert body["config_guard"] is None


def test_watch_writer_raises_once_the_writer_is_gone(tmp_path: Path) -> None:
    """A store whose writer stopped ends the watch with StoreError (the root's exit 1)."""
    store = _store(tmp_path)
    store.open()
    store.close()

    async def watch() -> None:
        await asyncio.wait_for(store.watch_writer(0.01), timeout=10)

    with pytest.raises(StoreError, match="writer stopped"):
        asyncio.run(watch())
