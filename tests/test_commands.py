"""Remote commands against a real daemon process and a real mosquitto (MQTT 5 request/response)."""

from __future__ import annotations

import json
import threading
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.broker import Mosquitto, wait_for
from tests.command_support import REPLY_TOPIC, answering, send_command
from tests.daemon_proc import start_daemon, stop_daemon

ROOT = "edge/t/s/gw-cmd"


class Requester:
    """An MQTT 5 client that sends requests and collects replies by correlation data."""

    def __init__(self, port: int) -> None:
        self.replies: dict[bytes, dict[str, Any]] = {}
        self.fallback: list[tuple[str, dict[str, Any]]] = []
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"cloud-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([(REPLY_TOPIC, 1), (f"{ROOT}/reply/+", 1), (f"{ROOT}/events", 1)])
        self.client.loop_start()
        assert self._ready.wait(10)

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        with self._lock:
            if msg.topic.endswith("/events"):
                self.events.append(body)
                return
            corr = getattr(msg.properties, "CorrelationData", None)
            if corr is not None:
                self.replies[corr] = body
            else:
                self.fallback.append((msg.topic, body))

    def request(
        self, name: str, body: bytes | dict[str, Any], timeout: float = 15
    ) -> dict[str, Any]:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        return send_command(self.client, ROOT, name, payload, self.replies, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Requester, Path]]:
    tmp = tmp_path_factory.mktemp("cmd")
    with Mosquitto(tmp) as broker:
        config = tmp / "agent.toml"
        config.write_text(
            f'[device]\nid = "gw-cmd"\ntenant = "t"\nsite = "s"\n\n'
            f'[mqtt]\nport = {broker.port}\nusername = "u"\npassword = "hunter2"\n\n'
            f'[storage]\npath = "{tmp / "cmd.db"}"\n\n'
            '[commands]\ndeny = ["sensors.*"]\n\n'
            "[logging]\nshow_results = false\n\n"
            '[[sensors]]\nname = "imu-0"\nlink = "emulated"\n'
        )
        log = tmp / "daemon.log"
        proc = start_daemon(config, log)
        req = Requester(broker.port)
        try:
            wait_for(
                lambda: any(e["event"] == "agent.started" for e in req.events), 20, "daemon up"
            )
            # The daemon subscribes to commands right after connecting; ping until it answers.
            wait_for(
                lambda: answering(req.request, {"id": uuid.uuid4().hex}), 20, "command subscription"
            )
            yield req, config
        finally:
            req.close()
            stop_daemon(proc, log)


def test_ping_echoes_with_timestamps_and_correlation(setup: tuple[Requester, Path]) -> None:
    req, _ = setup
    reply = req.request("ping", {"id": "p1", "args": {"echo": "hello", "ts": 1.5}})
    assert reply["ok"] is True
    assert reply["id"] == "p1"
    result = reply["result"]
    assert result["echo"] == "hello"
    assert result["request_ts"] == 1.5
    assert result["received_ts"] <= result["replied_ts"]


def test_status_and_config_get_mask_secrets(setup: tuple[Requester, Path]) -> None:
    req, _ = setup
    status = req.request("status", {"id": "s1"})["result"]
    assert "imu-0" in status["sensors"]
    config = req.request("config.get", {"id": "c1"})["result"]["config"]
    assert config["mqtt"]["password"] == "********"
    assert "hunter2" not in json.dumps(config)


def test_config_set_is_validated_persisted_and_idempotent(setup: tuple[Requester, Path]) -> None:
    req, path = setup
    bad = req.request(
        "config.set", {"id": "bad1", "args": {"values": {"sync.heartbeat_interval_s": -1}}}
    )
    assert bad["ok"] is False
    assert bad["error"]["code"] == "invalid_config"
    assert any("sync.heartbeat_interval_s" in d for d in bad["error"]["details"])
    assert tomllib.loads(path.read_text()).get("sync") is None  # nothing changed

    body = {"id": "set1", "args": {"values": {"sync.heartbeat_interval_s": 7.5}}}
    first = req.request("config.set", body)
    assert first["ok"] is True, first
    assert tomllib.loads(path.read_text())["sync"]["heartbeat_interval_s"] == 7.5
    again = req.request("config.set", body)
    assert again == first  # answered from the cache, not applied twice
    wait_for(lambda: [e for e in req.events if e.get("request_id") == "set1"], 10, "audit event")
    audits = [e for e in req.events if e.get("request_id") == "set1"]
    assert [e["event"] for e in audits] == ["command.executed"]


def test_malformed_unknown_and_forbidden_get_error_replies(setup: tuple[Requester, Path]) -> None:
    req, _ = setup
    assert req.request("ping", b"{not json")["error"]["code"] == "bad_request"
    assert req.request("ping", {"id": "x", "extra": 1})["error"]["code"] == "bad_request"
    assert req.request("reboot", {"id": "u1"})["error"]["code"] == "unknown_command"
    assert req.request("sensors.list", {"id": "f1"})["error"]["code"] == "forbidden"
    # The `_` spelling of a dotted name (for brokers that refuse or split a `.`) is the
    # same command: denied alike, and answered like the dotted one.
    assert req.request("sensors_list", {"id": "f2"})["error"]["code"] == "forbidden"
    flush = req.request("sync_flush", {"id": "u2"})
    assert (flush["ok"], flush["command"]) == (True, "sync.flush")
    wait_for(
        lambda: any(
            e["event"] == "command.rejected" and e["request_id"] == "f1" for e in req.events
        ),
        10,
        "rejection audited",
    )


def test_request_without_response_topic_is_answered_on_the_fallback_topic(
    setup: tuple[Requester, Path],
) -> None:
    """MQTT 3.1.1 clients cannot send a response topic: the reply goes to <root>/reply/<name>."""
    req, _ = setup
    req.client.publish(f"{ROOT}/cmd/ping", json.dumps({"id": "legacy"}), qos=1)
    topic, body = wait_for(
        lambda: next((f for f in req.fallback if f[1].get("id") == "legacy"), None), 10, "fallback"
    )
    assert topic == f"{ROOT}/reply/ping"
    assert body["ok"] is True
