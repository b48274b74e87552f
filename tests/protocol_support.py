"""Helpers for the `mqtt.protocol` negotiation tests (test_protocol.py against NATS and
mosquitto, test_negotiation.py against RabbitMQ and a broker that closes unanswered): an
uplink run in-process, what it remembered, and a real daemon's view of its protocol."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig, parse_config
from edge_agent.service.control import request
from edge_agent.store.db import Store
from edge_agent.sync.mqtt import MqttUplink, protocol_key
from tests.broker import collector, until, wait_for
from tests.daemon_proc import cli, start_daemon, stop_daemon, write_config


def config_for(port: int, protocol: str | None = None) -> AgentConfig:
    """A gateway config for the broker at `port`, reconnecting fast; `protocol` unset: auto."""
    mqtt: dict[str, Any] = {"port": port, "reconnect_min_s": 0.05, "reconnect_max_s": 0.2}
    if protocol is not None:
        mqtt["protocol"] = protocol
    return parse_config(
        {"device": {"id": "gw-proto", "tenant": "t", "site": "s"}, "mqtt": mqtt},
        source="test",
        environ={},
    )


def session(
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


def remembered(store: Store, config: AgentConfig) -> Any:
    """The protocol the gateway remembered for `config`'s broker (None: nothing)."""
    key = protocol_key(config.mqtt.host, config.mqtt.port)

    def op(txn: Any) -> Any:
        row = txn.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    return store.submit(op).result(5)


@dataclass(frozen=True)
class DaemonView:
    """What a real daemon showed of its MQTT protocol, each place it says it."""

    heartbeat: dict[str, Any]
    """The first heartbeat whose `mqtt` section names a protocol."""
    status: dict[str, Any]
    """`status` over the control socket."""
    broker_check: dict[str, Any]
    """The `broker` check of `edge-agent doctor --json`."""
    doctor_output: str
    log: str


def daemon_view(tmp_path: Path, port: int, device: str) -> DaemonView:
    """Run a real daemon with the default config against the broker at `port` until a
    heartbeat names its protocol; read `status` and doctor while it runs, then stop it."""
    db = tmp_path / "d.db"
    config = write_config(tmp_path / "d.toml", db=db, sensors=[], mqtt_port=port, device=device)
    log = tmp_path / "daemon.log"
    with collector(port, "edge/#") as sub:
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
    beat = next(m for m in sub.of("heartbeat") if m.payload["mqtt"]["protocol"])
    broker = next(c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "broker")
    return DaemonView(beat.payload, st, broker, doctor.stdout, log.read_text())
