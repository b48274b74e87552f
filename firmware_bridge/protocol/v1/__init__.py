"""Wire protocol v1 between sensor firmware and the gateway: SLIP-framed, CRC-checked frames.

A frame on the wire is ``END <escaped(header + payload + crc)> END``. SLIP (RFC 1055) was
chosen over COBS because the gateway can undo it with two ``bytes.replace`` calls and split
a read on ``END`` with one ``bytes.split``, all at C speed; COBS needs a Python loop per zero
byte and int16 IMU data is full of zeros. The byte layout is specified in ``docs/protocol.md``;
this package is the reference implementation of both directions.

The decoder is the hot path of ingest, so it avoids per-byte Python work entirely and never
raises on bad input: every rejected byte is accounted for in :class:`DecoderStats`.

One module per concern: ``wire`` (sizes, limits, frame types, byte layouts), ``payloads``
(HELLO, STATUS, face crop and embedding values), ``frame`` (a decoded frame, parsed on
demand), ``encode`` (the firmware's side), ``decoder`` (the gateway's side) and ``crops``
(FACE_CROP reassembly). Every name is importable from here.
"""

from __future__ import annotations

from firmware_bridge.protocol.v1.crops import CropAssembler, CropStats
from firmware_bridge.protocol.v1.decoder import Decoder, DecoderStats, iter_frames
from firmware_bridge.protocol.v1.encode import (
    embedding_payload,
    encode_frame,
    face_crop_payloads,
    hello_payload,
    imu_payload,
    status_payload,
)
from firmware_bridge.protocol.v1.frame import Frame
from firmware_bridge.protocol.v1.payloads import (
    ChannelInfo,
    CropChunk,
    Embedding,
    FaceCrop,
    Hello,
    Status,
    hello_problem,
)
from firmware_bridge.protocol.v1.wire import (
    END,
    ESC,
    ESC_END,
    ESC_ESC,
    HEADER_SIZE,
    MAX_CHANNELS,
    MAX_CROP_BYTES,
    MAX_CROP_CHUNK,
    MAX_FRAME,
    MAX_PAYLOAD,
    MAX_SAMPLE_RATE_HZ,
    MAX_SCALE,
    MIN_SAMPLE_RATE_HZ,
    MIN_SCALE,
    VERSION,
    EmbeddingType,
    FrameType,
    PixelFormat,
    ProtocolError,
)

__all__ = [
    "END",
    "ESC",
    "ESC_END",
    "ESC_ESC",
    "HEADER_SIZE",
    "MAX_CHANNELS",
    "MAX_CROP_BYTES",
    "MAX_CROP_CHUNK",
    "MAX_FRAME",
    "MAX_PAYLOAD",
    "MAX_SAMPLE_RATE_HZ",
    "MAX_SCALE",
    "MIN_SAMPLE_RATE_HZ",
    "MIN_SCALE",
    "VERSION",
    "ChannelInfo",
    "CropAssembler",
    "CropChunk",
    "CropStats",
    "Decoder",
    "DecoderStats",
    "Embedding",
    "EmbeddingType",
    "FaceCrop",
    "Frame",
    "FrameType",
    "Hello",
    "PixelFormat",
    "ProtocolError",
    "Status",
    "embedding_payload",
    "encode_frame",
    "face_crop_payloads",
    "hello_payload",
    "hello_problem",
    "imu_payload",
    "iter_frames",
    "status_payload",
]
