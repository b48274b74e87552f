"""Serial link through pyserial: UART, USB-CDC, or a pseudo-terminal, reopened after unplug.

Hot-plug: configure the port by a stable path (``/dev/serial/by-id/usb-…``). When the
adapter is pulled, the read fails, the link reports ``lost`` and retries the open every
``reopen_interval_s`` (0.5 s by default); udev recreates the by-id symlink when the adapter
comes back, the next retry opens it and the link reports ``connected``. No restart needed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
from typing import Any, ClassVar

import serial

from firmware_bridge.links.base import Link, LinkSink

READ_CHUNK = 1 << 16
DEFAULT_BAUDRATE = 921_600


class SerialLink(Link):
    """Reads a serial port and decodes it with the sensor's profile; reopens when it vanishes."""

    kind: ClassVar[str] = "serial"

    def __init__(self, config: Any, sink: LinkSink) -> None:
        super().__init__(config, sink)
        self._port: serial.Serial | None = None
        self._task: concurrent.futures.Future[None] | None = None
        self._open_reported = False  # a missing port is reported once, not every retry

    @property
    def port_path(self) -> str:
        """The device path to open."""
        return str(self.config.port)

    @property
    def baudrate(self) -> int:
        """The configured baud rate, else the profile's usual one (a WT901 ships at 9600)."""
        configured = getattr(self.config, "baudrate", None)
        profile_default = getattr(getattr(self.config, "profile", None), "default_baudrate", None)
        return int(configured or profile_default or DEFAULT_BAUDRATE)

    def _open(self) -> serial.Serial:
        port = serial.Serial()
        port.port = self.port_path
        port.baudrate = self.baudrate
        port.timeout = 0.2
        port.exclusive = True
        port.open()
        return port

    def _open_failed(self, err: Exception) -> None:
        detail = f"cannot open {self.port_path}: {err}"
        if not self._open_reported and not self.connected:
            # Never opened yet: say so once, so a wrong path does not go unnoticed.
            self.stats.last_error = detail
            self.sink.on_link_state(self.name, "lost", detail)
        self._open_reported = True
        self._set_state(False, detail)

    def _opened(self) -> None:
        self._open_reported = True
        self._set_state(True, f"opened {self.port_path} at {self.baudrate} Bd")

    def _run(self) -> None:
        retry = float(getattr(self.config, "reopen_interval_s", 0.5))
        while not self._stop.is_set():
            try:
                self._port = self._open()
            except (serial.SerialException, OSError, ValueError) as err:
                self._open_failed(err)
                self._stop.wait(retry)
                continue
            self._opened()
            try:
                self._read_until_error(self._port)
            finally:
                with contextlib.suppress(Exception):
                    self._port.close()
                self._port = None

    def _read_until_error(self, port: serial.Serial) -> None:
        while not self._stop.is_set():
            try:
                waiting = port.in_waiting
                data = port.read(min(waiting, READ_CHUNK) if waiting else 1)
                if data and not waiting:
                    # The blocking single-byte read woke us up; take the rest in one go.
                    more = port.in_waiting
                    if more:
                        data += port.read(min(more, READ_CHUNK))
            except (serial.SerialException, OSError, TypeError, AttributeError) as err:
                if not self._stop.is_set():
                    self._set_state(False, f"{self.port_path} lost: {err}")
                return
            if data:
                self._deliver(data)

    # -- on the owner's event loop: the port's fd is watched with add_reader, no thread ----

    def start(self) -> None:
        """Start reading: on the bound event loop when there is one, else on a thread."""
        if self.loop is None:
            super().start()
            return
        if self._task is not None:
            return
        self._task = asyncio.run_coroutine_threadsafe(self._supervise(), self.loop)

    def close(self, timeout: float = 5.0) -> None:
        """Stop reading and release the port; safe to call twice, from any thread."""
        if self.loop is None or self._task is None:
            super().close(timeout)
            return
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        task = self._task
        try:
            on_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            task.cancel()
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(task.cancel)
            with contextlib.suppress(concurrent.futures.CancelledError, TimeoutError, Exception):
                task.result(timeout)
        self._release()

    async def _supervise(self) -> None:
        """Open, read until the device goes, reopen: the loop-mode twin of `_run`."""
        loop = asyncio.get_running_loop()
        retry = float(getattr(self.config, "reopen_interval_s", 0.5))
        while not self._stop.is_set():
            try:
                port = await asyncio.to_thread(self._open)
            except (serial.SerialException, OSError, ValueError) as err:
                self._open_failed(err)
                await asyncio.sleep(retry)
                continue
            self._port = port
            self._opened()
            try:
                reason = await self._read_on_loop(loop, port)
            finally:
                with contextlib.suppress(Exception):
                    port.close()
                self._port = None
            if not self._stop.is_set():
                self._set_state(False, f"{self.port_path} lost: {reason}")

    async def _read_on_loop(self, loop: asyncio.AbstractEventLoop, port: serial.Serial) -> str:
        """Deliver what the port's fd has whenever it is readable; returns why it stopped."""
        fd = port.fileno()
        os.set_blocking(fd, False)
        gone: asyncio.Future[str] = loop.create_future()

        def readable() -> None:
            try:
                data = os.read(fd, READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # EIO: the adapter (or the pty) went away
                if not gone.done():
                    gone.set_result(str(err))
                return
            if not data:
                if not gone.done():
                    gone.set_result("device closed")
                return
            self._deliver(data)

        loop.add_reader(fd, readable)
        try:
            return await gone
        finally:
            loop.remove_reader(fd)

    def _interrupt(self) -> None:
        port = self._port
        if port is not None:
            with contextlib.suppress(Exception):
                port.cancel_read()
