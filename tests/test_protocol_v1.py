"""Wire protocol v1: encoding, the streaming decoder and its accounting, known-answer vectors."""

from __future__ import annotations

import random
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from firmware_bridge.protocol.v1 import (
    END,
    MAX_FRAME,
    MAX_PAYLOAD,
    ChannelInfo,
    Decoder,
    Frame,
    FrameType,
    Hello,
    ProtocolError,
    Status,
    encode_frame,
    hello_payload,
    imu_payload,
    iter_frames,
    status_payload,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

# Known-answer vectors, also printed in docs/protocol.md for firmware engineers.
KAT_HELLO = Hello(
    device_id="imu-01",
    firmware="1.0.0",
    sample_rate_hz=100.0,
    channels=(
        ChannelInfo("ax", "g", 1 / 2048),
        ChannelInfo("ay", "g", 1 / 2048),
        ChannelInfo("az", "g", 1 / 2048),
        ChannelInfo("gx", "dps", 0.0625),
        ChannelInfo("gy", "dps", 0.0625),
        ChannelInfo("gz", "dps", 0.0625),
    ),
)
KAT_HELLO_WIRE = bytes.fromhex(
    "c0 01 01 00 00 00 00 00 00 00 00 00 00 4e 00 06 69 6d 75 2d 30 31 05 31 2e 30 2e 30 00 00"
    " c8 42 06 02 61 78 01 67 00 00 00 3a 02 61 79 01 67 00 00 00 3a 02 61 7a 01 67 00 00 00 3a"
    " 02 67 78 03 64 70 73 00 00 80 3d 02 67 79 03 64 70 73 00 00 80 3d 02 67 7a 03 64 70 73 00"
    " 00 80 3d 0d 19 a8 6b c0"
)
# Values chosen so that 0xC0 and 0xDB bytes appear and must be escaped.
KAT_IMU_SAMPLES = np.array(
    [[192, -9472, 2048, 0, -1, 16], [-16192, 219, 2047, 1, -2, 32767]], dtype=np.int16
)
KAT_IMU_WIRE = bytes.fromhex(
    "c0 01 02 00 00 01 00 00 00 10 27 00 00 1c 00 02 00 06 00 db dc 00 00 db dd 00 08 00 00 ff"
    " ff 10 00 db dc db dc db dd 00 ff 07 01 00 fe ff ff 7f f6 0d 5d b8 c0"
)

# int16 values whose little-endian bytes contain the SLIP special bytes.
_SPECIAL_INT16 = [0x00C0, 0x00DB, -0x2500, -0x4000, -16192, -9253, -9280, -16165]
_SAMPLE = st.one_of(st.integers(-32768, 32767), st.sampled_from(_SPECIAL_INT16))
_U32 = st.integers(0, 2**32 - 1)


def imu_frame(seq: int, *, stream: int = 0, n: int = 4, c: int = 3, fill: int = 0) -> bytes:
    samples = (np.arange(n * c, dtype=np.int16).reshape(n, c) + fill).astype(np.int16)
    return encode_frame(FrameType.IMU_BATCH, stream, seq, seq * 1000, imu_payload(samples))


def raw_frame(body_without_crc: bytes) -> bytes:
    """Frame arbitrary header + payload bytes with a valid CRC, bypassing encoder checks."""
    body = body_without_crc + struct.pack("<I", zlib.crc32(body_without_crc))
    return END + body.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + END


def header(frame_type: int, seq: int, length: int, *, version: int = 1, stream: int = 0) -> bytes:
    return struct.pack("<BBBBIIH", version, frame_type, stream, 0, seq, 0, length)


# -- known answers ------------------------------------------------------------------------


def test_crc_is_ieee_crc32_with_standard_check_value() -> None:
    assert zlib.crc32(b"123456789") == 0xCBF43926


def test_known_answer_hello() -> None:
    wire = encode_frame(FrameType.HELLO, 0, 0, 0, hello_payload(KAT_HELLO))
    assert wire == KAT_HELLO_WIRE
    (frame,) = Decoder().feed(KAT_HELLO_WIRE)
    assert frame.hello() == KAT_HELLO


def test_known_answer_imu_batch() -> None:
    wire = encode_frame(FrameType.IMU_BATCH, 0, 1, 10_000, imu_payload(KAT_IMU_SAMPLES))
    assert wire == KAT_IMU_WIRE
    (frame,) = Decoder().feed(KAT_IMU_WIRE)
    assert (frame.seq, frame.timestamp_us) == (1, 10_000)
    np.testing.assert_array_equal(frame.samples(), KAT_IMU_SAMPLES)


def _hex_in_docs() -> str:
    return re.sub(r"[^0-9a-f]", "", DOCS.read_text(encoding="utf-8").lower())


def test_known_answers_are_printed_in_docs() -> None:
    text = _hex_in_docs()
    assert KAT_HELLO_WIRE.hex() in text
    assert KAT_IMU_WIRE.hex() in text


def _c_reference_encoder() -> str:
    match = re.search(r"<!-- c-reference-encoder -->\s*```c\n(.*?)```", DOCS.read_text(), re.S)
    assert match, "the C reference encoder block is missing from docs/protocol.md"
    return match.group(1)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_c_reference_encoder_in_docs_produces_the_known_answers(tmp_path: Path) -> None:
    (tmp_path / "v1_encoder.c").write_text(_c_reference_encoder())
    hello = ", ".join(f"0x{b:02x}" for b in hello_payload(KAT_HELLO))
    (tmp_path / "main.c").write_text(
        f"""
#include <stdio.h>
#include "v1_encoder.c"
static void put_hex(uint8_t b, void *ctx) {{ (void)ctx; printf("%02x", b); }}
int main(void) {{
    static const uint8_t hello[] = {{ {hello} }};
    const int16_t s[12] = {{192, -9472, 2048, 0, -1, 16, -16192, 219, 2047, 1, -2, 32767}};
    uint8_t imu[64];
    printf("%08x\\n", v1_crc32_update(0xFFFFFFFFu, (const uint8_t *)"123456789", 9) ^ 0xFFFFFFFFu);
    v1_send_frame(put_hex, NULL, V1_HELLO, 0, 0, 0, hello, (uint16_t)sizeof hello);
    printf("\\n");
    v1_send_frame(put_hex, NULL, V1_IMU_BATCH, 0, 1, 10000, imu, v1_imu_payload(imu, s, 2, 6));
    printf("\\n");
    return 0;
}}
"""
    )
    subprocess.run(
        ["cc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-o", "kat", "main.c"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    out = subprocess.run(
        [str(tmp_path / "kat")], check=True, capture_output=True, text=True
    ).stdout.split()
    assert out == ["cbf43926", KAT_HELLO_WIRE.hex(), KAT_IMU_WIRE.hex()]


# -- round trips --------------------------------------------------------------------------


@settings(deadline=None, max_examples=200)
@given(
    data=st.data(),
    n=st.integers(0, 40),
    c=st.integers(1, 12),
    stream=st.integers(0, 255),
    seq=_U32,
    ts=_U32,
)
def test_imu_batch_round_trip(
    data: st.DataObject, n: int, c: int, stream: int, seq: int, ts: int
) -> None:
    samples = data.draw(arrays(np.int16, (n, c), elements=_SAMPLE))
    (frame,) = Decoder().feed(
        encode_frame(FrameType.IMU_BATCH, stream, seq, ts, imu_payload(samples))
    )
    assert (frame.frame_type, frame.stream_id, frame.seq, frame.timestamp_us, frame.gap) == (
        FrameType.IMU_BATCH,
        stream,
        seq,
        ts,
        0,
    )
    decoded = frame.samples()
    assert decoded.shape == (n, c)
    np.testing.assert_array_equal(decoded, samples)


_SHORT_TEXT = st.text(max_size=60)  # at most 240 bytes of UTF-8
_F32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(deadline=None, max_examples=150)
@given(
    device_id=_SHORT_TEXT,
    firmware=_SHORT_TEXT,
    rate=_F32,
    channels=st.lists(st.tuples(_SHORT_TEXT, _SHORT_TEXT, _F32), min_size=1, max_size=12),
    seq=_U32,
)
def test_hello_round_trip(
    device_id: str,
    firmware: str,
    rate: float,
    channels: list[tuple[str, str, float]],
    seq: int,
) -> None:
    hello = Hello(device_id, firmware, rate, tuple(ChannelInfo(*ch) for ch in channels))
    (frame,) = Decoder().feed(encode_frame(FrameType.HELLO, 3, seq, 0, hello_payload(hello)))
    assert frame.hello() == hello


@settings(deadline=None, max_examples=150)
@given(
    uptime=_U32,
    battery=st.none() | st.integers(0, 0xFFFE),
    centi_degrees=st.none() | st.integers(-32768, 32766),
    flags=_U32,
    dropped=_U32,
)
def test_status_round_trip(
    uptime: int, battery: int | None, centi_degrees: int | None, flags: int, dropped: int
) -> None:
    temperature = None if centi_degrees is None else centi_degrees / 100
    status = Status(uptime, battery, temperature, flags, dropped)
    (frame,) = Decoder().feed(encode_frame(FrameType.STATUS, 0, 7, 99, status_payload(status)))
    assert frame.status() == status


@settings(deadline=None, max_examples=100)
@given(
    frame_type=st.sampled_from(list(FrameType)),
    payload=st.binary(max_size=3000),
    seq=st.integers(0, 2**40),
    ts=st.integers(0, 2**40),
)
def test_any_payload_round_trips_and_fields_wrap_to_32_bits(
    frame_type: int, payload: bytes, seq: int, ts: int
) -> None:
    (frame,) = Decoder().feed(encode_frame(frame_type, 1, seq, ts, payload))
    assert frame.payload == payload
    assert (frame.seq, frame.timestamp_us) == (seq % 2**32, ts % 2**32)


def test_largest_payload_is_accepted() -> None:
    decoder = Decoder()
    (frame,) = decoder.feed(encode_frame(FrameType.STATUS, 0, 0, 0, b"\xc0" * MAX_PAYLOAD))
    assert len(frame.payload) == MAX_PAYLOAD
    assert decoder.stats.oversize == 0


def test_samples_is_a_read_only_view_of_the_payload() -> None:
    (frame,) = Decoder().feed(imu_frame(0))
    samples = frame.samples()
    assert not samples.flags.owndata
    assert not samples.flags.writeable


# -- decoder robustness -------------------------------------------------------------------


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(st.binary(max_size=600), max_size=12))
def test_arbitrary_bytes_never_crash_the_decoder(chunks: list[bytes]) -> None:
    decoder = Decoder()
    delivered = [frame for chunk in chunks for frame in decoder.feed(chunk)]
    assert decoder.stats.bytes_in == sum(map(len, chunks))
    assert decoder.stats.frames_ok == len(delivered)


@settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n_frames=st.integers(1, 12),
    corruptions=st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=8
    ),
    garbage=st.lists(st.tuples(st.floats(0, 1), st.binary(max_size=40)), max_size=4),
)
def test_corrupted_streams_only_yield_frames_that_were_sent(
    seed: int,
    n_frames: int,
    corruptions: list[tuple[float, int]],
    garbage: list[tuple[float, bytes]],
) -> None:
    rng = random.Random(seed)
    sent = {}
    wire = bytearray()
    for seq in range(n_frames):
        payload = rng.randbytes(rng.randrange(0, 200))
        sent[seq] = payload
        wire += encode_frame(FrameType.IMU_BATCH, 0, seq, 0, payload)
    for where, value in corruptions:
        wire[int(where * len(wire))] = value
    for where, junk in garbage:
        at = int(where * len(wire))
        wire[at:at] = junk
    decoder = Decoder()
    for frame in decoder.feed(bytes(wire)):
        assert sent[frame.seq] == frame.payload


def test_garbage_between_frames_costs_no_frame_and_counts_resyncs() -> None:
    rng = random.Random(1)
    wire = b""
    blocks = 0
    for seq in range(200):
        if seq % 3 == 0:
            junk = rng.randbytes(rng.randrange(1, 64))
            blocks += junk.strip(END) != b""
            wire += junk
        wire += imu_frame(seq, fill=seq)
    decoder = Decoder()
    frames = decoder.feed(wire)
    assert [f.seq for f in frames] == list(range(200))
    assert all(f.gap == 0 for f in frames)
    assert decoder.stats.resyncs == blocks
    assert decoder.stats.seq_gaps == 0


def test_reader_opening_mid_frame_counts_one_resync_and_no_error() -> None:
    wire = imu_frame(0) + imu_frame(1) + imu_frame(2)
    decoder = Decoder()
    frames = decoder.feed(wire[7:])
    assert [f.seq for f in frames] == [1, 2]
    stats = decoder.stats
    assert (stats.resyncs, stats.crc_errors, stats.malformed) == (1, 0, 0)


def _stream_with_escapes() -> bytes:
    special = np.array([_SPECIAL_INT16[:3], _SPECIAL_INT16[3:6]], dtype=np.int16)
    return b"".join(
        [
            encode_frame(FrameType.HELLO, 0, 0, 0, hello_payload(KAT_HELLO)),
            encode_frame(FrameType.IMU_BATCH, 0, 1, 10, imu_payload(special)),
            encode_frame(FrameType.STATUS, 0, 2, 20, status_payload(Status(1, 4000, 20.5, 0, 0))),
            encode_frame(FrameType.IMU_BATCH, 0, 3, 30, imu_payload(special[::-1].copy())),
        ]
    )


def test_split_at_every_byte_boundary_decodes_the_same() -> None:
    wire = _stream_with_escapes()
    whole = Decoder().feed(wire)
    assert len(whole) == 4
    for cut in range(len(wire) + 1):
        decoder = Decoder()
        assert decoder.feed(wire[:cut]) + decoder.feed(wire[cut:]) == whole, cut
        assert decoder.stats.frames_ok == 4


def test_byte_by_byte_feeding_decodes_the_same() -> None:
    wire = _stream_with_escapes()
    decoder = Decoder()
    frames = list(iter_frames((wire[i : i + 1] for i in range(len(wire))), decoder))
    assert frames == Decoder().feed(wire)
    assert decoder.stats.resyncs == 0


def test_any_buffer_type_is_accepted_and_payloads_are_bytes() -> None:
    wire = _stream_with_escapes()
    expected = Decoder().feed(wire)
    for buffer in (bytearray(wire), memoryview(wire)):
        frames = Decoder().feed(buffer)
        assert frames == expected
        assert all(type(f.payload) is bytes for f in frames)


def test_largest_frame_in_small_reads() -> None:
    wire = encode_frame(FrameType.STATUS, 0, 0, 0, b"\xdb" * MAX_PAYLOAD)  # escaped: ~32 KiB
    decoder = Decoder()
    frames = list(iter_frames((wire[i : i + 20] for i in range(0, len(wire), 20)), decoder))
    assert [len(f.payload) for f in frames] == [MAX_PAYLOAD]
    assert decoder.stats.oversize == decoder.stats.resyncs == 0


def test_crc_corruption_is_counted_and_shows_as_a_gap() -> None:
    frames = [imu_frame(seq) for seq in range(3)]
    corrupted = bytearray(frames[1])
    corrupted[20] ^= 0x01
    assert corrupted[20] not in (0xC0, 0xDB)
    assert frames[1][20] not in (0xC0, 0xDB)
    decoder = Decoder()
    delivered = decoder.feed(frames[0] + bytes(corrupted) + frames[2])
    assert [(f.seq, f.gap) for f in delivered] == [(0, 0), (2, 1)]
    stats = decoder.stats
    assert (stats.crc_errors, stats.resyncs, stats.seq_gaps, stats.frames_lost) == (1, 1, 1, 1)


def test_invalid_escape_counts_as_crc_error() -> None:
    frame = bytearray(imu_frame(0))
    frame[18:18] = b"\xdb\x00"  # ESC followed by a byte that is neither ESC_END nor ESC_ESC
    decoder = Decoder()
    assert decoder.feed(bytes(frame) + imu_frame(1)) == Decoder().feed(imu_frame(1))
    assert decoder.stats.crc_errors == 1


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(END + b"\x01\x02\x03" + END, id="shorter-than-header"),
        pytest.param(raw_frame(header(2, 0, 4, version=2) + bytes(4)), id="wrong-version"),
        pytest.param(raw_frame(header(2, 0, 5) + bytes(4)), id="length-field-too-big"),
        pytest.param(raw_frame(header(2, 0, 3) + bytes(4)), id="length-field-too-small"),
    ],
)
def test_malformed_frames_are_counted(wire: bytes) -> None:
    decoder = Decoder()
    frames = decoder.feed(imu_frame(0) + wire + imu_frame(1))
    assert [f.seq for f in frames] == [0, 1]
    assert (decoder.stats.malformed, decoder.stats.crc_errors, decoder.stats.resyncs) == (1, 0, 1)


def test_oversize_frame_is_counted_and_skipped() -> None:
    too_big = MAX_PAYLOAD + 1
    decoder = Decoder()
    frames = decoder.feed(imu_frame(0) + raw_frame(header(3, 1, too_big) + bytes(too_big)))
    frames += decoder.feed(imu_frame(2))
    assert [f.seq for f in frames] == [0, 2]
    assert decoder.stats.oversize == 1


def test_endless_run_without_end_is_dropped_not_buffered() -> None:
    decoder = Decoder()
    decoder.feed(imu_frame(0))
    for _ in range(10):
        assert decoder.feed(bytes(4 * MAX_FRAME // 10)) == []
    frames = decoder.feed(imu_frame(1))
    assert [f.seq for f in frames] == [1]
    stats = decoder.stats
    assert stats.oversize >= 1
    assert (stats.resyncs, stats.crc_errors, stats.malformed) == (1, 0, 0)


def test_unknown_frame_type_is_counted_skipped_and_keeps_seq() -> None:
    decoder = Decoder()
    wire = imu_frame(0) + encode_frame(0x7F, 0, 1, 0, b"future") + imu_frame(2)
    frames = decoder.feed(wire)
    assert [(f.seq, f.gap) for f in frames] == [(0, 0), (2, 0)]
    assert decoder.stats.unknown_types == 1
    assert decoder.stats.seq_gaps == 0


# -- sequence accounting ------------------------------------------------------------------


def test_sequence_wraps_around_without_gaps() -> None:
    seqs = [2**32 - 3, 2**32 - 2, 2**32 - 1, 0, 1]
    decoder = Decoder()
    frames = decoder.feed(b"".join(imu_frame(s) for s in seqs))
    assert [f.seq for f in frames] == seqs
    assert all(f.gap == 0 for f in frames)
    assert decoder.stats.seq_gaps == 0


def test_gap_across_the_wrap_is_counted() -> None:
    decoder = Decoder()
    frames = decoder.feed(imu_frame(2**32 - 2) + imu_frame(2))
    assert [f.gap for f in frames] == [0, 3]  # 2**32-1, 0 and 1 are missing
    assert (decoder.stats.seq_gaps, decoder.stats.frames_lost) == (1, 3)


def test_streams_are_tracked_independently() -> None:
    decoder = Decoder()
    wire = imu_frame(10, stream=0) + imu_frame(500, stream=1) + imu_frame(11, stream=0)
    wire += imu_frame(503, stream=1)
    frames = decoder.feed(wire)
    assert [(f.stream_id, f.gap) for f in frames] == [(0, 0), (1, 0), (0, 0), (1, 2)]
    assert decoder.last_seq(1) == 503
    assert decoder.last_seq(9) is None


def test_repeated_and_backward_frames_are_dropped_and_counted() -> None:
    decoder = Decoder()
    frames = decoder.feed(imu_frame(5) + imu_frame(5) + imu_frame(3) + imu_frame(6))
    assert [(f.seq, f.gap) for f in frames] == [(5, 0), (6, 0)]
    assert decoder.stats.duplicates == 2


def test_hello_going_backwards_marks_a_device_restart() -> None:
    hello = encode_frame(FrameType.HELLO, 0, 0, 0, hello_payload(KAT_HELLO))
    decoder = Decoder()
    frames = decoder.feed(imu_frame(1000) + hello + imu_frame(1) + imu_frame(3))
    assert [(f.frame_type, f.seq, f.gap) for f in frames] == [
        (FrameType.IMU_BATCH, 1000, 0),
        (FrameType.HELLO, 0, 0),
        (FrameType.IMU_BATCH, 1, 0),
        (FrameType.IMU_BATCH, 3, 1),
    ]
    assert (decoder.stats.restarts, decoder.stats.duplicates) == (1, 1)


def test_reset_drops_the_partial_frame_but_keeps_sequence_tracking() -> None:
    decoder = Decoder()
    decoder.feed(imu_frame(0))
    decoder.feed(imu_frame(1)[:-10])
    decoder.reset()
    frames = decoder.feed(imu_frame(4))
    assert [(f.seq, f.gap) for f in frames] == [(4, 3)]
    assert decoder.stats.crc_errors == 0


# -- payload parsing errors ---------------------------------------------------------------


def test_inconsistent_imu_payload_raises_protocol_error() -> None:
    good = imu_payload(np.zeros((2, 3), dtype=np.int16))
    for payload in (good[:-1], good + b"\x00\x00", good[:3], b"\x01\x00\x00\x00"):
        frame = Frame(FrameType.IMU_BATCH, 0, 0, 0, payload)
        with pytest.raises(ProtocolError):
            frame.samples()


def test_truncated_hello_raises_protocol_error() -> None:
    payload = hello_payload(KAT_HELLO)
    for cut in range(len(payload)):
        with pytest.raises(ProtocolError, match="HELLO"):
            Frame(FrameType.HELLO, 0, 0, 0, payload[:cut]).hello()


def test_hello_with_invalid_utf8_raises_protocol_error() -> None:
    frame = Frame(FrameType.HELLO, 0, 0, 0, b"\x02\xff\xfe" + hello_payload(KAT_HELLO)[7:])
    with pytest.raises(ProtocolError, match="UTF-8"):
        frame.hello()


def test_truncated_status_raises_protocol_error() -> None:
    frame = Frame(FrameType.STATUS, 0, 0, 0, status_payload(Status(1, None, None, 0, 0))[:-1])
    with pytest.raises(ProtocolError, match="STATUS"):
        frame.status()


def test_payload_accessors_check_the_frame_type() -> None:
    (frame,) = Decoder().feed(imu_frame(0))
    with pytest.raises(ProtocolError):
        frame.hello()
    with pytest.raises(ProtocolError):
        frame.status()


def test_hello_and_status_ignore_appended_fields() -> None:
    status = Status(5, 3900, -12.5, 1, 2)
    assert Frame(FrameType.STATUS, 0, 0, 0, status_payload(status) + b"new").status() == status
    assert Frame(FrameType.HELLO, 0, 0, 0, hello_payload(KAT_HELLO) + b"x").hello() == KAT_HELLO


def test_status_sentinels_mean_unknown() -> None:
    payload = status_payload(Status(1, None, None, 0, 0))
    assert payload[4:8] == b"\xff\xff\xff\x7f"
    assert Frame(FrameType.STATUS, 0, 0, 0, payload).status().battery_mv is None


# -- encoder argument checks --------------------------------------------------------------


def test_encoder_rejects_out_of_range_arguments() -> None:
    with pytest.raises(ValueError, match="payload"):
        encode_frame(FrameType.STATUS, 0, 0, 0, bytes(MAX_PAYLOAD + 1))
    with pytest.raises(ValueError, match="stream"):
        encode_frame(FrameType.STATUS, 256, 0, 0, b"")
    with pytest.raises(TypeError):
        imu_payload(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="int16"):
        imu_payload(np.array([[40000]], dtype=np.int32))
    with pytest.raises(ValueError, match="shape"):
        imu_payload(np.zeros(6, dtype=np.int16))
    with pytest.raises(ValueError, match="fit"):
        imu_payload(np.zeros((MAX_PAYLOAD // 2, 1), dtype=np.int16))
    with pytest.raises(ValueError, match="255"):
        hello_payload(Hello("x" * 256, "1", 1.0, KAT_HELLO.channels))
    with pytest.raises(ValueError, match="channels"):
        hello_payload(Hello("x", "1", 1.0, ()))
