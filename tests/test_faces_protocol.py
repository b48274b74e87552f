"""Protocol v1 FACE_CROP and EMBEDDING frames: encoding, decoding, chunk reassembly."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_bridge.protocol.v1 import (
    MAX_CROP_CHUNK,
    CropAssembler,
    Decoder,
    EmbeddingType,
    Frame,
    FrameType,
    PixelFormat,
    ProtocolError,
    embedding_payload,
    encode_frame,
    face_crop_payloads,
)


def _wire(payloads: list[bytes], frame_type: int, *, first_seq: int = 0, ts: int = 777) -> bytes:
    return b"".join(
        encode_frame(frame_type, 1, first_seq + i, ts, p) for i, p in enumerate(payloads)
    )


def _image(h: int, w: int, channels: int = 3, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    # 0xC0 and 0xDB everywhere, so SLIP escaping is exercised.
    data = rng.integers(0, 256, size=h * w * channels, dtype=np.uint8)
    data[::7] = 0xC0
    data[3::11] = 0xDB
    return data.tobytes()


def test_rgb_crop_is_chunked_and_reassembled_through_the_decoder() -> None:
    data = _image(112, 112)
    payloads = face_crop_payloads(data, PixelFormat.RGB888, 112, 112, crop_id=65537)
    assert len(payloads) == -(-len(data) // MAX_CROP_CHUNK) == 3
    decoder, assembler = Decoder(), CropAssembler()
    wire = _wire(payloads, FrameType.FACE_CROP)
    crops = []
    for start in range(0, len(wire), 1000):  # reads do not align with frames
        for frame in decoder.feed(wire[start : start + 1000]):
            assert frame.frame_type == FrameType.FACE_CROP
            crop = assembler.feed(frame, now=0.0)
            if crop is not None:
                crops.append(crop)
    assert len(crops) == 1
    crop = crops[0]
    assert (crop.crop_id, crop.width, crop.height, crop.pixel_format) == (1, 112, 112, 2)
    assert crop.data == data
    assert (crop.timestamp_us, crop.seq, crop.stream_id) == (777, 0, 1)
    assert assembler.stats.crops == 1
    assert assembler.stats.chunks == 3


def test_a_lost_chunk_abandons_the_crop_and_the_next_one_still_arrives() -> None:
    first = face_crop_payloads(_image(64, 64, 1), PixelFormat.GRAY8, 64, 64, 0, chunk_size=1000)
    second = face_crop_payloads(_image(64, 64, 1, 1), PixelFormat.GRAY8, 64, 64, 1, chunk_size=1000)
    frames = Decoder().feed(_wire(first + second, FrameType.FACE_CROP))
    del frames[2]  # lost on the link: the decoder would report gap=1 on the next frame
    frames[2].gap = 1
    assembler = CropAssembler()
    done = [c for f in frames if (c := assembler.feed(f, 0.0)) is not None]
    assert [c.crop_id for c in done] == [1]
    assert assembler.stats.incomplete == 1
    assert "lost" in (assembler.last_error or "")


def test_out_of_order_missing_first_and_stale_chunks_are_counted_not_raised() -> None:
    payloads = face_crop_payloads(_image(40, 40, 1), PixelFormat.GRAY8, 40, 40, 5, chunk_size=500)
    frames = Decoder().feed(_wire(payloads, FrameType.FACE_CROP))
    assembler = CropAssembler(timeout_s=1.0)
    assert assembler.feed(frames[1], 0.0) is None  # no first chunk
    assert assembler.feed(frames[0], 0.0) is None
    assert assembler.feed(frames[2], 0.0) is None  # skipped chunk 1: out of order
    assert assembler.stats.incomplete == 2
    # A crop whose chunks stop arriving is abandoned when the next chunk comes too late.
    assert assembler.feed(frames[0], 10.0) is None
    assert assembler.feed(frames[1], 12.0) is None
    assert assembler.stats.incomplete == 3
    # And a whole crop after all that is fine.
    crop = None
    for frame in frames:
        crop = assembler.feed(frame, 20.0)
    assert crop is not None
    assert crop.crop_id == 5


def test_oversize_and_malformed_chunks_are_dropped_with_reasons() -> None:
    big = face_crop_payloads(_image(100, 100), PixelFormat.RGB888, 100, 100, 0)
    assembler = CropAssembler(max_bytes=10_000)
    frame = Decoder().feed(_wire(big[:1], FrameType.FACE_CROP))[0]
    assert assembler.feed(frame, 0.0) is None
    assert assembler.stats.oversize == 1
    assert "exceeds" in (assembler.last_error or "")
    bad = Frame(FrameType.FACE_CROP, 0, 0, 0, b"\x00" * 5)
    assert assembler.feed(bad, 0.0) is None
    assert assembler.stats.malformed == 1


def _patched(offset: int, value: int) -> bytes:
    payload = bytearray(face_crop_payloads(b"\x01" * 12, PixelFormat.GRAY8, 4, 3, 0)[0])
    payload[offset] = value
    return bytes(payload)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (face_crop_payloads(b"\x01" * 12, PixelFormat.GRAY8, 4, 3, 0)[0][:10], "no header"),
        (_patched(6, 9), "pixel format 9"),
        (_patched(2, 1), "chunk 1 of 1 is out of range"),
        (_patched(8, 5), "needs 15 bytes, header says 12"),
        (_patched(8, 0), "empty"),
    ],
)
def test_crop_chunk_parse_errors_name_the_problem(payload: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        Frame(FrameType.FACE_CROP, 0, 0, 0, payload).crop_chunk()


def test_crop_payload_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="needs 300 bytes"):
        face_crop_payloads(b"\x00" * 10, PixelFormat.RGB888, 10, 10, 0)
    with pytest.raises(ValueError, match="unknown pixel format"):
        face_crop_payloads(b"\x00", 7, 1, 1, 0)
    with pytest.raises(ValueError, match="chunk size"):
        face_crop_payloads(b"\x00", PixelFormat.GRAY8, 1, 1, 0, chunk_size=0)
    jpeg = face_crop_payloads(b"\xff\xd8\xff" + bytes(50), PixelFormat.JPEG, 640, 480, 3)
    chunk = Frame(FrameType.FACE_CROP, 0, 0, 0, jpeg[0]).crop_chunk()
    assert (chunk.width, chunk.height, chunk.total_bytes, chunk.count) == (640, 480, 53, 1)


@pytest.mark.parametrize(
    ("element_type", "tolerance"),
    [(EmbeddingType.FLOAT32, 0.0), (EmbeddingType.FLOAT16, 1e-3), (EmbeddingType.INT8, 1e-2)],
)
def test_embedding_round_trip(element_type: int, tolerance: float) -> None:
    vector = np.random.default_rng(2).standard_normal(512).astype(np.float32)
    vector /= np.linalg.norm(vector)
    payload = embedding_payload("arcface-r50@2.1.0", vector, element_type)
    frames = Decoder().feed(encode_frame(FrameType.EMBEDDING, 0, 0, 0, payload))
    embedding = frames[0].embedding()
    assert embedding.model == "arcface-r50@2.1.0"
    assert embedding.element_type == element_type
    assert embedding.values.dtype == np.float32
    np.testing.assert_allclose(embedding.values, vector, atol=tolerance)


def test_embedding_errors() -> None:
    good = embedding_payload("m@1", np.ones(8, np.float32))
    with pytest.raises(ProtocolError, match="needs"):
        Frame(FrameType.EMBEDDING, 0, 0, 0, good[:-1]).embedding()
    with pytest.raises(ProtocolError, match="element type 9"):
        Frame(FrameType.EMBEDDING, 0, 0, 0, good[:4] + b"\x09" + good[5:]).embedding()
    nan = good[:-4] + np.float32(np.nan).tobytes()
    with pytest.raises(ProtocolError, match="not finite"):
        Frame(FrameType.EMBEDDING, 0, 0, 0, nan).embedding()
    with pytest.raises(ProtocolError, match="is not EMBEDDING"):
        Frame(FrameType.STATUS, 0, 0, 0, good).embedding()
    with pytest.raises(ValueError, match="1-D"):
        embedding_payload("m@1", np.ones((2, 2)))
    with pytest.raises(ValueError, match="does not fit"):
        embedding_payload("m@1", np.ones(5000, np.float32))


def test_face_frames_share_the_stream_sequence_with_hello() -> None:
    """Seq counts every frame of a stream: face frames between others leave no gap."""
    decoder = Decoder()
    payloads = face_crop_payloads(b"\x10" * 64, PixelFormat.GRAY8, 8, 8, 0)
    wire = (
        encode_frame(FrameType.STATUS, 1, 0, 0, bytes(16))
        + _wire(payloads, FrameType.FACE_CROP, first_seq=1)
        + encode_frame(FrameType.EMBEDDING, 1, 2, 0, embedding_payload("m@1", np.ones(4)))
    )
    frames = decoder.feed(wire)
    assert [f.frame_type for f in frames] == [3, 4, 5]
    assert decoder.stats.seq_gaps == 0
    assert decoder.stats.unknown_types == 0
