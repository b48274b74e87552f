"""`mqtt.protocol = "auto"`: MQTT 5, falling back to 3.1.1 where the broker refuses 5.

Against a real nats-server with its MQTT listener (which refuses MQTT 5 with "Unsupported
protocol version") and a real mosquitto (which takes 5).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.commands.control import render_status
from edge_agent.service.doctor import check_broker
from edge_agent.store.db import Store, enqueue
from edge_agent.sync.refused import RefusedTopics
from tests.broker import Mosquitto, collector, wait_for
from tests.nats import Nats
from tests.protocol_support import config_for, daemon_view, remembered, session


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nats]:
    with Nats(tmp_path_factory.mktemp("nats")) as server:
        yield server


def test_auto_falls_back_to_3_1_1_on_nats_remembers_it_and_logs_once(
    nats: Nats, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """NATS refuses the MQTT 5 CONNECT; the gateway connects with 3.1.1 at once, delivers,
    remembers it for this broker, and the next start goes straight to 3.1.1."""
    config = config_for(nats.mqtt_port)
    assert config.mqtt.protocol == "auto"  # the default
    store = Store(tmp_path / "p.db", device_id="gw-proto", topic_root=config.topic_root)
    store.open()
    caplog.set_level(logging.INFO, logger="edge_agent.sync.mqtt")
    try:
        with collector(nats.mqtt_port, "edge/#") as sub:
            store.submit(enqueue("heartbeat", {"n": 1})).result(5)
            uplink, events = session(
                config, store, lambda u: u.stats.acked >= 1, "the heartbeat acknowledged"
            )
            assert uplink.stats.protocol == "3.1.1"
            assert uplink.stats.protocol_fallback
            assert uplink.stats.connects == 1
            assert uplink.stats.connect_failures == 1  # the refused MQTT 5 attempt
            assert ("mqtt.connected", {"host": "127.0.0.1", "port": nats.mqtt_port,
                                       "protocol": "3.1.1"}) in events  # fmt: skip
            saved = remembered(store, config)
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
            again, events = session(config, store, lambda u: u.stats.acked >= 1, "second")
            assert again.stats.connect_failures == 0
            assert again.stats.protocol == "3.1.1"
            assert again.stats.protocol_fallback
            assert not [r for r in caplog.records if "accepted 3.1.1" in r.getMessage()]
            assert [r for r in caplog.records if "refused MQTT 5 before" in r.getMessage()]
    finally:
        store.close()


def test_fixed_mqtt_5_refused_says_which_setting_to_use(nats: Nats, tmp_path: Path) -> None:
    """`protocol = "5"` against NATS never connects, and says to set 3.1.1 (or auto)."""
    config = config_for(nats.mqtt_port, "5")
    store = Store(tmp_path / "f.db", device_id="gw-proto", topic_root=config.topic_root)
    store.open()
    try:
        uplink, events = session(
            config,
            store,
            lambda u: u.stats.connect_failures >= 2 and u.stats.last_error,
            "two refused attempts",
        )
        assert uplink.stats.connects == 0
        assert uplink.stats.last_error is not None
        assert 'set mqtt.protocol = "3.1.1" (or "auto")' in uplink.stats.last_error
        assert "Unsupported protocol version" in uplink.stats.last_error
        assert remembered(store, config) is None
        assert not [e for e in events if e[0] == "mqtt.connected"]
    finally:
        store.close()


def test_doctor_negotiates_like_the_daemon(nats: Nats) -> None:
    """doctor: auto passes on NATS naming the fallback; a fixed "5" fails with the fix."""
    auto = check_broker(config_for(nats.mqtt_port))
    assert auto.status == "pass"
    assert "accepted an MQTT 3.1.1 connection" in auto.summary
    assert "refused MQTT 5" in auto.summary
    fixed = check_broker(config_for(nats.mqtt_port, "5"))
    assert fixed.status == "fail"
    assert "refused MQTT 5" in fixed.summary
    assert fixed.fix == 'set mqtt.protocol = "3.1.1" (or "auto")'
    assert check_broker(config_for(nats.mqtt_port, "3.1.1")).status == "pass"


def test_auto_uses_mqtt_5_where_the_broker_takes_it(tmp_path: Path) -> None:
    """mosquitto takes MQTT 5: auto uses it, remembers nothing, doctor says 5."""
    with Mosquitto(tmp_path) as broker:
        config = config_for(broker.port)
        store = Store(tmp_path / "m.db", device_id="gw-proto", topic_root=config.topic_root)
        store.open()
        try:
            store.submit(enqueue("heartbeat", {"n": 1})).result(5)
            uplink, _events = session(config, store, lambda u: u.stats.acked >= 1, "the ack")
            assert uplink.stats.protocol == "5"
            assert not uplink.stats.protocol_fallback
            assert uplink.stats.connect_failures == 0
            assert remembered(store, config) is None
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
    seen = daemon_view(tmp_path, nats.mqtt_port, "gw-nats")
    assert seen.broker_check["status"] == "pass", seen.doctor_output
    fell_back = "accepted an MQTT 3.1.1 connection (it refused MQTT 5: Unsupported protocol"
    assert fell_back in seen.broker_check["summary"]
    assert seen.heartbeat["mqtt"]["protocol"] == "3.1.1"
    assert seen.heartbeat["mqtt"]["protocol_fallback"] is True
    st = seen.status
    assert st["mqtt"]["protocol"] == "3.1.1"
    assert st["mqtt"]["protocol_fallback"] is True
    assert "connected with MQTT 3.1.1 (it refused MQTT 5) since" in render_status(st)
    # The page lists refused topics (the section the uplink's RefusedTopics fills).
    parked = RefusedTopics(1.0, 2.0)
    parked.refused("edge/t1/s1/gw-nats/results", "Not authorized", time.monotonic())
    page = render_status({**st, "mqtt": {**st["mqtt"], "refused": parked.health(time.monotonic())}})
    assert "refused    edge/t1/s1/gw-nats/results: Not authorized x1, kept, next try in" in page
    assert seen.log.count("refused MQTT 5") == 1  # logged once
