"""The live emulator: an encoder's frames written to a real pty by a paced writer thread."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from firmware_bridge.emulator.capture import Capture, CaptureEncoder
from firmware_bridge.emulator.motion import MotionSource
from firmware_bridge.emulator.packets import StructEncoder
from firmware_bridge.emulator.pty import Pty, point_symlink, remove_symlink
from firmware_bridge.emulator.text import TextEncoder
from firmware_bridge.emulator.v1 import StreamEncoder
from firmware_bridge.emulator.witmotion import WitMotionEncoder
from firmware_bridge.profiles.thingy52 import Thingy52Profile
from firmware_bridge.protocol.v1 import Hello

__all__ = ["WIRES", "DeviceEmulator"]

_log = logging.getLogger(__name__)

WIRES = ("v1", "witmotion", "witmotion-ble", "text", "struct", "struct-ble", "thingy52")
"""Wire formats an emulated device can speak."""


Encoder = StreamEncoder | WitMotionEncoder | TextEncoder | StructEncoder | CaptureEncoder


class _Device:
    """The running part of an emulator, owned by its writer thread.

    Kept separate from :class:`DeviceEmulator` so the thread does not keep the public object
    alive; an emulator that is dropped without ``close()`` can then be collected and warn.
    """

    _WRITABLE_POLL_S = 0.05

    def __init__(
        self, encoder: Encoder, *, max_rate: bool, link_path: Path | None, name: str
    ) -> None:
        self.encoder = encoder
        self.max_rate = max_rate
        self.link_path = link_path
        self.name = name
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.paused = threading.Event()
        # Set: produce nothing yet (see DeviceEmulator.start(held=True)).
        self.held = threading.Event()
        # Set: send HELLO before the next samples (DeviceEmulator.announce()).
        self.announce = threading.Event()
        self.pty: Pty | None = None
        self.error: BaseException | None = None
        self._pending = b""  # rest of a frame the pty only partly accepted
        self.frames_sent = 0
        self.samples_sent = 0
        self.bytes_sent = 0
        self.frames_dropped = 0
        self.bytes_dropped = 0
        self.bytes_received = 0

    # -- the pty and its symlink ---------------------------------------------------------

    def plug(self) -> None:
        new = Pty()
        with self.lock:
            old, self.pty = self.pty, new
            self._pending = b""
        if old is not None:
            old.close()
        if self.link_path is not None:
            try:
                point_symlink(self.link_path, new.path)
            except BaseException:
                self.unplug()
                raise

    def unplug(self) -> None:
        with self.lock:
            old, self.pty = self.pty, None
            self._pending = b""
        if old is not None:
            old.close()
            if self.link_path is not None:
                remove_symlink(self.link_path, old.path)

    # -- the writer thread ---------------------------------------------------------------

    def run(self) -> None:
        encoder = self.encoder
        period = encoder.batch / encoder.rate_hz
        due = getattr(encoder, "due_s", None)  # captures: their own irregular schedule
        try:
            while self.held.is_set() and not self.stop.wait(self._WRITABLE_POLL_S):
                pass
            start = time.monotonic()
            self.announce.clear()
            hello = encoder.hello_frame()
            if hello:
                self._send(hello, 0)
            batch_index = 0
            while not self.stop.is_set():
                if self.announce.is_set():
                    self.announce.clear()
                    if hello:
                        self._send(hello, 0)
                if self.paused.is_set():
                    # A hung sensor: connected, silent. The schedule resumes where it was.
                    pause_start = time.monotonic()
                    while self.paused.is_set() and not self.stop.wait(self._WRITABLE_POLL_S):
                        pass
                    start += time.monotonic() - pause_start
                    continue
                if not self.max_rate:
                    # Absolute schedule: batch k is due when its last sample was taken, so
                    # timer jitter never accumulates into drift.
                    offset = due(batch_index) if due else (batch_index + 1) * period
                    delay = start + offset - time.monotonic()
                    if delay > 0 and self.stop.wait(delay):
                        break
                for frame, n_samples in encoder.next_frames():
                    self._send(frame, n_samples)
                batch_index += 1
                self._drain_input()
        except Exception as err:
            self.error = err
            _log.exception("emulated device %s stopped", self.name)
        finally:
            if self.stop.is_set():
                self.unplug()

    def _send(self, frame: bytes, n_samples: int) -> None:
        if self.max_rate:
            self._send_blocking(frame, n_samples)
            return
        with self.lock:
            pty = self.pty
            if pty is not None and self._pending:
                self._pending = self._write(pty.master, self._pending)
            if pty is None or self._pending:
                # Like a UART FIFO overflow: the whole frame is lost, its seq is used up.
                self._drop(frame, n_samples)
                return
            self.frames_sent += 1
            self.samples_sent += n_samples
            self._pending = self._write(pty.master, frame)

    def _send_blocking(self, frame: bytes, n_samples: int) -> None:
        """Write a whole frame, waiting for the reader; while unplugged, wait for a replug."""
        view = memoryview(frame)
        counted = False
        while view and not self.stop.is_set():
            with self.lock:
                pty = self.pty
                if pty is not None:
                    if not counted:
                        self.frames_sent += 1
                        self.samples_sent += n_samples
                        counted = True
                    try:
                        written = os.write(pty.master, view)
                    except BlockingIOError:
                        written = 0
                    except OSError:  # the tty is gone: lose the rest like a pulled cable
                        self.bytes_dropped += len(view)
                        return
                    self.bytes_sent += written
                    view = view[written:]
                    fd = pty.master
            if pty is None:
                if counted:  # unplugged mid-frame: the rest is lost with the cable
                    self.bytes_dropped += len(view)
                    return
                self.stop.wait(self._WRITABLE_POLL_S)
            elif view:
                # The fd may be closed by unplug() meanwhile; the next loop then notices.
                with contextlib.suppress(OSError, ValueError):
                    select.select([], [fd], [], self._WRITABLE_POLL_S)

    def _write(self, fd: int, data: bytes) -> bytes:
        """Write what the pty accepts now and return the rest (caller holds the lock)."""
        try:
            written = os.write(fd, data)
        except BlockingIOError:
            return data
        except OSError:
            self.bytes_dropped += len(data)
            return b""
        self.bytes_sent += written
        return data[written:]

    def _drop(self, frame: bytes, n_samples: int) -> None:
        self.frames_dropped += 1
        self.bytes_dropped += len(frame)
        self.encoder.dropped_samples += n_samples

    def _drain_input(self) -> None:
        """Discard what the gateway writes to the device, so its writes never block."""
        with self.lock:
            if self.pty is None:
                return
            # BlockingIOError (an OSError) just means there is nothing to read.
            with contextlib.suppress(OSError):
                self.bytes_received += len(os.read(self.pty.master, 65536))


class DeviceEmulator:
    """An emulated IMU device streaming protocol v1 on a pseudo-terminal.

    Use it as a context manager, or call :meth:`start` and :meth:`close`. The gateway opens
    :attr:`tty_path` (or :attr:`link_path`) exactly as it would open a USB serial adapter.

    In real-time mode frames are paced at the sample rate; when nobody reads and the pty
    buffer is full, whole frames are dropped and counted, and seq still advances, so a reader
    that comes back sees the gap. With ``max_rate=True`` the device writes as fast as the
    reader consumes and waits (rather than drops) when the reader is slow or unplugged.
    """

    def __init__(
        self,
        source: MotionSource | Capture,
        *,
        device_id: str = "emu-0",
        firmware: str = "emu-1.0",
        rate_hz: float | None = None,
        stream_id: int = 0,
        batch: int | None = None,
        scales: Sequence[float] | None = None,
        max_rate: bool = False,
        hello_every_s: float = 2.0,
        status_every_s: float = 5.0,
        link_path: str | os.PathLike[str] | None = None,
        wire: str = "v1",
        outputs: Sequence[str] = ("acc", "gyro", "angle"),
        speed: float = 1.0,
        loop: bool = True,
        garbage_every: int = 0,
        layout: Any = None,
        lose_every: int = 0,
    ) -> None:
        """Configure the device; nothing is opened until :meth:`start`.

        Args:
            source: Where samples come from; read in order, looping if finite.
            device_id: Device id announced in HELLO.
            firmware: Firmware version announced in HELLO.
            rate_hz: Sample rate to play and announce; the source's rate by default. Samples
                are taken from the source in order either way.
            stream_id: Stream id in every frame header.
            batch: Samples per IMU_BATCH frame; about a tenth of a second's worth by default.
            scales: Physical value per LSB for each channel; by default each channel's full
                scale maps onto the int16 range.
            max_rate: Write as fast as the reader consumes instead of in real time.
            hello_every_s: Device-clock period of HELLO repeats (0 to send it only at start).
            status_every_s: Device-clock period of STATUS frames (0 for none).
            link_path: If given, a symlink kept pointing at the current pty, like
                ``/dev/serial/by-id/...``.
            wire: What the device speaks: ``"v1"`` (our firmware), ``"witmotion"`` (a WT901
                on a serial port) or ``"witmotion-ble"`` (WT901BLE notifications). Vendor
                wires send no HELLO, STATUS, seq or timestamps, so ``firmware``,
                ``stream_id``, ``scales``, ``hello_every_s`` and ``status_every_s`` do not
                apply to them. ``"text"``: a sketch printing one line of numbers per sample
                (profile ``text``). ``"struct"`` / ``"struct-ble"``: packets of ``layout``;
                ``"thingy52"``: a Nordic Thingy:52's raw motion records.
            outputs: The packets per sample of a ``"witmotion"`` device.
            garbage_every: A ``"text"`` device also prints one bad line every this many
                samples, a ``"struct"`` one a few bytes of noise (0: never), like a noisy
                serial port.
            layout: The packet layout of a ``"struct"`` / ``"struct-ble"`` device: the
                profile config the gateway decodes it with.
            lose_every: A ``"struct"`` device leaves out every N-th packet, its counter still
                advancing (0: never).
            speed: Playback speed of a :class:`Capture` source (2.0: twice as fast).
            loop: Whether a :class:`Capture` source starts over when it ends.

        Raises:
            ValueError: An argument is out of range.
        """
        self._encoder: Encoder
        if isinstance(source, Capture):
            self._encoder = CaptureEncoder(source, device_id=device_id, speed=speed, loop=loop)
        elif wire == "v1":
            self._encoder = StreamEncoder(
                source,
                device_id=device_id,
                firmware=firmware,
                rate_hz=rate_hz,
                stream_id=stream_id,
                batch=batch,
                scales=scales,
                hello_every_s=hello_every_s,
                status_every_s=status_every_s,
            )
        elif wire == "text":
            self._encoder = TextEncoder(
                source, device_id=device_id, rate_hz=rate_hz, batch=batch,
                garbage_every=garbage_every,
            )  # fmt: skip
        elif wire in ("struct", "struct-ble", "thingy52"):
            if wire == "thingy52":
                layout = Thingy52Profile.layout_config(None)
            if layout is None:
                raise ValueError(f"wire {wire!r} needs the layout (its profile config)")
            self._encoder = StructEncoder(
                source, layout, device_id=device_id, rate_hz=rate_hz, batch=batch,
                lose_every=lose_every, garbage_every=garbage_every,
            )  # fmt: skip
        elif wire in WIRES:
            self._encoder = WitMotionEncoder(
                source, wire=wire, device_id=device_id, rate_hz=rate_hz, batch=batch,
                outputs=outputs,
            )  # fmt: skip
        else:
            raise ValueError(f"wire must be one of {WIRES}, got {wire!r}")
        self._link_path = Path(link_path) if link_path is not None else None
        self._device = _Device(
            self._encoder, max_rate=max_rate, link_path=self._link_path, name=device_id
        )
        self._thread: threading.Thread | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._thread else "new"
        pty = self._device.pty
        where = f" on {pty.path}" if pty is not None else ""
        return f"<DeviceEmulator {self.device_id} {state}{where}>"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, *, held: bool = False) -> None:
        """Open the pty (and symlink) and start streaming.

        Args:
            held: Open the pty but produce nothing (not even HELLO) until :meth:`release`,
                like a sensor powered by the host opening its port. A reader that opens the
                pty later (pyserial's open discards what is waiting) then loses nothing.

        Raises:
            RuntimeError: The emulator was already started or closed.
            OSError: No pty could be opened or the symlink could not be made.
        """
        if self._closed:
            raise RuntimeError(f"{self.device_id}: cannot start a closed emulator")
        if self._thread is not None:
            raise RuntimeError(f"{self.device_id}: already started")
        if held:
            self._device.held.set()
        self._device.plug()
        thread = threading.Thread(
            target=self._device.run, name=f"emulator-{self.device_id}", daemon=True
        )
        self._thread = thread
        thread.start()

    def stop(self) -> None:
        """Stop streaming, close the pty and remove the symlink; safe to call repeatedly."""
        if self._closed:
            return
        self._closed = True
        self._device.stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            if self._thread.is_alive():
                _log.warning("emulated device %s did not stop within 5 s", self.device_id)
        self._device.unplug()

    close = stop

    def __enter__(self) -> Self:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # Getattr: __init__ may have failed before these were set.
        if getattr(self, "_thread", None) is not None and not getattr(self, "_closed", True):
            # Stop first: the warning may be turned into an exception. The thread closes the
            # pty on its way out; joining here could block the garbage collector.
            self._device.stop.set()
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2, source=self)

    # -- hot-plug ------------------------------------------------------------------------

    def unplug(self) -> None:
        """Pull the cable: close the pty and remove the symlink while the device keeps running.

        A reader then sees an I/O error or end of file. Frames produced while unplugged are
        dropped (real-time mode) or held back (max-rate mode); seq keeps counting.
        """
        self._require_running()
        self._device.unplug()

    def replug(self) -> None:
        """Plug the cable back in: a NEW pty (new path), the symlink repointed to it.

        The stream continues where the device is, so the reader sees a seq gap for the time
        it was away. Calling it while plugged in swaps the pty, like a quick re-enumeration.
        """
        self._require_running()
        self._device.plug()

    def release(self) -> None:
        """Start producing after ``start(held=True)``: HELLO first, then samples from the
        start of the source. Does nothing when not held."""
        self._device.held.clear()

    def announce(self) -> None:
        """Send HELLO again before the next samples (a v1 device does so when its host
        reopens the port); vendor wires have no HELLO and ignore it."""
        self._device.announce.set()

    def pause(self) -> None:
        """Stop producing samples while staying plugged in, like firmware that hung."""
        self._require_running()
        self._device.paused.set()

    def resume(self) -> None:
        """Produce samples again after :meth:`pause`; nothing is owed for the pause."""
        self._require_running()
        self._device.paused.clear()

    def _require_running(self) -> None:
        if self._closed or self._thread is None:
            raise RuntimeError(f"{self.device_id}: emulator is not running")

    # -- what it is and what it did ------------------------------------------------------

    @property
    def device_id(self) -> str:
        """Device id announced in HELLO."""
        return self._encoder.hello.device_id

    @property
    def hello(self) -> Hello:
        """The HELLO this device sends (channel names, units and scales)."""
        return self._encoder.hello

    @property
    def rate_hz(self) -> float:
        """Sample rate played and announced."""
        return self._encoder.rate_hz

    @property
    def batch(self) -> int:
        """Samples per IMU_BATCH frame."""
        return self._encoder.batch

    @property
    def tty_path(self) -> str:
        """Path of the current pty slave, e.g. ``/dev/pts/7``.

        Raises:
            RuntimeError: Not started, unplugged or closed.
        """
        pty = self._device.pty
        if pty is None:
            raise RuntimeError(f"{self.device_id}: no tty (not started, unplugged or closed)")
        return pty.path

    @property
    def link_path(self) -> Path | None:
        """The symlink kept pointing at the current tty, if one was asked for."""
        return self._link_path

    @property
    def plugged(self) -> bool:
        """Whether a pty is currently open."""
        return self._device.pty is not None

    @property
    def running(self) -> bool:
        """Whether the writer thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def error(self) -> BaseException | None:
        """The exception that stopped the writer thread, if any."""
        return self._device.error

    @property
    def frames_sent(self) -> int:
        """Frames put on the wire (the last one before an unplug may be cut short)."""
        return self._device.frames_sent

    @property
    def samples_sent(self) -> int:
        """Samples in the IMU_BATCH frames put on the wire."""
        return self._device.samples_sent

    @property
    def bytes_sent(self) -> int:
        """Bytes the pty accepted."""
        return self._device.bytes_sent

    @property
    def frames_dropped(self) -> int:
        """Frames produced but lost because the pty was full or unplugged."""
        return self._device.frames_dropped

    @property
    def bytes_dropped(self) -> int:
        """Bytes of dropped frames, plus frame tails lost to an unplug."""
        return self._device.bytes_dropped

    @property
    def samples_dropped(self) -> int:
        """Samples in dropped frames; also reported in STATUS as the overflow counter."""
        return self._encoder.dropped_samples
