"""The local control socket: JSON lines over a unix socket, for the technician's commands.

Protocol: the client writes one JSON object per line, `{"cmd": "status"}`; the
daemon answers each with one JSON line, `{"ok": true, ...}` or
`{"ok": false, "error": "..."}`. `tail` answers once, then streams one line per
window result and event until the client hangs up. Commands: `ping`, `status`,
`reload`, `tail`, and `watch` (the live feed of `edge-agent ui`, see `service/live.py`),
plus the registry's local commands.

Requests are checked like the MQTT ones: a line longer than `commands.max_request_bytes`
(64 KiB by default) is answered `too_large` and the connection closed; NaN, Infinity,
nesting too deep, a `cmd` that is not a short printable name and `tail` options of the
wrong kind are answered `bad request: ...`, quoting at most a short prefix of the input.

Access is file permissions: the socket is mode 0660, so its owner (the service
user) and members of its group may connect, nobody else. The socket is bound
under a temporary name, given its mode, then renamed into place, so it is never
reachable with looser permissions.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig
from edge_agent.errors import EdgeAgentError
from edge_agent.sync.limits import MESSAGE_CHARS, bounded, loads_finite

log = logging.getLogger(__name__)

SOCKET_MODE = 0o660
LINE_LIMIT = 64 * 1024
"""Default longest request line (`commands.max_request_bytes` sets it)."""
TAIL_QUEUE = 2000
CMD_CHARS = 64
"""Longest command name; a longer one is refused without being quoted back."""

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
Streamer = Callable[[dict[str, Any]], AsyncIterator[dict[str, Any]]]
"""A streaming command: its reply first, then records until the client hangs up."""


class ControlError(EdgeAgentError):
    """The control socket could not be served or reached.

    Attributes:
        path: The socket path.
    """

    def __init__(self, path: Path, message: str) -> None:
        self.path = path
        super().__init__(message)


class DaemonNotRunningError(ControlError, ConnectionError):
    """Nothing answers on the control socket."""


class ControlAccessDeniedError(ControlError, PermissionError):
    """The socket exists but this user may not connect to it."""


def control_socket_path(config: AgentConfig) -> Path:
    """Where the control socket of this config lives (`service.control_socket` or beside the DB)."""
    explicit = config.service.control_socket
    if explicit is not None:
        return explicit
    return config.storage.path.with_suffix(".sock")


# -- server ------------------------------------------------------------------------------------


class TailFanout:
    """Hands live records to every `tail` client without ever blocking the daemon.

    Each subscriber has a bounded queue; a client too slow to keep up loses records
    (counted and reported to it), the pipeline never waits for it.
    """

    def __init__(self, maxsize: int = TAIL_QUEUE) -> None:
        self.maxsize = maxsize
        self._subscribers: dict[asyncio.Queue[dict[str, Any]], list[int]] = {}

    @property
    def active(self) -> bool:
        """Whether anyone is listening (so callers can skip building records)."""
        return bool(self._subscribers)

    def publish(self, record: dict[str, Any]) -> None:
        """Queue a record for every subscriber (loop thread only)."""
        for q, dropped in self._subscribers.items():
            try:
                q.put_nowait(record)
            except asyncio.QueueFull:
                dropped[0] += 1

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        """A new subscriber's queue."""
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self.maxsize)
        self._subscribers[q] = [0]
        return q

    def take_dropped(self, q: asyncio.Queue[dict[str, Any]]) -> int:
        """Records lost by this subscriber since the last call."""
        counter = self._subscribers.get(q)
        if counter is None:
            return 0
        n, counter[0] = counter[0], 0
        return n

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        """Forget a subscriber."""
        self._subscribers.pop(q, None)


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def bind_control_socket(path: Path, mode: int = SOCKET_MODE) -> socket.socket:
    """Bind and listen on `path` with `mode`, replacing a stale socket left by a crash.

    Raises:
        ControlError: `path` is something other than a socket, another daemon
            answers on it, or it cannot be bound (directory missing, too long).
    """
    if path.is_symlink() or path.exists():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ControlError(
                path, f"{path} exists and is not a socket; remove it or set service.control_socket"
            )
        if _answers(path):
            raise ControlError(path, f"another edge-agent already answers on {path}; stop it first")
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        sock.bind(str(temporary))
        os.chmod(temporary, mode)
        sock.listen(16)
        os.replace(temporary, path)
    except OSError as err:
        sock.close()
        with contextlib.suppress(OSError):
            temporary.unlink()
        hint = (
            " (unix socket paths are limited to 107 bytes; set a shorter service.control_socket)"
            if len(os.fsencode(temporary)) > 107
            else ""
        )
        raise ControlError(path, f"cannot create control socket {path}: {err}{hint}") from err
    sock.setblocking(False)
    return sock


class ControlServer:
    """Serves the control protocol on the event loop.

    Args:
        path: Socket path.
        handlers: Command name → coroutine taking the request, returning the reply body.
        tail: Where `tail` clients get their records.
        max_request_bytes: Longest request line; a longer one is answered with an error and
            the connection closed, without the line being read into memory whole.
        streamers: Streaming commands by name (`watch`).
    """

    def __init__(
        self,
        path: Path,
        handlers: Mapping[str, Handler],
        tail: TailFanout,
        max_request_bytes: int = LINE_LIMIT,
        streamers: Mapping[str, Streamer] | None = None,
    ) -> None:
        self.path = path
        self.handlers = handlers
        self.tail = tail
        self.streamers = dict(streamers or {})
        self.max_request_bytes = max_request_bytes
        self._server: asyncio.Server | None = None
        self._inode: int | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._failure: asyncio.Future[None] | None = None
        self.requests = 0

    async def start(self) -> None:
        """Bind the socket and start accepting.

        Raises:
            ControlError: see `bind_control_socket`.
        """
        sock = bind_control_socket(self.path)
        self._inode = os.stat(self.path).st_ino
        self._server = await asyncio.start_unix_server(
            self._serve, sock=sock, limit=self.max_request_bytes
        )

    async def serve(self) -> None:
        """Serve until cancelled; raises the first unexpected failure of a conversation.

        A conversation that fails on a bug (not a client hanging up) ends this call with
        its exception, so the supervisor reports it and opens the socket again.
        """
        if self._server is None:
            await self.start()
        self._failure = asyncio.get_running_loop().create_future()
        try:
            await self._failure
        finally:
            self._failure = None

    async def close(self) -> None:
        """Stop accepting, hang up on clients and remove the socket; safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout=1.0)
        # Remove the socket only if it is still ours (a new daemon may have replaced it).
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            await self._conversation(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception as err:  # a bug: reported through serve() (the supervisor's)
            failure = self._failure
            if failure is not None and not failure.done():
                failure.set_exception(err)
            else:
                log.exception("control: conversation failed")
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _conversation(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                line = await reader.readline()
            except ValueError:
                limit = self.max_request_bytes
                await _send(
                    writer,
                    _error(f"request longer than {limit} bytes", code="too_large", limit=limit),
                )
                return
            if not line:
                return
            if not line.strip():
                continue
            self.requests += 1
            try:
                request = parse_request(line)
            except ValueError as err:
                await _send(writer, _error(f"bad request: {err}"))
                continue
            cmd = request["cmd"]
            if cmd == "tail":
                await self._tail(reader, writer, request)
                return
            streamer = self.streamers.get(cmd)
            if streamer is not None:
                await self._stream(reader, writer, streamer(request))
                return
            handler = self.handlers.get(cmd)
            if handler is None:
                valid = ", ".join(sorted([*self.handlers, *self.streamers, "tail"]))
                await _send(writer, _error(f"unknown command {cmd!r}; valid: {valid}"))
                continue
            try:
                reply = await handler(request)
            except Exception as err:
                log.exception("control: %s failed", cmd)
                reply = _error(f"{cmd} failed: {bounded(str(err), MESSAGE_CHARS)}")
            await _send(writer, reply)

    async def _tail(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: dict[str, Any]
    ) -> None:
        sensor = request.get("sensor")
        kinds = {"result", "event"}
        if request.get("events") is False:
            kinds.discard("event")
        if request.get("results") is False:
            kinds.discard("result")
        q = self.tail.subscribe()
        hangup = asyncio.ensure_future(reader.read())  # EOF (b"") when the client leaves
        try:
            await _send(writer, {"ok": True, "tail": sorted(kinds), "sensor": sensor})
            while not hangup.done():
                getter = asyncio.ensure_future(q.get())
                done, _ = await asyncio.wait({getter, hangup}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    return
                record = getter.result()
                dropped = self.tail.take_dropped(q)
                if dropped:
                    await _send(writer, {"type": "dropped", "count": dropped})
                if record.get("type") not in kinds:
                    continue
                if sensor and record.get("sensor") != sensor:
                    continue
                await _send(writer, record)
        finally:
            hangup.cancel()
            self.tail.unsubscribe(q)

    async def _stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        records: AsyncIterator[dict[str, Any]],
    ) -> None:
        """Send `records` until they end or the client hangs up."""
        hangup = asyncio.ensure_future(reader.read())  # EOF (b"") when the client leaves
        try:
            while True:
                step = asyncio.ensure_future(anext(records))
                done, _ = await asyncio.wait({step, hangup}, return_when=asyncio.FIRST_COMPLETED)
                if step not in done:
                    step.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await step
                    return
                try:
                    record = step.result()
                except StopAsyncIteration:
                    return
                await _send(writer, record)
        finally:
            hangup.cancel()
            aclose = getattr(records, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(RuntimeError):
                    await aclose()


def parse_request(line: bytes) -> dict[str, Any]:
    """One request line: a JSON object with a short `cmd` and sensible `tail` options.

    Raises:
        ValueError: not UTF-8 JSON, not an object, NaN or infinite numbers, nested too
            deeply, a missing or overlong `cmd`, or `tail` options of the wrong kind. The
            message never quotes more than a short prefix of the input.
    """
    request = loads_finite(line)
    if not isinstance(request, dict):
        raise ValueError("expected a JSON object with a string 'cmd'")
    cmd = request.get("cmd")
    if not isinstance(cmd, str) or not cmd:
        raise ValueError("expected a JSON object with a string 'cmd'")
    if len(cmd) > CMD_CHARS or not cmd.isprintable():
        raise ValueError(f"'cmd' must be a name of at most {CMD_CHARS} printable characters")
    if cmd == "tail":
        sensor = request.get("sensor")
        if sensor is not None and not (isinstance(sensor, str) and 0 < len(sensor) <= 255):
            raise ValueError("'sensor' must be a sensor name")
        for flag in ("events", "results"):
            if not isinstance(request.get(flag, True), bool):
                raise ValueError(f"{flag!r} must be true or false")
    return request


def _error(message: str, **extra: Any) -> dict[str, Any]:
    return {"ok": False, "error": bounded(message, MESSAGE_CHARS), **extra}


async def _send(writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
    writer.write(json.dumps(body, separators=(",", ":"), default=str).encode() + b"\n")
    await writer.drain()


# -- client (the CLI) --------------------------------------------------------------------------


def _connect(path: Path, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as err:
        sock.close()
        raise DaemonNotRunningError(
            path,
            f"edge-agent is not running (nothing answers on {path}); "
            "start it with `sudo systemctl start edge-agent` or `edge-agent run`",
        ) from err
    except PermissionError as err:
        sock.close()
        raise ControlAccessDeniedError(
            path,
            f"permission denied on {path}: add yourself to the socket's group "
            "(`sudo usermod -aG edge-agent $USER`, then log in again) or use sudo",
        ) from err
    except OSError as err:
        sock.close()
        if err.errno == errno.ENOTSOCK:
            raise DaemonNotRunningError(path, f"{path} is not a socket") from err
        raise ControlError(path, f"cannot connect to {path}: {err}") from err
    return sock


def _lines(sock: socket.socket, path: Path) -> Iterator[dict[str, Any]]:
    buffer = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                try:
                    body = json.loads(line)
                except ValueError as err:  # not JSON, or not UTF-8
                    raise ControlError(
                        path,
                        f"{path} answered with something that is not edge-agent's control "
                        f"protocol ({err}); point --socket (or service.control_socket) at the "
                        "daemon's socket",
                    ) from err
                if isinstance(body, dict):
                    yield body


def request(path: Path, cmd: str, *, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
    """Send one command and return the daemon's reply.

    Raises:
        DaemonNotRunningError: nothing listens on `path`.
        ControlAccessDeniedError: this user may not connect.
        ControlError: the daemon hung up or sent no reply within `timeout`.
    """
    with _connect(path, timeout) as sock:
        try:
            sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            for body in _lines(sock, path):
                return body
        except (OSError, ValueError) as err:
            raise ControlError(path, f"no answer to {cmd!r} from {path}: {err}") from err
    raise ControlError(path, f"the daemon hung up without answering {cmd!r}")


def stream(path: Path, cmd: str = "tail", **args: Any) -> Iterator[dict[str, Any]]:
    """Send a streaming command and yield every line the daemon sends, first the reply.

    Raises:
        DaemonNotRunningError: nothing listens on `path`.
        ControlAccessDeniedError: this user may not connect.
        ControlError: what answers is not the daemon's protocol.
    """
    sock = _connect(path, 10.0)
    try:
        sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        sock.settimeout(None)
        yield from _lines(sock, path)
    finally:
        sock.close()
