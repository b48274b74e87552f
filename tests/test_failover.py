"""`mqtt.hosts`: failover between broker nodes, against real brokers.

A real three-node NATS cluster (three nats-server processes routed on loopback, JetStream
and the MQTT listener on each; `tests/nats.py`) for the gateway moving off a node killed
mid-stream and for `doctor`; private mosquittos and free ports nobody listens on for the
uplink's own rotation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.commands.control import render_status
from edge_agent.config import AgentConfig, parse_config
from edge_agent.contract import ContractChecker
from edge_agent.service.control import request
from edge_agent.service.doctor import check_broker
from edge_agent.store.db import Store, enqueue
from edge_agent.sync.mqtt import MqttUplink, protocol_key
from tests.broker import Collector, Mosquitto, collector, free_port, until, wait_for
from tests.daemon_proc import events, start_daemon, stop_daemon, write_config
from tests.nats import NatsCluster

Events = list[tuple[str, dict[str, Any]]]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path_factory.mktemp("nats-cluster")) as nodes:
        yield nodes


def _config(hosts: list[str], **mqtt: Any) -> AgentConfig:
    settings = {"hosts": hosts, "reconnect_min_s": 0.02, "reconnect_max_s": 0.1, **mqtt}
    return parse_config(
        {"device": {"id": "gw-fo", "tenant": "t", "site": "s"}, "mqtt": settings},
        source="test",
        environ={},
    )


def _store(path: Path, config: AgentConfig) -> Store:
    store = Store(path, device_id=config.device.id, topic_root=config.topic_root)
    store.open()
    return store


def _outbox(store: Store) -> int:
    return int(
        store.submit(
            lambda txn: txn.conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        ).result(5)
    )


def _uplink(config: AgentConfig, store: Store) -> tuple[MqttUplink, Events]:
    got: Events = []

    def emit(kind: str, severity: str = "info", sensor: str | None = None, **body: Any) -> None:
        got.append((kind, body))

    return MqttUplink(config, store, emit=emit), got


def test_all_nodes_down_every_node_is_tried_in_turn_and_everything_stays_in_the_outbox(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No node listens: each round tries every node once, rounds are backed off, each
    node's failure is logged once (not once per round), and nothing leaves the outbox."""
    ports = [free_port() for _ in range(3)]
    config = _config([f"127.0.0.1:{p}" for p in ports])
    store = _store(tmp_path / "down.db", config)
    caplog.set_level(logging.DEBUG, logger="edge_agent.sync.mqtt")
    try:
        for n in range(5):
            store.submit(enqueue("heartbeat", {"n": n})).result(5)
        uplink, got = _uplink(config, store)

        async def run() -> None:
            task = asyncio.create_task(uplink.run())
            try:
                await until(
                    lambda: all(h.failures >= 3 for h in uplink.hosts.health.values()),
                    20,
                    "three rounds over the three nodes",
                )
            finally:
                await uplink.stop(timeout=1)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        asyncio.run(asyncio.wait_for(run(), 30))
        assert _outbox(store) == 5
    finally:
        store.close()
    assert got == []  # no mqtt.connected, nothing published
    assert uplink.stats.connects == 0
    assert uplink.stats.published == 0
    assert uplink.stats.host is None
    report = uplink.hosts.report()
    assert list(report) == [f"127.0.0.1:{p}" for p in ports]  # the configured order
    for node in report.values():
        assert node["connects"] == 0
        assert node["last_success"] is None
        assert "refused" in node["last_error"].lower()
    tried = [r.getMessage() for r in caplog.records if "trying" in r.getMessage()]
    # Within a round the next node comes at once, in list order after the current one.
    assert tried[:2] == [
        f"mqtt: trying 127.0.0.1:{ports[1]} next (in 0.00 s)",
        f"mqtt: trying 127.0.0.1:{ports[2]} next (in 0.00 s)",
    ]
    assert uplink.backoff.failures >= 2  # rounds ended in the capped backoff
    warned = [r for r in caplog.records if "unreachable" in r.getMessage()]
    # One line per node, not one per attempt.
    assert sorted(p for r in warned for p in ports if f":{p} " in r.getMessage()) == sorted(ports)
    assert len(warned) == 3


def test_the_uplink_skips_a_dead_node_and_moves_on_when_its_broker_stops(tmp_path: Path) -> None:
    """Nodes [dead, m1, m2]: the uplink connects to m1 after the dead node failed; when m1
    stops, it moves to m2. Each message arrives once, each node is reported."""
    dead = free_port()
    with Mosquitto(tmp_path) as m1, Mosquitto(tmp_path) as m2:
        config = _config([f"127.0.0.1:{dead}", f"127.0.0.1:{m1.port}", f"localhost:{m2.port}"])
        store = _store(tmp_path / "move.db", config)
        try:
            with collector(m1.port, "edge/#") as on1, collector(m2.port, "edge/#") as on2:
                uplink, got = _uplink(config, store)

                async def run() -> None:
                    task = asyncio.create_task(uplink.run())
                    try:
                        store.submit(enqueue("heartbeat", {"n": 1})).result(5)
                        uplink.notify()
                        await until(lambda: uplink.stats.acked >= 1, 20, "n=1 acknowledged")
                        assert uplink.stats.host == f"127.0.0.1:{m1.port}"
                        await asyncio.to_thread(m1.stop)
                        store.submit(enqueue("heartbeat", {"n": 2})).result(5)
                        uplink.notify()
                        await until(lambda: uplink.stats.acked >= 2, 20, "n=2 acknowledged")
                    finally:
                        await uplink.stop(timeout=2)
                        task.cancel()
                        await asyncio.gather(task, return_exceptions=True)

                asyncio.run(asyncio.wait_for(run(), 40))
                wait_for(lambda: on2.of("heartbeat"), 10, "n=2 on m2")
        finally:
            store.close()
    assert [m.payload["n"] for m in on1.of("heartbeat")] == [1]
    assert [m.payload["n"] for m in on2.of("heartbeat")] == [2]
    connected = [body for kind, body in got if kind == "mqtt.connected"]
    assert [(c["host"], c["port"]) for c in connected] == [
        ("127.0.0.1", m1.port),
        ("localhost", m2.port),
    ]
    assert uplink.stats.host == f"localhost:{m2.port}"
    report = uplink.hosts.report()
    assert report[f"127.0.0.1:{dead}"]["failures"] >= 1
    assert report[f"127.0.0.1:{m1.port}"]["connects"] == 1
    assert report[f"127.0.0.1:{m1.port}"]["last_error"]  # its session was lost
    assert report[f"localhost:{m2.port}"] == {
        **report[f"localhost:{m2.port}"],
        "connects": 1,
        "failures": 0,
        "last_error": None,
    }
    lost = [body for kind, body in got if kind == "mqtt.disconnected"]
    assert [b["host"] for b in lost] == [f"127.0.0.1:{m1.port}"]


def test_doctor_checks_every_node_and_says_which_are_reachable(cluster: NatsCluster) -> None:
    dead = free_port()
    hosts = [f"127.0.0.1:{p}" for p in cluster.mqtt_ports] + [f"127.0.0.1:{dead}"]
    alive = [f"127.0.0.1:{n.mqtt_port}" for n in cluster.nodes if n.alive]
    check = check_broker(_config(hosts), timeout=3)
    assert check.status == "warn"
    assert check.summary.startswith(
        f"{len(alive)} of 4 nodes accept a session ({', '.join(alive)})"
    )
    assert f"cannot reach 127.0.0.1:{dead}" in check.summary
    assert check.fix is not None
    assert "mqtt.hosts" in check.fix
    # Every node down: a failure; every node up: a pass naming each.
    assert check_broker(_config([f"127.0.0.1:{dead}", f"127.0.0.1:{free_port()}"])).status == (
        "fail"
    )
    up = check_broker(_config(alive), timeout=3)
    assert up.status == "pass"
    assert up.summary.startswith(f"{len(alive)} of {len(alive)} nodes accept a session")
    assert "accepted an MQTT 3.1.1 connection (it refused MQTT 5" in up.summary


def _seqs(sub: Collector, kind: str) -> list[int]:
    return sorted({m.payload["seq"] for m in sub.of(kind)})


def test_killing_the_node_in_use_mid_stream_moves_the_gateway_and_the_consumer_misses_nothing(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    """A real daemon streams results to the cluster (hosts = its three nodes); the node it
    is connected to is SIGKILLed mid-stream. The daemon moves to another node, says so
    (status, `mqtt.connected`), and a consumer on a surviving node ends with every seq of
    every topic, none missing."""
    ports = cluster.mqtt_ports
    hosts = [f"127.0.0.1:{p}" for p in ports]
    db = tmp_path / "fo.db"
    config = write_config(
        tmp_path / "fo.toml",
        db=db,
        sensors=[{"name": "imu-0", "link": "emulated"}],
        device="gw-failover",
        sections={"mqtt": {"hosts": hosts, "reconnect_min_s": 0.1, "reconnect_max_s": 1.0}},
    )
    log = tmp_path / "daemon.log"
    root = "edge/t1/s1/gw-failover"
    sock = db.with_suffix(".sock")

    def status() -> dict[str, Any]:
        return dict(request(sock, "status")["status"])

    # The consumer: a durable QoS 1 session on the node the daemon will not use.
    with collector(ports[2], f"{root}/#", persistent=True) as sub:
        proc = start_daemon(config, log)
        try:
            wait_for(
                lambda: len(sub.of("results")) >= 3 and len(sub.of("heartbeat")) >= 2,
                30,
                "results streaming through the first node",
            )
            first = status()["mqtt"]["host"]
            assert first == hosts[0], log.read_text()[-3000:]
            cluster.by_mqtt_port(ports[0]).kill()
            assert any(m.payload["mqtt"].get("host") == first for m in sub.of("heartbeat"))
            before = len(sub.of("results"))
            moved = wait_for(
                lambda: (
                    (st := status())["mqtt"]["connected"] and st["mqtt"]["host"] != first and st
                ),
                20,
                "the daemon connected to another node",
            )
            # Results flow again, and a heartbeat made on the new node names it.
            wait_for(
                lambda: (
                    len(sub.of("results")) > before
                    and any(
                        m.payload["mqtt"].get("host") == moved["mqtt"]["host"]
                        and m.payload["mqtt"]["connected"]
                        for m in sub.of("heartbeat")
                    )
                ),
                30,
                "results and a heartbeat through the next node",
            )
        finally:
            code = stop_daemon(proc, log)
        assert code == 0, log.read_text()[-4000:]
        wait_for(
            lambda: sub.of("status") and sub.of("status")[-1].payload["state"] == "offline",
            15,
            "the offline status",
        )
    # The next node in the list first; while the cluster elects new JetStream leaders a
    # node may close the MQTT connection without a CONNACK (or drop it soon after), and the
    # gateway goes on to the next one.
    # A birth per session, with a new seq on the new node; the clean stop's offline ends the
    # last one. (NATS keeps a last will on the node holding the session: it died with it.)
    states = [(m.payload["seq"], m.payload["state"]) for m in sub.of("status")]
    births = [seq for seq, state in states if state == "online"]
    assert len(births) >= 2
    assert births == sorted(births)
    assert states[-1] == (births[-1], "offline")
    assert moved["mqtt"]["host"] in hosts[1:]
    killed = moved["mqtt"]["hosts"][first]
    assert killed["failures"] >= 1
    assert killed["connects"] == 1
    page = render_status(moved)
    assert f"{moved['mqtt']['host']} in use" in page
    assert f"{first} failed x" in page

    connected = [(b["host"], b["port"]) for _, _, _, b in events(db, "mqtt.connected")]
    assert connected[0] == ("127.0.0.1", ports[0])
    assert len(connected) >= 2
    assert ("127.0.0.1", ports[0]) not in connected[1:]
    conn = sqlite3.connect(db)
    try:
        outbox = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        results = conn.execute("SELECT count(*) FROM results").fetchone()[0]
        remembered = {
            key: json.loads(value)["protocol"]
            for key, value in conn.execute("SELECT key, value FROM meta WHERE key LIKE 'mqtt_p%'")
        }
    finally:
        conn.close()
    # NATS refused MQTT 5 on each node the daemon used: remembered per node.
    assert remembered == {protocol_key(host, port): "3.1.1" for host, port in set(connected)}
    assert outbox == 0

    checker = ContractChecker()
    for m in list(sub.messages):
        checker.feed(m.topic, m.payload)
    missing = {
        kind: sorted(set(range(1, max(seqs) + 1)) - set(seqs))
        for kind in ("results", "heartbeat", "summary", "events")
        if (seqs := _seqs(sub, kind))
    }
    assert not any(missing.values()), (missing, checker.violations)
    for kind in ("results", "heartbeat"):
        assert _seqs(sub, kind)[0] == 1
    uploaded = {m.payload["seq"]: m.payload["count"] for m in sub.of("results")}
    assert sum(uploaded.values()) == results  # every committed result, once
