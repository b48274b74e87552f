"""Frames are checked for sense, not only syntax: a HELLO that parses but announces nonsense
(a NaN, infinite, zero or absurd sample rate, no channels or too many, a scale that is not
a usable number) is refused with `sensor.rejected`, and the stream waits for a good one.

Hypothesis feeds arbitrary HELLO field values and arbitrary bytes through every profile's
decoder into a real `SensorStream` running the shipped anomaly model; the end-to-end test
runs a real daemon process with one pty sensor announcing NaN, one inf and one 0 Hz while a
witness sensor keeps committing windows to the real SQLite file.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sqlite3
import struct
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.inference.bundle import find_bundle, shipped_models_dir
from edge_agent.inference.runtime import open_runtime
from edge_agent.pipeline.stream import ModelSlot, SensorStream
from firmware_bridge.emulator import DeviceEmulator, SyntheticMotion
from firmware_bridge.profiles import available_profiles, open_profile, profile_config
from firmware_bridge.profiles.base import HostTimedProfile
from firmware_bridge.protocol.v1 import (
    MAX_CHANNELS,
    MAX_SAMPLE_RATE_HZ,
    MAX_SCALE,
    MIN_SAMPLE_RATE_HZ,
    MIN_SCALE,
    ChannelInfo,
    CropAssembler,
    Decoder,
    Frame,
    FrameType,
    Hello,
    ProtocolError,
    encode_frame,
    hello_problem,
    imu_payload,
)
from tests.broker import wait_for
from tests.daemon_proc import events, start_daemon, stop_daemon, write_config
from tests.test_witmotion import FUZZ_OPTIONS

MODEL = "imu-anomaly@1.0.0"  # 10 Hz, 20-sample windows, hop 10: one window a second
SIX = ("ax", "ay", "az", "gx", "gy", "gz")
UNITS = ("m/s^2",) * 3 + ("rad/s",) * 3


@functools.cache
def _slot() -> ModelSlot:
    bundle = find_bundle(MODEL, [shipped_models_dir()])
    return ModelSlot(bundle, open_runtime(bundle))


def _text(value: str) -> bytes:
    raw = value.encode("utf-8")[:255]
    return bytes((len(raw),)) + raw


def raw_hello(rate: float, channels: list[tuple[str, str, float]], device: str = "d") -> bytes:
    """A HELLO payload with any field values (the encoder's own checks bypassed)."""
    parts = [_text(device), _text("fw"), struct.pack("<fB", rate, len(channels))]
    for name, unit, scale in channels:
        parts += [_text(name), _text(unit), struct.pack("<f", scale)]
    return b"".join(parts)


def good_channels(scale: float = 0.01) -> list[tuple[str, str, float]]:
    return [(name, unit, scale) for name, unit in zip(SIX, UNITS, strict=True)]


def frame(kind: int, payload: bytes, seq: int = 0, ts: int = 0) -> Frame:
    return Frame(kind, 0, seq, ts, payload)


def imu(n: int, c: int, seq: int = 1, ts: int = 0) -> Frame:
    values = (np.arange(n * c, dtype=np.int64).reshape(n, c) % 200 - 100).astype(np.int16)
    return frame(FrameType.IMU_BATCH, imu_payload(values), seq, ts)


def notices(stream: SensorStream, kind: str) -> list[dict[str, object]]:
    return [body for what, _, body in stream.notices if what == kind]


# -- the rule itself -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "ok"),
    [
        (math.nan, False),
        (math.inf, False),
        (-math.inf, False),
        (-50.0, False),
        (0.05, False),
        (MIN_SAMPLE_RATE_HZ, True),
        (100.0, True),
        (MAX_SAMPLE_RATE_HZ, True),
        (20_001.0, False),
        (3e38, False),
        (0.0, True),  # a stream without samples (a camera); refused where models run
    ],
)
def test_sample_rate_range(rate: float, ok: bool) -> None:
    hello = Hello("d", "fw", rate, tuple(ChannelInfo(*c) for c in good_channels()))
    problem = hello_problem(hello)
    assert (problem is None) is ok, problem
    if not ok:
        assert "sample rate" in (problem or "")


@pytest.mark.parametrize(
    ("channels", "needle"),
    [
        ([], "0 channels"),
        ([(f"c{i}", "", 1.0) for i in range(MAX_CHANNELS + 1)], f"{MAX_CHANNELS + 1} channels"),
        ([("ax", "g", 1.0), ("ax", "g", 1.0)], "twice"),
        ([(" ", "g", 1.0)], "no name"),
        ([("ax", "g", math.nan)], "scale"),
        ([("ax", "g", math.inf)], "scale"),
        ([("ax", "g", 0.0)], "scale"),
        ([("ax", "g", MAX_SCALE * 10)], "scale"),
        ([("ax", "g", MIN_SCALE / 10)], "scale"),
    ],
)
def test_channel_rules(channels: list[tuple[str, str, float]], needle: str) -> None:
    problem = hello_problem(Hello("d", "fw", 50.0, tuple(ChannelInfo(*c) for c in channels)))
    assert problem is not None
    assert needle in problem


def test_negative_scales_and_the_widest_layout_are_fine() -> None:
    channels = [(f"c{i}", "", -0.5 if i % 2 else 2.0) for i in range(MAX_CHANNELS)]
    assert hello_problem(Hello("d", "fw", 1.0, tuple(ChannelInfo(*c) for c in channels))) is None


# -- the stream refuses, reports once, waits, and recovers ----------------------------------


@pytest.mark.parametrize("rate", [math.nan, math.inf, 0.0, -1.0, 1e9])
def test_bad_rate_is_refused_and_the_stream_waits_for_a_good_hello(rate: float) -> None:
    stream = SensorStream("victim", [_slot()])
    bad = frame(FrameType.HELLO, raw_hello(rate, good_channels()))
    # Before today's fix these frames ended the pipeline (round(nan) / 1.0 / 0).
    assert stream.ingest([bad, imu(10, 6, 1), imu(10, 6, 2)], 1.0, time.time()) == []
    rejected = notices(stream, "sensor.rejected")
    assert len(rejected) == 1
    assert "sample rate" in str(rejected[0]["reason"])
    assert stream.hello is None
    assert stream.stats.hellos_rejected == 1
    assert stream.stats.samples_before_hello == 20
    assert all("refused" in m.reason for m in stream.attached)

    # The device repeats the same bad HELLO: counted, not reported again.
    stream.ingest([bad], 2.0, time.time())
    assert len(notices(stream, "sensor.rejected")) == 1
    assert stream.stats.hellos_rejected == 2

    # A good HELLO: windows are cut again, every value finite.
    good = frame(FrameType.HELLO, raw_hello(10.0, good_channels()), seq=3)
    frames = [good] + [imu(10, 6, 4 + i, ts=i * 1_000_000) for i in range(4)]
    emitted = stream.ingest(frames, 3.0, time.time())
    assert stream.hello is not None
    assert stream.refused is None
    assert emitted
    assert all(np.isfinite(e.cut.windows).all() for e in emitted)


def test_a_camera_hello_of_0_hz_is_fine_without_models_and_its_imu_frames_are_refused() -> None:
    stream = SensorStream("cam", [])
    hello = frame(FrameType.HELLO, raw_hello(0.0, [("face", "", 1.0)]))
    stream.ingest([hello], 1.0, time.time())
    assert notices(stream, "sensor.hello")
    assert not notices(stream, "sensor.rejected")
    malformed = stream.stats.malformed
    assert stream.ingest([imu(5, 1)], 2.0, time.time()) == []  # no 1 / 0 Hz
    assert stream.stats.malformed == malformed + 1


def test_a_layout_change_to_nonsense_forgets_the_old_layout() -> None:
    stream = SensorStream("s", [_slot()])
    stream.ingest([frame(FrameType.HELLO, raw_hello(10.0, good_channels()))], 1.0, time.time())
    assert stream.hello is not None
    bad = raw_hello(10.0, good_channels(scale=math.nan))
    stream.ingest([frame(FrameType.HELLO, bad, seq=1)], 2.0, time.time())
    assert stream.hello is None
    assert "scale" in str(notices(stream, "sensor.rejected")[0]["reason"])


_ANY_F32 = st.floats(width=32)  # NaN, ±inf, 0, negative, subnormal, huge
_ODD_RATES = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, -100.0, 1e-30, 3e38])
_NAMES = st.sampled_from(["ax", "ay", "az", "gx", "gy", "gz", "", " ", "x"]) | st.text(max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rate=_ANY_F32 | _ODD_RATES | st.sampled_from([10.0, 20.0, 100.0]),
    channels=st.lists(
        st.tuples(_NAMES, st.sampled_from(["m/s^2", "rad/s", "g", ""]), _ANY_F32),
        max_size=70,
    ),
    batches=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 80)), max_size=4),
)
def test_any_hello_field_values_never_break_the_stream(
    rate: float, channels: list[tuple[str, str, float]], batches: list[tuple[int, int]]
) -> None:
    """Whatever a HELLO announces, ingest never raises: a HELLO with nonsense is refused with
    one `sensor.rejected` naming the reason, a sensible one is taken, and every window cut
    afterwards holds finite values only."""
    stream = SensorStream("fuzz", [_slot()])
    frames = [frame(FrameType.HELLO, raw_hello(rate, channels))]
    frames += [imu(n, c, seq=i + 1, ts=i * 100_000) for i, (n, c) in enumerate(batches) if c]
    emitted = stream.ingest(frames, 1.0, time.time())
    parsed = Hello("d", "fw", struct.unpack("<f", struct.pack("<f", rate))[0],
                   tuple(ChannelInfo(n, u, struct.unpack("<f", struct.pack("<f", s))[0])
                         for n, u, s in ((n.encode()[:255].decode("utf-8", "ignore"), u, s)
                                         for n, u, s in channels)))  # fmt: skip
    expected_problem = hello_problem(parsed) or ("0 Hz" if parsed.sample_rate_hz == 0 else None)
    if expected_problem is None:
        assert stream.hello is not None
        assert not notices(stream, "sensor.rejected")
    else:
        assert stream.hello is None
        assert len(notices(stream, "sensor.rejected")) == 1
        assert emitted == []
    for e in emitted:
        assert np.isfinite(e.cut.windows).all()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    protocol=st.sampled_from(available_profiles()),
    chunks=st.lists(st.binary(max_size=200), max_size=10),
)
def test_any_bytes_through_each_decoder_into_a_stream_never_raise(
    protocol: str, chunks: list[bytes]
) -> None:
    """Arbitrary bytes into every profile's decoder, its frames into a stream with a model:
    nothing raises, and only finite windows come out."""
    options = FUZZ_OPTIONS.get(protocol, {"rate_hz": 10})
    profile = open_profile(profile_config(protocol, **options), device_id="fuzz")
    stream = SensorStream("fuzz", [_slot()])
    for i, chunk in enumerate(chunks):
        frames = profile.feed(chunk, i * 0.1)
        for e in stream.ingest(frames, i * 0.1, time.time()):
            assert np.isfinite(e.cut.windows).all()
    assert profile.stats.bytes_in == sum(map(len, chunks))


@settings(max_examples=150, deadline=None)
@given(
    protocol=st.sampled_from(["witmotion", "witmotion-ble"]),
    rate=st.floats() | st.sampled_from([0.0, 0.05, 0.1, 10_000.0, 10_001.0, 1e300]),
)
def test_host_timed_profiles_only_announce_rates_that_make_sense(
    protocol: str, rate: float
) -> None:
    """A WitMotion profile's HELLO comes from its configured rate: any value is either refused
    by the config or gives a HELLO the gateway accepts."""
    try:
        config = profile_config(protocol, rate_hz=rate)
    except ValueError:
        assert not (math.isfinite(rate) and MIN_SAMPLE_RATE_HZ <= rate <= 10_000)
        return
    profile = open_profile(config, device_id="fuzz")
    assert isinstance(profile, HostTimedProfile)
    hello = profile.hello()
    assert hello is not None
    assert hello_problem(hello) is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from([FrameType.FACE_CROP, FrameType.EMBEDDING, FrameType.HELLO,
                          FrameType.STATUS, FrameType.IMU_BATCH]),
    payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=4),
)  # fmt: skip
def test_any_payload_of_any_type_is_parsed_or_refused_as_a_protocol_error(
    kind: int, payloads: list[bytes]
) -> None:
    """Each parser (HELLO, STATUS, IMU_BATCH, FACE_CROP, EMBEDDING) turns any payload into
    either a value or a ProtocolError; embeddings that parse are finite."""
    assembler = CropAssembler(max_bytes=4096)
    decoder = Decoder()
    wire = b"".join(encode_frame(kind, 1, i, i, p) for i, p in enumerate(payloads))
    for i, f in enumerate(decoder.feed(wire)):
        if kind == FrameType.FACE_CROP:
            assembler.feed(f, float(i))
            continue
        with contextlib.suppress(ProtocolError):
            if kind == FrameType.EMBEDDING:
                assert np.isfinite(f.embedding().values).all()
            elif kind == FrameType.HELLO:
                f.hello()
            elif kind == FrameType.STATUS:
                f.status()
            else:
                f.samples()
    assert assembler.stats.chunks == (len(payloads) if kind == FrameType.FACE_CROP else 0)


# -- end to end: one bad sensor, a witness that carries on ------------------------------------


class RawDevice:
    """A device on a real pseudo-terminal that sends the frames it is given, every 20 ms.

    HELLO repeats every 0.2 s, as firmware does, so opening the port mid-stream still
    sees one.
    """

    def __init__(self, hello: bytes, channels: int = 6) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        self._slave = slave
        self._hello = hello
        self._channels = channels
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raw-device", daemon=True)

    def __enter__(self) -> RawDevice:
        os.set_blocking(self.master, False)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        os.close(self.master)
        os.close(self._slave)

    def _run(self) -> None:
        seq, sample, next_hello = 0, 0, 0.0
        while not self._stop.wait(0.02):
            out = b""
            if time.monotonic() >= next_hello:
                out += encode_frame(FrameType.HELLO, 0, seq, 0, self._hello)
                seq += 1
                next_hello = time.monotonic() + 0.2
            values = np.full((2, self._channels), 100, dtype=np.int16)
            out += encode_frame(FrameType.IMU_BATCH, 0, seq, sample * 10_000, imu_payload(values))
            seq, sample = seq + 1, sample + 2
            with contextlib.suppress(OSError):  # the reader is not there yet: drop, as a UART
                os.write(self.master, out)
            with contextlib.suppress(OSError):
                os.read(self.master, 4096)


def _results(db: Path, sensor: str) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        (n,) = conn.execute("SELECT count(*) FROM results WHERE sensor = ?", (sensor,)).fetchone()
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        conn.close()
    return int(n)


def _rejected(db: Path) -> dict[str, str]:
    try:
        rows = events(db, "sensor.rejected")
    except sqlite3.OperationalError:
        return {}
    return {str(sensor): str(body.get("reason")) for _, _, sensor, body in rows}


@contextlib.contextmanager
def _devices(rates: dict[str, float]) -> Iterator[dict[str, RawDevice]]:
    with contextlib.ExitStack() as stack:
        yield {
            name: stack.enter_context(RawDevice(raw_hello(rate, good_channels())))
            for name, rate in rates.items()
        }


def test_nan_inf_and_zero_hz_hellos_are_refused_while_a_witness_keeps_committing(
    tmp_path: Path,
) -> None:
    """Three pty sensors announce NaN, inf and 0 Hz; the daemon refuses each with
    `sensor.rejected`, stays up, and the witness sensor's windows keep being committed."""
    db = tmp_path / "agent.db"
    rates = {"nan": math.nan, "inf": math.inf, "zero": 0.0}
    witness = DeviceEmulator(SyntheticMotion(100.0, seed=3), device_id="witness")
    with witness, _devices(rates) as devices:
        sensors = [
            {"name": "witness", "link": "serial", "port": witness.tty_path, "models": [MODEL]}
        ] + [
            {"name": name, "link": "serial", "port": dev.path, "models": [MODEL]}
            for name, dev in devices.items()
        ]
        config = write_config(tmp_path / "agent.toml", db=db, sensors=sensors)
        log = tmp_path / "daemon.log"
        proc = start_daemon(config, log)
        try:
            wait_for(lambda: set(_rejected(db)) >= set(rates), 30, "three sensor.rejected")
            reasons = _rejected(db)
            assert all("sample rate" in reasons[n] for n in ("nan", "inf")), reasons
            assert "0 Hz" in reasons["zero"], reasons
            before = _results(db, "witness")
            wait_for(lambda: _results(db, "witness") >= before + 3, 20, "witness windows")
            assert proc.poll() is None, log.read_text()
            assert all(_results(db, name) == 0 for name in rates)
        finally:
            code = stop_daemon(proc, log)
    assert code == 0, log.read_text()
    # Each bad HELLO repeats every 0.2 s; it is reported once per sensor, then counted.
    assert len(events(db, "sensor.rejected")) == len(rates)
