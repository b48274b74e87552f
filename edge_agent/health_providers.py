"""Health sections of the uplink, store and pipeline, sample counts, the heartbeat's body.

The composition root hands these to the health board (`health.py`) and to the heartbeat
task (`periodic.Heartbeat`); each reads only the part it describes, so `status`, the
heartbeat and the service hub show the same figures.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from edge_agent import __version__
from edge_agent.health import HealthBoard
from edge_agent.periodic import StoreCall
from edge_agent.pipeline.stream import SensorStream
from edge_agent.service.process import rss_mb
from edge_agent.store.db import outbox_depth

if TYPE_CHECKING:
    from edge_agent.pipeline.engine import Pipeline
    from edge_agent.store.db import Store
    from edge_agent.sync.mqtt import MqttUplink
    from edge_agent.sync.resend import ResendStats

HEARTBEAT_SECTIONS = ("sensors", "store", "mqtt", "components", "config_guard")
"""The health board sections a heartbeat carries (the others are for `status`)."""


def mqtt_health(uplink: MqttUplink | None, resends: ResendStats | None = None) -> dict[str, Any]:
    """The MQTT session's figures (`uplink` None: not built yet, nothing connected), with
    what resend requests and re-announces did (`resends`)."""
    return {
        "connected": bool(uplink and uplink.stats.connected),
        "connected_since": uplink.stats.connected_since if uplink else None,
        "published": uplink.stats.published if uplink else 0,
        "acked": uplink.stats.acked if uplink else 0,
        "last_error": uplink.stats.last_error if uplink else None,
        "protocol": uplink.stats.protocol if uplink else None,
        "protocol_fallback": uplink.stats.protocol_fallback if uplink else False,
        # The node of the current (or last) session, and what is known of every node when
        # there are several (one node's figures would repeat the lines around them, in every
        # heartbeat).
        "host": uplink.stats.host if uplink else None,
        "hosts": _nodes(uplink),
        # Topics the broker refuses (MQTT 5 PUBACK >= 0x80), parked until a probe passes.
        "refusals": uplink.refused.total if uplink else 0,
        "refused": uplink.refused.health(time.monotonic()) if uplink else {},
        # Messages queued again by `sync.resend`, and re-announces answered.
        "resent": resends.resent if resends else 0,
        "resend_requests": resends.requests if resends else 0,
        "announces": resends.announces if resends else 0,
    }


def _nodes(uplink: MqttUplink | None) -> dict[str, Any]:
    report = uplink.hosts.report() if uplink else {}
    return report if len(report) > 1 else {}


def store_health(store: Store, dropped: Mapping[str, int], delivered: int = 0) -> dict[str, Any]:
    """The store's figures, with what retention dropped (`dropped`: rows by table) and the
    delivered messages it keeps for resend requests (`delivered`)."""
    return {
        "commits": store.stats.commits,
        "pending": store.pending(),
        "failed_commits": store.stats.failed_commits,
        "last_error": store.stats.last_error,
        "disk_full": store.disk_full,
        "quarantined": store.stats.quarantined,
        "dropped": dropped,
        "delivered": delivered,
    }


def pipeline_health(pipeline: Pipeline) -> dict[str, Any]:
    """The engine's progress figures."""
    stats = pipeline.stats
    return {
        "windows_committed": stats.windows_committed,
        "batches": stats.batches_done,
        "frames_set_aside": stats.frames_set_aside,
        "model_failures": stats.model_failures,
    }


def sample_counts(streams: Mapping[tuple[str, int], SensorStream]) -> dict[str, int]:
    """Samples received per sensor, summed over its streams."""
    counts: dict[str, int] = {}
    for (name, _), stream in streams.items():
        counts[name] = counts.get(name, 0) + stream.stats.samples
    return counts


class HeartbeatBody:
    """Builds the heartbeat message: process figures plus the board's heartbeat sections.

    Args:
        call: The store's `call` (the outbox depth is read on the writer thread).
        health: The health board.
        started_mono: When the agent started (monotonic), for the uptime.
        windows_committed: Window results committed since start.
    """

    def __init__(
        self,
        call: StoreCall,
        health: HealthBoard,
        started_mono: float,
        windows_committed: Callable[[], int],
    ) -> None:
        self.call = call
        self.health = health
        self.started_mono = started_mono
        self.windows_committed = windows_committed

    async def __call__(self) -> dict[str, Any]:
        """The body of one heartbeat (JSON-ready)."""
        depth = await self.call(outbox_depth())
        times = os.times()
        snap = self.health.snapshot(*HEARTBEAT_SECTIONS)
        return {
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started_mono, 1),
            "cpu_s": round(times.user + times.system, 3),
            "rss_mb": round(rss_mb(), 1),
            "sensors": snap["sensors"],
            "windows_committed": self.windows_committed(),
            "outbox_depth": depth,
            "store": {k: v for k, v in snap["store"].items() if k != "pending"},
            "mqtt": {k: v for k, v in snap["mqtt"].items() if k != "connected_since"},
            "health": {"state": snap["state"], "degraded": snap["degraded"]},
            # Only the parts that failed: the heartbeat stays small while all is well.
            "components": {n: c for n, c in snap["components"].items() if c["restarts"]},
            "config_guard": snap.get("config_guard"),
        }
