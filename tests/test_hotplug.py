"""Hot-plug: a pty-backed serial device is unplugged and replugged while the daemon runs.

Real parts only: the emulator writes to a real pseudo-terminal behind a stable symlink
(like ``/dev/serial/by-id/…``), the daemon reads it through pyserial, events go to a real
SQLite file and a real mosquitto. Unplugging closes the pty and removes the symlink;
replugging creates a *new* pty and repoints the symlink, as udev does for a USB adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import AgentConfig, parse_config
from edge_agent.daemon import Daemon
from firmware_bridge.emulator import DeviceEmulator, SyntheticMotion
from tests.broker import Collector, Mosquitto, collector, wait_for

ROOT = "edge/t1/s1/gw-hotplug"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    (tmp_path / "broker").mkdir()
    with Mosquitto(tmp_path / "broker") as b:
        yield b


def agent_config(tmp_path: Path, port: int, sensors: list[dict[str, Any]]) -> AgentConfig:
    """A daemon config with fast heartbeats, the given sensors and no models."""
    return parse_config(
        {
            "device": {"id": "gw-hotplug", "tenant": "t1", "site": "s1"},
            "mqtt": {"port": port, "reconnect_max_s": 1.0},
            "storage": {"path": str(tmp_path / "agent.db")},
            "logging": {"show_results": False},
            "sync": {"heartbeat_interval_s": 1.0, "summary_interval_s": 3600.0},
            "service": {"control_socket": str(tmp_path / "agent.sock")},
            "sensors": [{"models": [], **s} for s in sensors],
        },
        source="test",
        environ={},
    )


@contextlib.contextmanager
def running_daemon(config: AgentConfig) -> Iterator[Daemon]:
    """The daemon in a thread of this process; stopped (and checked) on exit."""
    daemon = Daemon(config, handle_signals=False)
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            asyncio.run(daemon.run())
        except BaseException as err:  # surfaced below
            failure.append(err)

    thread = threading.Thread(target=serve, name="daemon")
    thread.start()
    try:
        wait_for(lambda: failure or daemon.ready.is_set(), 20, "daemon ready")
        assert not failure, failure
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(30)
    assert not thread.is_alive(), "daemon did not stop"
    assert not failure, failure


def events(sub: Collector, kind: str, sensor: str | None = None) -> list[dict[str, Any]]:
    """Event payloads of one kind that reached the broker."""
    return [
        m.payload
        for m in sub.of("events")
        if m.payload["event"] == kind and (sensor is None or m.payload["sensor"] == sensor)
    ]


def samples(daemon: Daemon, sensor: str) -> int:
    return sum(s.stats.samples for (name, _), s in list(daemon.streams.items()) if name == sensor)


def stored_events(db: Path, sensor: str) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT kind FROM events WHERE sensor = ? "
            "AND kind IN ('sensor.connected', 'sensor.lost') ORDER BY id",
            (sensor,),
        ).fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows]


@pytest.mark.parametrize("wire", ["v1", "witmotion"])
def test_unplug_and_replug_while_running(broker: Mosquitto, tmp_path: Path, wire: str) -> None:
    """Pull the adapter: `sensor.lost` (stored and published); plug it back: the by-id path
    is reopened, `sensor.connected`, and samples flow again. No restart."""
    by_id = tmp_path / "dev" / "serial" / "by-id" / "usb-Emu_IMU_0001-if00-port0"
    profile = {"protocol": wire, "rate_hz": 50} if wire != "v1" else "v1"
    emulator = DeviceEmulator(SyntheticMotion(50.0, seed=1), device_id="imu", wire=wire,
                              link_path=by_id)  # fmt: skip
    config = agent_config(
        tmp_path, broker.port, [{"name": "imu", "link": "serial", "port": str(by_id),
                                 "profile": profile}]
    )  # fmt: skip
    with emulator, collector(broker.port, f"{ROOT}/#") as sub, running_daemon(config) as daemon:
        wait_for(lambda: events(sub, "sensor.connected", "imu"), 10, "connected event")
        wait_for(lambda: samples(daemon, "imu") >= 50, 10, "samples before the unplug")

        emulator.unplug()
        assert not by_id.exists()
        wait_for(lambda: events(sub, "sensor.lost", "imu"), 10, "lost event")
        lost = events(sub, "sensor.lost", "imu")[0]
        assert str(by_id) in lost["detail"]
        before = samples(daemon, "imu")

        replugged = time.monotonic()
        emulator.replug()  # a new pty (the kernel may reuse the number), same stable path
        wait_for(lambda: len(events(sub, "sensor.connected", "imu")) == 2, 10, "reconnected")
        reopen_s = time.monotonic() - replugged
        wait_for(lambda: samples(daemon, "imu") >= before + 50, 10, "samples after the replug")
        link = daemon.links["imu"]
        assert link.stats.opens == 2
        assert link.stats.losses == 1
        print(f"{wire}: reopened {reopen_s:.2f} s after the replug (limit 2 s)")
    assert stored_events(tmp_path / "agent.db", "imu")[:3] == [
        "sensor.connected",
        "sensor.lost",
        "sensor.connected",
    ]


def test_port_missing_at_start_is_reported_once_then_opened(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """The adapter is not plugged in when the daemon starts: one `sensor.lost` naming the
    path (not one per retry); when it appears, `sensor.connected`."""
    by_id = tmp_path / "by-id" / "usb-Emu_IMU_0002"
    config = agent_config(
        tmp_path,
        broker.port,
        [{"name": "late", "link": "serial", "port": str(by_id), "reopen_interval_s": 0.1}],
    )
    with DeviceEmulator(SyntheticMotion(50.0, seed=2), device_id="late", link_path=by_id) as emu:
        emu.unplug()
        with collector(broker.port, f"{ROOT}/#") as sub, running_daemon(config) as daemon:
            wait_for(lambda: events(sub, "sensor.lost", "late"), 10, "lost event")
            assert "cannot open" in events(sub, "sensor.lost", "late")[0]["detail"]
            wait_for(lambda: daemon.links["late"].stats.last_error, 5, "retries")
            emu.replug()
            wait_for(lambda: events(sub, "sensor.connected", "late"), 10, "connected event")
            wait_for(lambda: samples(daemon, "late") > 0, 10, "samples")
            assert len(events(sub, "sensor.lost", "late")) == 1
