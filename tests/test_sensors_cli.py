"""The technician's commands: `sensors test`, `sensors scan`, `record` and `replay`.

Devices are emulated on real pseudo-terminals (a WitMotion WT901 speaking its own 11-byte
packets, or our v1 firmware); the commands open them through pyserial exactly as they open a
USB adapter. `sensors test` runs as a real process in the main check.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from typer.testing import CliRunner

from edge_agent.cli import app
from firmware_bridge.emulator import GRAVITY, Capture, DeviceEmulator, SyntheticMotion
from tests.test_hotplug import agent_config, running_daemon, samples

runner = CliRunner()


class Still:
    """A motionless, tilted IMU: constant accelerometer (m/s^2) and gyroscope (rad/s)."""

    channels = ("ax", "ay", "az", "gx", "gy", "gz")
    units = ("m/s^2",) * 3 + ("rad/s",) * 3
    full_scale = (16 * GRAVITY,) * 3 + (math.radians(2000.0),) * 3
    rate_hz = 10.0

    def __init__(self, values: list[float]) -> None:
        self.values = np.array(values, dtype=np.float32)

    def read(self, n: int) -> tuple[npt.NDArray[np.float32], list[str | None]]:
        return np.tile(self.values, (n, 1)), [None] * n


# 0.5 g, -0.25 g, 0.8 g; 10 °/s, -20 °/s, 0 °/s (no yaw drift).
STILL = [0.5 * GRAVITY, -0.25 * GRAVITY, 0.8 * GRAVITY, math.radians(10), math.radians(-20), 0.0]


def expected_witmotion_values() -> dict[str, float]:
    """What a WT901 reports for STILL, through the datasheet quantization (value/FS*32768)."""

    def q(value: float, full_scale: float) -> float:
        return round(value / full_scale * 32768) * full_scale / 32768

    ax, ay, az = 0.5, -0.25, 0.8
    return {
        "ax": q(ax, 16),
        "ay": q(ay, 16),
        "az": q(az, 16),
        "gx": q(10.0, 2000),
        "gy": q(-20.0, 2000),
        "gz": 0.0,
        "roll": q(math.degrees(math.atan2(ay, az)), 180),
        "pitch": q(math.degrees(math.atan2(-ax, math.hypot(ay, az))), 180),
        "yaw": 0.0,
    }


def cli_env(tmp_path: Path) -> dict[str, str]:
    """No inherited config, and a D-Bus system bus that does not exist (no BLE here)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env["DBUS_SYSTEM_BUS_ADDRESS"] = f"unix:path={tmp_path / 'no-such-bus'}"
    return env


def test_sensors_test_on_an_emulated_witmotion_prints_physical_values(tmp_path: Path) -> None:
    """`edge-agent sensors test PORT --profile witmotion` as a real process against a WT901
    emulated on a pty: the summary holds the values in g, °/s and ° that the device sent."""
    with DeviceEmulator(Still(STILL), device_id="wt901", wire="witmotion") as emulator:
        proc = subprocess.run(
            [sys.executable, "-m", "edge_agent", "sensors", "test", emulator.tty_path,
             "--profile", "witmotion", "--seconds", "2.5", "--json"],
            capture_output=True, text=True, timeout=60, env=cli_env(tmp_path),
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["profile"] == "witmotion"
    assert summary["state"] == "connected"
    assert summary["device"]["declared_rate_hz"] == 10.0
    assert summary["samples"] >= 10
    assert summary["rate_hz"] == pytest.approx(10.0, rel=0.25)
    latest = summary["latest"]
    for name, value in expected_witmotion_values().items():
        assert latest[name]["value"] == pytest.approx(value, abs=1e-5), name
    assert [latest[n]["unit"] for n in ("ax", "gx", "roll")] == ["g", "deg/s", "deg"]
    assert summary["errors"]["crc_errors"] == 0
    assert summary["temperature_c"] == pytest.approx(25.0)


def test_sensors_test_shows_live_lines_for_a_configured_sensor(tmp_path: Path) -> None:
    """A sensor by NAME from the config (an emulated WT901 there): one line per second with
    rate, values and counters, then the summary."""
    config = tmp_path / "agent.toml"
    config.write_text(
        "[[sensors]]\n"
        'name = "wt"\nlink = "emulated"\nsynthetic = true\nrate_hz = 20.0\nmodels = []\n'
        'profile = { protocol = "witmotion", rate_hz = 20 }\n'
    )
    result = runner.invoke(
        app, ["sensors", "test", "wt", "--config", str(config), "--seconds", "2.2"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("testing wt: emulated")
    live = [line for line in lines if line.startswith("[") and "Hz" in line]
    assert len(live) >= 2
    assert "ax=" in live[-1]
    assert "deg/s" in live[-1]
    assert "errors: none" in live[-1]
    assert any(line.startswith("summary:") for line in lines)


def test_sensors_test_says_what_is_wrong(tmp_path: Path) -> None:
    """Unknown target, unknown profile, and a port that stays silent: clear messages, and
    exit codes a script can use (2 usage, 1 no data)."""
    result = runner.invoke(app, ["sensors", "test", "nope", "--config", str(tmp_path / "x")])
    assert result.exit_code == 2
    config = tmp_path / "agent.toml"
    config.write_text("")
    result = runner.invoke(app, ["sensors", "test", "nope", "--config", str(config)])
    assert result.exit_code == 2
    assert "not a configured sensor" in result.output
    assert "sensors scan" in result.output

    with DeviceEmulator(Still(STILL), wire="witmotion") as emulator:
        result = runner.invoke(
            app, ["sensors", "test", emulator.tty_path, "--profile", "wt", "-c", str(config)]
        )
        assert result.exit_code == 2
        assert "unknown protocol" in result.output or "unknown profile" in result.output
        emulator.pause()  # a hung device: the port opens, nothing arrives
        result = runner.invoke(
            app,
            ["sensors", "test", emulator.tty_path, "-p", "witmotion", "--seconds", "1.0",
             "-c", str(config)],
        )  # fmt: skip
    assert result.exit_code == 1
    assert "no samples from" in result.output


def test_sensors_scan_lists_ports_and_says_when_there_is_no_bluetooth(tmp_path: Path) -> None:
    """No radio here: the BLE part says so (and why) instead of failing."""
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent", "sensors", "scan", "--json", "--seconds", "1"],
        capture_output=True, text=True, timeout=60, env=cli_env(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert isinstance(result["serial"], list)
    for port in result["serial"]:
        assert {"device", "vid", "pid", "serial_number", "by_id"} <= set(port)
    assert result["ble"]["available"] is False
    assert "system bus" in result["ble"]["reason"]

    text = runner.invoke(app, ["sensors", "scan", "--no-ble"])
    assert text.exit_code == 0
    assert text.output.startswith("serial ports")


def read_values(summary: dict[str, Any]) -> dict[str, float]:
    return {k: v["value"] for k, v in summary["latest"].items()}


def test_record_then_replay_through_the_emulator_and_the_daemon(tmp_path: Path) -> None:
    """Record a WT901's raw bytes, then (1) `replay` them on a pty that `sensors test` reads
    back with the same values, and (2) replay them inside the daemon (an emulated sensor with
    `capture = FILE`), whose stream gets the samples."""
    capture = tmp_path / "field.cap"
    config = tmp_path / "agent.toml"
    config.write_text("")
    with DeviceEmulator(Still(STILL), device_id="wt901", wire="witmotion") as emulator:
        port = emulator.tty_path
        result = runner.invoke(
            app,
            ["record", emulator.tty_path, "--out", str(capture), "--profile", "witmotion",
             "--seconds", "1.5", "--json", "-c", str(config)],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    recorded = json.loads(result.output)
    assert recorded["reads"] > 0
    assert recorded["samples_decoded"] >= 5
    cap = Capture(capture)
    assert cap.protocol == "witmotion"
    assert cap.header["where"] == port
    assert sum(map(len, cap.chunks)) == recorded["bytes"]
    assert all(b >= a for a, b in zip(cap.times, cap.times[1:], strict=False))

    replay = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "replay", str(capture), "--seconds", "20"],
        stdout=subprocess.PIPE, text=True, env=cli_env(tmp_path),
    )  # fmt: skip
    try:
        assert replay.stdout is not None
        tty = ""
        deadline = time.monotonic() + 20
        while not tty and time.monotonic() < deadline:
            line = replay.stdout.readline()
            if line.startswith("tty: "):
                tty = line.split(": ", 1)[1].strip()
        assert tty, "replay printed no tty"
        result = runner.invoke(
            app,
            ["sensors", "test", tty, "-p", "witmotion", "--seconds", "2.5", "--json",
             "-c", str(config)],
        )  # fmt: skip
    finally:
        replay.terminate()
        replay.wait(10)
        if replay.stdout is not None:
            replay.stdout.close()
    assert result.exit_code == 0, result.output
    values = read_values(json.loads(result.output))
    for name, value in expected_witmotion_values().items():
        assert values[name] == pytest.approx(value, abs=1e-5), name

    agent = agent_config(
        tmp_path, 1, [{"name": "field", "link": "emulated", "capture": str(capture)}]
    )
    with running_daemon(agent) as daemon:
        from tests.broker import wait_for

        wait_for(lambda: samples(daemon, "field") >= 5, 15, "replayed samples")
        stream = next(s for (name, _), s in daemon.streams.items() if name == "field")
        assert stream.hello is not None
        assert [c.name for c in stream.hello.channels][:3] == ["ax", "ay", "az"]
        assert daemon.links["field"].decoder.protocol == "witmotion"


def test_replay_refuses_a_file_that_is_not_a_capture(tmp_path: Path) -> None:
    bogus = tmp_path / "x.cap"
    bogus.write_bytes(b"hello")
    result = runner.invoke(app, ["replay", str(bogus)])
    assert result.exit_code == 2
    assert "not a capture file" in result.output


def test_synthetic_v1_sensor_by_port(tmp_path: Path) -> None:
    """The default profile (v1) on a port: HELLO's device id and channel units are shown."""
    config = tmp_path / "agent.toml"
    config.write_text("")
    with DeviceEmulator(SyntheticMotion(50.0, seed=1), device_id="emu-v1") as emulator:
        result = runner.invoke(
            app,
            ["sensors", "test", emulator.tty_path, "--seconds", "2.5", "--json",
             "-c", str(config)],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["device"]["device_id"] == "emu-v1"
    assert summary["latest"]["ax"]["unit"] == "m/s^2"
    assert summary["rate_hz"] == pytest.approx(50.0, rel=0.25)
