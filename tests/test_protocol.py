"""`mqtt.protocol = "auto"`: MQTT 5, falling back to 3.1.1 where the broker refuses 5.

Against a real nats-server with its MQTT listener (which refuses MQTT 5 with "Unsupported
protocol version") and a real mosquitto (which takes 5).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.commands.control import render_status
from edge_agent.config import AgentConfig, parse_config
from edge_agent.service.control import request
from edge_agent.service.doctor import check_broker
from edge_agent.store.db import Store, enqueue
from edge_agent.sync.mqtt import MqttUplink, protocol_key
from edge_agent.sync.refused import RefusedTopics
from tests.broker import Mosquitto, collector, until, wait_for
from tests.daemon_proc import cli, start_daemon, stop_daemon, write_config
from tests.nats import Nats


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nats]:
    with Nats(tmp_path_factory.mktemp("nats")) as server:
        yield server


def _config(port: int, protocol: str | None = None) -> AgentConfig:
    mqtt: dict[str, Any] = {"port": port, "reconnect_min_s": 0.05, "reconnect_max_s": 0.2}
    if protocol is not None:
        mqtt["protocol"] = protocol
    return parse_config(
        {"device": {"id": "gw-proto", "tenant": "t", "site": "s"}, "mqtt": mqtt},
        source="test",
        environ={},
    )


def _session(
    config: AgentConfig, store: Store, done: Callable[[MqttUplink], Any], what: str
) -> tuple[MqttUplink, list[tuple[str, dict[str, Any]]]]:
    """Run an uplink until `done(uplink)` holds, then stop it."""
    events: list[tuple[str, dict[str, Any]]] = []

    def emit(kind: str, severity: str = "info", sensor: str | None = None, **body: Any) -> None:
        events.append((kind, body))

    uplink = MqttUplink(config, store, emit=emit)

    async def run() -> None:
        task = asyncio.create_task(uplink.run())
        try:
            await until(lambda: done(uplink), 20, what)
        finally:
            await uplink.stop(timeout=2)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(asyncio.wait_for(run(), 30))
    return uplink, events


def _remembered(store: Store, config: AgentConfig) -> Any:
    key = protocol_key(config.mqtt.host, config.mqtt.port)

    def op(txn: Any) -> Any:
        row = txn.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    return store.submit(op).result(5)


def test_auto_falls_back_to_3_1_1_on_nats_remembers_it_and_logs_once(
    nats: Nats, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """NATS refuses the MQTT 5 CONNECT; the gateway connects with 3.1.1 at once, delivers,
    remembers it for this broker, and the next start goes straight to 3.1.1."""
    config = _config(nats.mqtt_port)
    assert config.mqtt.protocol == "auto"  # the default
    store = Store(tmp_path / "p.db", device_id="gw-proto", topic_root=config.topic_root)
    store.open()
    caplog.set_level(logging.INFO, logger="edge_agent.sync.mqtt")
    try:
        with collector(nats.mqtt_port, "edge/#") as sub:
            store.submit(enqueue("heartbeat", {"n": 1})).result(5)
            uplink, events = _session(
                config, store, lambda u: u.stats.acked >= 1, "the heartbeat acknowledged"
            )
            assert uplink.stats.protocol == "3.1.1"
            assert uplink.stats.protocol_fallback
            assert uplink.stats.connects == 1
            assert uplink.stats.connect_failures == 1  # the refused MQTT 5 attempt
            assert ("mqtt.connected", {"host": "127.0.0.1", "port": nats.mqtt_port,
                                       "protocol": "3.1.1"}) in events  # fmt: skip
            saved = _remembered(store, config)
            assert saved["protocol"] == "3.1.1"
            assert "Unsupported protocol version" in saved["reason"]
            fallbacks = [r for r in caplog.records if "accepted 3.1.1" in r.getMessage()]
            assert len(fallbacks) == 1
            assert fallbacks[0].levelno == logging.WARNING
            wait_for(lambda: sub.of("heartbeat"), 10, "the heartbeat at the subscriber")
            assert sub.of("heartbeat")[0].payload["n"] == 1

            # Next start: straight to 3.1.1, no refused attempt, no second warning.
            caplog.clear()
            store.submit(enqueue("heartbeat", {"n": 2})).result(5)
            again, events = _session(config, store, lambda u: u.stats.acked >= 1, "second")
            assert again.stats.connect_failures == 0
            assert again.stats.protocol == "3.1.1"
            assert again.stats.protocol_fallback
            assert not [r for r in caplog.records if "accepted 3.1.1" in r.getMessage()]
            assert [r for r in caplog.records if "refused MQTT 5 before" in r.getMessage()]
    finally:
        store.close()


def test_fixed_mqtt_5_refused_says_which_setting_to_use(nats: Nats, tmp_path: Path) -> None:
    """`protocol = "5"` against NATS never connects, and says to set 3.1.1 (or auto)."""
    config = _config(nats.mqtt_port, "5")
    store = Store(tmp_path / "f.db", device_id="gw-proto", topic_root=config.topic_root)
    store.open()
    try:
        uplink, events = _session(
            config,
            store,
            lambda u: u.stats.connect_failures >= 2 and u.stats.last_error,
            "two refused attempts",
        )
        assert uplink.stats.connects == 0
        assert uplink.stats.last_error is not None
        assert 'set mqtt.protocol = "3.1.1" (or "auto")' in uplink.stats.last_error
        assert "Unsupported protocol version" in uplink.stats.last_error
        assert _remembered(store, config) is None
        assert not [e for e in events if e[0] == "mqtt.connected"]
    finally:
        store.close()


def test_doctor_negotiates_like_the_daemon(nats: Nats) -> None:
    """doctor: auto passes on NATS naming the fallback; a fixed "5" fails with the fix."""
    auto = check_broker(_config(nats.mqtt_port))
    assert auto.status == "pass"
    assert "accepted an MQTT 3.1.1 connection" in auto.summary
    assert "refused MQTT 5" in auto.summary
    fixed = check_broker(_config(nats.mqtt_port, "5"))
    assert fixed.status == "fail"
    assert "refused MQTT 5" in fixed.summary
    assert fixed.fix == 'set mqtt.protocol = "3.1.1" (or "auto")'
    assert check_broker(_config(nats.mqtt_port, "3.1.1")).status == "pass"


def test_auto_uses_mqtt_5_where_the_broker_takes_it(tmp_path: Path) -> None:
    """mosquitto takes MQTT 5: auto uses it, remembers nothing, doctor says 5."""
    with Mosquitto(tmp_path) as broker:
        config = _config(broker.port)
        store = Store(tmp_path / "m.db", device_id="gw-proto", topic_root=config.topic_root)
        store.open()
        try:
            store.submit(enqueue("heartbeat", {"n": 1})).result(5)
            uplink, _events = _session(config, store, lambda u: u.stats.acked >= 1, "the ack")
            assert uplink.stats.protocol == "5"
            assert not uplink.stats.protocol_fallback
            assert uplink.stats.connect_failures == 0
            assert _remembered(store, config) is None
            check = check_broker(config)
            assert check.status == "pass"
            assert "accepted an MQTT 5 connection" in check.summary
        finally:
            store.close()


def test_daemon_on_nats_shows_the_fallback_in_heartbeat_and_status(
    nats: Nats, tmp_path: Path
) -> None:
    """A real daemon with the default config on NATS: heartbeats arrive over 3.1.1 and
    the heartbeat, `status` and `edge-agent doctor` say which version runs and that it is
    a fallback."""
    db = tmp_path / "d.db"
    config = write_config(
        tmp_path / "d.toml", db=db, sensors=[], mqtt_port=nats.mqtt_port, device="gw-nats"
    )
    log = tmp_path / "daemon.log"
    with collector(nats.mqtt_port, "edge/#") as sub:
        proc = start_daemon(config, log)
        try:
            wait_for(
                lambda: [m for m in sub.of("heartbeat") if m.payload["mqtt"]["protocol"]],
                30,
                "a heartbeat naming its protocol",
            )
            st = request(db.with_suffix(".sock"), "status")["status"]
            doctor = cli("doctor", "--json", "--timeout", "5", "--config", str(config))
        finally:
            assert stop_daemon(proc, log) == 0, log.read_text()[-4000:]
    broker = next(c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "broker")
    assert broker["status"] == "pass", doctor.stdout
    fell_back = "accepted an MQTT 3.1.1 connection (it refused MQTT 5: Unsupported protocol"
    assert fell_back in broker["summary"]
    beat = next(m for m in sub.of("heartbeat") if m.payload["mqtt"]["protocol"])
    assert beat.payload["mqtt"]["protocol"] == "3.1.1"
    assert beat.payload["mqtt"]["protocol_fallback"] is True
    assert st["mqtt"]["protocol"] == "3.1.1"
    assert st["mqtt"]["protocol_fallback"] is True
    assert "connected with MQTT 3.1.1 (it refused MQTT 5) since" in render_status(st)
    # The page lists refused topics (the section the uplink's RefusedTopics fills).
    parked = RefusedTopics(1.0, 2.0)
    parked.refused("edge/t1/s1/gw-nats/results", "Not authorized", time.monotonic())
    page = render_status({**st, "mqtt": {**st["mqtt"], "refused": parked.health(time.monotonic())}})
    assert "refused    edge/t1/s1/gw-nats/results: Not authorized x1, kept, next try in" in page
    assert log.read_text().count("refused MQTT 5") == 1  # logged once
