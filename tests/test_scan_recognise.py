"""`sensors scan` recognising what a device speaks, and `init --scan` writing its entry.

Serial devices are emulated on real pseudo-terminals (a sketch printing lines, our v1
firmware, a WitMotion WT901); the scan opens and reads them through pyserial as it would a
USB adapter. The BLE part of the scan is covered with the BlueZ double in test_thingy52.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from edge_agent.cli import app
from edge_agent.config import load_config
from firmware_bridge.emulator import (
    DeviceEmulator,
    SyntheticMotion,
    encode_stream,
    encode_text,
    encode_witmotion,
)
from firmware_bridge.profiles.recognise import recognise_advertisement, recognise_bytes
from firmware_bridge.profiles.thingy52 import CONFIGURATION_SERVICE_UUID
from firmware_bridge.profiles.v1 import NUS_SERVICE
from firmware_bridge.profiles.witmotion_ble import SERVICE_UUID as WITMOTION_BLE_SERVICE
from tests.test_sensors_cli import cli_env

runner = CliRunner()


def test_a_second_of_bytes_names_the_profile() -> None:
    """Each format read from the middle of its stream (as a port opened at any moment)."""
    motion = SyntheticMotion(50.0, seed=1)
    v1 = recognise_bytes(encode_stream(motion, 50, 5)[7:])
    assert v1 is not None
    assert v1.protocol == "v1"
    wit = recognise_bytes(encode_witmotion(SyntheticMotion(50.0, seed=1), 20)[5:])
    assert wit is not None
    assert wit.protocol == "witmotion"
    text = recognise_bytes(encode_text(SyntheticMotion(50.0, seed=1), 50)[9:])
    assert text is not None
    assert text.protocol == "text"
    assert "ax, ay, az, gx, gy, gz" in text.evidence


def test_noise_and_mostly_junk_lines_name_nothing() -> None:
    assert recognise_bytes(bytes(range(256)) * 8) is None
    assert recognise_bytes(b"") is None
    junk = b"\n" + b"hello world\n" * 10 + b"1,2,3\n" * 3
    assert recognise_bytes(junk) is None


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=2000))
def test_any_bytes_never_raise(data: bytes) -> None:
    result = recognise_bytes(data)
    assert result is None or result.protocol in {"v1", "witmotion", "text"}


def test_advertised_services_name_the_family() -> None:
    assert recognise_advertisement([NUS_SERVICE.upper()]).protocol == "v1"  # type: ignore[union-attr]
    thingy = recognise_advertisement(["0000180f-0000-1000-8000-00805f9b34fb",
                                      CONFIGURATION_SERVICE_UUID])  # fmt: skip
    assert thingy is not None
    assert thingy.protocol == "thingy52"
    wit = recognise_advertisement([WITMOTION_BLE_SERVICE])
    assert wit is not None
    assert wit.protocol == "witmotion-ble"
    assert recognise_advertisement(["0000180f-0000-1000-8000-00805f9b34fb"]) is None


def test_sensors_scan_probes_ports_and_proposes_entries() -> None:
    """A sketch and our firmware on two ptys, and a pty that says nothing: the scan says
    which profile each speaks (or why none), and proposes a [[sensors]] entry for each."""
    sketch = DeviceEmulator(SyntheticMotion(50.0, seed=2), device_id="uno", wire="text")
    firmware = DeviceEmulator(SyntheticMotion(50.0, seed=3), device_id="imu")
    silent = DeviceEmulator(SyntheticMotion(50.0, seed=4), device_id="quiet", wire="text")
    with sketch, firmware, silent:
        silent.pause()
        result = runner.invoke(
            app,
            ["sensors", "scan", "--no-ble", "--json", "--probe-seconds", "1.0",
             "--port", sketch.tty_path, "--port", firmware.tty_path, "--port", silent.tty_path],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        found = json.loads(result.output)
        ports = {p["device"]: p["recognised"] for p in found["serial"]}
        assert ports[sketch.tty_path]["profile"] == "text"
        assert ports[firmware.tty_path]["profile"] == "v1"
        assert ports[silent.tty_path]["profile"] is None
        assert "no bytes" in ports[silent.tty_path]["reason"]
        entries = {e["port"]: e for e in found["sensors"]}
        assert entries[sketch.tty_path] == {
            "name": "text-0", "link": "serial", "port": sketch.tty_path, "profile": "text"
        }  # fmt: skip
        assert entries[firmware.tty_path]["profile"] == "v1"
        text = runner.invoke(
            app, ["sensors", "scan", "--no-ble", "--port", sketch.tty_path, "--probe-seconds", "1"]
        )
        assert "speaks: text" in text.output
        assert 'profile = "text"' in text.output


def test_init_scan_writes_the_entry_it_found(tmp_path: Path) -> None:
    """`edge-agent init --scan`: the sketch it found becomes a sensor of a config that
    validates; nothing else is invented."""
    path = tmp_path / "edge-agent.toml"
    with DeviceEmulator(SyntheticMotion(50.0, seed=5), device_id="uno", wire="text") as sketch:
        result = runner.invoke(
            app,
            ["init", "--path", str(path), "--state-dir", str(tmp_path), "--scan",
             "--no-scan-ble", "--scan-port", sketch.tty_path, "--device-id", "gw-1"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert f"found text-0: {sketch.tty_path}" in result.output
        tty = sketch.tty_path
    written = tomllib.loads(path.read_text())
    (sensor,) = [s for s in written["sensors"] if s["link"] == "serial"]
    assert sensor["port"] == tty
    assert sensor["profile"]["protocol"] == "text"
    config = load_config(path, environ={})
    assert [s.name for s in config.sensors] == ["text-0"]


def _simulated(args: list[str], env_path: Path) -> tuple[subprocess.Popen[str], str]:
    """Start `edge-agent simulate ARGS` as a process; returns it and its first tty."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "simulate", "--synthetic", "--seconds", "20", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(env_path),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else ""
    return proc, line.split()[1]


def test_simulate_plays_each_new_wire(tmp_path: Path) -> None:
    """`edge-agent simulate --wire text` is a sketch the scan recognises; `--sensor NAME`
    plays a configured struct board whose bytes its own profile decodes; `--wire thingy52`
    sends Thingy records."""
    from edge_agent.commands.discover import probe_port
    from firmware_bridge.profiles import open_profile, profile_config

    proc, tty = _simulated(["--wire", "text", "--garbage-every", "20"], tmp_path)
    try:
        assert probe_port(tty, 1.0, 115_200)["profile"] == "text"
    finally:
        _stop(proc)

    layout = (
        'profile = { protocol = "struct", sync = "a55a", format = "<H6h", '
        'fields = ["n", "ax", "ay", "az", "gx", "gy", "gz"], counter = "n", checksum = "crc8", '
        "rate_hz = 50 }"
    )
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[[sensors]]\nname = "board"\nlink = "serial"\nport = "/dev/null"\n{layout}\n'
    )
    proc, tty = _simulated(["--sensor", "board", "--config", str(config), "--rate", "50"], tmp_path)
    try:
        data = _read(tty, 1.0)
    finally:
        _stop(proc)
    profile = open_profile(load_config(config, environ={}).sensors[0].profile, device_id="b")
    profile.feed(data, 0.0)
    assert profile.stats.packets_ok >= 20
    assert profile.stats.crc_errors == 0

    proc, tty = _simulated(["--wire", "thingy52", "--rate", "50"], tmp_path)
    try:
        data = _read(tty, 1.0)
    finally:
        _stop(proc)
    thingy = open_profile(profile_config("thingy52", rate_hz=50), device_id="t")
    thingy.feed(data[: len(data) // 18 * 18], 0.0)
    assert thingy.stats.packets_ok >= 20


def _stop(proc: subprocess.Popen[str]) -> None:
    """End the simulator and close its pipes."""
    proc.terminate()
    proc.communicate(timeout=10)


def _read(tty: str, seconds: float) -> bytes:
    import serial

    data = bytearray()
    with serial.Serial(tty, 115_200, timeout=0.1) as port:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            data += port.read(4096)
    return bytes(data)
