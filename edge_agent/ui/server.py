"""`edge-agent ui`: the technician's page, served by its own small process.

The daemon never imports this: the page talks to the daemon over the control socket (the
`watch` feed, `reload`), so a gateway that never opens the page pays nothing for it. The
HTTP side is the standard library's asyncio (no framework to install or keep patched): one
request per connection, heads capped at 8 KiB and bodies at 16 KiB, and the live feed as
server-sent events (`GET /live`), one daemon `watch` per open page.

Security:
- binds to 127.0.0.1 by default; any other address needs TLS (`--cert`/`--key`) or the
  explicit `--insecure-lan`, and a password either way (`edge-agent ui passwd`);
- with a password set, every route but the login page needs a session cookie
  (HttpOnly, SameSite=Strict, Secure under TLS); failed logins are limited per client;
- actions are POSTs that must carry the session's CSRF token in `X-CSRF-Token` (which a
  cross-site form cannot set, and a cross-site script cannot read) and, when the browser
  sends one, an `Origin` equal to the page's own; on loopback the `Host` must be a loopback
  name too (no DNS rebinding);
- a strict Content-Security-Policy (scripts, styles and connections to the page's own
  origin only), no framing; face crops, embeddings and identities are never forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import secrets
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from edge_agent.errors import EdgeAgentError, os_reason
from edge_agent.ui.auth import Sessions, verify_password
from edge_agent.ui.recorder import Recorder

log = logging.getLogger(__name__)

HEAD_LIMIT = 8 * 1024
BODY_LIMIT = 16 * 1024
HEAD_TIMEOUT_S = 10.0
RETRY_S = 2.0
SENSOR_TEST_S = 3.0
COOKIE = "edge_agent_ui"
STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "[::1]", "::1"}


class UiConfigError(EdgeAgentError, ValueError):
    """The page cannot be served as asked (an unsafe bind, a missing certificate)."""


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or "localhost") only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class UiOptions:
    """How the page is served.

    Attributes:
        control_socket: The daemon's control socket.
        host: Address to bind (127.0.0.1 by default).
        port: TCP port (0: any free port).
        password_hash: The stored password (None: no login, allowed on loopback only).
        cert: TLS certificate (PEM); with `key`, the page is served over HTTPS.
        key: TLS private key (PEM).
        insecure_lan: Allow plain HTTP on a non-loopback address (password still required).
    """

    control_socket: Path
    host: str = "127.0.0.1"
    port: int = 8088
    password_hash: str | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure_lan: bool = False
    sessions: Sessions = field(default_factory=Sessions)


def check_bind(options: UiOptions) -> ssl.SSLContext | None:
    """Refuse an unsafe bind; returns the TLS context when a certificate is given.

    Raises:
        UiConfigError: a non-loopback bind without a password, or without TLS and without
            `--insecure-lan`; only one of cert and key; a certificate that does not load.
    """
    if (options.cert is None) != (options.key is None):
        raise UiConfigError("give both --cert and --key for TLS, or neither")
    if not is_loopback(options.host):
        if options.password_hash is None:
            raise UiConfigError(
                f"refusing to serve the page on {options.host} without a password: set one "
                "with `edge-agent ui passwd` (or bind to 127.0.0.1 and use an SSH tunnel)"
            )
        if options.cert is None and not options.insecure_lan:
            raise UiConfigError(
                f"refusing to serve the page on {options.host} without TLS: give --cert and "
                "--key, or --insecure-lan to accept plain HTTP on a trusted network"
            )
    if options.cert is None or options.key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(options.cert, options.key)
    except (OSError, ssl.SSLError) as err:
        raise UiConfigError(
            f"cannot load the TLS certificate {options.cert} with key {options.key} "
            f"({os_reason(err)}): --cert and --key must be PEM files, the certificate and its "
            "own unencrypted key"
        ) from err
    return context


@dataclass
class Request:
    """One parsed HTTP request."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client: str

    def cookie(self, name: str) -> str | None:
        """The value of one cookie, or None."""
        for part in self.headers.get("cookie", "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return None


class BadRequestError(ValueError):
    """The request cannot be parsed (the client is hung up on)."""


async def read_request(reader: asyncio.StreamReader, client: str) -> Request:
    """Parse one request head (and a bounded body).

    Raises:
        BadRequestError: not HTTP, a head or body over its limit, a bad Content-Length.
    """
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.LimitOverrunError, asyncio.IncompleteReadError) as err:
        raise BadRequestError("no complete request head") from err
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        raise BadRequestError("not an HTTP/1.x request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise BadRequestError("malformed header")
        headers[name.strip().lower()] = value.strip()
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit() or int(length_text) > BODY_LIMIT:
        raise BadRequestError("missing, malformed or too large Content-Length")
    try:
        body = await reader.readexactly(int(length_text)) if int(length_text) else b""
    except asyncio.IncompleteReadError as err:
        raise BadRequestError("the body is shorter than its Content-Length") from err
    return Request(parts[0], parts[1], headers, body, client)


Response = tuple[int, dict[str, str], bytes]


def _reply(status: int, body: bytes | str, ctype: str, **headers: str) -> Response:
    data = body.encode() if isinstance(body, str) else body
    return status, {"Content-Type": ctype, **headers}, data


def _json(status: int, body: dict[str, Any]) -> Response:
    return _reply(status, json.dumps(body), "application/json")


def sanitize(record: dict[str, Any]) -> dict[str, Any] | None:
    """What the page may see of one `watch` record: never face crops, embeddings or names."""
    kind = record.get("type")
    if kind == "event" and str(record.get("event", "")).startswith("face"):
        return {**record, "detail": {}}
    if kind == "health":
        status = dict(record.get("status", {}))
        status.pop("faces", None)
        errors = status.get("last_errors")
        if isinstance(errors, list):
            shown = (sanitize(e) for e in errors if isinstance(e, dict))
            status["last_errors"] = [e for e in shown if e is not None]
        return {**record, "status": status}
    if kind in ("signals", "result", "event", "dropped") or "ok" in record:
        return record
    return None


Control = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class UiServer:
    """Serves the page, its live feed and its actions until cancelled."""

    def __init__(self, options: UiOptions, tls: ssl.SSLContext | None = None) -> None:
        self.options = options
        self.tls = tls
        self.port = options.port
        self.listening = asyncio.Event()
        # Without a password (loopback only) one token guards every action of this process.
        self._open_csrf = secrets.token_urlsafe(32)
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self.recorder: Recorder | None = None

    async def run(self) -> None:
        """Bind and serve until cancelled."""
        self._server = await asyncio.start_server(
            self._serve, self.options.host, self.options.port, ssl=self.tls, limit=HEAD_LIMIT
        )
        async with self._server:
            sockets = self._server.sockets
            if sockets:
                self.port = int(sockets[0].getsockname()[1])
            scheme = "https" if self.tls else "http"
            log.info("edge-agent ui: %s://%s:%d/", scheme, self.options.host, self.port)
            self.recorder = Recorder(self.options.control_socket)
            self.listening.set()
            try:
                await self._server.serve_forever()
            finally:
                await _hang_up(self._clients)
                await self.recorder.close()

    # -- plumbing ------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) else "local"
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            request = await asyncio.wait_for(read_request(reader, client), HEAD_TIMEOUT_S)
            if request.path == "/live" and request.method == "GET":
                await self._live(request, writer)
                return
            status, headers, body = await self._route(request)
            await _send(writer, status, headers, body, head_only=request.method == "HEAD")
        except (TimeoutError, BadRequestError, ConnectionError, asyncio.IncompleteReadError):
            pass  # nonsense or silence: hang up
        except ssl.SSLError:
            pass
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _host_ok(self, request: Request) -> bool:
        if not is_loopback(self.options.host):
            return True
        host = request.headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name in LOOPBACK_NAMES

    def _session_csrf(self, request: Request) -> str | None:
        """The CSRF token of the request's session (None: not logged in)."""
        if self.options.password_hash is None:
            return self._open_csrf
        session = self.options.sessions.get(request.cookie(COOKIE))
        return session.csrf if session is not None else None

    def _cross_site(self, request: Request, csrf: str) -> bool:
        sent = request.headers.get("x-csrf-token", "")
        if not sent or not secrets.compare_digest(sent, csrf):
            return True
        origin = request.headers.get("origin")
        if origin is None:
            return False
        scheme = "https" if self.tls else "http"
        return origin != f"{scheme}://{request.headers.get('host', '')}"

    # -- routes --------------------------------------------------------------------------------

    async def _route(self, request: Request) -> Response:
        if not self._host_ok(request):
            return _reply(HTTPStatus.MISDIRECTED_REQUEST, "unknown host\n", "text/plain")
        route = request.path.split("?", 1)[0]
        method = request.method
        if method not in ("GET", "HEAD", "POST"):
            return _reply(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed\n", "text/plain")
        if route.startswith("/static/") and method != "POST":
            name = route.removeprefix("/static/")
            if name not in STATIC:
                return _reply(HTTPStatus.NOT_FOUND, "not found\n", "text/plain")
            return _reply(HTTPStatus.OK, _static(name), STATIC[name])
        if route == "/login" and method == "POST":
            return self._login(request)
        csrf = self._session_csrf(request)
        if route == "/" and method != "POST":
            if csrf is None:
                return _reply(HTTPStatus.OK, _static("login.html"), "text/html; charset=utf-8")
            page = _static("index.html").replace(b"{{csrf}}", csrf.encode())
            return _reply(HTTPStatus.OK, page, "text/html; charset=utf-8")
        if csrf is None:
            return _json(HTTPStatus.UNAUTHORIZED, {"ok": False, "error": "log in first"})
        if route == "/api/record/download" and method != "POST":
            got = self.recorder.download() if self.recorder is not None else None
            if got is None:
                return _json(HTTPStatus.NOT_FOUND, {"ok": False, "error": "no recording yet"})
            name, data = got
            disposition = f'attachment; filename="{name}"'
            return _reply(HTTPStatus.OK, data, "text/csv", **{"Content-Disposition": disposition})
        if method != "POST":
            return _reply(HTTPStatus.NOT_FOUND, "not found\n", "text/plain")
        if self._cross_site(request, csrf):
            return _json(HTTPStatus.FORBIDDEN, {"ok": False, "error": "cross-site request refused"})
        if route == "/logout":
            self.options.sessions.drop(request.cookie(COOKIE))
            return _reply(HTTPStatus.SEE_OTHER, b"", "text/plain", Location="/")
        if route == "/api/reload":
            return _json(HTTPStatus.OK, await self._control("reload", {}))
        if route == "/api/record/start" and self.recorder is not None:
            sensor = _sensor_of(request.body)
            if sensor is None:
                return _json(HTTPStatus.BAD_REQUEST, {"ok": False, "error": "which sensor?"})
            return _json(HTTPStatus.OK, await self.recorder.start(sensor))
        if route == "/api/sensor-test":
            sensor = _sensor_of(request.body)
            if sensor is None:
                return _json(HTTPStatus.BAD_REQUEST, {"ok": False, "error": "which sensor?"})
            return _json(HTTPStatus.OK, await self._sensor_test(sensor))
        if route == "/api/record/stop" and self.recorder is not None:
            return _json(HTTPStatus.OK, await self.recorder.stop())
        return _json(HTTPStatus.NOT_FOUND, {"ok": False, "error": "no such action"})

    def _login(self, request: Request) -> Response:
        stored = self.options.password_hash
        if stored is None:
            return _reply(HTTPStatus.SEE_OTHER, b"", "text/plain", Location="/")
        sessions = self.options.sessions
        if not sessions.allowed(request.client):
            return _reply(
                HTTPStatus.TOO_MANY_REQUESTS,
                "too many failed logins; wait a minute\n",
                "text/plain",
            )
        try:
            form = parse_qs(request.body.decode("utf-8"), max_num_fields=4)
        except (UnicodeDecodeError, ValueError):
            form = {}
        password = (form.get("password") or [""])[0]
        if not verify_password(password, stored):
            sessions.failed(request.client)
            return _reply(
                HTTPStatus.UNAUTHORIZED,
                _static("login.html").replace(
                    b"<!--error-->", b"<p class=error>Wrong password.</p>"
                ),
                "text/html; charset=utf-8",
            )
        token, _ = sessions.create()
        secure = "; Secure" if self.tls else ""
        cookie = f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/{secure}"
        return _reply(
            HTTPStatus.SEE_OTHER, b"", "text/plain", Location="/", **{"Set-Cookie": cookie}
        )

    async def _sensor_test(self, sensor: str) -> dict[str, Any]:
        """What one sensor did over `SENSOR_TEST_S` on the running daemon, with a verdict.

        Samples, rate, gaps, lost frames and CRC errors from two `status` readings: the live
        counterpart of `edge-agent sensors test`, which needs the link to itself.
        """
        before = await self._control("status", {})
        await asyncio.sleep(SENSOR_TEST_S)
        after = await self._control("status", {})
        if not (before.get("ok") and after.get("ok")):
            return {"ok": False, "error": after.get("error") or before.get("error")}
        first = before.get("status", {}).get("sensors", {}).get(sensor)
        last = after.get("status", {}).get("sensors", {}).get(sensor)
        if not isinstance(first, dict) or not isinstance(last, dict):
            return {"ok": False, "error": f"no sensor named {sensor!r} in the running config"}

        def delta(key: str) -> int:
            return int(last.get(key) or 0) - int(first.get(key) or 0)

        samples = delta("samples")
        figures = {
            "seconds": SENSOR_TEST_S,
            "state": last.get("state"),
            "samples": samples,
            "rate_hz": round(samples / SENSOR_TEST_S, 1),
            "gaps": delta("gaps"),
            "frames_lost": delta("frames_lost"),
            "crc_errors": delta("crc_errors"),
        }
        problems = [
            f"{figures[k]} {k.replace('_', ' ')}"
            for k in ("gaps", "frames_lost", "crc_errors")
            if figures[k]
        ]
        if last.get("state") != "connected":
            verdict = f"not connected ({last.get('state')})"
        elif samples == 0:
            verdict = "connected but silent: no samples"
        elif problems:
            verdict = f"streaming at {figures['rate_hz']} Hz with {', '.join(problems)}"
        else:
            verdict = f"ok: streaming at {figures['rate_hz']} Hz, no gaps, no CRC errors"
        return {"ok": True, "sensor": sensor, "verdict": verdict, **figures}

    async def _control(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        path = self.options.control_socket
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), 5)
        except (OSError, TimeoutError) as err:
            return {"ok": False, "error": f"the daemon does not answer on {path}: {err}"}
        try:
            writer.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            line = await asyncio.wait_for(reader.readline(), 60)
            reply = json.loads(line) if line else {"ok": False, "error": "no answer"}
            return reply if isinstance(reply, dict) else {"ok": False, "error": "bad answer"}
        except (OSError, TimeoutError, ValueError) as err:
            return {"ok": False, "error": f"no answer to {cmd}: {err}"}
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _live(self, request: Request, writer: asyncio.StreamWriter) -> None:
        """Server-sent events: the daemon's `watch` feed, reconnecting while it is away."""
        if not self._host_ok(request) or self._session_csrf(request) is None:
            await _send(writer, HTTPStatus.UNAUTHORIZED, {"Content-Type": "text/plain"}, b"")
            return
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in SECURITY_HEADERS.items())
            + "\r\n"
        )
        writer.write(head.encode())
        await writer.drain()
        while not writer.is_closing():
            try:
                await self._relay(writer)
            except ConnectionResetError:
                return
            except (OSError, ValueError) as err:
                await _event(writer, {"type": "daemon", "connected": False, "error": str(err)})
            await asyncio.sleep(RETRY_S)

    async def _relay(self, writer: asyncio.StreamWriter) -> None:
        reader, daemon = await asyncio.open_unix_connection(
            self.options.control_socket, limit=1 << 22
        )
        try:
            daemon.write(b'{"cmd": "watch", "rate_hz": 4, "points": 50, "history_s": 20}\n')
            await daemon.drain()
            await _event(writer, {"type": "daemon", "connected": True})
            while line := await reader.readline():
                record = json.loads(line)
                if isinstance(record, dict) and (shown := sanitize(record)) is not None:
                    await _event(writer, shown)
            await _event(writer, {"type": "daemon", "connected": False, "error": "hung up"})
        finally:
            daemon.close()
            with contextlib.suppress(Exception):
                await daemon.wait_closed()


def _sensor_of(body: bytes) -> str | None:
    """The sensor name of a `{"sensor": "..."}` body, or None when it is not one."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    sensor = value.get("sensor") if isinstance(value, dict) else None
    if isinstance(sensor, str) and 0 < len(sensor) <= 255 and sensor.isprintable():
        return sensor
    return None


async def _hang_up(clients: set[asyncio.Task[None]]) -> None:
    """Cancel the conversations still open and wait for them (the server is going away)."""
    tasks = list(clients)
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


async def _event(writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
    if writer.is_closing():
        raise ConnectionResetError("the page went away")
    writer.write(b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n")
    await writer.drain()


async def _send(
    writer: asyncio.StreamWriter,
    status: int,
    headers: dict[str, str],
    body: bytes,
    *,
    head_only: bool = False,
) -> None:
    phrase = HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {phrase}"]
    lines += [f"{k}: {v}" for k, v in {**SECURITY_HEADERS, **headers}.items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    writer.write("\r\n".join(lines).encode("latin-1") + (b"" if head_only else body))
    await writer.drain()


def _static(name: str) -> bytes:
    return resources.files("edge_agent.ui").joinpath("static", name).read_bytes()


async def serve(options: UiOptions) -> None:
    """Check the bind, then serve until cancelled (the CLI's `edge-agent ui`).

    Raises:
        UiConfigError: see `check_bind`.
    """
    server = UiServer(options, check_bind(options))
    await server.run()
