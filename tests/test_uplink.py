"""The MQTT uplink's own parts: backoff, rate limit, compression on a real broker."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import zlib
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent.config import parse_config
from edge_agent.store.db import Store, Txn
from edge_agent.sync.mqtt import Backoff, MqttUplink, TokenBucket
from tests.broker import Mosquitto, wait_for


def test_backoff_is_capped_jittered_and_resets() -> None:
    backoff = Backoff(0.5, 8.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(12)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    ceilings = [min(8.0, 0.5 * 2**i) for i in range(12)]
    assert all(d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered, not lockstep
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_token_bucket_allows_a_burst_then_paces() -> None:
    bucket = TokenBucket(rate=100.0, burst=10)
    waits = [bucket.take(0.0) for _ in range(12)]
    assert waits[:10] == [0.0] * 10
    assert waits[10] > 0
    assert waits[11] > waits[10]
    assert abs(waits[11] - 0.02) < 1e-9  # the 12th message waits 2 tokens' time at 100/s
    assert bucket.take(10.0) == 0.0  # refilled after a pause


def test_compressed_results_carry_their_encoding(tmp_path: Path) -> None:
    """With compress_results, `results` payloads are zlib with a content-encoding property;
    other topics stay plain JSON."""
    got: list[tuple[str, bytes, Any]] = []
    ready = threading.Event()
    with Mosquitto(tmp_path) as broker:
        sub = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
        )
        sub.on_message = lambda c, u, m: got.append((m.topic, m.payload, m.properties))
        sub.on_subscribe = lambda *a: ready.set()
        sub.connect("127.0.0.1", broker.port)
        sub.subscribe("edge/#", qos=1)
        sub.loop_start()
        assert ready.wait(10)
        config = parse_config(
            {"device": {"id": "gw-z"}, "mqtt": {"port": broker.port, "compress_results": True}},
            source="t",
            environ={},
        )
        store = Store(tmp_path / "z.db", device_id="gw-z", topic_root=config.topic_root)
        store.open()

        def fill(txn: Txn) -> None:
            txn.enqueue(
                "results", {"count": 1, "windows": {"label": ["walking"] * 50}}, compress=True
            )
            txn.enqueue("heartbeat", {"uptime_s": 1})

        store.submit(fill).result(5)
        uplink = MqttUplink(config, store)

        async def run() -> None:
            task = asyncio.create_task(uplink.run())
            while uplink.stats.acked < 2:
                await asyncio.sleep(0.01)
            await uplink.stop(timeout=2)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        asyncio.run(asyncio.wait_for(run(), 20))
        store.close()
        wait_for(lambda: len([g for g in got if not g[0].endswith("/status")]) >= 2, 10, "both")
        sub.disconnect()
        sub.loop_stop()
    by_kind = {t.rsplit("/", 1)[-1]: (p, props) for t, p, props in got}
    payload, props = by_kind["results"]
    assert ("content-encoding", "zlib") in props.UserProperty
    body = json.loads(zlib.decompress(payload))
    assert body["windows"]["label"] == ["walking"] * 50
    assert body["seq"] == 1
    assert json.loads(by_kind["heartbeat"][0])["uptime_s"] == 1
