"""Serial link through pyserial: UART, USB-CDC, or a pseudo-terminal, reopened after unplug."""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import serial

from firmware_bridge.links.base import Link, LinkSink

READ_CHUNK = 1 << 16


class SerialLink(Link):
    """Reads protocol-v1 bytes from a serial port; when the device vanishes, waits and reopens."""

    kind: ClassVar[str] = "serial"

    def __init__(self, config: Any, sink: LinkSink) -> None:
        super().__init__(config, sink)
        self._port: serial.Serial | None = None

    @property
    def port_path(self) -> str:
        """The device path to open."""
        return str(self.config.port)

    def _open(self) -> serial.Serial:
        port = serial.Serial()
        port.port = self.port_path
        port.baudrate = int(getattr(self.config, "baudrate", 115_200))
        port.timeout = 0.2
        port.exclusive = True
        port.open()
        return port

    def _run(self) -> None:
        retry = float(getattr(self.config, "reopen_interval_s", 0.5))
        while not self._stop.is_set():
            try:
                self._port = self._open()
            except (serial.SerialException, OSError, ValueError) as err:
                self._set_state(False, f"cannot open {self.port_path}: {err}")
                self._stop.wait(retry)
                continue
            self._set_state(True, f"opened {self.port_path}")
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

    def _interrupt(self) -> None:
        port = self._port
        if port is not None:
            with contextlib.suppress(Exception):
                port.cancel_read()
