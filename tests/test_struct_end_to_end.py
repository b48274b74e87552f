"""End to end for the `struct` profiles: a board on a pty or over BLE → `edge-agent run` → results.

Serial: the emulator sends packets of a layout written in the daemon's config (sync bytes,
length, counter, CRC-16) to a real pseudo-terminal, with line noise after some of them and
some packets lost (their counter values skipped); the daemon, a real process, reads it with
the `struct` profile and commits window results to a real SQLite file.

BLE: there is no radio here, so the daemon's bleak talks to the BlueZ D-Bus double of
``test_ble_bluez.py`` on a private bus (the narrowest seam; everything from bleak up is the
production path); the peripheral advertises a custom service and notifies one struct per
sample on its own characteristic, or is a Nordic Thingy:52 notifying raw motion records,
with malformed notifications among them.

All play the walking part of the shipped model's held-out recording: results labelled
"walking" show the values reached the model in the right units.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from firmware_bridge.emulator import CsvRecording, DeviceEmulator, StructEncoder
from firmware_bridge.profiles import profile_config
from firmware_bridge.profiles.thingy52 import (
    CONFIGURATION_SERVICE_UUID,
    MOTION_SERVICE_UUID,
    RAW_DATA_UUID,
    Thingy52Profile,
)
from tests.broker import wait_for
from tests.daemon_proc import events, start_daemon, stop_daemon, write_config
from tests.test_ble_bluez import (
    BlueZDouble,
    bluez,  # noqa: F401 - the fixture, used by name
)
from tests.test_sensors_cli import cli_env
from tests.test_text_end_to_end import _labels, _walking

LAYOUT: dict[str, Any] = {
    "sync": "aa55",
    "length": "B",
    "format": "<B6h",
    "fields": ["seq", "ax", "ay", "az", "gx", "gy", "gz"],
    "counter": "seq",
    "checksum": "crc16-ccitt",
    "checksum_start": 2,
    "channels": [
        *({"name": n, "unit": "g", "scale": 1 / 4096} for n in ("ax", "ay", "az")),
        *({"name": n, "unit": "deg/s", "scale": 1 / 16.4} for n in ("gx", "gy", "gz")),
    ],
    "rate_hz": 10,
}
SERVICE = "12345678-1234-5678-1234-56789abcdef0"
NOTIFY = "12345678-1234-5678-1234-56789abcdef1"


def toml_inline(value: Any) -> str:
    """A TOML inline value (JSON's strings and numbers are TOML's)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_inline(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_inline(v) for v in value) + "]"
    return json.dumps(value)


def sensor_toml(name: str, link: dict[str, Any], profile: dict[str, Any]) -> str:
    lines = ["[[sensors]]", f'name = "{name}"', 'models = ["imu-activity"]']
    lines += [f"{k} = {toml_inline(v)}" for k, v in link.items()]
    lines.append(f"profile = {toml_inline(profile)}")
    return "\n".join(lines) + "\n"


def run_until_results(tmp_path: Path, sensor: str, want: int = 40) -> Path:
    db = tmp_path / "agent.db"
    config = tmp_path / "agent.toml"
    log = tmp_path / "daemon.log"
    proc = start_daemon(config, log)
    try:
        wait_for(lambda: len(_labels(db, sensor)) >= want, 60, f"{want} window results")
        assert proc.poll() is None, log.read_text()
    finally:
        code = stop_daemon(proc, log)
    assert code == 0, log.read_text()
    labels = _labels(db, sensor)
    assert labels.count("walking") / len(labels) >= 0.8, labels
    assert not events(db, "component.failed")
    return db


def test_serial_board_with_noise_and_lost_packets_becomes_window_results(tmp_path: Path) -> None:
    """The layout in config, noise after every 9th packet, every 50th packet lost: the
    daemon announces the channels, counts the gaps and commits walking results."""
    layout = profile_config("struct", **LAYOUT)
    emulator = DeviceEmulator(
        CsvRecording(_walking(tmp_path / "walking.csv")),
        device_id="board",
        wire="struct",
        layout=layout,
        garbage_every=9,
        lose_every=50,
        max_rate=True,
    )
    config = write_config(tmp_path / "agent.toml", db=tmp_path / "agent.db", sensors=[])
    with emulator:
        link = {"link": "serial", "port": emulator.tty_path}
        config.write_text(
            config.read_text() + sensor_toml("board", link, {"protocol": "struct", **LAYOUT})
        )
        db = run_until_results(tmp_path, "board")
    (hello,) = [b for _, _, s, b in events(db, "sensor.hello") if s == "board"]
    assert hello["channels"] == ["ax", "ay", "az", "gx", "gy", "gz"]
    assert hello["sample_rate_hz"] == 10.0


def run_ble_daemon(
    double: BlueZDouble,
    tmp_path: Path,
    sensor: str,
    link: dict[str, Any],
    profile: dict[str, Any],
    encoder: StructEncoder,
    walking_share: float | None = 0.8,
) -> Path:
    """Run the daemon on one BLE sensor of the double; notify walking data with malformed
    notifications (one cut short, one made of two halves) in every 50 until 40 results."""
    config = write_config(tmp_path / "agent.toml", db=tmp_path / "agent.db", sensors=[])
    link = {"link": "ble", "scan_timeout_s": 5.0, "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.5} | link  # fmt: skip
    config.write_text(config.read_text() + sensor_toml(sensor, link, profile))
    db = tmp_path / "agent.db"
    log = tmp_path / "daemon.log"
    proc = start_daemon(config, log)
    try:
        try:
            wait_for(
                lambda: "StartNotify" in double.calls or proc.poll() is not None,
                30,
                "subscribed through BlueZ",
            )
            assert proc.poll() is None
        except AssertionError:
            raise AssertionError(f"{double.calls}\n{log.read_text()}") from None
        deadline = time.monotonic() + 90
        while len(_labels(db, sensor)) < 40:
            assert time.monotonic() < deadline, f"no 40 results in 90 s\n{log.read_text()}"
            assert proc.poll() is None, log.read_text()
            packets = encoder.encode(50)
            packets[10] = packets[10][:7]  # cut short
            packets[30] = packets[30][5:] + packets[31][:5]  # two halves
            double.notify_each(packets)
            time.sleep(0.1)  # pace the notifications like a device, then look again
    finally:
        code = stop_daemon(proc, log)
    assert code == 0, log.read_text()
    labels = _labels(db, sensor)
    if walking_share is None:  # the most frequent label, not a share
        assert Counter(labels).most_common(1)[0][0] == "walking", labels
    else:
        assert labels.count("walking") / len(labels) >= walking_share, labels
    assert not events(db, "component.failed")
    return db


def test_ble_board_notifying_a_struct_becomes_window_results(
    bluez: BlueZDouble,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    """A custom BLE board found by its advertised service; one struct per notification
    with malformed notifications (cut short, doubled-up halves) among them."""
    bluez.name = "Board-7"
    bluez.service_uuid = SERVICE
    bluez.char_uuid = NOTIFY
    layout = {k: v for k, v in LAYOUT.items() if k != "length"}
    encoder = StructEncoder(
        CsvRecording(_walking(tmp_path / "walking.csv")),
        profile_config("struct-ble", **layout),
        device_id="board",
    )
    link = {"service_uuid": SERVICE, "notify_uuid": NOTIFY}
    db = run_ble_daemon(
        bluez, tmp_path, "ble-board", link, {"protocol": "struct-ble", **layout}, encoder
    )
    reasons = {b["reason"] for _, _, s, b in events(db, "sensor.rejected") if s == "ble-board"}
    assert reasons == {
        "notification that is not whole 17-byte packets",
        "notification whose packet does not start with the sync bytes",
    }


def test_thingy52_becomes_window_results(
    bluez: BlueZDouble,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    """A Nordic Thingy:52 found by name, the profile's own characteristic (no notify_uuid
    in config), raw motion records with malformed notifications among them."""
    bluez.name = "Thingy"
    bluez.advertised_uuids = [CONFIGURATION_SERVICE_UUID]
    bluez.service_uuid = MOTION_SERVICE_UUID
    bluez.char_uuid = RAW_DATA_UUID
    encoder = StructEncoder(
        CsvRecording(_walking(tmp_path / "walking.csv")),
        Thingy52Profile.layout_config(None),
        device_id="thingy",
    )
    # The Thingy's accelerometer resolution (Q6.10: 1/1024 g, about 0.01 m/s^2) is coarse
    # for this recording's small accelerations: walking stays the most frequent label
    # (24 of 43 windows), but some windows read otherwise (16 badminton), unlike with the
    # 1/4096 g board above.
    db = run_ble_daemon(
        bluez, tmp_path, "thingy", {"name_pattern": "^Thingy$"},
        {"protocol": "thingy52", "rate_hz": 10}, encoder, walking_share=None,
    )  # fmt: skip
    reasons = {b["reason"] for _, _, s, b in events(db, "sensor.rejected") if s == "thingy"}
    assert reasons == {"notification that is not whole 18-byte packets"}


def test_sensors_test_shows_decoded_physical_values(tmp_path: Path) -> None:
    """`edge-agent sensors test NAME` on a struct board (an emulated sensor with the layout
    in config): the summary holds the values in the layout's units, so a technician can
    hold them against the datasheet, and the raw fields of the last packet."""
    config = tmp_path / "agent.toml"
    config.write_text(
        sensor_toml(
            "board",
            {"link": "emulated", "synthetic": True, "rate_hz": 20.0},
            {"protocol": "struct", **(LAYOUT | {"rate_hz": 20})},
        ).replace('models = ["imu-activity"]', "models = []")
    )
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent", "sensors", "test", "board", "--config",
         str(config), "--seconds", "2.5", "--json"],
        capture_output=True, text=True, timeout=60, env=cli_env(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["profile"] == "struct"
    latest = summary["latest"]
    assert [latest[n]["unit"] for n in ("ax", "gx")] == ["g", "deg/s"]
    fields = summary["fields"]
    # The scales travel as float32 in the HELLO and values are shown to 6 decimals.
    for name, scale in (("ax", 4096), ("ay", 4096), ("az", 4096), ("gx", 16.4), ("gy", 16.4),
                        ("gz", 16.4)):  # fmt: skip
        assert math.isclose(latest[name]["value"], fields[name] / scale, rel_tol=1e-6,
                            abs_tol=1e-6), name  # fmt: skip
    assert 0 <= fields["seq"] <= 255
    assert summary["errors"]["crc_errors"] == 0
