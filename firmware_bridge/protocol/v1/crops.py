"""Joining FACE_CROP chunks into whole images, per stream."""

from __future__ import annotations

from dataclasses import dataclass

from firmware_bridge.protocol.v1.frame import Frame
from firmware_bridge.protocol.v1.payloads import CropChunk, FaceCrop
from firmware_bridge.protocol.v1.wire import MAX_CROP_BYTES, ProtocolError

__all__ = ["CropAssembler", "CropStats"]


@dataclass
class CropStats:
    """What a :class:`CropAssembler` has seen.

    Attributes:
        chunks: FACE_CROP frames fed.
        crops: Images completed.
        incomplete: Images abandoned because a chunk was lost, came out of order, another
            image started first or the rest did not arrive in time.
        oversize: Images larger than the assembler accepts.
        malformed: Chunks whose payload is invalid (see :meth:`Frame.crop_chunk`).
    """

    chunks: int = 0
    crops: int = 0
    incomplete: int = 0
    oversize: int = 0
    malformed: int = 0


@dataclass
class _Partial:
    first: CropChunk
    parts: list[bytes]
    size: int
    timestamp_us: int
    seq: int
    started: float


class CropAssembler:
    """Joins FACE_CROP chunks into whole images, per stream; never raises on bad input.

    Chunks of an image are sent back to back in index order, so an image is complete when
    its last chunk arrives after all the others; a lost chunk (a seq gap on the stream), a
    chunk out of order, a different image starting or a timeout abandons the image, counted
    in ``stats.incomplete``. Memory is bounded by ``max_bytes`` per stream.

    Args:
        max_bytes: Largest image accepted.
        timeout_s: An image whose chunks stop arriving for this long is abandoned.
    """

    def __init__(self, max_bytes: int = MAX_CROP_BYTES, timeout_s: float = 2.0) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.stats = CropStats()
        self._partial: dict[int, _Partial] = {}
        # Per stream, the id of an image already counted as incomplete: its remaining
        # chunks are skipped quietly, so one lost image counts once.
        self._skipping: dict[int, int] = {}
        self.last_error: str | None = None

    def feed(self, frame: Frame, now: float) -> FaceCrop | None:
        """Take one FACE_CROP frame (``now``: host monotonic seconds); returns a finished image."""
        stats = self.stats
        stats.chunks += 1
        stream = frame.stream_id
        partial = self._partial.get(stream)
        if partial is not None and (frame.gap or now - partial.started > self.timeout_s):
            self._abandon(stream, "a chunk was lost" if frame.gap else "chunks stopped arriving")
            partial = None
        try:
            chunk = frame.crop_chunk()
        except ProtocolError as err:
            stats.malformed += 1
            self.last_error = str(err)
            if partial is not None:
                self._abandon(stream, "a malformed chunk arrived")
            return None
        if chunk.total_bytes > self.max_bytes:
            stats.oversize += 1
            self.last_error = (
                f"image of {chunk.total_bytes} bytes exceeds the {self.max_bytes}-byte limit"
            )
            if partial is not None:
                self._abandon(stream, "an oversize image started")
            return None
        if partial is not None:
            first = partial.first
            same = (
                chunk.crop_id == first.crop_id
                and chunk.count == first.count
                and chunk.index == len(partial.parts)
                and (chunk.pixel_format, chunk.width, chunk.height, chunk.total_bytes)
                == (first.pixel_format, first.width, first.height, first.total_bytes)
            )
            if not same:
                self._abandon(stream, f"chunk {chunk.index} of image {chunk.crop_id} broke in")
                partial = None
        if partial is None:
            if chunk.index != 0:
                if self._skipping.get(stream) != chunk.crop_id:
                    self._skipping[stream] = chunk.crop_id
                    stats.incomplete += 1
                    self.last_error = f"image {chunk.crop_id} arrived without its first chunk"
                return None
            self._skipping.pop(stream, None)
            partial = _Partial(chunk, [], 0, frame.timestamp_us, frame.seq, now)
            self._partial[stream] = partial
        partial.parts.append(chunk.data)
        partial.size += len(chunk.data)
        if partial.size > chunk.total_bytes:
            self._abandon(stream, f"image {chunk.crop_id} has more bytes than announced")
            return None
        if chunk.index + 1 < chunk.count:
            return None
        del self._partial[stream]
        if partial.size != chunk.total_bytes:
            stats.incomplete += 1
            self.last_error = (
                f"image {chunk.crop_id} ended at {partial.size} of {chunk.total_bytes} bytes"
            )
            return None
        stats.crops += 1
        return FaceCrop(
            stream,
            chunk.crop_id,
            chunk.pixel_format,
            chunk.width,
            chunk.height,
            b"".join(partial.parts),
            partial.timestamp_us,
            partial.seq,
        )

    def _abandon(self, stream: int, reason: str) -> None:
        partial = self._partial.pop(stream, None)
        if partial is not None:
            self._skipping[stream] = partial.first.crop_id
        self.stats.incomplete += 1
        self.last_error = reason
