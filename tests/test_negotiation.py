"""`mqtt.protocol` negotiation against a real RabbitMQ, and against a broker that closes an
MQTT 5 CONNECT without any CONNACK.

RabbitMQ 3.10's MQTT plugin speaks 3.1.1 only and answers an MQTT 5 CONNECT by closing the
connection (paho calls it "Unspecified error"); NATS, tested in test_protocol.py, answers with
a CONNACK "Unsupported protocol version". The listener in the last test is a stand-in for any
broker that closes instead of answering: it drops MQTT 5 CONNECTs and passes everything else
through to a real mosquitto.
"""

from __future__ import annotations

import logging
import select
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.commands.control import render_status
from edge_agent.service.doctor import check_broker
from edge_agent.store.db import Store, enqueue
from tests.broker import Mosquitto, collector, wait_for
from tests.protocol_support import config_for, daemon_view, remembered, session
from tests.rabbitmq import RabbitMQ

CLOSED = "closed without a CONNACK"
FIX = 'set mqtt.protocol = "3.1.1" (or "auto")'


def test_auto_falls_back_to_3_1_1_on_rabbitmq_and_remembers_it(
    rabbitmq: RabbitMQ, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """RabbitMQ closes the MQTT 5 CONNECT unanswered: the gateway reconnects with 3.1.1 at
    once, delivers, remembers it for this broker (warning once), and starts with 3.1.1 next
    time; doctor does the same negotiation and names the fallback."""
    config = config_for(rabbitmq.mqtt_port)
    assert config.mqtt.protocol == "auto"
    store = Store(tmp_path / "r.db", device_id="gw-proto", topic_root=config.topic_root)
    store.open()
    caplog.set_level(logging.INFO, logger="edge_agent.sync.mqtt")
    try:
        with collector(rabbitmq.mqtt_port, "edge/#") as sub:
            store.submit(enqueue("heartbeat", {"n": 1})).result(5)
            uplink, events = session(config, store, lambda u: u.stats.acked >= 1, "the ack")
            assert uplink.stats.protocol == "3.1.1"
            assert uplink.stats.protocol_fallback
            assert (uplink.stats.connects, uplink.stats.connect_failures) == (1, 1)
            assert ("mqtt.connected", {"host": "127.0.0.1", "port": rabbitmq.mqtt_port,
                                       "protocol": "3.1.1"}) in events  # fmt: skip
            saved = remembered(store, config)
            assert saved["protocol"] == "3.1.1"
            assert saved["reason"] == CLOSED
            warned = [r for r in caplog.records if "accepted 3.1.1" in r.getMessage()]
            assert len(warned) == 1
            assert CLOSED in warned[0].getMessage()
            wait_for(lambda: sub.of("heartbeat"), 10, "the heartbeat at the subscriber")
            assert sub.of("heartbeat")[0].payload["n"] == 1

            caplog.clear()
            store.submit(enqueue("heartbeat", {"n": 2})).result(5)
            again, _ = session(config, store, lambda u: u.stats.acked >= 1, "the second ack")
            assert (again.stats.protocol, again.stats.connect_failures) == ("3.1.1", 0)
            assert again.stats.protocol_fallback
            assert not [r for r in caplog.records if "accepted 3.1.1" in r.getMessage()]
            wait_for(lambda: len(sub.of("heartbeat")) >= 2, 10, "the second heartbeat")
    finally:
        store.close()
    check = check_broker(config)
    assert check.status == "pass", check
    assert "accepted an MQTT 3.1.1 connection" in check.summary
    assert f"it refused MQTT 5: {CLOSED}" in check.summary


def test_fixed_mqtt_5_on_rabbitmq_says_to_set_3_1_1(
    rabbitmq: RabbitMQ, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`protocol = "5"` never connects to RabbitMQ; the log (once) and doctor say to set
    "3.1.1" or "auto"; nothing is remembered."""
    config = config_for(rabbitmq.mqtt_port, "5")
    store = Store(tmp_path / "f.db", device_id="gw-proto", topic_root=config.topic_root)
    store.open()
    caplog.set_level(logging.INFO, logger="edge_agent.sync.mqtt")
    try:
        uplink, events = session(
            config, store, lambda u: u.stats.connect_failures >= 3, "three refused attempts"
        )
        assert uplink.stats.connects == 0
        assert uplink.stats.last_error is not None
        assert FIX in uplink.stats.last_error
        assert CLOSED in uplink.stats.last_error
        assert remembered(store, config) is None
        assert not [e for e in events if e[0] == "mqtt.connected"]
    finally:
        store.close()
    logged = [r for r in caplog.records if FIX in r.getMessage()]
    assert len(logged) == 1  # the same error again is counted, not logged again
    assert logged[0].levelno == logging.WARNING
    assert f"refused MQTT 5 ({CLOSED})" in logged[0].getMessage()
    doctor = check_broker(config)
    assert (doctor.status, doctor.fix) == ("fail", FIX)
    assert f"refused MQTT 5: {CLOSED}" in doctor.summary
    assert check_broker(config_for(rabbitmq.mqtt_port, "3.1.1")).status == "pass"


def test_daemon_on_rabbitmq_shows_the_fallback_everywhere(
    rabbitmq: RabbitMQ, tmp_path: Path
) -> None:
    """A real daemon with the default config on RabbitMQ: heartbeats arrive over 3.1.1 and
    the heartbeat, `status` and `edge-agent doctor` each say so; the log says it once."""
    seen = daemon_view(tmp_path, rabbitmq.mqtt_port, "gw-rmq")
    mqtt, st = seen.heartbeat["mqtt"], seen.status
    assert (mqtt["protocol"], mqtt["protocol_fallback"]) == ("3.1.1", True)
    assert (st["mqtt"]["protocol"], st["mqtt"]["protocol_fallback"]) == ("3.1.1", True)
    assert "connected with MQTT 3.1.1 (it refused MQTT 5) since" in render_status(st)
    assert seen.broker_check["status"] == "pass", seen.doctor_output
    summary = seen.broker_check["summary"]
    assert f"accepted an MQTT 3.1.1 connection (it refused MQTT 5: {CLOSED}" in summary
    assert seen.log.count("refused MQTT 5") == 1


class _DropsMqtt5(socketserver.ThreadingTCPServer):
    """A loopback listener that closes every MQTT 5 CONNECT unanswered and relays any other
    connection to `upstream` (a real broker)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: int) -> None:
        super().__init__(("127.0.0.1", 0), _Relay)
        self.upstream = upstream
        self.levels: list[int] = []  # the protocol level of every CONNECT seen, in order
        self.drop_v311 = 0  # close this many more 3.1.1 CONNECTs unanswered too
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed mid-packet")
        data += chunk
    return data


def _read_connect(sock: socket.socket) -> tuple[bytes, int]:
    """The whole first packet (which must be a CONNECT) and its protocol level byte."""
    head = _read_exactly(sock, 1)
    assert head[0] >> 4 == 1, f"first packet is not CONNECT: {head!r}"
    length, shift, raw = 0, 0, b""
    while True:  # the Remaining Length varint: 7 bits a byte, high bit = more
        byte = _read_exactly(sock, 1)
        raw += byte
        length |= (byte[0] & 0x7F) << shift
        shift += 7
        if not byte[0] & 0x80:
            break
    body = _read_exactly(sock, length)
    name_len = int.from_bytes(body[:2], "big")
    assert body[2 : 2 + name_len] == b"MQTT", body[: 2 + name_len]
    return head + raw + body, body[2 + name_len]


class _Relay(socketserver.BaseRequestHandler):
    server: _DropsMqtt5

    def handle(self) -> None:
        client: socket.socket = self.request
        try:
            packet, level = _read_connect(client)
        except ConnectionError:
            return
        with self.server.lock:
            self.server.levels.append(level)
            drop = level == 5 or self.server.drop_v311 > 0
            if level != 5 and drop:
                self.server.drop_v311 -= 1
        if drop:
            return  # closed by the server without a CONNACK
        with socket.create_connection(("127.0.0.1", self.server.upstream), timeout=5) as up:
            up.sendall(packet)
            peers = {client: up, up: client}
            while True:
                readable, _, _ = select.select(list(peers), [], [], 0.5)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)


@pytest.fixture
def drops_mqtt5(tmp_path: Path) -> Iterator[tuple[_DropsMqtt5, Mosquitto]]:
    with Mosquitto(tmp_path) as broker:
        server = _DropsMqtt5(broker.port)
        thread = threading.Thread(target=server.serve_forever, name="drops-mqtt5", daemon=True)
        thread.start()
        try:
            yield server, broker
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)


def test_connect_closed_without_connack_falls_back_to_3_1_1(
    drops_mqtt5: tuple[_DropsMqtt5, Mosquitto], tmp_path: Path
) -> None:
    """A broker that closes the MQTT 5 CONNECT without a word is refusing the version: the
    uplink's next CONNECT, at once, is 3.1.1, and it is remembered and delivered through."""
    server, broker = drops_mqtt5
    config = config_for(server.port)
    store = Store(tmp_path / "c.db", device_id="gw-proto", topic_root=config.topic_root)
    store.open()
    try:
        with collector(broker.port, "edge/#") as sub:
            store.submit(enqueue("heartbeat", {"n": 7})).result(5)
            uplink, _events = session(config, store, lambda u: u.stats.acked >= 1, "the ack")
            assert server.levels == [5, 4]  # MQTT 5, then straight away 3.1.1 (level 4)
            assert (uplink.stats.protocol, uplink.stats.protocol_fallback) == ("3.1.1", True)
            assert remembered(store, config)["reason"] == CLOSED
            wait_for(lambda: sub.of("heartbeat"), 10, "the heartbeat through the relay")
            assert sub.of("heartbeat")[0].payload["n"] == 7
            session(config, store, lambda u: u.stats.connects >= 1, "the second connection")
            assert server.levels == [5, 4, 4]  # remembered: no MQTT 5 attempt
    finally:
        store.close()
    check = check_broker(config, timeout=2)
    assert check.status == "pass", check
    assert f"it refused MQTT 5: {CLOSED}" in check.summary
    assert server.levels[-2:] == [5, 4]
    assert check_broker(config_for(server.port, "5"), timeout=2).fix == FIX
    # The broker itself takes MQTT 5: the relay is what refused it.
    assert check_broker(config_for(broker.port), timeout=2).summary.endswith("MQTT 5 connection")


def test_a_node_that_took_3_1_1_closing_unanswered_is_not_a_refusal(
    drops_mqtt5: tuple[_DropsMqtt5, Mosquitto], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A node remembered for 3.1.1 that closes a CONNECT without answering (a cluster node
    electing leaders) is retried with 3.1.1: no MQTT 5 attempt, no "refused MQTT 5 and
    3.1.1", and the memory stays."""
    server, _broker = drops_mqtt5
    config = config_for(server.port)
    store = Store(tmp_path / "n.db", device_id="gw-proto", topic_root=config.topic_root)
    store.open()
    try:
        session(config, store, lambda u: u.stats.connects >= 1, "the first connection")
        assert server.levels == [5, 4]
        server.drop_v311 = 2
        caplog.clear()
        caplog.set_level(logging.INFO, logger="edge_agent.sync.mqtt")
        uplink, _ = session(config, store, lambda u: u.stats.connects >= 1, "the reconnection")
        assert server.levels == [5, 4, 4, 4, 4]  # two closed unanswered, then accepted
        assert (uplink.stats.protocol, uplink.stats.protocol_fallback) == ("3.1.1", True)
        assert uplink.stats.connect_failures == 2
        assert remembered(store, config)["protocol"] == "3.1.1"
        messages = [r.getMessage() for r in caplog.records]
        assert not [m for m in messages if "refused MQTT 5 and 3.1.1" in m], messages
        assert not [m for m in messages if "accepted 3.1.1" in m], messages
        assert any("closed the connection before answering" in m for m in messages), messages
    finally:
        store.close()
