"""The `thingy52` profile: Nordic Thingy:52 raw motion records, from Nordic's firmware sources.

Byte vectors are built here from what Nordic's Thingy:52 firmware documents
(``include/ble_services/ble_tms.h``: ``ble_tms_raw_t`` = accel, gyro, compass as packed
``int16_t x y z``; ``source/modules/m_motion.c``: 16Q16 values in g, deg/s and uT shifted
right by 6, 11 and 12 integer bits), with the UUIDs taken from the firmware's base UUID bytes.
The link test goes through bleak's BlueZ backend and the D-Bus double of
``test_ble_bluez.py`` (no radio here): the peripheral advertises the Configuration Service and
notifies on the Motion Service's raw data characteristic, as a Thingy does.
"""

from __future__ import annotations

import json
import struct
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from edge_agent.cli import app
from edge_agent.config import load_config
from edge_agent.config_sensors import BleSensorConfig
from firmware_bridge.emulator import StructEncoder, SyntheticMotion
from firmware_bridge.links.ble import BleLink
from firmware_bridge.profiles import open_profile, profile_config
from firmware_bridge.profiles.thingy52 import (
    CONFIGURATION_SERVICE_UUID,
    MOTION_SERVICE_UUID,
    RAW_DATA_UUID,
    Thingy52Profile,
)
from firmware_bridge.protocol.v1 import Frame, FrameType, hello_problem
from tests.broker import wait_for
from tests.test_ble_bluez import (
    ADDRESS,
    BlueZDouble,
    bluez,  # noqa: F401 - the fixture, used by name
)
from tests.test_ble_link import Sink

runner = CliRunner()

# TMS_BASE_UUID in ble_tms.c, as the SoftDevice stores it (little-endian, bytes 12-13 = id).
TMS_BASE_UUID = bytes(
    [0x42, 0x00, 0x74, 0xA9, 0xFF, 0x52, 0x10, 0x9B, 0x33, 0x49, 0x35, 0x9B, 0x00, 0x00, 0x68, 0xEF]
)


def vendor_uuid(short: int) -> str:
    raw = bytearray(TMS_BASE_UUID)
    raw[12:14] = short.to_bytes(2, "little")
    return str(uuid.UUID(bytes=bytes(reversed(raw))))


def record(
    acc_g: tuple[float, ...], gyro_dps: tuple[float, ...], mag_ut: tuple[float, ...]
) -> bytes:
    """One ble_tms_raw_t as m_motion.c builds it: 16Q16 >> 6 / >> 11 / >> 12, int16 LE."""

    def q16(v: float) -> int:
        return round(v * 65536)

    values = [q16(a) >> 6 for a in acc_g] + [q16(w) >> 11 for w in gyro_dps]
    values += [q16(b) >> 12 for b in mag_ut]
    return struct.pack("<9h", *values)


SAMPLES = [
    ((0.0, 0.0, 1.0), (0.0, 0.0, 0.0), (20.0, -5.5, 42.25)),
    ((-0.5, 0.25, 0.9990234375), (90.0, -1.03125, 250.5), (-48.5, 0.0625, 0.0)),
    ((-32.0, 31.9990234375, 0.0), (-1024.0, 1023.96875, 0.0), (-2048.0, 2047.9375, 0.0)),
]


def decode(chunks: list[bytes], **options: Any) -> tuple[Thingy52Profile, list[Frame]]:
    profile = open_profile(profile_config("thingy52", **({"rate_hz": 10} | options)), device_id="t")
    assert isinstance(profile, Thingy52Profile)
    frames: list[Frame] = []
    for i, chunk in enumerate(chunks):
        frames += profile.feed(chunk, 5.0 + i * 0.1)
    return profile, frames


def physical(frames: list[Frame]) -> np.ndarray[Any, Any]:
    hello = next(f.hello() for f in frames if f.frame_type == FrameType.HELLO)
    scales = np.array([c.scale for c in hello.channels])
    parts = [f.samples() * scales for f in frames if f.frame_type == FrameType.IMU_BATCH]
    return np.concatenate(parts) if parts else np.empty((0, len(scales)))


def test_uuids_are_the_firmwares() -> None:
    assert vendor_uuid(0x0100) == CONFIGURATION_SERVICE_UUID
    assert vendor_uuid(0x0400) == MOTION_SERVICE_UUID
    assert vendor_uuid(0x0406) == RAW_DATA_UUID
    assert RAW_DATA_UUID == "ef680406-9b35-4933-9b10-52ffa9740042"


def test_raw_records_decode_to_g_deg_s_and_microtesla_exactly() -> None:
    """Every value in these vectors is representable in the Q formats, so decoding is exact:
    1 g, -0.5 g, 90 deg/s, 48.5 uT … and the ends of each range (±32 g, ±1024 deg/s,
    ±2048 uT)."""
    profile, frames = decode([record(*s) for s in SAMPLES])
    hello = frames[0].hello()
    assert hello_problem(hello) is None
    assert [c.name for c in hello.channels] == [
        "ax", "ay", "az", "gx", "gy", "gz", "mx", "my", "mz"
    ]  # fmt: skip
    assert [c.unit for c in hello.channels] == ["g"] * 3 + ["deg/s"] * 3 + ["uT"] * 3
    assert [c.scale for c in hello.channels] == [2**-10] * 3 + [2**-5] * 3 + [2**-4] * 3
    expected = [[*a, *g, *m] for a, g, m in SAMPLES]
    np.testing.assert_array_equal(physical(frames), expected)
    assert hello.firmware == "nordic-thingy52"
    assert profile.stats.packets_ok == 3


def test_record_bytes_are_little_endian_int16() -> None:
    """1 g is 0x0400 (1 << 10), sent as 00 04; -1 deg/s is -32 = e0 ff."""
    raw = record((1.0, 0.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    assert raw[:2] == b"\x00\x04"
    assert raw[6:8] == b"\xe0\xff"
    assert len(raw) == 18


def test_notifications_that_are_not_whole_records_are_counted_and_dropped() -> None:
    good = record(*SAMPLES[0])
    profile, frames = decode([good, good[:10], good + good, b"", good[:17] + b"\x00\x00"])
    assert len(physical(frames)) == 3
    assert profile.stats.bad_notifications == 3


def test_the_rate_is_learned_and_snapped() -> None:
    """No rate configured: 50 Hz motion processing (arriving at 49.6 Hz) reads as 50 Hz."""
    profile = open_profile(profile_config("thingy52"), device_id="t")
    frames: list[Frame] = []
    for i in range(150):
        frames += profile.feed(record(*SAMPLES[0]), 1.0 + i / 49.6)
    rates = [f.hello().sample_rate_hz for f in frames if f.frame_type == FrameType.HELLO]
    assert rates == [50.0]


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.tuples(*[st.integers(-32768, 32767)] * 9), min_size=1, max_size=10))
def test_every_record_decodes_to_its_q_format_value(values: list[tuple[int, ...]]) -> None:
    """Any int16 in any field: value = raw / 2**fraction bits, exactly, never refused."""
    _, frames = decode([struct.pack("<9h", *v) for v in values])
    scales = np.array([2**-10] * 3 + [2**-5] * 3 + [2**-4] * 3)
    np.testing.assert_array_equal(physical(frames), np.array(values) * scales)


def test_the_emulated_thingy_round_trips() -> None:
    """The emulator's Thingy (wire thingy52) sends what the profile reads: g and deg/s of
    the motion source within one Q-format LSB."""
    encoder = StructEncoder(
        SyntheticMotion(20.0, seed=5), Thingy52Profile.layout_config(None), device_id="t"
    )
    _, frames = decode(encoder.encode(200))
    reference, _ = SyntheticMotion(20.0, seed=5).read(200)
    values = physical(frames)
    np.testing.assert_allclose(values[:, :3], reference[:, :3] / 9.80665, atol=2**-10)
    np.testing.assert_allclose(values[:, 3:6], np.degrees(reference[:, 3:]), atol=2**-5)


def test_thingy_through_bleak_and_the_bluez_double(
    bluez: BlueZDouble,  # noqa: F811 - the fixture imported above
) -> None:
    """Found by its name and its advertised Configuration Service, subscribed to the raw
    data characteristic of the Motion Service (the profile's default: no notify_uuid in
    config), 18-byte notifications decoded, a malformed one counted, StopNotify on close."""
    bluez.name = "Thingy"
    bluez.advertised_uuids = [CONFIGURATION_SERVICE_UUID]
    bluez.service_uuid = MOTION_SERVICE_UUID
    bluez.char_uuid = RAW_DATA_UUID
    config = BleSensorConfig(
        name="thingy",
        link="ble",
        name_pattern="^Thingy$",
        service_uuid=CONFIGURATION_SERVICE_UUID,
        scan_timeout_s=5.0,
        connect_timeout_s=10.0,
        models=[],
        profile={"protocol": "thingy52", "rate_hz": 10},
    )
    sink = Sink()
    link = BleLink(config, sink)
    link.start()
    try:
        wait_for(lambda: sink.count("connected") == 1, 20, "connected through BlueZ")
        records = [record(*SAMPLES[i % 3]) for i in range(12)]
        bluez.notify_each([*records[:6], records[6][:9], *records[7:]])
        wait_for(lambda: len(sink.samples()) >= 11, 10, "11 samples")
        scales = np.array([2**-10] * 3 + [2**-5] * 3 + [2**-4] * 3)
        expected = [
            [*a, *g, *m] for i in (*range(6), *range(7, 12)) for a, g, m in [SAMPLES[i % 3]]
        ]
        np.testing.assert_array_equal(sink.samples() * scales, expected)
        assert link.decoder.stats.bad_notifications == 1
    finally:
        link.close()
    assert bluez.calls[-2:] == ["StopNotify", "Disconnect"]


@pytest.mark.parametrize("field", ["notify_uuid", "service_uuid"])
def test_ble_sensor_config_needs_nothing_but_a_way_to_find_it(field: str) -> None:
    """The profile brings its characteristic; a Thingy is found by name or advertisement."""
    extra = {"notify_uuid": RAW_DATA_UUID} if field == "notify_uuid" else {}
    config = BleSensorConfig(
        name="t", link="ble", service_uuid=CONFIGURATION_SERVICE_UUID, profile="thingy52", **extra
    )
    assert config.profile.ble_notify_uuids == (RAW_DATA_UUID,)


def test_scan_recognises_a_thingy_and_init_writes_it(
    bluez: BlueZDouble,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    """`sensors scan` through bleak and the BlueZ double names the profile from the
    advertised Configuration Service; `init --scan` writes the entry, and it validates."""
    bluez.name = "Thingy"
    bluez.advertised_uuids = [CONFIGURATION_SERVICE_UUID]
    result = runner.invoke(app, ["sensors", "scan", "--json", "--seconds", "0.5", "--no-probe"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    (device,) = [d for d in found["ble"]["devices"] if d["address"] == ADDRESS]
    assert device["recognised"]["profile"] == "thingy52"
    assert {"name": "thingy52-0", "link": "ble", "address": ADDRESS,
            "profile": "thingy52"} in found["sensors"]  # fmt: skip

    path = tmp_path / "edge-agent.toml"
    result = runner.invoke(
        app,
        ["init", "--path", str(path), "--state-dir", str(tmp_path), "--scan",
         "--scan-seconds", "0.5", "--device-id", "gw-1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    config = load_config(path, environ={})
    (sensor,) = [s for s in config.sensors if s.link == "ble"]
    assert sensor.profile.protocol == "thingy52"
    assert getattr(sensor, "address", None) == ADDRESS
