"""The base class of every link: a reader thread that decodes frames and hands them on.

What the bytes mean is the sensor's device profile (`firmware_bridge.profiles`): every
profile produces protocol-v1 frames, so the sink sees one kind of frame whatever the device.
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from firmware_bridge.profiles import Profile, open_profile
from firmware_bridge.protocol.v1 import Frame

RawTap = Callable[[bytes, float, float], None]
"""Called with every read's raw bytes and its receive times (monotonic, wall), e.g. to record."""


class LinkSink(Protocol):
    """Receives what a link produces. Called from the link's own thread."""

    def on_frames(
        self, sensor: str, frames: list[Frame], recv_mono: float, recv_wall: float
    ) -> None:
        """Decoded frames of one read, with the host times the bytes arrived."""

    def on_link_state(self, sensor: str, state: str, detail: str) -> None:
        """`connected` or `lost`, with a human-readable detail."""


class RefusalSink(Protocol):
    """A sink that also wants each kind of input the decoder refused, once (optional)."""

    def on_rejected(self, sensor: str, reason: str) -> None:
        """The decoder refused input of a kind it had not refused before."""


@dataclass
class LinkStats:
    """Counters of one link, beside its decoder's."""

    opens: int = 0
    losses: int = 0
    reads: int = 0
    bytes: int = 0
    last_error: str | None = None


class Link(ABC):
    """One sensor connection. `start()` spawns the reader; `close()` stops it (idempotent)."""

    kind: ClassVar[str]

    def __init__(self, config: Any, sink: LinkSink) -> None:
        self.config = config
        self.name: str = config.name
        self.sink = sink
        self.decoder: Profile = open_profile(getattr(config, "profile", None), device_id=self.name)
        self.raw_tap: RawTap | None = None
        self._refusals_told = 0
        self.stats = LinkStats()
        self.connected = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.loop: asyncio.AbstractEventLoop | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Offer the owner's event loop; a link that can read on it then needs no thread.

        The sink is then called on the loop's thread. Links that cannot (or tools without a
        loop) keep their reader thread.
        """
        self.loop = loop

    def start(self) -> None:
        """Start the reader thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"link-{self.name}", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop reading and release the device; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._interrupt()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._thread = None
        self._release()

    def __del__(self) -> None:
        if not self._closed and self._thread is not None:
            warnings.warn(
                f"{type(self).__name__}({self.name}) never closed", ResourceWarning, stacklevel=1
            )

    @abstractmethod
    def _run(self) -> None:
        """The reader thread's body; returns when `_stop` is set."""

    def _interrupt(self) -> None:  # noqa: B027 - optional hook
        """Wake a blocked read so the thread sees `_stop`."""

    def _release(self) -> None:  # noqa: B027 - optional hook
        """Free resources after the thread ended."""

    def _deliver(self, data: bytes) -> None:
        """Decode bytes read and hand complete frames to the sink."""
        recv_mono = time.monotonic()
        recv_wall = time.time()
        self.stats.reads += 1
        self.stats.bytes += len(data)
        tap = self.raw_tap
        if tap is not None:
            tap(data, recv_mono, recv_wall)
        frames = self.decoder.feed(data, recv_mono)
        if frames:
            self.sink.on_frames(self.name, frames, recv_mono, recv_wall)
        if len(self.decoder.refusals) > self._refusals_told:
            self._tell_refusals()

    def _tell_refusals(self) -> None:
        new = self.decoder.refusals[self._refusals_told :]
        self._refusals_told += len(new)
        on_rejected = getattr(self.sink, "on_rejected", None)
        if on_rejected is not None:
            for reason in new:
                on_rejected(self.name, reason)

    def _set_state(self, connected: bool, detail: str) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        if connected:
            self.stats.opens += 1
            self.decoder.reset()  # a partial packet from before the outage is garbage now
        else:
            self.stats.losses += 1
            self.stats.last_error = detail
        self.sink.on_link_state(self.name, "connected" if connected else "lost", detail)
