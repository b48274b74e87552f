"""An emulated camera module: face crops and on-device embeddings over protocol v1 on a pty.

Camera modules at a gate detect and crop faces themselves and send the crop (FACE_CROP
frames: GRAY8, RGB888 or JPEG, chunked) or, if they run a model, the embedding (EMBEDDING
frames). This emulator does the same on a pseudo-terminal, so the gateway reads it through
pyserial exactly like a USB-serial camera. Faces are sent when asked (someone stepped up to
the gate), HELLO at start and every ``hello_every_s``::

    with CameraEmulator(device_id="gate-cam") as cam:
        # point a `serial` sensor (models = []) at cam.tty_path, wait until it is connected
        cam.send_crop(image)                      # (h, w) grey or (h, w, 3) RGB uint8
        cam.send_embedding(vector, "model@1.0.0")
        cam.wait_sent()
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import threading
import time
import warnings
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt

from firmware_bridge.emulator.pty import Pty, point_symlink, remove_symlink
from firmware_bridge.protocol.v1 import (
    MAX_CROP_CHUNK,
    ChannelInfo,
    EmbeddingType,
    FrameType,
    Hello,
    PixelFormat,
    embedding_payload,
    encode_frame,
    face_crop_payloads,
    hello_payload,
)

_STOP = object()


class CameraEmulator:
    """A face camera on a pseudo-terminal.

    Args:
        device_id: Device id announced in HELLO.
        firmware: Firmware version announced in HELLO.
        stream_id: Stream id of every frame.
        chunk_size: Image bytes per FACE_CROP frame.
        hello_every_s: Period of HELLO repeats (0: only at start).
        link_path: Optional symlink kept pointing at the pty.
    """

    def __init__(
        self,
        *,
        device_id: str = "cam-0",
        firmware: str = "cam-1.0",
        stream_id: int = 0,
        chunk_size: int = MAX_CROP_CHUNK,
        hello_every_s: float = 2.0,
        link_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.hello = Hello(device_id, firmware, 0.0, (ChannelInfo("face", "", 1.0),))
        self.stream_id = stream_id
        self.chunk_size = chunk_size
        self.hello_every_s = hello_every_s
        self.link_path = Path(link_path) if link_path is not None else None
        self.frames_sent = 0
        self.crops_sent = 0
        self.bytes_dropped = 0
        self._seq = 0
        self._crop_id = 0
        self._start_mono = time.monotonic()
        self._queue: queue.Queue[object] = queue.Queue()
        self._pty: Pty | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> CameraEmulator:
        """Open the pty and start sending HELLO."""
        if self._thread is not None:
            return self
        self._pty = Pty()
        if self.link_path is not None:
            point_symlink(self.link_path, self._pty.path)
        self._thread = threading.Thread(
            target=self._run, name=f"camera-{self.hello.device_id}", daemon=True
        )
        self._thread.start()
        return self

    @property
    def tty_path(self) -> str:
        """The pty the gateway opens."""
        if self._pty is None:
            raise RuntimeError("camera not started")
        return self._pty.path

    def close(self) -> None:
        """Stop and close the pty; safe to call twice."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            self._queue.put(_STOP)
            thread.join(5.0)
        pty, self._pty = self._pty, None
        if pty is not None:
            if self.link_path is not None:
                remove_symlink(self.link_path, pty.path)
            pty.close()

    def __enter__(self) -> CameraEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_thread", None) is not None:
            warnings.warn("CameraEmulator was never closed", ResourceWarning, stacklevel=1)

    # -- what the camera sends -------------------------------------------------------------

    def send_crop(
        self, image: npt.NDArray[np.uint8] | None = None, *, jpeg: bytes | None = None
    ) -> int:
        """Queue one face crop: a uint8 ``(h, w)``/``(h, w, 3)`` array, or JPEG bytes.

        Returns:
            The crop id the frames carry.
        """
        with self._lock:
            crop_id = self._crop_id
            self._crop_id = (crop_id + 1) & 0xFFFF
        if jpeg is not None:
            width, height = _jpeg_size(jpeg)
            payloads = face_crop_payloads(
                jpeg, PixelFormat.JPEG, width, height, crop_id, chunk_size=self.chunk_size
            )
        elif image is not None:
            pixels = np.ascontiguousarray(image, dtype=np.uint8)
            fmt = PixelFormat.GRAY8 if pixels.ndim == 2 else PixelFormat.RGB888
            payloads = face_crop_payloads(
                pixels.tobytes(),
                fmt,
                pixels.shape[1],
                pixels.shape[0],
                crop_id,
                chunk_size=self.chunk_size,
            )
        else:
            raise ValueError("give an image or jpeg bytes")
        timestamp = self._now_us()
        self._queue.put([self._frame(FrameType.FACE_CROP, p, timestamp) for p in payloads])
        self.crops_sent += 1
        return crop_id

    def send_embedding(
        self,
        values: npt.NDArray[np.floating],
        model: str,
        element_type: int = EmbeddingType.FLOAT32,
    ) -> None:
        """Queue one embedding computed "on the camera" by ``model`` (``name@version``)."""
        payload = embedding_payload(model, values, element_type)
        self._queue.put([self._frame(FrameType.EMBEDDING, payload, self._now_us())])

    def send_raw(self, data: bytes) -> None:
        """Queue raw bytes (tests: torn or corrupt frames)."""
        self._queue.put([data])

    def skip_seq(self, frames: int = 1) -> None:
        """Use up sequence numbers without sending, like frames lost on the link."""
        with self._lock:
            self._seq += frames

    def wait_sent(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued was written to the pty (or the timeout passed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.005)
        return False

    # -- internals -------------------------------------------------------------------------

    def _now_us(self) -> int:
        return int((time.monotonic() - self._start_mono) * 1e6)

    def _frame(self, frame_type: int, payload: bytes, timestamp_us: int) -> bytes:
        with self._lock:
            seq = self._seq
            self._seq += 1
        return encode_frame(frame_type, self.stream_id, seq, timestamp_us, payload)

    def _run(self) -> None:
        next_hello = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_hello:
                self._write(self._frame(FrameType.HELLO, hello_payload(self.hello), self._now_us()))
                next_hello = now + self.hello_every_s if self.hello_every_s > 0 else float("inf")
            try:
                item = self._queue.get(timeout=max(0.0, min(0.5, next_hello - time.monotonic())))
            except queue.Empty:
                continue
            try:
                if item is _STOP:
                    return
                assert isinstance(item, list)
                for frame in item:
                    self._write(frame)
            finally:
                self._queue.task_done()

    def _write(self, frame: bytes) -> None:
        """Write a whole frame, waiting while the reader is slow (never tears a frame)."""
        pty = self._pty
        if pty is None:
            return
        view = memoryview(frame)
        while view and not self._stop.is_set():
            try:
                written = os.write(pty.master, view)
            except BlockingIOError:
                with contextlib.suppress(OSError, ValueError):
                    select.select([], [pty.master], [], 0.05)
                continue
            except OSError:
                self.bytes_dropped += len(view)
                return
            view = view[written:]
        self.frames_sent += 1
        with contextlib.suppress(OSError):  # discard what the gateway writes to us
            os.read(pty.master, 65536)


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Width and height from a JPEG's SOF marker (no decoder needed)."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            raise ValueError("not a JPEG: marker expected")
        marker = data[i + 1]
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return width, height
        i += 2 + length
    raise ValueError("not a JPEG: no frame header found")
