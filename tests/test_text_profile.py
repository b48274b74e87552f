"""The `text` profile: lines of numbers as sketches print them, to physical values.

Vectors are lines written here by hand the way Arduino sketches and Edge Impulse data
forwarder sketches print them; expected values are the printed numbers (times the configured
scale), to within half the LSB the profile announces. Then every kind of bad line, splits at
every byte, the emulator's sketch, and hypothesis fuzzing of the decoder.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from firmware_bridge.emulator import GARBAGE_LINES, SyntheticMotion, encode_text
from firmware_bridge.profiles import open_profile, profile_config
from firmware_bridge.profiles.text import TextProfile
from firmware_bridge.protocol.v1 import Frame, FrameType, hello_problem

G = 9.80665


def decode(
    chunks: list[bytes], *, start: float = 100.0, step: float = 0.1, **options: Any
) -> tuple[TextProfile, list[Frame]]:
    options.setdefault("rate_hz", 10)
    profile = open_profile(profile_config("text", **options), device_id="ard")
    assert isinstance(profile, TextProfile)
    frames: list[Frame] = []
    for i, chunk in enumerate(chunks):
        frames += profile.feed(chunk, start + i * step)
    return profile, frames


def physical(frames: list[Frame]) -> np.ndarray[Any, Any]:
    hello = next(f.hello() for f in frames if f.frame_type == FrameType.HELLO)
    scales = np.array([c.scale for c in hello.channels])
    parts = [f.samples() * scales for f in frames if f.frame_type == FrameType.IMU_BATCH]
    return np.concatenate(parts) if parts else np.empty((0, len(scales)))


def lsb(frames: list[Frame]) -> np.ndarray[Any, Any]:
    hello = next(f.hello() for f in frames if f.frame_type == FrameType.HELLO)
    return np.array([c.scale for c in hello.channels])


ROWS = [
    [-0.12, 0.03, 9.81, 0.5, -1.25, 0.0],
    [1.5, -2.25, 9.7, 120.0, -359.5, 1999.0],
    [-156.0, 156.0, 0.0001, -0.06, 0.06, -1999.9],
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
]
LINES = b"".join((",".join(f"{v:g}" for v in r) + "\r\n").encode() for r in ROWS)
START = b"\n"  # the port opens at a line boundary; the empty piece before it is skipped


def test_six_numbers_per_line_are_accelerometer_and_gyroscope() -> None:
    """The Edge Impulse layout: ax ay az in m/s^2, gx gy gz in deg/s, at 16 g / 2000 deg/s
    resolution, values exact to half an LSB."""
    profile, frames = decode([START + LINES])
    hello = frames[0].hello()
    assert hello_problem(hello) is None
    assert [c.name for c in hello.channels] == ["ax", "ay", "az", "gx", "gy", "gz"]
    assert [c.unit for c in hello.channels] == ["m/s^2"] * 3 + ["deg/s"] * 3
    np.testing.assert_allclose(lsb(frames), [16 * G / 32767] * 3 + [2000 / 32767] * 3)
    values = physical(frames)
    assert np.all(np.abs(values - ROWS) <= lsb(frames) / 2 + 1e-9)
    assert profile.stats.packets_ok == 4
    assert profile.stats.bad_lines == 0


@pytest.mark.parametrize(
    "line",
    [
        b"1.5\t-2.25\t9.7\r\n",
        b"1.5;-2.25;9.7\n",
        b"1.5 -2.25   9.7\n",
        b"1.5, -2.25, 9.7\n",
        b"  1.5,-2.25,9.7,\r\n",
        b"1.5\t-2.25\t9.7\t\r\n",
        b"+1.5e0,-225e-2,0.97E1\n",
    ],
)
def test_separators_and_number_spellings(line: bytes) -> None:
    """Comma, tab, semicolon, spaces (any mix, a trailing separator too) and C's number forms."""
    _, frames = decode([START + line * 3])
    values = physical(frames)
    assert values.shape == (3, 3)
    assert np.all(np.abs(values - [1.5, -2.25, 9.7]) <= lsb(frames) / 2 + 1e-9)


def test_header_names_channels_units_and_timestamp_column() -> None:
    """An Edge Impulse CSV-style header: a timestamp column (dropped) and names with units."""
    data = START + b"timestamp,accX[g],accY[g],accZ[g],temp\n"
    data += b"0,0.01,-0.02,1.0,21.5\n16,0.02,-0.01,0.99,21.5\n32,0.0,0.0,1.01,21.6\n"
    profile, frames = decode([data])
    hello = frames[0].hello()
    assert [c.name for c in hello.channels] == ["accX", "accY", "accZ", "temp"]
    assert [c.unit for c in hello.channels] == ["g", "g", "g", ""]
    expected = [[0.01, -0.02, 1.0, 21.5], [0.02, -0.01, 0.99, 21.5], [0.0, 0.0, 1.01, 21.6]]
    values = physical(frames)
    np.testing.assert_allclose(values[:, :3], np.array(expected)[:, :3], atol=16 / 32767 / 2)
    # An unknown unit gets the int16 range: integer counts exact, decimals rounded.
    np.testing.assert_allclose(values[:, 3], [22, 22, 22])
    assert profile.stats.header_lines == 1


def test_configured_channels_scale_raw_counts() -> None:
    """A sketch printing an MPU-6050's raw registers (±2 g: 16384 LSB/g, ±250 deg/s: 131
    LSB/(deg/s)); three lines of config turn them into physical values."""
    channels = [
        {"name": n, "unit": "g", "scale": 1 / 16384, "full_scale": 2.0} for n in ("ax", "ay", "az")
    ] + [{"name": n, "unit": "deg/s", "scale": 1 / 131, "full_scale": 250.0} for n in ("gx",)]
    data = START + b"16384 -8192 0 131\n-32768 4096 16 -13100\n"
    _, frames = decode([data], channels=channels)
    values = physical(frames)
    expected = [[1.0, -0.5, 0.0, 1.0], [-2.0, 0.25, 16 / 16384, -100.0]]
    assert np.all(np.abs(values - expected) <= lsb(frames) / 2 + 1e-9)
    assert frames[0].hello().channels[0].unit == "g"


def test_channel_names_only_keep_the_usual_units() -> None:
    profile, frames = decode([START + b"1,2,3\n" * 2], channels=["gx", "gy", "gz"])
    assert [c.unit for c in frames[0].hello().channels] == ["deg/s"] * 3
    assert profile.stats.packets_ok == 2


@pytest.mark.parametrize(
    ("count", "names"),
    [
        (3, ["ax", "ay", "az"]),
        (9, ["ax", "ay", "az", "gx", "gy", "gz", "mx", "my", "mz"]),
        (4, ["ch0", "ch1", "ch2", "ch3"]),
        (1, ["ch0"]),
    ],
)
def test_default_layouts_by_field_count(count: int, names: list[str]) -> None:
    line = ",".join(["1"] * count).encode() + b"\n"
    _, frames = decode([START + line * 3])
    assert [c.name for c in frames[0].hello().channels] == names
    assert len(physical(frames)) == 3


def test_every_kind_of_bad_line_is_counted_and_skipped() -> None:
    """Between good lines: a banner, too few and too many fields, NaN, inf, non-ASCII noise,
    a value no sensor reads, an endless line. Each is counted under its reason; every good
    line around them decodes."""
    good = LINES.split(b"\r\n")[:4]
    bad = [
        b"MPU6050 ready",
        b"1,2",
        b"1,2,3,4,5,6,7",
        b"nan,0,0,0,0,0",
        b"0,0,-inf,0,0,0",
        b"\xff\xfe\x00\x13 noise",
        b"0,0,0,0,0,1e9",
        b"9" * 3000,
    ]
    stream = START + good[0] + b"\n" + good[1] + b"\n" + good[2] + b"\n"
    stream += b"".join(line + b"\n" + good[3] + b"\n" for line in bad)
    profile, frames = decode([stream[i : i + 700] for i in range(0, len(stream), 700)])
    values = physical(frames)
    assert len(values) == 3 + len(bad)
    assert np.all(np.abs(values[3:] - ROWS[3]) <= 1e-9)
    s = profile.stats
    assert (s.bad_field_count, s.bad_numbers, s.out_of_range, s.oversize_lines) == (2, 4, 1, 1)
    assert s.bad_lines == len(bad) == profile.rejected()
    assert len(profile.refusals) == 4  # each kind once, for one sensor.rejected event each


def test_a_line_without_end_is_refused_once_and_reading_goes_on() -> None:
    """A device printing without newlines: the overlong line is dropped as it grows (memory
    stays bounded), counted once, and the next real line is read."""
    profile, frames = decode(
        [START + LINES, b"7" * 800, b"7" * 800, b"7" * 800 + b"\n" + LINES], max_line_bytes=1000
    )
    assert profile.stats.oversize_lines == 1
    assert len(profile._tail) == 0
    assert len(physical(frames)) == 8


def test_the_first_partial_line_is_not_an_error_nor_a_sample() -> None:
    """Opening the port mid-line is normal: what comes before the first newline is dropped
    without an error, so a cut number ('25' of '-1.25') is never read as a value."""
    profile, frames = decode([LINES[7:]])
    assert len(physical(frames)) == 3
    assert profile.stats.bad_lines == 0
    assert profile.stats.garbage_bytes == LINES.index(b"\n") + 1 - 7


def test_a_garbled_first_line_cannot_set_the_layout() -> None:
    """Lines of one width must agree three times before they set the layout."""
    data = START + b"1,2\n" + b"5,6,7\n" * 2 + b"1,2,3,4,5,6\n" * 4
    profile, frames = decode([data])
    assert len(frames[0].hello().channels) == 6
    assert len(physical(frames)) == 4
    assert profile.stats.bad_field_count == 3


def test_split_at_every_byte_and_all_at_once_agree() -> None:
    data = START + LINES * 5
    _, whole = decode([data])
    _, bytewise = decode([data[i : i + 1] for i in range(len(data))], step=0.001)
    np.testing.assert_array_equal(physical(bytewise), physical(whole))
    assert len(physical(whole)) == 20


def test_rate_is_learned_and_snapped_to_the_usual_or_configured_rates() -> None:
    """A loop timed with delay(10) runs a little slow: 97.5 Hz reads as 100 Hz; an LSM9DS1
    read as fast as it delivers reads as its 119 Hz, not as 125; a device that lists its own
    rates snaps to those; a rate near none of them stays as measured."""
    line = b"0,0,9.81,0,0,0\n"
    cases = [(None, 97.5, 100.0), (None, 118.0, 119.0), ([104.0, 208.0], 101.5, 104.0),
             ([104.0, 208.0], 150.0, 150.0)]  # fmt: skip
    for rates, actual, expected in cases:
        options = {"rates": rates} if rates else {}
        profile = open_profile(profile_config("text", **options), device_id="ard")
        frames: list[Frame] = []
        frames += profile.feed(START, 0.0)
        for i in range(400):
            frames += profile.feed(line, 1.0 + i / actual)
        rates_seen = [f.hello().sample_rate_hz for f in frames if f.frame_type == FrameType.HELLO]
        assert rates_seen == [pytest.approx(expected, rel=0.01)], (rates, actual)
        assert profile.stats.samples == 400


@pytest.mark.parametrize(
    "options",
    [
        {"channels": ["ax", "ax"]},
        {"channels": [{"name": "ax", "scale": 0.0}]},
        {"channels": [{"name": "ax", "scale": math.nan}]},
        {"channels": [{"name": "1ax"}]},
        {"channels": []},
        {"rates": [0.0]},
        {"max_line_bytes": 10**9},
        {"channels": [{"name": "ax", "full_scale": -1}]},
    ],
)
def test_config_that_makes_no_sense_is_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        profile_config("text", **options)


def test_the_emulated_sketch_round_trips() -> None:
    """The emulator prints what the profile reads, garbage lines included (all refused)."""
    data = encode_text(SyntheticMotion(50.0, seed=3), 400, garbage_every=25)
    profile, frames = decode([START] + [data[i : i + 512] for i in range(0, len(data), 512)])
    values = physical(frames)
    reference, _ = SyntheticMotion(50.0, seed=3).read(400)
    assert len(values) == 400
    expected = np.concatenate([reference[:, :3], np.degrees(reference[:, 3:])], axis=1)
    assert np.all(np.abs(values - expected) <= lsb(frames) / 2 + 0.5e-4 + 1e-6)
    assert profile.stats.header_lines == 1
    assert profile.stats.bad_lines == 400 // 25
    assert len(GARBAGE_LINES) == 7


# -- fuzzing -------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunks=st.lists(
        st.one_of(
            st.binary(max_size=64),
            st.text(alphabet="0123456789.,;\t -+eEnaifx\r\n", max_size=80).map(str.encode),
        ),
        max_size=30,
    ),
    learn=st.booleans(),
)
def test_any_bytes_never_raise_and_frames_make_sense(chunks: list[bytes], learn: bool) -> None:
    """Whatever arrives, the decoder returns frames whose HELLO passes the receiver's checks
    and whose samples have the announced width; every refused line is counted."""
    options: dict[str, Any] = {"max_line_bytes": 40} | ({} if learn else {"rate_hz": 10})
    profile = open_profile(profile_config("text", **options), device_id="fuzz")
    width: int | None = None
    for i, chunk in enumerate(chunks):
        for frame in profile.feed(chunk, i * 0.05):
            if frame.frame_type == FrameType.HELLO:
                hello = frame.hello()
                assert hello_problem(hello) is None
                width = len(hello.channels)
            else:
                assert width is not None
                assert frame.samples().shape[1] == width
    s = profile.stats
    assert s.bad_lines == s.bad_field_count + s.bad_numbers + s.out_of_range + s.oversize_lines


_JUNK = st.text(alphabet=st.characters(blacklist_characters="\n"), max_size=40).map(
    lambda t: t.encode("utf-8", "replace") + b"#x"
)


@settings(max_examples=100, deadline=None)
@given(
    data=st.data(),
    rows=st.lists(
        st.lists(st.floats(-150, 150, allow_nan=False), min_size=3, max_size=3),
        min_size=1,
        max_size=15,
    ),
)
def test_junk_lines_between_samples_never_change_or_lose_a_sample(
    data: st.DataObject, rows: list[list[float]]
) -> None:
    """Good lines with junk lines between them, cut anywhere: exactly the true samples come
    out, in order, each within half an LSB of what was printed."""
    stream = START
    junk = 0
    for row in rows:
        if data.draw(st.booleans(), label="junk before"):
            stream += data.draw(_JUNK, label="junk") + b"\n"
            junk += 1
        stream += (",".join(repr(v) for v in row) + "\n").encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cuts"))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    profile, frames = decode(pieces, channels=["ax", "ay", "az"])
    values = physical(frames) if frames else np.empty((0, 3))
    assert len(values) == len(rows)
    assert np.all(np.abs(values - rows) <= lsb(frames) / 2 + 1e-9)
    assert profile.stats.bad_lines + profile.stats.header_lines <= junk


def test_a_sketch_talking_is_not_a_header() -> None:
    """Words separated by spaces ('IMU not found', 'Started') are bad lines, not channel
    names; a header needs commas, tabs or semicolons between at least two names."""
    data = START + b"Started\nIMU not found\nax;ay;az\n" + b"1;2;3\n" * 3
    profile, frames = decode([data])
    assert profile.stats.bad_numbers == 2
    assert profile.stats.header_lines == 1
    assert [c.name for c in frames[0].hello().channels] == ["ax", "ay", "az"]


def test_large_values_stay_within_half_an_announced_lsb() -> None:
    """The HELLO carries scales as float32; quantising with exactly that value keeps a value
    near full scale within half an announced LSB (found by the fuzzing above)."""
    _, frames = decode([START + b"0.0,0.0,141.7099389307288\n" * 3], channels=["ax", "ay", "az"])
    assert np.all(np.abs(physical(frames)[:, 2] - 141.7099389307288) <= lsb(frames)[2] / 2)
