"""Helpers for tests that run `edge-agent run` as a real process (service, signals, control)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from firmware_bridge.emulator import DeviceEmulator


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(
    path: Path,
    *,
    db: Path,
    sensors: list[dict[str, Any]],
    mqtt_port: int = 1,
    device: str = "gw-test",
    sections: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """A config file for one test daemon; `sections` add or override keys per section."""
    base: dict[str, dict[str, Any]] = {
        "device": {"id": device, "tenant": "t1", "site": "s1"},
        "mqtt": {"port": mqtt_port, "reconnect_max_s": 1.0},
        "sync": {
            "heartbeat_interval_s": 1.0,
            "summary_interval_s": 1.0,
            "results_interval_s": 0.2,
            "upload_results": True,
        },
        "storage": {"path": str(db)},
        "logging": {"show_results": False},
        "service": {"control_socket": str(db.with_suffix(".sock"))},
    }
    for name, values in (sections or {}).items():
        base.setdefault(name, {}).update(values)
    lines: list[str] = []
    for name, values in base.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    for sensor in sensors:
        lines.append("[[sensors]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in sensor.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def emulators_config(
    tmp: Path, port: int, emus: Sequence[DeviceEmulator], device: str, **mqtt_keys: Any
) -> Path:
    """`<device>.toml` (database `<device>.db`) in `tmp`: a daemon reading `emus` as the serial
    sensors `imu-0`, `imu-1`, ..., uploading results every 0.1 s to the broker at `port` and
    reconnecting from 0.1 s; `mqtt_keys` add to its `[mqtt]`."""
    return write_config(
        tmp / f"{device}.toml",
        db=tmp / f"{device}.db",
        sensors=[
            {"name": f"imu-{i}", "link": "serial", "port": e.tty_path} for i, e in enumerate(emus)
        ],
        mqtt_port=port,
        device=device,
        sections={
            "mqtt": {"reconnect_min_s": 0.1, **mqtt_keys},
            "sync": {
                "heartbeat_interval_s": 1.0,
                "summary_interval_s": 1.0,
                "results_interval_s": 0.1,
                "upload_results": True,
            },
        },
    )


def daemon_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("EDGE_AGENT_", "NOTIFY_SOCKET", "WATCHDOG_"))
    }
    env.update(extra or {})
    return env


def start_daemon(
    config: Path, log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=daemon_env(env),
        )


def stop_daemon(proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> int:
    """SIGTERM and wait; kills and fails when it does not stop."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"daemon did not stop on SIGTERM:\n{log.read_text()}") from None


def cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = 60.0) -> Any:
    """Run `edge-agent ARGS` as a process; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=daemon_env(env),
        check=False,
    )


def events(
    db: Path, kind: str | None = None
) -> list[tuple[float, str, str | None, dict[str, Any]]]:
    """(ts, kind, sensor, body) of the events stored in a daemon's database."""
    import json

    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT ts, kind, sensor, body FROM events ORDER BY id").fetchall()
    finally:
        conn.close()
    return [(ts, k, sensor, json.loads(body)) for ts, k, sensor, body in rows if kind in (None, k)]
