"""A config that cannot brick the gateway, against real `edge-agent run` processes.

Everything is real: the daemon process, a private mosquitto, the config files, SIGHUP,
SIGKILL and the control socket. The confirmation deadline is shrunk through the config
(`service.config_confirm_s`), not by sleeping less.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.service.control import ControlError, request
from tests.broker import Collector, Mosquitto, collector, free_port, wait_for
from tests.daemon_proc import cli, start_daemon, stop_daemon, write_config

SENSORS = [{"name": "imu-0", "link": "emulated"}]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path_factory.mktemp("broker")) as b:
        yield b


def _config(tmp_path: Path, broker: Mosquitto, device: str, confirm_s: float) -> Path:
    return write_config(
        tmp_path / "edge-agent.toml",
        db=tmp_path / "agent.db",
        sensors=SENSORS,
        mqtt_port=broker.port,
        device=device,
        sections={
            "service": {"config_confirm_s": confirm_s},
            "mqtt": {"reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
        },
    )


def _status(tmp_path: Path) -> dict[str, Any] | None:
    try:
        return request(tmp_path / "agent.sock", "status", timeout=2)["status"]  # type: ignore[no-any-return]
    except (ControlError, OSError):
        return None


def _online(tmp_path: Path) -> dict[str, Any] | None:
    status = _status(tmp_path)
    return status if status and status["mqtt"]["connected"] else None


def _events(sub: Collector, kind: str) -> list[dict[str, Any]]:
    return [m.payload for m in sub.of("events") if m.payload.get("event") == kind]


def _replies(sub: Collector, root: str) -> list[dict[str, Any]]:
    return [m.payload for m in sub.of("config.set") if m.topic == f"{root}/reply/config.set"]


def _good(config: Path) -> Path:
    return config.with_name(config.name + ".good")


def _run_until_good(config: Path, tmp_path: Path, log: Path) -> None:
    """Start, wait until the config is confirmed by the broker, stop cleanly."""
    proc = start_daemon(config, log)
    try:
        wait_for(
            lambda: _good(config).exists() and _good(config).read_bytes() == config.read_bytes(),
            30,
            "the last known good copy",
        )
    finally:
        assert stop_daemon(proc, log) == 0, log.read_text()


def test_broker_changes_that_never_connect_are_reverted(broker: Mosquitto, tmp_path: Path) -> None:
    """A remote `config.set` of a port where nothing listens, then the same change made
    locally with `edge-agent config set` and SIGHUP: each time the daemon goes back by
    itself after the deadline, reconnects, publishes `config.reverted`, keeps the refused
    file aside and says so in `status` and the heartbeat. A change that connects then
    becomes the new last known good config and clears the report."""
    config = _config(tmp_path, broker, "gw-revert", confirm_s=2.0)
    original = config.read_bytes()
    root = "edge/t1/s1/gw-revert"
    dead = free_port()
    log = tmp_path / "daemon.log"
    with collector(broker.port, f"{root}/#") as sub:
        proc = start_daemon(config, log)
        try:
            wait_for(lambda: _good(config).exists(), 60, "the last known good copy")
            assert _good(config).read_bytes() == original

            sub.client.publish(
                f"{root}/cmd/config.set",
                json.dumps({"id": "move-1", "args": {"values": {"mqtt.port": dead}}}),
                qos=1,
            )
            reply = wait_for(
                lambda: next((r for r in _replies(sub, root) if r["id"] == "move-1"), None),
                15,
                "the config.set reply (sent before the session is replaced)",
            )
            assert reply["ok"] is True, reply
            assert reply["result"]["changed"] == ["mqtt.port"]
            first = wait_for(lambda: _events(sub, "config.reverted"), 60, "config.reverted")[0]
            assert "no broker connection within 2 s" in first["reason"]
            assert first["restored"] is True
            assert f"port = {dead}" in Path(first["refused"]).read_text()
            assert config.read_bytes() == original
            status = wait_for(lambda: _online(tmp_path), 60, "online again")
            assert status["mqtt"]["broker"].endswith(f":{broker.port}")
            assert status["config_guard"]["reverted"]["refused"] == first["refused"]
            assert status["health"]["degraded"] == [f"config reverted: {first['reason']}"]
            beat = wait_for(
                lambda: [
                    m.payload
                    for m in sub.of("heartbeat")
                    if (m.payload.get("config_guard") or {}).get("reverted")
                ],
                10,
                "a heartbeat reporting the revert",
            )
            assert beat[-1]["config_guard"]["reverted"]["reason"] == first["reason"]

            # The same mistake made on the gateway itself, applied with SIGHUP.
            done = cli("config", "set", "mqtt.port", str(dead), "--config", str(config))
            assert done.returncode == 0, done.stderr
            os.kill(proc.pid, signal.SIGHUP)
            wait_for(lambda: len(_events(sub, "config.reverted")) == 2, 60, "second revert")
            assert config.read_bytes() == original
            refused = sorted(tmp_path.glob("edge-agent.toml.refused-*"))
            assert len(refused) == 2
            wait_for(lambda: _online(tmp_path), 60, "online again after the second revert")

            # A broker change that connects is kept and becomes the last known good copy.
            done = cli("config", "set", "mqtt.keepalive_s", "45", "--config", str(config))
            assert done.returncode == 0, done.stderr
            os.kill(proc.pid, signal.SIGHUP)
            wait_for(lambda: b"keepalive_s = 45" in _good(config).read_bytes(), 60, "new good copy")
            wait_for(
                lambda: (st := _online(tmp_path)) and st["config_guard"]["reverted"] is None,
                10,
                "online with the new keep-alive, the revert report cleared",
            )
            assert len(_events(sub, "config.reverted")) == 2
        finally:
            assert stop_daemon(proc, log) == 0, log.read_text()


def test_a_broken_file_at_start_runs_the_last_known_good_and_says_so(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """A syntax error written into the config of a stopped daemon: the next start runs the
    last known good config, the refused file is kept aside, and `status`, the heartbeat,
    the events, `doctor` and the log all say so."""
    config = _config(tmp_path, broker, "gw-start", confirm_s=1.0)
    original = config.read_bytes()
    log = tmp_path / "daemon.log"
    _run_until_good(config, tmp_path, log)
    broken = original.replace(b"[mqtt]", b"[mqtt", 1)
    config.write_bytes(broken)
    root = "edge/t1/s1/gw-start"
    with collector(broker.port, f"{root}/#") as sub:
        proc = start_daemon(config, log)
        try:
            status = wait_for(lambda: _online(tmp_path), 60, "the daemon up on the good copy")
            fallback = status["config_guard"]["fallback"]
            assert "not valid TOML" in fallback["reason"]
            assert status["health"]["degraded"] == [f"config fallback: {fallback['reason']}"]
            assert Path(fallback["refused"]).read_bytes() == broken
            assert config.read_bytes() == original
            beat = wait_for(
                lambda: [
                    m.payload
                    for m in sub.of("heartbeat")
                    if (m.payload.get("config_guard") or {}).get("fallback")
                ],
                10,
                "a heartbeat reporting the fallback",
            )
            assert beat[-1]["config_guard"]["fallback"]["reason"] == fallback["reason"]
            event = wait_for(lambda: _events(sub, "config.fallback"), 10, "config.fallback")[0]
            assert event["severity"] == "error"
            doctor = cli("doctor", "--config", str(config))
            assert "last known good" in doctor.stdout, doctor.stdout
        finally:
            assert stop_daemon(proc, log) == 0, log.read_text()
    assert "CONFIG FALLBACK" in log.read_text()


def test_three_unclean_starts_in_a_row_fall_back(broker: Mosquitto, tmp_path: Path) -> None:
    """A config the daemon dies on (here: SIGKILL before it ran `config_confirm_s`, though
    connected to the broker) three times in a row is replaced by the last known good one
    at the fourth start."""
    config = _config(tmp_path, broker, "gw-crash", confirm_s=1.0)
    original = config.read_bytes()
    log = tmp_path / "daemon.log"
    _run_until_good(config, tmp_path, log)
    changed = original.replace(b"config_confirm_s = 1.0", b"config_confirm_s = 60.0")
    assert changed != original
    config.write_bytes(changed)
    for _ in range(3):
        proc = start_daemon(config, log)
        try:
            status = wait_for(lambda: _online(tmp_path), 60, "the daemon up and connected")
            assert status["config_guard"]["fallback"] is None, log.read_text()
        finally:
            proc.kill()
            proc.wait(10)
    proc = start_daemon(config, log)
    try:
        status = wait_for(lambda: _status(tmp_path), 60, "the daemon up on the good copy")
        fallback = status["config_guard"]["fallback"]
        state = config.with_name(config.name + ".guard.json")
        assert fallback is not None, (status["config_guard"], state.read_text(), log.read_text())
        assert "3 times in a row" in fallback["reason"]
        assert Path(fallback["refused"]).read_bytes() == changed
        assert config.read_bytes() == original
    finally:
        assert stop_daemon(proc, log) == 0, log.read_text()


def test_an_empty_broker_host_cannot_brick_the_gateway(broker: Mosquitto, tmp_path: Path) -> None:
    """The case that bricked gateways: a remote `config.set {"mqtt.host": ""}`. Whatever
    stops it first (validation refusing it, the confirmation deadline, or the crash
    counter at the next starts), the gateway ends up online on a config that works, as a
    systemd unit with `Restart=on-failure` would restart it."""
    config = _config(tmp_path, broker, "gw-brick", confirm_s=2.0)
    original = config.read_bytes()
    root = "edge/t1/s1/gw-brick"
    log = tmp_path / "daemon.log"
    with collector(broker.port, f"{root}/#") as sub:
        proc = start_daemon(config, log)
        try:
            wait_for(lambda: _good(config).exists(), 60, "the last known good copy")
            sub.client.publish(
                f"{root}/cmd/config.set",
                json.dumps({"id": "brick", "args": {"values": {"mqtt.host": ""}}}),
                qos=1,
            )
            wait_for(
                lambda: (
                    proc.poll() is not None
                    or _events(sub, "config.reverted")
                    or [m for m in sub.of("config.set") if m.payload.get("ok") is False]
                ),
                30,
                "the change refused, reverted, or the daemon down",
            )
            for _ in range(5):  # systemd's Restart=on-failure
                if proc.poll() is None:
                    break
                proc = start_daemon(config, log)
                wait_for(
                    lambda p=proc: p.poll() is not None or _online(tmp_path),  # type: ignore[misc]
                    30,
                    "the restarted daemon online or down",
                )
            status = wait_for(lambda: _online(tmp_path), 60, "online on a config that works")
            assert status["mqtt"]["broker"] == f"127.0.0.1:{broker.port}"
            assert config.read_bytes() == original
        finally:
            if proc.poll() is None:
                assert stop_daemon(proc, log) == 0, log.read_text()
