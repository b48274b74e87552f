"""`/metrics` and `/healthz` over HTTP, on the daemon's event loop.

A deliberately small HTTP/1.1 server (one request per connection, GET and HEAD only,
request head capped at 8 KiB and 5 s): scrapers and probes need no more, and nothing
more is exposed. It binds to `metrics.host:metrics.port` (127.0.0.1:9108 by default).
A port that is taken, or an address that cannot be bound, is reported once as the
`metrics.unavailable` event and retried quietly every `RETRY_S`: monitoring never stops
the gateway, and another process holding the port is not a crash to restart.

`/healthz` answers 200 while the pipeline and the store make progress, and 503 with the
reason otherwise (starting, stopping, a stalled pipeline or store, a full disk); its JSON
body always says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge_agent.events import Emit

log = logging.getLogger(__name__)

HEAD_LIMIT = 8 * 1024
HEAD_TIMEOUT_S = 5.0
RETRY_S = 30.0
OUTBOX_TIMEOUT_S = 1.0
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What `/healthz` answers."""

    ok: bool
    body: dict[str, Any]


def judge_health(
    state: str, stall: str | None, snapshot: Mapping[str, Any], outbox_depth: int | None
) -> Verdict:
    """Healthy while the pipeline and the store make progress; the reasons when not.

    Degraded conditions that do not stop data from being kept (a reverted config, a silent
    sensor) keep 200 and are listed; what stops progress gives 503.
    """
    reasons: list[str] = []
    if state in ("starting", "stopping"):
        reasons.append(f"daemon {state}")
    if stall is not None:
        reasons.append(stall)
    store = snapshot.get("store", {})
    if isinstance(store, Mapping) and store.get("disk_full"):
        reasons.append("store cannot persist: disk full")
    degraded = list(snapshot.get("degraded", []))
    body: dict[str, Any] = {
        "status": "fail" if reasons else ("degraded" if degraded else "ok"),
        "state": state,
        "reasons": reasons,
        "degraded": degraded,
        "pipeline": {"stall": stall},
        "store": {
            "disk_full": bool(store.get("disk_full")) if isinstance(store, Mapping) else None,
            "outbox_depth": outbox_depth,
        },
    }
    return Verdict(not reasons, body)


class MetricsServer:
    """Serves `/metrics` and `/healthz` until cancelled (a supervised component).

    Args:
        host: Address to bind.
        port: TCP port (0: any free port; `port` holds the bound one once listening).
        metrics: Renders the exposition (called on the loop).
        health: Renders the `/healthz` verdict (called on the loop).
        refresh: Awaited before each answer to fetch figures kept off the loop (the
            outbox's depth and age); a failure or timeout leaves the last figures.
        emit: Where `metrics.unavailable` goes.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        metrics: Callable[[], bytes],
        health: Callable[[], Verdict],
        refresh: Callable[[], Awaitable[None]],
        emit: Emit,
    ) -> None:
        self.host = host
        self.port = port
        self.metrics = metrics
        self.health = health
        self.refresh = refresh
        self.emit = emit
        self.requests = 0
        self.listening = asyncio.Event()
        self._reported: set[str] = set()
        self._clients: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Bind (retrying while the address is unavailable) and serve until cancelled."""
        while True:
            try:
                server = await asyncio.start_server(
                    self._serve, self.host, self.port, limit=HEAD_LIMIT, reuse_address=True
                )
            except OSError as err:
                reason = f"cannot listen on {self.host}:{self.port}: {err.strerror or err}"
                if reason not in self._reported:
                    self._reported.add(reason)
                    self.emit("metrics.unavailable", "warning", reason=reason, retry_s=RETRY_S)
                await asyncio.sleep(RETRY_S)
                continue
            break
        async with server:
            sockets = server.sockets
            if sockets:
                self.port = int(sockets[0].getsockname()[1])
            log.info("metrics: http://%s:%d/metrics and /healthz", self.host, self.port)
            self.listening.set()
            try:
                await server.serve_forever()
            finally:
                self.listening.clear()
                clients = list(self._clients)
                for task in clients:
                    task.cancel()
                if clients:
                    await asyncio.gather(*clients, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            method, path = await asyncio.wait_for(_read_head(reader), HEAD_TIMEOUT_S)
            self.requests += 1
            status, ctype, body = await self._answer(method, path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode("ascii") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (
            TimeoutError,
            ValueError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass  # a client that sends nonsense or nothing is simply hung up on
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"only GET and HEAD\n"
        route = path.split("?", 1)[0]
        if route == "/metrics":
            await self._refresh()
            return "200 OK", METRICS_TYPE, self.metrics()
        if route == "/healthz":
            await self._refresh()
            verdict = self.health()
            body = json.dumps(verdict.body, separators=(",", ":")).encode() + b"\n"
            status = "200 OK" if verdict.ok else "503 Service Unavailable"
            return status, "application/json", body
        if route == "/":
            return "200 OK", "text/plain", b"edge-agent: /metrics /healthz\n"
        return "404 Not Found", "text/plain", b"not found: /metrics /healthz\n"

    async def _refresh(self) -> None:
        try:
            await asyncio.wait_for(self.refresh(), OUTBOX_TIMEOUT_S)
        except Exception as err:  # a busy store must not hold up a scrape
            log.debug("metrics: figures not refreshed: %s", err)


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str]:
    """The method and path of one request; the headers are read and ignored.

    Raises:
        ValueError: the head is too long or not an HTTP request line.
    """
    line = await reader.readuntil(b"\r\n")
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/") or not parts[1].startswith("/"):
        raise ValueError("not an HTTP request")
    size = len(line)
    while True:
        header = await reader.readuntil(b"\r\n")
        size += len(header)
        if size > HEAD_LIMIT:
            raise ValueError("request head too long")
        if header == b"\r\n":
            return parts[0], parts[1]
