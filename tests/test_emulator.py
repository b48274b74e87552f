"""The device emulator: frames on a real pty read with pyserial, pacing, hot-plug, recordings."""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import serial

from firmware_bridge.emulator import (
    GRAVITY,
    CsvRecording,
    DeviceEmulator,
    RecordingError,
    SyntheticMotion,
    encode_stream,
    run_simulator,
)
from firmware_bridge.protocol.v1 import Decoder, Frame, FrameType

DEADLINE_S = 10.0


def read_until(
    port: serial.Serial,
    decoder: Decoder,
    done: Callable[[list[Frame]], bool],
    timeout_s: float = DEADLINE_S,
) -> list[Frame]:
    """Read and decode until ``done(frames so far)`` holds; fail at the deadline."""
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout_s
    while not done(frames):
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s; got {len(frames)} frames")
        frames += decoder.feed(port.read(65536))
    return frames


def imu_samples(frames: list[Frame]) -> int:
    return sum(len(f.samples()) for f in frames if f.frame_type == FrameType.IMU_BATCH)


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.fixture
def open_port() -> Iterator[Callable[[str], serial.Serial]]:
    ports: list[serial.Serial] = []

    def opener(path: str) -> serial.Serial:
        port = serial.Serial(path, timeout=0.02)
        ports.append(port)
        return port

    yield opener
    for port in ports:
        port.close()


# -- streaming on a pty -------------------------------------------------------------------


def test_frames_on_the_pty_carry_the_source_samples(
    open_port: Callable[[str], serial.Serial],
) -> None:
    rate = 1000.0
    reference, _ = SyntheticMotion(rate, seed=7).read(20_000)
    with DeviceEmulator(SyntheticMotion(rate, seed=7), batch=25, hello_every_s=0.1) as emu:
        port = open_port(emu.tty_path)
        decoder = Decoder()
        frames = read_until(
            port,
            decoder,
            lambda fs: imu_samples(fs) >= 500 and any(f.frame_type == FrameType.HELLO for f in fs),
        )
    hello = next(f.hello() for f in frames if f.frame_type == FrameType.HELLO)
    assert hello == emu.hello
    assert [c.name for c in hello.channels] == ["ax", "ay", "az", "gx", "gy", "gz"]
    assert hello.sample_rate_hz == rate
    scales = np.array([c.scale for c in hello.channels])
    checked = 0
    for frame in frames:
        if frame.frame_type != FrameType.IMU_BATCH:
            continue
        start = round(frame.timestamp_us * rate / 1e6)
        samples = frame.samples()
        expected = reference[start : start + len(samples)]
        # Within half an LSB of the source: the only loss is int16 rounding.
        assert np.all(np.abs(samples * scales - expected) < scales * 0.501)
        checked += len(samples)
    assert checked >= 500
    assert decoder.stats.crc_errors == decoder.stats.malformed == 0


def test_real_time_mode_paces_at_the_sample_rate(
    open_port: Callable[[str], serial.Serial],
) -> None:
    rate, wanted = 500.0, 750
    with DeviceEmulator(SyntheticMotion(rate, seed=1), batch=10) as emu:
        port = open_port(emu.tty_path)
        decoder = Decoder()
        read_until(port, decoder, lambda fs: imu_samples(fs) > 0)  # sync to a frame edge
        started = time.monotonic()
        read_until(port, decoder, lambda fs: imu_samples(fs) >= wanted)
        elapsed = time.monotonic() - started
    measured = wanted / elapsed
    assert 0.7 * rate < measured < 1.3 * rate, f"{measured:.0f} samples/s, wanted {rate:.0f}"


def test_max_rate_mode_outruns_real_time(open_port: Callable[[str], serial.Serial]) -> None:
    rate, wanted = 100.0, 20_000  # 200 s of data in real time
    with DeviceEmulator(SyntheticMotion(rate, seed=2), batch=32, max_rate=True) as emu:
        port = open_port(emu.tty_path)
        decoder = Decoder()
        started = time.monotonic()
        frames = read_until(port, decoder, lambda fs: imu_samples(fs) >= wanted)
        elapsed = time.monotonic() - started
    assert elapsed < 0.25 * wanted / rate
    assert decoder.stats.seq_gaps == decoder.stats.crc_errors == 0
    assert emu.frames_dropped == 0
    seqs = [f.seq for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_a_stalled_reader_loses_whole_frames_and_sees_the_gap(
    open_port: Callable[[str], serial.Serial],
) -> None:
    with DeviceEmulator(SyntheticMotion(20_000, seed=3), batch=100, status_every_s=0.05) as emu:
        port = open_port(emu.tty_path)
        decoder = Decoder()
        read_until(port, decoder, lambda fs: imu_samples(fs) > 0)
        dropped_before = emu.frames_dropped
        wait_for(lambda: emu.frames_dropped > dropped_before + 5, "the pty buffer to overflow")
        frames = read_until(
            port,
            decoder,
            lambda fs: any(
                f.frame_type == FrameType.STATUS and f.status().dropped_samples for f in fs
            ),
        )
    assert any(f.gap > 0 for f in frames)
    stats = decoder.stats
    assert 0 < stats.frames_lost <= emu.frames_dropped
    # Whole frames are dropped, never cut: nothing fails the CRC or the layout checks.
    assert stats.crc_errors == stats.malformed == stats.resyncs == 0
    assert emu.samples_dropped > 0
    assert emu.bytes_dropped > 0


# -- hot-plug and lifecycle ---------------------------------------------------------------


def test_unplug_and_replug_keep_the_symlink_live_and_seq_continuing(
    tmp_path: Path, open_port: Callable[[str], serial.Serial]
) -> None:
    link = tmp_path / "by-id" / "usb-emu-0"
    with DeviceEmulator(SyntheticMotion(1000, seed=4), batch=10, link_path=link) as emu:
        assert os.readlink(link) == emu.tty_path
        port = open_port(str(link))
        decoder = Decoder()
        read_until(port, decoder, lambda fs: imu_samples(fs) >= 50)
        last_seq = decoder.last_seq(0)
        assert last_seq is not None

        emu.unplug()
        with pytest.raises(RuntimeError, match="no tty"):
            _ = emu.tty_path
        assert not os.path.lexists(link)
        with pytest.raises(serial.SerialException):  # noqa: PT012  # the read loop is the point
            deadline = time.monotonic() + DEADLINE_S
            while time.monotonic() < deadline:
                port.read(65536)
        port.close()

        emu.replug()
        assert emu.plugged
        assert os.readlink(link) == emu.tty_path
        assert os.path.exists(link)  # points at a live tty
        decoder.reset()
        port = open_port(str(link))
        frames = read_until(port, decoder, lambda fs: imu_samples(fs) >= 50)
    first = frames[0]
    assert 0 < (first.seq - last_seq) % 2**32 < 2**31, "seq must continue after a replug"
    assert first.gap == (first.seq - last_seq - 1) % 2**32
    assert decoder.stats.duplicates == 0
    assert not os.path.lexists(link), "close() removes the symlink"


def test_close_twice_and_lifecycle_errors() -> None:
    emu = DeviceEmulator(SyntheticMotion(100))
    with pytest.raises(RuntimeError):
        _ = emu.tty_path
    emu.start()
    with pytest.raises(RuntimeError, match="already started"):
        emu.start()
    emu.unplug()
    with pytest.raises(RuntimeError, match="no tty"):
        _ = emu.tty_path
    emu.close()
    emu.close()
    emu.stop()
    assert not emu.running
    with pytest.raises(RuntimeError):
        emu.start()
    with pytest.raises(RuntimeError):
        emu.replug()


def test_unclosed_emulator_warns_and_stops() -> None:
    emu = DeviceEmulator(SyntheticMotion(100))
    emu.start()
    thread = emu._thread
    assert thread is not None
    with pytest.warns(ResourceWarning, match="unclosed"):
        del emu  # the last reference: collected right here
    thread.join(DEADLINE_S)
    assert not thread.is_alive()


def test_symlink_never_replaces_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "not-a-link"
    path.write_text("keep me")
    emu = DeviceEmulator(SyntheticMotion(100), link_path=path)
    with pytest.raises(FileExistsError):
        emu.start()
    emu.close()
    assert path.read_text() == "keep me"


# -- encode_stream and synthetic motion ---------------------------------------------------


def test_encode_stream_is_reproducible_and_decodes_completely() -> None:
    wire = encode_stream(SyntheticMotion(200, seed=5), 1000, 32)
    assert wire == encode_stream(SyntheticMotion(200, seed=5), 1000, 32)
    decoder = Decoder()
    frames = decoder.feed(wire)
    assert frames[0].frame_type == FrameType.HELLO
    imu = frames[1:]
    assert [len(f.samples()) for f in imu] == [32] * 31 + [8]
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert [f.timestamp_us for f in imu] == [i * 32 * 5000 for i in range(32)]
    assert decoder.stats.bytes_in == len(wire)


def test_encode_stream_adds_periodic_hello_and_status() -> None:
    wire = encode_stream(
        SyntheticMotion(100, seed=5), 1000, 10, hello_every_s=2.0, status_every_s=5.0
    )
    types = [f.frame_type for f in Decoder().feed(wire)]
    assert types.count(FrameType.HELLO) == 5  # t = 0, 2, 4, 6, 8 s
    assert types.count(FrameType.STATUS) == 1  # t = 5 s
    assert types.count(FrameType.IMU_BATCH) == 100


def test_synthetic_motion_does_not_depend_on_how_it_is_read() -> None:
    whole, labels = SyntheticMotion(100, seed=9, segment_s=2).read(1000)
    source = SyntheticMotion(100, seed=9, segment_s=2)
    parts = [source.read(n) for n in (1, 299, 400, 300)]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), whole)
    assert [label for p in parts for label in p[1]] == labels
    skipped = SyntheticMotion(100, seed=9, segment_s=2)
    skipped.skip(600)
    np.testing.assert_array_equal(skipped.read(400)[0], whole[600:])


def test_synthetic_motion_is_physically_plausible() -> None:
    rate = 100.0
    source = SyntheticMotion(rate, seed=11, segment_s=20)
    values, labels = source.read(int(600 * rate))
    assert set(labels) == {"standing", "sitting", "lying", "walking", "running"}
    labels_array = np.array(labels)
    magnitude = np.linalg.norm(values[:, :3], axis=1)
    for still in ("standing", "sitting", "lying"):
        assert abs(np.median(magnitude[labels_array == still]) - GRAVITY) < 0.2
    for gait, low, high in (("walking", 1.6, 2.3), ("running", 2.4, 3.2)):
        vertical = values[labels_array == gait, 0]
        spectrum = np.abs(np.fft.rfft(vertical - vertical.mean()))
        frequency = np.fft.rfftfreq(len(vertical), 1 / rate)[np.argmax(spectrum)]
        assert low < frequency < high, (gait, frequency)
    assert (
        values[labels_array == "running", 0].std() > 2 * values[labels_array == "walking", 0].std()
    )
    upright = values[labels_array == "standing"]
    assert np.median(upright[:, 0]) > 9.0  # x points up when standing
    assert np.abs(values[:, 3:]).max() < math.radians(2000)


# -- CSV recordings -----------------------------------------------------------------------


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "rec.csv"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_csv_recording_parses_channels_units_rate_and_labels(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# recorded on bench 3\n"
        "timestamp,ax,ay,az[g],temp,label\n"
        "0.00,0.1,0.2,1.0,20,walking\n"
        "\n"
        "0.01,0.1,0.2,1.0,20,\n"
        "0.02,0.1,0.2,1.0,20,walking\n"
        "0.04,0.1,0.2,1.0,20,sitting\n",
    )
    recording = CsvRecording(path)
    assert recording.channels == ("ax", "ay", "az", "temp")
    assert recording.units == ("m/s^2", "m/s^2", "g", "")
    assert recording.rate_hz == pytest.approx(100.0)
    assert recording.labels == ["walking", None, "walking", "sitting"]
    assert len(recording) == 4
    values, labels = recording.read(6)  # loops around
    assert values.shape == (6, 4)
    assert values.dtype == np.float32
    assert labels == ["walking", None, "walking", "sitting", "walking", None]
    assert recording.with_offset(3).read(1)[1] == ["sitting"]
    recording.skip(1)
    assert recording.read(1)[1] == ["sitting"]  # read(6) left it at 2, skip(1) moved to 3
    assert recording.full_scale[3] == pytest.approx(40.0)  # no known unit: twice the peak


def test_csv_recording_streams_through_the_emulator(
    tmp_path: Path, open_port: Callable[[str], serial.Serial]
) -> None:
    rows = "\n".join(f"{i / 200:.3f},{np.sin(i / 10):.4f},{i % 7 - 3}" for i in range(400))
    recording = CsvRecording(write(tmp_path, f"timestamp,ax,gz\n{rows}\n"))
    with DeviceEmulator(recording, device_id="bench", hello_every_s=0.05) as emu:
        assert emu.rate_hz == pytest.approx(200.0)
        port = open_port(emu.tty_path)
        frames = read_until(
            port, Decoder(), lambda fs: any(f.frame_type == FrameType.HELLO for f in fs)
        )
    hello = next(f.hello() for f in frames if f.frame_type == FrameType.HELLO)
    assert hello.device_id == "bench"
    assert [(c.name, c.unit) for c in hello.channels] == [("ax", "m/s^2"), ("gz", "rad/s")]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("", None, "no header row"),
        ("time,ax\n0,1\n0.1,1\n", 1, "first column must be 'timestamp'"),
        ("timestamp\n0\n0.1\n", 1, "no channel columns"),
        ("timestamp,ax,ax\n0,1,1\n0.1,1,1\n", 1, "channel 'ax' appears twice"),
        ("timestamp,ax,label,label\n", 1, "a second 'label' column"),
        ("timestamp,a[x\n0,1\n0.1,1\n", 1, "is not a channel name or 'name[unit]'"),
        ("timestamp,ax\n0,1\n", None, "at least 2 are needed"),
        ("timestamp,ax,ay\n0,1,2\n0.01,1\n", 3, "expected 3 fields like the header, found 2"),
        ("timestamp,ax\n0,1\n0.01,abc\n", 3, "column 'ax': 'abc' is not a number"),
        ("timestamp,ax\n0,1\n0.01,nan\n", 3, "not a finite number"),
        ("timestamp,ax\n0,1\nsoon,1\n", 3, "timestamp: 'soon' is not a number"),
        (
            "timestamp,ax\n0,1\n0.02,1\n\n0.01,1\n",
            5,
            "timestamp 0.01 is not after the previous one (0.02 on line 3)",
        ),
        (b"timestamp,ax\n0,1\n0.01,\xff\n", 3, "not UTF-8"),
        ('timestamp,ax\n0,"1\n', 2, "CSV syntax error"),
    ],
)
def test_bad_csv_recordings_are_reported_precisely(
    tmp_path: Path, text: str | bytes, line: int | None, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RecordingError) as caught:
        CsvRecording(path)
    error = caught.value
    assert message in str(error)
    assert error.line == line
    assert str(error).startswith(f"{path}:{line}: " if line else f"{path}: ")


# -- the simulate command -----------------------------------------------------------------


def test_run_simulator_prints_one_line_per_device_and_cleans_up(tmp_path: Path) -> None:
    out = io.StringIO()
    run_simulator(
        devices=2,
        recording=None,
        rate_hz=50.0,
        max_rate=False,
        duration_s=0.2,
        link_dir=tmp_path / "links",
        out=out,
    )
    lines = [line.split() for line in out.getvalue().splitlines()]
    assert [line[0] for line in lines] == ["emu-0", "emu-1"]
    assert all(line[1].startswith("/dev/") for line in lines)
    assert [line[2] for line in lines] == [str(tmp_path / "links" / f"emu-{i}") for i in range(2)]
    assert not any(os.path.lexists(line[2]) for line in lines)


def test_run_simulator_replays_a_recording_from_different_offsets(tmp_path: Path) -> None:
    rows = "\n".join(f"{i / 100:.2f},{i}" for i in range(100))
    path = write(tmp_path, f"timestamp,ax\n{rows}\n")
    out = io.StringIO()
    run_simulator(3, path, None, False, 0.05, None, out)
    assert len(out.getvalue().splitlines()) == 3
    with pytest.raises(ValueError, match="at least one device"):
        run_simulator(0, None, None, False, 0.0, None, out)
