"""Captures: raw bytes recorded on a gateway, read back and replayed on a pty."""

from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path
from typing import Self

from firmware_bridge.protocol.v1 import Hello

__all__ = ["CAPTURE_MAGIC", "Capture", "CaptureEncoder", "CaptureError", "CaptureWriter"]

CAPTURE_MAGIC = b"EDGE-AGENT-CAPTURE 1\n"
"""First line of a capture file."""
_RECORD = struct.Struct("<ddI")


class CaptureError(ValueError):
    """A capture file cannot be read; says which file and what is wrong."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class CaptureWriter:
    """Writes the raw bytes of a link, each read with its receive times, to a capture file.

    Format: :data:`CAPTURE_MAGIC`, one line of JSON (what was recorded: sensor, link,
    profile, start time), then one record per read: ``<f64 seconds since the first read>
    <f64 wall-clock time> <u32 length>`` little-endian, followed by the bytes. A capture cut
    short (power loss, Ctrl-C) stays readable up to its last whole record.
    """

    def __init__(self, path: str | os.PathLike[str], header: dict[str, object]) -> None:
        self.path = Path(path)
        self._fh = self.path.open("wb")
        self._fh.write(CAPTURE_MAGIC)
        self._fh.write(json.dumps(header, sort_keys=True).encode() + b"\n")
        self._first: float | None = None
        self._lock = threading.Lock()
        self.reads = 0
        self.bytes = 0

    def write(self, data: bytes, recv_mono: float, recv_wall: float) -> None:
        """Append one read (thread-safe: links call it from their reader thread)."""
        with self._lock:
            if self._fh.closed:
                return
            if self._first is None:
                self._first = recv_mono
            self._fh.write(_RECORD.pack(recv_mono - self._first, recv_wall, len(data)) + data)
            self.reads += 1
            self.bytes += len(data)

    def close(self) -> None:
        """Flush and close; safe to call twice."""
        with self._lock:
            if not self._fh.closed:
                self._fh.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Capture:
    """A capture read back: its header and its reads with their times.

    Attributes:
        path: The file.
        header: What was recorded (sensor, link, profile, ...).
        times: Seconds since the first read, per read.
        walls: Wall-clock receive time, per read.
        chunks: The bytes of each read.
        truncated: Whether the file ended inside a record (the rest was dropped).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Read a capture file.

        Raises:
            CaptureError: Not a capture, or a header that is not JSON.
            OSError: The file cannot be read.
        """
        self.path = Path(path)
        raw = self.path.read_bytes()
        if not raw.startswith(CAPTURE_MAGIC):
            raise CaptureError(
                self.path, "not a capture file (record one with `edge-agent record`)"
            )
        end = raw.find(b"\n", len(CAPTURE_MAGIC))
        if end < 0:
            raise CaptureError(self.path, "header line is missing")
        try:
            header = json.loads(raw[len(CAPTURE_MAGIC) : end])
        except ValueError as err:
            raise CaptureError(self.path, f"header is not JSON: {err}") from err
        if not isinstance(header, dict):
            raise CaptureError(self.path, "header must be a JSON object")
        self.header: dict[str, object] = header
        self.times: list[float] = []
        self.walls: list[float] = []
        self.chunks: list[bytes] = []
        self.truncated = False
        pos = end + 1
        while pos < len(raw):
            if pos + _RECORD.size > len(raw):
                self.truncated = True
                break
            offset, wall, length = _RECORD.unpack_from(raw, pos)
            pos += _RECORD.size
            if pos + length > len(raw):
                self.truncated = True
                break
            self.times.append(offset)
            self.walls.append(wall)
            self.chunks.append(raw[pos : pos + length])
            pos += length

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def duration_s(self) -> float:
        """Seconds from the first read to the last."""
        return self.times[-1] if self.times else 0.0

    @property
    def protocol(self) -> str:
        """The profile the recorded device speaks (``v1`` if the header does not say)."""
        profile = self.header.get("profile")
        if isinstance(profile, dict) and isinstance(profile.get("protocol"), str):
            return str(profile["protocol"])
        return "v1"


class CaptureEncoder:
    """Plays a capture's reads back with their original spacing (scaled by ``speed``)."""

    def __init__(self, capture: Capture, *, device_id: str, speed: float, loop: bool) -> None:
        if not len(capture):
            raise CaptureError(capture.path, "holds no data")
        if not speed > 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.capture = capture
        self.speed = speed
        self.loop = loop
        self.rate_hz = 1.0
        self.batch = 1
        self.dropped_samples = 0
        self.hello = Hello(device_id, "capture", 0.0, ())
        # A pause between loops as long as the mean gap between reads.
        self._cycle = capture.duration_s + capture.duration_s / max(1, len(capture) - 1)
        self._index = 0
        self.loops = 0

    def hello_frame(self) -> bytes:
        return b""

    def due_s(self, index: int) -> float:
        """Seconds after start at which read ``index`` is sent."""
        n = len(self.capture)
        if not self.loop and index >= n:
            return 3600.0 * (1 + index)
        return (index // n * self._cycle + self.capture.times[index % n]) / self.speed

    def next_frames(self, n_samples: int | None = None) -> list[tuple[bytes, int]]:
        n = len(self.capture)
        if not self.loop and self._index >= n:
            return []
        chunk = self.capture.chunks[self._index % n]
        self._index += 1
        if self._index % n == 0:
            self.loops += 1
        return [(chunk, 0)]
