"""The payload models and the generated JSON Schemas describe what a real daemon publishes.

Payloads are captured from `edge-agent run` (a real process) reading two device emulators
on real pseudo-terminals, through a real mosquitto, with `results` compressed. Nothing is
faked; the one sensor on a missing serial port with an unknown model is there to make the
daemon publish its error events too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent.contract.payloads import (
    KINDS,
    EventPayload,
    PayloadError,
    decode_payload,
    event_body,
    parse_payload,
    undocumented_keys,
)
from edge_agent.inference.bundle import shipped_models_dir
from edge_agent.store.db import Store, Txn, enqueue
from edge_agent.store.retention import enforce_limits
from firmware_bridge.emulator import CsvRecording, DeviceEmulator
from tests.broker import Mosquitto, wait_for
from tests.daemon_proc import start_daemon, stop_daemon, write_config

ROOT = Path(__file__).resolve().parents[1]
RECORDING = shipped_models_dir() / "imu-activity" / "recordings" / "heldout.csv"
TOPIC_ROOT = "edge/t1/s1/gw-schema"


@dataclass
class Raw:
    topic: str
    payload: bytes
    retain: bool
    encoding: str | None

    @property
    def kind(self) -> str:
        return self.topic.rsplit("/", 1)[-1]


class RawCollector:
    """An MQTT 5 subscriber keeping payloads as bytes, with their content-encoding."""

    def __init__(self, port: int, topic_filter: str) -> None:
        self.messages: list[Raw] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"raw-{port}-{time.monotonic_ns()}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic_filter, qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "raw collector did not subscribe"

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        encoding = None
        for key, value in getattr(msg.properties, "UserProperty", None) or []:
            if key == "content-encoding":
                encoding = value
        with self._lock:
            self.messages.append(Raw(msg.topic, bytes(msg.payload), bool(msg.retain), encoding))

    def of(self, kind: str) -> list[Raw]:
        with self._lock:
            return [m for m in self.messages if m.kind == kind]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Raw]]:
    """Everything one daemon run published: start, stream, clean stop."""
    tmp = tmp_path_factory.mktemp("schemas")
    emus = [
        DeviceEmulator(CsvRecording(RECORDING), device_id=f"imu-{i}", max_rate=True)
        for i in range(2)
    ]
    for e in emus:
        e.start()
    sensors: list[dict[str, Any]] = [
        {"name": f"imu-{i}", "link": "serial", "port": e.tty_path} for i, e in enumerate(emus)
    ]
    sensors.append(
        {
            "name": "ghost",
            "link": "serial",
            "port": str(tmp / "no-such-tty"),
            "models": ["no-such-model"],
        }
    )
    db = tmp / "schemas.db"
    log = tmp / "daemon.log"
    try:
        with Mosquitto(tmp) as broker:
            sub = RawCollector(broker.port, f"{TOPIC_ROOT}/#")
            try:
                config = write_config(
                    tmp / "schemas.toml",
                    db=db,
                    sensors=sensors,
                    mqtt_port=broker.port,
                    device="gw-schema",
                    sections={
                        "mqtt": {"compress_results": True, "reconnect_min_s": 0.1},
                        "sync": {
                            "heartbeat_interval_s": 1.0,
                            "summary_interval_s": 1.0,
                            "results_interval_s": 0.1,
                            "upload_results": True,
                        },
                    },
                )
                proc = start_daemon(config, log)
                try:
                    wait_for(
                        lambda: (
                            len(sub.of("results")) >= 2
                            and len(sub.of("summary")) >= 2
                            and len(sub.of("heartbeat")) >= 3
                        ),
                        30,
                        "results, summaries and heartbeats",
                    )
                finally:
                    assert stop_daemon(proc, log) == 0, log.read_text()[-4000:]
                wait_for(
                    lambda: any(b"offline" in m.payload for m in sub.of("status")),
                    10,
                    "the offline status of the clean stop",
                )
                yield list(sub.messages)
            finally:
                sub.close()
    finally:
        for e in emus:
            e.close()


def _decoded(m: Raw) -> Any:
    return decode_payload(m.payload, m.encoding)


def test_every_captured_payload_validates_and_every_key_is_documented(
    captured: list[Raw],
) -> None:
    """Each kind was published; each payload matches its model with no undescribed key."""
    assert {m.kind for m in captured} == set(KINDS)
    events: list[EventPayload] = []
    for m in captured:
        payload = parse_payload(m.kind, _decoded(m))
        assert undocumented_keys(payload) == [], (m.kind, _decoded(m))
        if isinstance(payload, EventPayload):
            events.append(payload)
    kinds = {e.event for e in events}
    assert {"agent.started", "sensor.hello", "model.load_failed", "agent.stopped"} <= kinds
    started = next(e for e in events if e.event == "agent.started")
    assert event_body(started)["sensors"] == ["imu-0", "imu-1", "ghost"]
    summaries = [_decoded(m) for m in captured if m.kind == "summary"]
    assert summaries[-1]["partial"] is True
    assert all(m.encoding == "zlib" for m in captured if m.kind == "results")
    assert all(m.payload[:1] == b"{" for m in captured if m.kind != "results")


def test_generated_json_schemas_accept_every_captured_payload(captured: list[Raw]) -> None:
    """docs/schemas/*.json, read by an independent validator, accept the real payloads."""
    validators = {}
    for kind in KINDS:
        schema = json.loads((ROOT / "docs" / "schemas" / f"{kind}.json").read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        validators[kind] = jsonschema.Draft202012Validator(schema)
    for m in captured:
        errors = list(validators[m.kind].iter_errors(_decoded(m)))
        assert errors == [], (m.kind, [e.message for e in errors])


def test_generated_schemas_and_doc_section_are_up_to_date() -> None:
    """`gen_mqtt_schemas.py --check` passes: docs/schemas and docs/mqtt.md match the models."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_mqtt_schemas.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _queued_events(txn: Txn) -> list[Any]:
    return txn.conn.execute("SELECT payload FROM outbox WHERE kind = 'events'").fetchall()


def test_the_eviction_notice_the_store_writes_matches_its_model(tmp_path: Path) -> None:
    """An `outbox.evicted` event built by the retention code (real SQLite file) validates
    against the body a consumer relies on to tell a policy drop from a loss."""
    store = Store(tmp_path / "evict.db", device_id="gw-e", topic_root="edge/t/s/gw-e")
    store.open()
    try:
        for i in range(5):
            store.submit(enqueue("results", {"i": i})).result(10)
        store.submit(enforce_limits(1 << 30, 1.0, now=time.time() + 100)).result(10)
        rows = store.submit(_queued_events).result(10)
    finally:
        store.close()
    notices = [parse_payload("events", json.loads(bytes(r[0]))) for r in rows]
    assert len(notices) == 1
    notice = notices[0]
    assert isinstance(notice, EventPayload)
    assert notice.event == "outbox.evicted"
    assert undocumented_keys(notice) == []
    body = event_body(notice)
    assert (body["topic"], body["seq_from"], body["seq_to"], body["messages"]) == (
        "results",
        1,
        5,
        5,
    )


@pytest.mark.parametrize(
    ("kind", "change", "expected"),
    [
        ("results", {"count": 3}, "do not have count=3 entries"),
        ("results", {"seq": "7"}, "seq: Input should be a valid integer"),
        ("status", {"msg_id": "not-hex"}, "msg_id: String should match pattern"),
        ("status", {"state": "sleeping"}, "state: Input should be 'online' or 'offline'"),
        ("events", {"topic": "results", "seq_from": 9, "seq_to": 3}, "seq_to 3 is below"),
        ("heartbeat", {"store": {"commits": 1}}, "store.failed_commits: Field required"),
        ("bogus", {}, "unknown topic kind"),
    ],
)
def test_a_broken_payload_is_refused_with_the_key_path_and_the_reason(
    kind: str, change: dict[str, Any], expected: str
) -> None:
    """Contract violations name the offending key and what was expected."""
    base: dict[str, Any] = {
        "device": "gw",
        "seq": 1,
        "msg_id": "0" * 32,
        "ts": 1.0,
    }
    bodies: dict[str, dict[str, Any]] = {
        "results": {
            "sensor": "s",
            "model": "m",
            "model_version": "1",
            "count": 1,
            "windows": {"t_start": [1.0], "t_end": [2.0], "label": ["a"], "confidence": [0.5]},
        },
        "status": {"state": "online", "tenant": "t", "site": "s"},
        "events": {
            "event": "outbox.evicted",
            "severity": "warning",
            "sensor": None,
            "event_ts": 1.0,
            "topic": "results",
            "seq_from": 1,
            "seq_to": 2,
            "messages": 2,
            "reason": "disk cap",
        },
        "heartbeat": {},
        "bogus": {},
    }
    message = {**base, **bodies[kind], **change}
    with pytest.raises(PayloadError) as err:
        parse_payload(kind, message)
    assert expected in str(err.value)


def test_a_payload_that_is_not_json_or_not_inflatable_is_refused() -> None:
    """Undecodable bytes are a clear error, not a crash."""
    with pytest.raises(PayloadError, match="not UTF-8 JSON"):
        decode_payload(b"{nope")
    with pytest.raises(PayloadError, match="does not inflate"):
        decode_payload(b"\x78garbage", "zlib")
    with pytest.raises(PayloadError, match="unsupported content-encoding"):
        decode_payload(b"{}", "br")
