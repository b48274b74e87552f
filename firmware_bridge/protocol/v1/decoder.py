"""Decoding protocol v1 on the gateway: the hot path of ingest, which never raises on bad input."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from firmware_bridge.protocol.v1.frame import Frame
from firmware_bridge.protocol.v1.wire import (
    _CRC_RESIDUE,
    _CRC_SIZE,
    _HALF_U32,
    _HEADER,
    _KNOWN_TYPES,
    _MAX_ESCAPED,
    _OVERHEAD,
    _U32,
    END,
    ESC,
    ESC_END,
    ESC_ESC,
    HEADER_SIZE,
    MAX_FRAME,
    VERSION,
    FrameType,
)

__all__ = ["Decoder", "DecoderStats", "iter_frames"]


@dataclass
class DecoderStats:
    """What a :class:`Decoder` has seen; every byte fed is either in a frame or counted here.

    Attributes:
        bytes_in: Bytes passed to :meth:`Decoder.feed`.
        frames_ok: Frames delivered to the caller.
        crc_errors: Frames rejected by the CRC check; this includes frames with an invalid
            escape sequence, which can only come from corruption on the link.
        malformed: Fragments shorter than a header plus CRC, and frames with a valid CRC but a
            wrong version byte or a payload length that disagrees with the frame size.
        oversize: Frames, or unterminated runs of bytes, larger than :data:`MAX_FRAME` allows.
        resyncs: Times the decoder lost sync and skipped bytes to reach the next valid frame;
            a run of consecutive rejected frames counts once.
        unknown_types: Valid frames of a reserved type; skipped, but their seq is tracked.
        seq_gaps: Gap events: a frame whose seq jumped forward by more than one.
        frames_lost: Sum of the missing sequence numbers over all gap events.
        duplicates: Frames whose seq repeated or went backwards. Such frames are dropped,
            except HELLO, which is delivered because it marks a device restart.
        restarts: HELLO frames whose seq repeated or went backwards; the stream's sequence
            tracking restarts from them.
    """

    bytes_in: int = 0
    frames_ok: int = 0
    crc_errors: int = 0
    malformed: int = 0
    oversize: int = 0
    resyncs: int = 0
    unknown_types: int = 0
    seq_gaps: int = 0
    frames_lost: int = 0
    duplicates: int = 0
    restarts: int = 0


class Decoder:
    """Incremental v1 decoder for one byte stream (one serial port or BLE characteristic).

    Feed it whatever the link read; it returns the complete valid frames, keeps a partial
    frame between calls and never raises on any input. It also tracks the sequence number of
    each stream so every delivered :class:`Frame` carries ``gap``, the number of frames lost
    just before it.

    Attributes:
        stats: Running counters; see :class:`DecoderStats`.
    """

    def __init__(self) -> None:
        self.stats = DecoderStats()
        # Unterminated bytes, kept as pieces so many small reads of one big frame are joined
        # once (a bytes += per read would copy the frame again on every read).
        self._tail: list[bytes] = []
        self._tail_size = 0
        # Bytes before the first END (a reader opening mid-frame) or after an overlong run are
        # not a frame error, just a resync; _presync marks that the next chunk is such bytes.
        self._presync = True
        self._in_sync = True
        self._last_seq: dict[int, int] = {}

    def reset(self) -> None:
        """Forget a partial frame, e.g. after the link reconnected.

        Sequence tracking is kept on purpose, so frames lost while the link was down still show
        up as a gap on the first frame after the reconnect.
        """
        self._tail.clear()
        self._tail_size = 0
        self._presync = True

    def last_seq(self, stream_id: int) -> int | None:
        """Return the seq of the last frame accepted on a stream, or None if none was seen."""
        return self._last_seq.get(stream_id)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Consume bytes from the link and return the frames they completed, in order.

        Any buffer type is accepted (BLE stacks hand out bytearrays); frames always carry
        immutable ``bytes`` payloads.
        """
        if type(data) is not bytes:
            data = bytes(data)
        stats = self.stats
        stats.bytes_in += len(data)
        tail = self._tail
        if END not in data:
            if data:
                tail.append(data)
                self._tail_size += len(data)
                if self._tail_size > _MAX_ESCAPED:
                    self._drop_tail()
            return []
        if tail:
            tail.append(data)
            data = b"".join(tail)
            tail.clear()
        chunks = data.split(END)
        # The last piece is not terminated yet; keep it for the next call.
        rest = chunks.pop()
        self._tail_size = len(rest)
        if rest:
            tail.append(rest)

        frames: list[Frame] = []
        append = frames.append
        last_seq = self._last_seq
        quiet = self._presync
        self._presync = False
        for chunk in chunks:
            if not chunk:  # back-to-back END bytes, the normal frame start
                quiet = False
                continue
            # Unescape ESC_END before ESC_ESC. In a valid frame every ESC starts a pair, so
            # the first pass only matches real ESC_END pairs (the DD of an ESC_ESC pair is never
            # a DC). The reverse order is wrong: data bytes DB DC travel as DB DD DC, and
            # turning DB DD into DB first would create a false DB DC that then became C0.
            # An ESC followed by any other byte is left as is; the CRC then rejects the frame.
            body = chunk.replace(ESC_END, END).replace(ESC_ESC, ESC)
            size = len(body)
            if size < _OVERHEAD or size > MAX_FRAME or zlib.crc32(body) != _CRC_RESIDUE:
                self._reject(body, quiet)
                quiet = False
                continue
            version, frame_type, stream_id, _flags, seq, timestamp_us, length = _HEADER.unpack_from(
                body
            )
            if version != VERSION or length != size - _OVERHEAD:
                self._reject(body, quiet)
                quiet = False
                continue
            quiet = False
            self._in_sync = True

            last = last_seq.get(stream_id)
            gap = 0
            if last is not None:
                delta = (seq - last) & _U32
                if delta != 1:
                    if delta == 0 or delta >= _HALF_U32:
                        stats.duplicates += 1
                        if frame_type != FrameType.HELLO:
                            continue
                        stats.restarts += 1
                    else:
                        gap = delta - 1
                        stats.seq_gaps += 1
                        stats.frames_lost += gap
            last_seq[stream_id] = seq

            if frame_type not in _KNOWN_TYPES:
                stats.unknown_types += 1
                continue
            append(
                Frame(
                    frame_type, stream_id, seq, timestamp_us, body[HEADER_SIZE:-_CRC_SIZE], gap=gap
                )
            )
        stats.frames_ok += len(frames)
        if self._tail_size > _MAX_ESCAPED:
            self._drop_tail()
        return frames

    def _reject(self, body: bytes, quiet: bool) -> None:
        """Count a chunk that is not a valid frame (rare path, kept out of the loop)."""
        stats = self.stats
        if not quiet:
            size = len(body)
            if size > MAX_FRAME:
                stats.oversize += 1
            elif size < _OVERHEAD:
                stats.malformed += 1
            elif zlib.crc32(body) != _CRC_RESIDUE:
                stats.crc_errors += 1
            else:
                stats.malformed += 1
        if self._in_sync:
            stats.resyncs += 1
            self._in_sync = False

    def _drop_tail(self) -> None:
        """Discard an unterminated run that is already too long to be a frame."""
        self.stats.oversize += 1
        if self._in_sync:
            self.stats.resyncs += 1
            self._in_sync = False
        self._tail.clear()
        self._tail_size = 0
        # What follows up to the next END is the rest of the same run: skip it silently.
        self._presync = True


def iter_frames(chunks: Iterable[bytes], decoder: Decoder | None = None) -> Iterator[Frame]:
    """Decode an iterable of byte chunks (a recording, a file read in blocks) frame by frame.

    Args:
        chunks: Byte chunks in stream order; boundaries need not align with frames.
        decoder: Decoder to use, e.g. to inspect its stats afterwards; a new one by default.
    """
    decoder = Decoder() if decoder is None else decoder
    for chunk in chunks:
        yield from decoder.feed(chunk)
