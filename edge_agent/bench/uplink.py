"""Uplink: the outbox drain against bare paho QoS 1 publishing (same broker, same run), and the
bytes one sensor costs the uplink per hour with the default sync settings."""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent.bench.harness import Proc, emit
from edge_agent.bench.timed import bench_config, running_daemon
from edge_agent.config import SyncConfig, parse_config
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


def measure_uplink_bytes(port: int, work: Path, seconds: float) -> dict[str, Any]:
    """Bytes one sensor costs the uplink per hour with the default sync settings.

    A daemon with two emulated sensors runs at real time with short intervals while a
    subscriber counts what arrives per topic kind (payload, topic and MQTT fixed header);
    the average message size of each kind is then scaled to the default cadence (a summary
    per sensor and model every minute, a heartbeat every 30 s shared by the gateway's
    sensors, no per-window results) and divided by the number of sensors.
    """
    sizes: dict[str, list[int]] = {}
    lock = threading.Lock()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        kind = msg.topic.rsplit("/", 1)[-1]
        with lock:
            # Fixed header (~2-4 bytes) + topic length field + topic + QoS 1 packet id.
            sizes.setdefault(kind, []).append(len(msg.payload) + len(msg.topic) + 2 + 2 + 3)

    sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-bytes")
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.subscribe("edge/+/+/bench-bytes/#", qos=1)
    sub.loop_start()
    sensors = 2
    emulator = Proc("emulate", str(sensors))
    try:
        ttys = emulator.read()["ttys"]
        worker = Proc("uplink-bytes", json.dumps(ttys), str(seconds), str(port), str(work / "b.db"))
        try:
            worker.read()
        finally:
            worker.close(60)
    finally:
        emulator.close()
        sub.disconnect()
        sub.loop_stop()
    defaults = SyncConfig()
    avg = {k: sum(v) / len(v) for k, v in sizes.items() if v}
    per_hour = avg.get("summary", 0.0) * 3600 / defaults.summary_interval_s  # per sensor+model
    per_hour += avg.get("heartbeat", 0.0) * 3600 / defaults.heartbeat_interval_s / sensors
    return {
        "uplink_bytes_per_sensor_hour": round(per_hour),
        "uplink_message_bytes_avg": {k: round(v) for k, v in sorted(avg.items())},
    }


def uplink_bytes_worker_main(ttys: list[str], seconds: float, port: int, db: Path) -> None:
    """The daemon at real time with short sync intervals, for `measure_uplink_bytes`."""
    config = bench_config(
        ttys,
        db,
        port,
        device="bench-bytes",
        sync={"heartbeat_interval_s": 1.0, "summary_interval_s": 2.0},
    )
    with running_daemon(config):
        time.sleep(seconds)
    emit({"done": True})
