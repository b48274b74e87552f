"""Measuring what systemd sees: process start → READY=1, and SIGTERM → exit.

`measure_lifecycle` plays systemd's part: it binds a private notify socket, starts
the daemon with `NOTIFY_SOCKET` pointing at it, times the first `READY=1`, then
sends SIGTERM and times the exit. `edge-agent bench` reports the first figure as
`startup_ready_s`; the tests use it to check the notify protocol end to end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Lifecycle:
    """Figures of one start-stop cycle.

    Attributes:
        ready_s: Spawn → first `READY=1` datagram.
        stop_s: SIGTERM → process exit.
        exit_code: The process's exit status.
        messages: Every notify datagram, with its arrival time after spawn.
    """

    ready_s: float
    stop_s: float
    exit_code: int
    messages: list[tuple[float, str]] = field(default_factory=list)


class NotifyListener:
    """A unix datagram socket standing in for systemd's notify socket."""

    def __init__(self, directory: Path | None = None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="notify-", dir=directory)
        self.path = Path(self._dir.name) / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(str(self.path))
        self.messages: list[tuple[float, str]] = []
        self.started = time.monotonic()

    def receive(self, timeout: float) -> str | None:
        """The next datagram, or None after `timeout` seconds."""
        self.sock.settimeout(max(timeout, 1e-3))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        text = data.decode()
        self.messages.append((time.monotonic() - self.started, text))
        return text

    def wait_for(self, field_: str, timeout: float) -> str | None:
        """Receive until a datagram carries `field_` (e.g. "READY=1"); None on timeout."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            text = self.receive(left)
            if text is not None and field_ in text.splitlines():
                return text
        return None

    def close(self) -> None:
        """Close the socket and remove its directory; safe to call twice."""
        self.sock.close()
        with contextlib.suppress(OSError):
            self._dir.cleanup()

    def __enter__(self) -> NotifyListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def measure_lifecycle(
    argv: list[str],
    env: Mapping[str, str],
    *,
    timeout: float = 60.0,
    log: Path | None = None,
) -> Lifecycle:
    """Start `argv` as systemd would, wait for READY=1, SIGTERM it, wait for the exit.

    Raises:
        TimeoutError: no READY=1 within `timeout` (the process is killed), or no exit.
    """
    with NotifyListener() as listener:
        out = log.open("wb") if log is not None else subprocess.DEVNULL
        try:
            listener.started = time.monotonic()
            proc = subprocess.Popen(
                argv,
                env={**env, "NOTIFY_SOCKET": str(listener.path)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            try:
                if listener.wait_for("READY=1", timeout) is None:
                    raise TimeoutError(f"no READY=1 within {timeout:.0f} s from {argv}")
                ready_s = listener.messages[-1][0]
                stopped = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(timeout)
                stop_s = time.monotonic() - stopped
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            while listener.receive(0.01) is not None:
                pass
        finally:
            if not isinstance(out, int):
                out.close()
        return Lifecycle(ready_s, stop_s, code, list(listener.messages))


def default_env() -> dict[str, str]:
    """The current environment without edge-agent overrides."""
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}


__all__ = ["Lifecycle", "NotifyListener", "default_env", "measure_lifecycle"]
