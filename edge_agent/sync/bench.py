"""Uplink benchmark: the outbox drain against bare paho QoS 1 publishing, same broker, same run."""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent.config import parse_config
from edge_agent.store.db import Store, Txn
from edge_agent.sync.mqtt import MqttUplink

PAYLOAD = {"sensor": "imu-0", "pad": "x" * 200}


def raw_paho_qos1(host: str, port: int, n: int, inflight: int = 64) -> float:
    """Messages/s of a bare paho client publishing `n` QoS 1 messages and awaiting every PUBACK."""
    done = threading.Event()
    acked = 0

    def on_publish(*_: Any) -> None:
        nonlocal acked
        acked += 1
        if acked == n:
            done.set()

    # The same protocol as the daemon's default (MQTT 5, whose PUBACKs carry a reason code).
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="bench-raw",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect(host, port)
    client.loop_start()
    payload = (
        b'{"device":"bench","seq":1,"msg_id":"0123456789abcdef0123456789abcdef","ts":1.0,'
        b'"sensor":"imu-0","pad":"' + b"x" * 200 + b'"}'
    )
    start = time.perf_counter()
    for _ in range(n):
        client.publish("bench/raw", payload, qos=1)
    done.wait(120)
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return n / elapsed


def outbox_drain(host: str, port: int, n: int) -> float:
    """Messages/s of the daemon's uplink draining `n` queued outbox rows (PUBACK → delete)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config(
            {
                "device": {"id": "bench"},
                "mqtt": {"host": host, "port": port, "max_messages_per_s": 1e9},
            },
            source="bench",
            environ={},
        )
        store = Store(Path(tmp) / "bench.db", device_id="bench", topic_root=config.topic_root)
        store.open()

        def fill(txn: Txn) -> None:
            for _ in range(n):
                txn.enqueue("results", PAYLOAD)

        store.submit(fill).result(60)
        uplink = MqttUplink(config, store)

        async def run() -> float:
            task = asyncio.create_task(uplink.run())
            while not uplink.stats.connected:  # noqa: ASYNC110 - a 1 ms poll of a counter
                await asyncio.sleep(0.001)
            start = time.perf_counter()
            while uplink.stats.acked < n:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            elapsed = time.perf_counter() - start
            await uplink.stop(timeout=2)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return n / elapsed

        try:
            return asyncio.run(run())
        finally:
            store.close()


def bench_uplink(host: str, port: int, n: int = 5000) -> dict[str, float]:
    """Both figures and their ratio (target ≥ 0.7)."""
    raw = raw_paho_qos1(host, port, n)
    drain = outbox_drain(host, port, n)
    return {
        "outbox_drain_msgs_per_s": round(drain, 1),
        "raw_paho_qos1_msgs_per_s": round(raw, 1),
        "outbox_drain_ratio": round(drain / raw, 3),
    }
