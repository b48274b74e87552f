"""sd_notify: telling systemd that the daemon is ready, alive, reloading or stopping.

systemd passes the address of its notification socket in `NOTIFY_SOCKET`: a path,
or an abstract socket written with a leading `@`. Each message is one datagram of
`KEY=VALUE` lines (`READY=1`, `STATUS=...`, `WATCHDOG=1`, `RELOADING=1`,
`STOPPING=1`). systemd-python's `systemd.daemon.notify` (Debian: python3-systemd)
is used when it can be imported; otherwise a built-in sender speaks the same
protocol, so a gateway without the C extension behaves identically. Outside
systemd (`NOTIFY_SOCKET` unset) every call is a cheap no-op.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Literal

log = logging.getLogger(__name__)

Backend = Literal["auto", "systemd-python", "socket"]


def notify_address(raw: str) -> str | bytes:
    """Turn a `NOTIFY_SOCKET` value into an `AF_UNIX` address.

    Raises:
        ValueError: the value is neither an absolute path nor an abstract `@name`.
    """
    if raw.startswith("@") and len(raw) > 1:
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    raise ValueError(
        f"NOTIFY_SOCKET={raw!r} is not an absolute socket path or an abstract '@name' address"
    )


def watchdog_timeout(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout systemd expects pings within (`WatchdogSec=`), in seconds.

    None when the watchdog is off, or when `WATCHDOG_PID` names another process
    (the variables were inherited, the watchdog is not ours).
    """
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


def _library_sender() -> Callable[[str], bool] | None:
    try:
        from systemd import daemon as sd_daemon
    except ImportError:
        return None

    def send(message: str) -> bool:
        return bool(sd_daemon.notify(message))

    return send


class Notifier:
    """Sends sd_notify messages to systemd; a no-op when not started by systemd.

    Args:
        backend: "systemd-python" to require the library, "socket" for the built-in
            sender, "auto" (default) for the library when importable and the
            environment is the process's own.
        environ: Where `NOTIFY_SOCKET` is read from (default: `os.environ`). The
            library always reads the process environment, so an explicit mapping
            selects the built-in sender under "auto".

    Raises:
        ImportError: backend "systemd-python" was asked for and is not installed.
    """

    def __init__(
        self, *, backend: Backend = "auto", environ: Mapping[str, str] | None = None
    ) -> None:
        env = os.environ if environ is None else environ
        self.address_text = env.get("NOTIFY_SOCKET") or None
        self._library: Callable[[str], bool] | None = None
        if backend == "systemd-python" or (backend == "auto" and environ is None):
            self._library = _library_sender()
            if self._library is None and backend == "systemd-python":
                raise ImportError("systemd-python is not installed (Debian: python3-systemd)")
        self._address: str | bytes | None = None
        if self.address_text is not None and self._library is None:
            try:
                self._address = notify_address(self.address_text)
            except ValueError as err:
                log.warning("sd_notify disabled: %s", err)
                self.address_text = None
        self._sock: socket.socket | None = None
        self._last_error: str | None = None
        self.sent = 0

    @property
    def enabled(self) -> bool:
        """Whether systemd is listening (the service has `Type=notify`)."""
        return self.address_text is not None

    @property
    def backend(self) -> str:
        """ "systemd-python", "socket", or "none" when not under systemd."""
        if not self.enabled:
            return "none"
        return "systemd-python" if self._library is not None else "socket"

    def send(self, *fields: str) -> bool:
        """Send one message made of `KEY=VALUE` fields; True when systemd got it."""
        if not self.enabled:
            return False
        message = "\n".join(fields) + "\n"
        try:
            if self._library is not None:
                ok = self._library(message)
            else:
                ok = self._send_socket(message.encode())
        except OSError as err:
            self._failed(str(err))
            return False
        if ok:
            self.sent += 1
            self._last_error = None
        else:
            self._failed("sd_notify returned false")
        return ok

    def _send_socket(self, data: bytes) -> bool:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        assert self._address is not None
        return self._sock.sendto(data, self._address) == len(data)

    def _failed(self, reason: str) -> None:
        # A missing listener repeats every ping: say it once, not every few seconds.
        if reason != self._last_error:
            log.warning("sd_notify to %s failed: %s", self.address_text, reason)
        self._last_error = reason

    # -- the messages the daemon sends -------------------------------------------------------

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) finished: `READY=1`."""
        return self.send("READY=1", *([_status(status)] if status else []))

    def status(self, text: str) -> bool:
        """The one-line state `systemctl status` shows."""
        return self.send(_status(text))

    def watchdog(self) -> bool:
        """`WATCHDOG=1`: the daemon is alive and making progress."""
        return self.send("WATCHDOG=1")

    def reloading(self, status: str = "reloading configuration") -> bool:
        """`RELOADING=1` (with the monotonic time systemd 253+ asks for); follow with `ready()`."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", _status(status))

    def stopping(self, status: str = "stopping") -> bool:
        """`STOPPING=1`: shutdown has begun."""
        return self.send("STOPPING=1", _status(status))

    def close(self) -> None:
        """Release the socket; safe to call twice."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _status(text: str) -> str:
    return "STATUS=" + " ".join(text.split())
