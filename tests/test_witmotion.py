"""WitMotion profiles and the host clock, from byte vectors built with the datasheet formulas.

Expected bytes are computed here from the vendor's published formulas (WT901 datasheet
v20-0702 §5.1, WT901BLECL datasheet v20-0707 §6.1), independently of the emulator's encoder:
``raw = value / full_scale * 32768`` as little-endian int16, ``SUM = (0x55 + TYPE + bytes)
& 0xFF``. Then garbage, bad checksums, splits at every byte, and hypothesis fuzzing of every
decoder.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge.emulator import SyntheticMotion, encode_witmotion
from firmware_bridge.profiles import available_profiles, open_profile, profile_config
from firmware_bridge.profiles.base import HostClock, HostTimedProfile, RateLearner, snap_rate
from firmware_bridge.protocol.v1 import Frame, FrameType, Hello

ACC_G, GYRO_DPS, ANGLE_DEG = 16.0, 2000.0, 180.0


def raw(value: float, full_scale: float) -> int:
    """Datasheet: value = raw / 32768 * full_scale."""
    return max(-32768, min(32767, round(value / full_scale * 32768)))


def packet(kind: int, d0: int, d1: int, d2: int, d3: int) -> bytes:
    """An 11-byte WT901 packet: 0x55 TYPE, four int16 LE, SUM of the first ten bytes."""
    body = struct.pack("<BBhhhh", 0x55, kind, d0, d1, d2, d3)
    return body + bytes([sum(body) & 0xFF])


def cycle(acc: tuple[float, ...], gyro: tuple[float, ...], angle: tuple[float, ...]) -> bytes:
    """One output cycle of a WT901 at default content: 0x51, 0x52, 0x53 (+ temperature)."""
    return (
        packet(0x51, *(raw(a, ACC_G) for a in acc), 3653)  # 36.53 °C
        + packet(0x52, *(raw(w, GYRO_DPS) for w in gyro), 3653)
        + packet(0x53, *(raw(r, ANGLE_DEG) for r in angle), 0x1234)
    )


SAMPLES = [
    ((1.0, -0.5, 0.25), (250.0, -1000.0, 1999.0), (90.0, -45.0, 179.9)),
    ((0.0, 0.0, 1.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ((-15.9, 15.9, -2.0), (-1999.9, 0.5, 12.25), (-179.9, 30.0, 45.5)),
    ((0.001, -0.001, 0.98), (3.0, -3.0, 0.0), (1.5, -1.5, -90.0)),
]


def physical(frames: list[Frame]) -> np.ndarray[Any, Any]:
    """All IMU_BATCH samples of frames, times the scales announced in HELLO."""
    hello = next(f.hello() for f in frames if f.frame_type == FrameType.HELLO)
    scales = np.array([c.scale for c in hello.channels])
    parts = [f.samples() * scales for f in frames if f.frame_type == FrameType.IMU_BATCH]
    return np.concatenate(parts) if parts else np.empty((0, len(scales)))


def expected_rows(samples: list[Any]) -> np.ndarray[Any, Any]:
    return np.array([[*a, *g, *r] for a, g, r in samples])


LSB = np.array([ACC_G] * 3 + [GYRO_DPS] * 3 + [ANGLE_DEG] * 3) / 32768


def assert_within(actual: Any, expected: Any, tolerance: Any) -> None:
    """Element-wise |actual - expected| <= tolerance (per channel), shapes equal."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    worst = np.abs(actual - expected) - tolerance
    assert np.all(worst <= 1e-12), f"off by more than the tolerance:\n{actual}\n{expected}"


def decode(
    chunks: list[bytes], protocol: str = "witmotion", **options: Any
) -> tuple[Any, list[Frame]]:
    profile = open_profile(profile_config(protocol, rate_hz=10, **options), device_id="wt")
    frames: list[Frame] = []
    for i, chunk in enumerate(chunks):
        frames += profile.feed(chunk, 100.0 + i * 0.1)
    return profile, frames


def test_serial_packets_decode_to_datasheet_values() -> None:
    """Each cycle becomes one sample of nine channels in g, °/s and °, within half an LSB."""
    profile, frames = decode([cycle(*s) for s in SAMPLES])
    assert_within(physical(frames), expected_rows(SAMPLES), LSB / 2)
    hello = frames[0].hello()
    assert [c.name for c in hello.channels] == [
        "ax", "ay", "az", "gx", "gy", "gz", "roll", "pitch", "yaw"
    ]  # fmt: skip
    assert [c.unit for c in hello.channels] == ["g"] * 3 + ["deg/s"] * 3 + ["deg"] * 3
    assert hello.sample_rate_hz == 10.0
    assert profile.temperature_c == pytest.approx(36.53)
    assert profile.stats.crc_errors == profile.stats.resyncs == profile.stats.garbage_bytes == 0


def test_split_at_every_byte_and_all_at_once_agree() -> None:
    """Packet boundaries never need to line up with reads."""
    data = b"".join(cycle(*s) for s in SAMPLES * 5)
    _, whole = decode([data])
    _, bytewise = decode([data[i : i + 1] for i in range(len(data))])
    _, odd = decode([data[i : i + 7] for i in range(0, len(data), 7)])
    reference = physical(whole)
    assert len(reference) == 20
    np.testing.assert_array_equal(physical(bytewise), reference)
    np.testing.assert_array_equal(physical(odd), reference)


def test_bad_checksum_drops_that_cycle_only() -> None:
    """A corrupted gyro packet: its cycle is dropped whole (never half-filled), counted, and
    the next cycles decode normally."""
    good = [cycle(*s) for s in SAMPLES]
    broken = bytearray(good[1])
    broken[11 + 4] ^= 0x01  # a data byte of the 0x52 packet; its SUM no longer matches
    profile, frames = decode([good[0] + bytes(broken) + good[2] + good[3]])
    rows = expected_rows([SAMPLES[0], SAMPLES[2], SAMPLES[3]])
    assert_within(physical(frames), rows, LSB / 2)
    assert profile.stats.crc_errors == 1
    assert profile.stats.incomplete_samples == 1
    assert profile.stats.resyncs == 1


def test_garbage_between_packets_is_skipped_and_counted() -> None:
    """Line noise, a truncated packet and a fake header between cycles: skipped byte by byte,
    counted, and no sample is invented or lost apart from the cycle it interrupted."""
    noise = b"\x00\xff\x12" + packet(0x52, 1, 2, 3, 4)[:6] + b"\x55\x51\x00"
    data = cycle(*SAMPLES[0]) + noise + cycle(*SAMPLES[1]) + b"\xaa" * 5 + cycle(*SAMPLES[2])
    profile, frames = decode([data[:20], data[20:]])
    rows = expected_rows(SAMPLES[:3])
    assert_within(physical(frames), rows, LSB / 2)
    assert profile.stats.garbage_bytes == len(noise) + 5
    assert profile.stats.incomplete_samples == 0


def test_bytes_before_the_first_packet_are_not_errors() -> None:
    """Opening the port mid-packet is normal: no checksum error, no resync is reported, and
    the rest of the cycle that started before we listened is not made into a sample."""
    data = cycle(*SAMPLES[0])[5:] + cycle(*SAMPLES[1])
    profile, frames = decode([data])
    assert_within(physical(frames), expected_rows(SAMPLES[1:2]), LSB / 2)
    assert profile.stats.crc_errors == profile.stats.resyncs == 0
    assert profile.stats.garbage_bytes == 11 - 5  # the cut acc packet
    assert profile.stats.incomplete_samples == 0


def test_other_packet_types_are_ignored_and_outputs_are_configurable() -> None:
    """Default content of a WT901 also has 0x54 (mag) and maybe 0x50 (time): ignored unless
    configured; with outputs = [acc, mag] the sample has six channels in that order."""
    mag = packet(0x54, 300, -200, 100, 0)
    time_packet = packet(0x50, 0x0A18, 0x0C0B, 0x1E17, 500)
    data = b"".join(time_packet + cycle(*s) + mag for s in SAMPLES)
    profile, frames = decode([data])
    assert len(physical(frames)) == len(SAMPLES)
    assert profile.stats.unknown_packets == 2 * len(SAMPLES)

    profile, frames = decode([data], outputs=["mag", "acc"])
    hello = frames[0].hello()
    assert [c.name for c in hello.channels] == ["ax", "ay", "az", "mx", "my", "mz"]
    values = physical(frames)
    np.testing.assert_allclose(values[:, 3:], [[300, -200, 100]] * len(SAMPLES))
    np.testing.assert_allclose(values[:, :3], [s[0] for s in SAMPLES], atol=ACC_G / 32768 / 2)


def test_a_missing_packet_type_never_completes_a_sample() -> None:
    """outputs says gyro is sent but the device does not send it: nothing is made up, and
    the counter tells the technician (`sensors test` shows incomplete_samples)."""
    data = b"".join(cycle(*s)[:11] + cycle(*s)[22:] for s in SAMPLES)  # acc + angle only
    profile, frames = decode([data])
    assert not [f for f in frames if f.frame_type == FrameType.IMU_BATCH]
    assert profile.stats.incomplete_samples == len(SAMPLES) - 1


def ble_packet(acc: tuple[float, ...], gyro: tuple[float, ...], angle: tuple[float, ...]) -> bytes:
    """A 20-byte WT901BLE notification: 0x55 0x61 then nine int16 LE (acc, gyro, angle)."""
    values = [raw(a, ACC_G) for a in acc] + [raw(w, GYRO_DPS) for w in gyro]
    values += [raw(r, ANGLE_DEG) for r in angle]
    return struct.pack("<BB9h", 0x55, 0x61, *values)


def test_ble_packets_decode_to_datasheet_values() -> None:
    """One notification per packet, register replies (0x71) ignored, garbage skipped."""
    register_reply = struct.pack("<BBH8h", 0x55, 0x71, 0x3A, 360, 105, 122, 0, 0, 0, 0, 0)
    chunks = [ble_packet(*SAMPLES[0]), register_reply, b"\x01\x02\x03", ble_packet(*SAMPLES[1])]
    chunks += [ble_packet(*SAMPLES[2]) + ble_packet(*SAMPLES[3])]  # two in one read
    profile, frames = decode(chunks, "witmotion-ble")
    assert_within(physical(frames), expected_rows(SAMPLES), LSB / 2)
    assert profile.stats.unknown_packets == 1
    assert profile.stats.garbage_bytes == 3


def test_ble_stream_split_anywhere_resyncs_on_headers() -> None:
    """The same packets as one byte stream cut at odd places, with junk in between."""
    data = b"".join(ble_packet(*s) for s in SAMPLES) + b"\x00\x11" + ble_packet(*SAMPLES[0])
    chunks = [data[i : i + 13] for i in range(0, len(data), 13)]
    profile, frames = decode(chunks, "witmotion-ble")
    rows = expected_rows([*SAMPLES, SAMPLES[0]])
    assert_within(physical(frames), rows, LSB / 2)
    assert profile.stats.garbage_bytes == 2


# -- host clock and rate -------------------------------------------------------------------------


def test_host_clock_smooths_delivery_jitter() -> None:
    """100 Hz samples delivered in bursts with 1–30 ms of random latency: the stamps are
    evenly spaced and stay within the latency band of the true sample times."""
    rng = np.random.default_rng(7)
    clock = HostClock(0.01)
    true_index = 0
    stamps: list[float] = []
    while true_index < 3000:
        n = int(rng.integers(1, 8))
        true_last = (true_index + n - 1) * 0.01
        arrival = 50.0 + true_last + rng.uniform(0.001, 0.030)
        first, missed = clock.stamp(n, arrival)
        assert missed == 0
        stamps.extend(first + k * 0.01 for k in range(n))
        true_index += n
    offsets = np.array(stamps) - (50.0 + np.arange(len(stamps)) * 0.01)
    assert offsets[500:].max() - offsets[500:].min() < 0.012  # jitter was 29 ms wide
    assert 0.0 < offsets[500:].mean() < 0.030
    assert np.all(np.diff(stamps) > 0)


def test_host_clock_reports_samples_missed_in_an_outage() -> None:
    clock = HostClock(0.1)
    clock.stamp(1, 10.0)
    clock.stamp(1, 10.1)
    first, missed = clock.stamp(1, 13.1)  # 3 s of nothing at 10 Hz
    assert first == pytest.approx(13.1)
    assert missed == 29
    assert clock.resets == 1


def test_rate_is_learned_snapped_and_nothing_is_lost_meanwhile() -> None:
    """No rate configured: samples are held back for a second, then HELLO announces the
    nearest WT901 rate (a 1 % fast crystal still reads 50 Hz) and every held sample follows."""
    profile = open_profile(profile_config("witmotion"), device_id="wt")
    data = b"".join(cycle(*SAMPLES[i % 4]) for i in range(150))
    frames: list[Frame] = []
    for i in range(0, 150, 3):
        frames += profile.feed(data[i * 33 : (i + 3) * 33], 5.0 + (i + 2) / 50.5)
        if profile.stats.samples < 40:
            assert not frames
    hellos = [f.hello() for f in frames if f.frame_type == FrameType.HELLO]
    assert [h.sample_rate_hz for h in hellos] == [50.0]
    assert len(physical(frames)) == 150
    assert profile.stats.measured_rate_hz == pytest.approx(50.5, rel=0.02)


def test_rate_change_is_announced() -> None:
    """A device reconfigured from 10 Hz to 100 Hz while streaming: a new HELLO says so."""
    profile = open_profile(profile_config("witmotion-ble"), device_id="wt")
    packet_bytes = ble_packet(*SAMPLES[0])
    frames: list[Frame] = []
    t = 0.0
    for _ in range(30):
        t += 0.1
        frames += profile.feed(packet_bytes, t)
    for _ in range(600):
        t += 0.01
        frames += profile.feed(packet_bytes, t)
    rates = [f.hello().sample_rate_hz for f in frames if f.frame_type == FrameType.HELLO]
    assert rates == [10.0, 100.0]


def test_snap_rate_and_learner() -> None:
    assert snap_rate(9.7, (5.0, 10.0, 20.0)) == 10.0
    assert snap_rate(14.0, (5.0, 10.0, 20.0)) == 14.0
    learner = RateLearner(min_span_s=1.0, min_samples=5)
    learner.add(10, 0.0)
    assert learner.rate() is None
    for k in range(1, 21):
        learner.add(2, k * 0.1)
    assert learner.rate() == pytest.approx(20.0)


def test_timestamps_and_sequence_numbers_are_synthesized() -> None:
    """IMU_BATCH frames carry consecutive seq and µs timestamps one period apart per sample."""
    _, frames = decode([cycle(*s) for s in SAMPLES])
    batches = [f for f in frames if f.frame_type == FrameType.IMU_BATCH]
    assert [f.seq for f in frames] == list(range(len(frames)))
    steps = np.diff([f.timestamp_us for f in batches])
    np.testing.assert_allclose(steps, 100_000, atol=2_000)
    assert all(f.gap == 0 for f in batches)


# -- the emulator speaks what the profiles read --------------------------------------------------


@pytest.mark.parametrize("wire", ["witmotion", "witmotion-ble"])
def test_emulated_device_round_trips(wire: str) -> None:
    """The emulator's WitMotion encoder and the profiles agree on every value."""
    source = SyntheticMotion(50.0, seed=2)
    data = encode_witmotion(source, 500, wire=wire)
    _, frames = decode([data[i : i + 512] for i in range(0, len(data), 512)], wire)
    values = physical(frames)
    assert len(values) == 500
    reference, _ = SyntheticMotion(50.0, seed=2).read(500)
    np.testing.assert_allclose(values[:, :3], reference[:, :3] / 9.80665, atol=ACC_G / 32768)
    np.testing.assert_allclose(values[:, 3:6], np.degrees(reference[:, 3:]), atol=GYRO_DPS / 32768)


# -- fuzzing -------------------------------------------------------------------------------------


_LAYOUT = {"rate_hz": 10, "sync": "55", "format": "<3hB", "fields": ["x", "y", "z", "n"]}
FUZZ_OPTIONS: dict[str, dict[str, Any]] = {
    "v1": {},
    "struct": _LAYOUT | {"counter": "n", "checksum": "sum8"},
    "struct-ble": _LAYOUT,
}
"""Options of the profiles that need more than a rate."""


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(protocol=st.sampled_from(available_profiles()), chunks=st.lists(st.binary(max_size=90)))
def test_any_bytes_never_raise(protocol: str, chunks: list[bytes]) -> None:
    """Every decoder takes any input; every frame it returns is well-formed."""
    options = FUZZ_OPTIONS.get(protocol, {"rate_hz": 10})
    profile = open_profile(profile_config(protocol, **options), device_id="fuzz")
    hello: Hello | None = None
    for i, chunk in enumerate(chunks):
        for frame in profile.feed(chunk, i * 0.1):
            if frame.frame_type == FrameType.HELLO and protocol != "v1":
                hello = frame.hello()
            elif frame.frame_type == FrameType.IMU_BATCH and hello is not None:
                assert frame.samples().shape[1] == len(hello.channels)
    assert profile.stats.bytes_in == sum(map(len, chunks))


_NO_HEADER = st.binary(min_size=1, max_size=15).map(lambda b: b.replace(b"\x55", b"\x00"))


@settings(max_examples=100, deadline=None)
@given(
    data=st.data(),
    values=st.lists(st.lists(st.integers(-32768, 32767), min_size=9, max_size=9), min_size=1,
                    max_size=12),
    protocol=st.sampled_from(["witmotion", "witmotion-ble"]),
)  # fmt: skip
def test_garbage_between_packets_never_makes_up_samples(
    data: st.DataObject, values: list[list[int]], protocol: str
) -> None:
    """Valid packets with garbage (no header bytes) between some of them, cut anywhere:
    the decoded samples are the true ones in order, missing at most one per garbage run."""
    packets: list[bytes] = []
    for v in values:
        if protocol == "witmotion":
            packets += [
                packet(0x51, *v[0:3], 0),
                packet(0x52, *v[3:6], 0),
                packet(0x53, *v[6:9], 0),
            ]
        else:
            packets.append(struct.pack("<BB9h", 0x55, 0x61, *v))
    stream = b""
    runs = 0
    for p in packets:
        if data.draw(st.booleans(), label="garbage before"):
            stream += data.draw(_NO_HEADER, label="garbage")
            runs += 1
        stream += p
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cuts"))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    profile = open_profile(profile_config(protocol, rate_hz=10), device_id="fuzz")
    got: list[list[int]] = []
    for i, piece in enumerate(pieces):
        for frame in profile.feed(piece, i * 0.01):
            if frame.frame_type == FrameType.IMU_BATCH:
                got += frame.samples().tolist()
    assert isinstance(profile, HostTimedProfile)
    expected = iter(values)
    for sample in got:  # a subsequence of the truth, in order
        assert any(sample == v for v in expected)
    assert len(got) >= len(values) - runs
