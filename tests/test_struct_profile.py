"""The `struct` and `struct-ble` profiles: binary layouts described in config, to physical values.

Packets are built here with Python's own :mod:`struct` and :mod:`binascii`/:mod:`zlib`,
independently of the profile and of the emulator's encoder, for a layout as a datasheet would
give it; checksums are checked against the CRC catalogue's check values. Then corruption of
every kind, counters and gaps, the BLE variant, config that makes no sense, the emulator, and
hypothesis fuzzing of both decoders.
"""

from __future__ import annotations

import binascii
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from firmware_bridge.emulator import SyntheticMotion, encode_struct
from firmware_bridge.profiles import open_profile, profile_config
from firmware_bridge.profiles.checksums import CHECKSUMS, compute
from firmware_bridge.profiles.struct_layout import StructProfile
from firmware_bridge.protocol.v1 import Frame, FrameType, hello_problem

# A board's datasheet: "AA 55, LEN (u8, = 15), seq (u8), ax ay az (int16, 1/4096 g),
# gx gy gz (int16, 1/16.4 deg/s), temperature (int16, 1/100 degC), CRC-16/CCITT-FALSE over
# LEN..temperature, little-endian."
LAYOUT: dict[str, Any] = {
    "sync": "aa55",
    "length": "B",
    "format": "<B6hh",
    "fields": ["seq", "ax", "ay", "az", "gx", "gy", "gz", "temp"],
    "counter": "seq",
    "checksum": "crc16-ccitt",
    "checksum_start": 2,
    "channels": [
        *({"name": n, "unit": "g", "scale": 1 / 4096} for n in ("ax", "ay", "az")),
        *({"name": n, "unit": "deg/s", "scale": 1 / 16.4} for n in ("gx", "gy", "gz")),
        {"name": "temp", "unit": "degC", "scale": 0.01},
    ],
    "rate_hz": 100,
}


def packet(seq: int, raw: tuple[int, ...]) -> bytes:
    """One packet of LAYOUT, built from the datasheet with the standard library."""
    body = struct.pack("<BB6hh", 15, seq, *raw)
    return b"\xaa\x55" + body + struct.pack("<H", binascii.crc_hqx(body, 0xFFFF))


RAW = [
    (4096, -2048, 0, 164, -1640, 0, 2150),
    (-32768, 32767, 1, 0, 0, 32767, -1000),
    (0, 0, 4096, -32768, 16, 1, 0),
]
SCALES = np.array([1 / 4096] * 3 + [1 / 16.4] * 3 + [0.01])
EXPECTED = np.array(RAW) * SCALES


def decode(
    chunks: list[bytes], protocol: str = "struct", step: float = 0.01, **layout: Any
) -> tuple[StructProfile, list[Frame]]:
    profile = open_profile(profile_config(protocol, **(layout or LAYOUT)), device_id="board")
    assert isinstance(profile, StructProfile)
    frames: list[Frame] = []
    for i, chunk in enumerate(chunks):
        frames += profile.feed(chunk, 10.0 + i * step)
    return profile, frames


def physical(frames: list[Frame]) -> np.ndarray[Any, Any]:
    hello = next(f.hello() for f in frames if f.frame_type == FrameType.HELLO)
    scales = np.array([c.scale for c in hello.channels])
    parts = [f.samples() * scales for f in frames if f.frame_type == FrameType.IMU_BATCH]
    return np.concatenate(parts) if parts else np.empty((0, len(scales)))


def half_lsb(frames: list[Frame]) -> np.ndarray[Any, Any]:
    hello = next(f.hello() for f in frames if f.frame_type == FrameType.HELLO)
    return np.array([c.scale for c in hello.channels]) / 2 + 1e-12


def test_checksums_match_the_crc_catalogue() -> None:
    check = {
        "sum8": 0xDD,
        "xor8": 0x31,
        "crc8": 0xF4,
        "crc16-ccitt": 0x29B1,
        "crc16-xmodem": 0x31C3,
        "crc32": 0xCBF43926,
    }
    assert set(check) == set(CHECKSUMS)
    for name, value in check.items():
        assert compute(name, b"123456789") == value, name


def test_datasheet_packets_decode_to_physical_values() -> None:
    """g, deg/s and degC within half an announced LSB; the HELLO makes sense."""
    profile, frames = decode([b"".join(packet(i, r) for i, r in enumerate(RAW))])
    hello = frames[0].hello()
    assert hello_problem(hello) is None
    assert [c.name for c in hello.channels] == ["ax", "ay", "az", "gx", "gy", "gz", "temp"]
    assert [c.unit for c in hello.channels] == ["g"] * 3 + ["deg/s"] * 3 + ["degC"]
    assert np.all(np.abs(physical(frames) - EXPECTED) <= half_lsb(frames))
    assert profile.stats.packets_ok == 3
    assert profile.last_fields["seq"] == 2
    assert profile.last_fields["temp"] == 0


def test_split_at_every_byte_and_all_at_once_agree() -> None:
    data = b"".join(packet(i % 256, RAW[i % 3]) for i in range(30))
    _, whole = decode([data])
    _, bytewise = decode([data[i : i + 1] for i in range(len(data))], step=0.0003)
    np.testing.assert_array_equal(physical(bytewise), physical(whole))
    assert len(physical(whole)) == 30


def test_bad_checksum_and_bad_length_are_counted_and_skipped() -> None:
    """A flipped bit, a wrong length byte and line noise with a false sync between good
    packets: each bad packet is counted under its reason; every good one decodes."""
    good = [packet(i, RAW[i % 3]) for i in range(6)]
    flipped = bytearray(good[1])
    flipped[7] ^= 0x04
    wrong_length = bytearray(good[3])
    wrong_length[2] = 14
    data = good[0] + bytes(flipped) + good[2] + bytes(wrong_length) + b"\x00\xaa\x13" + good[4]
    data += good[5]
    profile, frames = decode([data[:25], data[25:]])
    values = physical(frames)
    rows = [0, 2, 4, 5]
    assert np.all(np.abs(values - EXPECTED[[r % 3 for r in rows]]) <= half_lsb(frames))
    assert profile.stats.crc_errors == 1
    assert profile.stats.length_errors == 1
    assert profile.stats.garbage_bytes >= 3


def test_counter_jump_is_a_gap_and_timestamps_skip_it() -> None:
    """Packets 0, 1, 2 then 6, 7: three lost. The frame after the jump carries gap=3 and its
    timestamp is 4 periods after the previous sample, not 1; a wrap 255 → 0 is no gap."""
    seqs = [250, 251, 252, 253, 254, 255, 0, 1, 5, 6]
    profile = open_profile(profile_config("struct", **LAYOUT), device_id="board")
    assert isinstance(profile, StructProfile)
    frames: list[Frame] = []
    for s in seqs:  # each packet arrives when it was sent (100 Hz)
        frames += profile.feed(packet(s, RAW[0]), 10.0 + ((s - 250) % 256) * 0.01)
    batches = [f for f in frames if f.frame_type == FrameType.IMU_BATCH]
    assert sum(f.gap for f in batches) == 3
    assert profile.stats.counter_gaps == 1
    assert profile.stats.samples_missed == 3
    (jump,) = [i for i, f in enumerate(batches) if f.gap]
    step = (batches[jump].timestamp_us - batches[jump - 1].timestamp_us) % (1 << 32)
    assert step == pytest.approx(40_000, abs=2_000)


def test_a_gap_inside_one_read_splits_the_batch_where_it_happened() -> None:
    data = b"".join(packet(s, RAW[1]) for s in (0, 1, 2, 9, 10))
    _, frames = decode([data])
    batches = [f for f in frames if f.frame_type == FrameType.IMU_BATCH]
    assert [len(f.samples()) for f in batches] == [3, 2]
    assert [f.gap for f in batches] == [0, 6]
    step = (batches[1].timestamp_us - batches[0].timestamp_us) % (1 << 32)
    assert step == pytest.approx(90_000, abs=2_000)


def test_values_that_no_sensor_reads_are_refused() -> None:
    """A float field carrying NaN, inf or a value past its full scale: that packet is
    refused and counted; the counter still sees it, so no gap is invented."""
    layout = {
        "sync": "a5",
        "format": "<H3f",
        "fields": ["n", "x", "y", "z"],
        "counter": "n",
        "checksum": "xor8",
        "channels": [{"name": c, "unit": "m/s^2"} for c in ("x", "y", "z")],
        "rate_hz": 50,
    }

    def pkt(n: int, *xyz: float) -> bytes:
        body = b"\xa5" + struct.pack("<H3f", n, *xyz)
        return body + bytes([compute("xor8", body)])

    data = pkt(0, 1.0, 2.0, 9.81) + pkt(1, float("nan"), 0, 0) + pkt(2, 0, float("inf"), 0)
    data += pkt(3, 0, 0, 1e6) + pkt(4, -156.0, 156.0, 0.0)
    profile, frames = decode([data], **layout)
    values = physical(frames)
    assert np.all(np.abs(values - [[1.0, 2.0, 9.81], [-156.0, 156.0, 0.0]]) <= half_lsb(frames))
    assert profile.stats.out_of_range == 3
    assert profile.stats.counter_gaps == 0


def test_without_a_checksum_a_sync_inside_the_data_does_not_fool_the_start() -> None:
    """Opening mid-stream with a data byte equal to the sync byte: the first packet is only
    believed when the next starts right after it."""
    layout = {"sync": "7e", "format": "<hh", "fields": ["a", "b"], "rate_hz": 10}
    packets = [
        b"\x7e" + struct.pack("<hh", v, 0x7E if v == 100 else 0) for v in (100, 200, 300, 400)
    ]
    data = packets[0][2:] + b"".join(packets[1:])  # starts inside packet 0
    _, frames = decode([data], **layout)
    np.testing.assert_array_equal(physical(frames)[:, 0], [200, 300, 400])


def test_ble_notifications_carry_whole_packets() -> None:
    """struct-ble: one or more whole packets per notification; a notification that is not
    whole packets is counted and dropped, and nothing carries over into the next."""
    ble_layout = LAYOUT | {"length": None}

    def pkt(seq: int, raw: tuple[int, ...]) -> bytes:
        body = struct.pack("<B6hh", seq, *raw)
        return b"\xaa\x55" + body + struct.pack("<H", binascii.crc_hqx(body, 0xFFFF))

    chunks = [pkt(0, RAW[0]), pkt(1, RAW[1])[:9], pkt(2, RAW[2]) + pkt(3, RAW[0]), pkt(4, RAW[1])]
    profile, frames = decode(chunks, "struct-ble", **ble_layout)
    values = physical(frames)
    assert np.all(np.abs(values - EXPECTED[[0, 2, 0, 1]]) <= half_lsb(frames))
    assert profile.stats.bad_notifications == 1
    # Over BLE sync is optional: a bare struct per notification.
    bare = {"format": ">hhh", "fields": ["x", "y", "z"], "rate_hz": 25}
    profile, frames = decode([struct.pack(">hhh", 1, -2, 3)] * 3, "struct-ble", **bare)
    np.testing.assert_array_equal(physical(frames), [[1, -2, 3]] * 3)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": "6hB"}, "byte order"),
        ({"format": "<6hs"}, "cannot read"),
        ({"fields": ["seq", "ax"]}, "fields has 2 names"),
        ({"counter": "nope"}, "counter"),
        ({"channels": ["ax", "missing"]}, "not one of the fields"),
        ({"sync": None}, "sync is required"),
        ({"sync": "zz"}, "pattern"),
        ({"length_offset": -20}, "length"),
        ({"format": "<B6hh2000x"}, "repeat count"),
        ({"format": "<B6hh1010x", "length": None}, "at most 1024"),
        ({"format": "<B6hh1000x"}, "length 1015, which cannot be"),
        ({"checksum": "md5"}, "checksum"),
        ({"checksum_start": 40}, "checksum_start"),
        ({"channels": [{"name": "ax", "scale": 0}]}, "scale"),
    ],
)
def test_layouts_that_make_no_sense_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        profile_config("struct", **(LAYOUT | changes))


def test_counter_must_be_an_integer_field() -> None:
    layout = {"sync": "aa", "format": "<fh", "fields": ["n", "x"], "counter": "n"}
    with pytest.raises(ValidationError, match="integer"):
        profile_config("struct", **layout)


def test_the_emulated_board_round_trips_with_lost_packets() -> None:
    """The emulator builds packets from the same config; every 10th packet is lost (the
    counter goes on) and noise follows every 7th: values match, gaps are counted."""
    layout = LAYOUT | {"rate_hz": 50}
    config = profile_config("struct", **layout)
    data = encode_struct(SyntheticMotion(50.0, seed=4), config, 300, lose_every=10,
                         garbage_every=7)  # fmt: skip
    profile, frames = decode([data[i : i + 256] for i in range(0, len(data), 256)], **layout)
    reference, _ = SyntheticMotion(50.0, seed=4).read(300)
    kept = [i for i in range(300) if (i + 1) % 10]
    expected = np.concatenate(
        [reference[kept, :3] / 9.80665, np.degrees(reference[kept, 3:])], axis=1
    )
    values = physical(frames)
    assert len(values) == len(kept)
    # Encoding rounds to the device's LSB, decoding to the announced one.
    tolerance = np.array([1 / 4096] * 3 + [1 / 16.4] * 3) / 2 + half_lsb(frames)[:6]
    assert np.all(np.abs(values[:, :6] - expected) <= tolerance)
    assert profile.stats.samples_missed == 29  # the last packet lost is not known yet
    assert profile.stats.crc_errors == 0


# -- fuzzing -------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    protocol=st.sampled_from(["struct", "struct-ble"]),
    checksum=st.sampled_from(["none", "sum8", "crc8", "crc16-ccitt", "crc32"]),
    chunks=st.lists(st.binary(max_size=60), max_size=30),
    learn=st.booleans(),
)
def test_any_bytes_never_raise(
    protocol: str, checksum: str, chunks: list[bytes], learn: bool
) -> None:
    """Whatever arrives, frames make sense and have the announced width."""
    layout: dict[str, Any] = {
        "sync": "aa",
        "format": "<BhHf",
        "fields": ["n", "a", "b", "c"],
        "counter": "n",
        "checksum": checksum,
    } | ({} if learn else {"rate_hz": 20})
    profile = open_profile(profile_config(protocol, **layout), device_id="fuzz")
    width = None
    for i, chunk in enumerate(chunks):
        for frame in profile.feed(chunk, i * 0.05):
            if frame.frame_type == FrameType.HELLO:
                assert hello_problem(frame.hello()) is None
                width = len(frame.hello().channels)
            else:
                assert frame.samples().shape[1] == width
                assert frame.gap >= 0
    assert profile.stats.bytes_in == sum(map(len, chunks))


_NOISE = st.binary(min_size=1, max_size=20).map(lambda b: b.replace(b"\xaa", b"\x00"))


@settings(max_examples=100, deadline=None)
@given(
    data=st.data(),
    rows=st.lists(st.tuples(*[st.integers(-32768, 32767)] * 7), min_size=1, max_size=20),
)
def test_noise_between_packets_never_changes_or_loses_a_sample(
    data: st.DataObject, rows: list[tuple[int, ...]]
) -> None:
    """Valid packets with noise (no sync byte) between them, cut anywhere: exactly the true
    samples, in order; a checksum makes every packet findable again."""
    stream = b""
    for seq, raw in enumerate(rows):
        if data.draw(st.booleans(), label="noise before"):
            stream += data.draw(_NOISE, label="noise")
        stream += packet(seq % 256, raw)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cuts"))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    profile, frames = decode(pieces)
    values = physical(frames)
    assert np.all(np.abs(values - np.array(rows) * SCALES) <= half_lsb(frames))
    assert len(values) == len(rows)
    assert profile.stats.samples_missed == 0


def test_a_ble_sensor_with_a_struct_layout_must_name_its_characteristic() -> None:
    """struct-ble has no default characteristic: the config says so by key, not at connect."""
    from edge_agent.config import parse_config
    from edge_agent.errors import ConfigError

    sensor = {"name": "b", "link": "ble", "address": "C0:FF:EE:00:00:01"}
    profile = {"protocol": "struct-ble", "format": "<3h", "fields": ["x", "y", "z"]}
    with pytest.raises(ConfigError, match="set notify_uuid"):
        parse_config({"sensors": [sensor | {"profile": profile}]}, source="t", environ={})
    config = parse_config(
        {"sensors": [sensor | {"profile": profile, "notify_uuid": "2a37"}]}, source="t", environ={}
    )
    assert config.sensors[0].profile.protocol == "struct-ble"


def test_every_config_example_in_the_sensors_guide_validates() -> None:
    """docs/sensors.md stays true: each ```toml block with sensors parses and validates."""
    import re
    import tomllib
    from pathlib import Path

    from edge_agent.config import parse_config

    text = (Path(__file__).parent.parent / "docs" / "sensors.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if "[[sensors]]" in b]
    assert len(blocks) >= 6
    protocols: set[str] = set()
    for block in blocks:
        config = parse_config(tomllib.loads(block), source="docs/sensors.md", environ={})
        protocols |= {s.profile.protocol for s in config.sensors}
    assert {"text", "struct", "struct-ble"} <= protocols
