"""Crafted telemetry for the cloud consumers' tests (PostgreSQL and the SQLite checker script):
valid payloads of every kind, by seq."""

from __future__ import annotations

import json
import time
import uuid
import zlib
from typing import Any

from edge_agent.cloud.ingest import Inbound, classify


def envelope(device: str, seq: int, msg_id: str | None = None, **body: Any) -> dict[str, Any]:
    return {
        "device": device,
        "seq": seq,
        "msg_id": msg_id or uuid.uuid4().hex,
        "ts": 1.7e9 + seq,
        **body,
    }


def results(device: str, seq: int, msg_id: str | None = None) -> dict[str, Any]:
    return envelope(
        device,
        seq,
        msg_id,
        sensor="s",
        model="m",
        model_version="1",
        count=1,
        windows={"t_start": [1.0], "t_end": [2.0], "label": ["a"], "confidence": [0.9]},
    )


def heartbeat(device: str, seq: int) -> dict[str, Any]:
    return envelope(
        device,
        seq,
        version="0.1.0",
        uptime_s=1.0,
        cpu_s=0.1,
        rss_mb=50.0,
        sensors={},
        windows_committed=0,
        outbox_depth=0,
        store={
            "commits": 1,
            "failed_commits": 0,
            "last_error": None,
            "disk_full": False,
            "dropped": {},
        },
        mqtt={"connected": True, "published": 1, "acked": 1, "last_error": None},
    )


def summary(device: str, seq: int) -> dict[str, Any]:
    return envelope(
        device,
        seq,
        sensor="s",
        model="m",
        model_version="1",
        interval_start=1.0,
        interval_end=2.0,
        windows_processed=0,
        windows_dropped=0,
        label_counts={},
        label_distribution={},
        top_label=None,
        mean_confidence=None,
        latency_ms_p50=None,
        latency_ms_p99=None,
    )


def status(device: str, seq: int, state: str, msg_id: str | None = None) -> dict[str, Any]:
    return envelope(device, seq, msg_id, state=state, tenant="t1", site="s1")


def evicted(device: str, seq: int, topic: str, lo: int, hi: int) -> dict[str, Any]:
    return envelope(
        device,
        seq,
        event="outbox.evicted",
        severity="warning",
        sensor=None,
        event_ts=1.7e9,
        topic=topic,
        seq_from=lo,
        seq_to=hi,
        messages=hi - lo + 1,
        reason="disk cap",
    )


def inbound(
    topic: str,
    body: dict[str, Any] | bytes,
    *,
    retained: bool = False,
    zlib_: bool = False,
    received: float | None = None,
) -> Inbound:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    if zlib_:
        raw = zlib.compress(raw)
    at = time.time() if received is None else received
    return Inbound(topic, raw, retained, at, "zlib" if zlib_ else None)


def items(prefix: str, *messages: tuple[str, dict[str, Any] | bytes]) -> list[Any]:
    """Classified items, as the consumer hands them to `CloudStore.write`."""
    return [classify(inbound(topic, body), prefix) for topic, body in messages]
