"""Remote commands over MQTT: `<root>/cmd/<name>`, answered by request/response.

MQTT 5 requests carry a response topic and correlation data; the reply goes there.
Without them (MQTT 3.1.1) the reply goes to `<root>/reply/<name>`. Every request has an
`id`; a repeated id is answered from a cache without running the command again, so a
re-delivered `config.set` is applied once. Every command is audit-logged as an event.

The commands themselves live in the `CommandRegistry` (shared with the control socket);
the agent's own (`ping`, `status`, `reload`, `config.*`, `sync.flush`, `sensors.list`) are
`AgentCommands`, built from narrow ports.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import tomllib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.config import AgentConfig, render_config
from edge_agent.errors import CommandError, ConfigEditError
from edge_agent.events import Emit
from edge_agent.metrics import Inc
from edge_agent.registry import CommandRegistry
from edge_agent.store.db import dumps
from edge_agent.sync.limits import (
    MAX_CORRELATION_BYTES,
    NAME_CHARS,
    DoorLimits,
    bounded,
    bounded_error,
    loads_finite,
    reply_topic,
)

log = logging.getLogger(__name__)

__all__ = ["AgentCommands", "CommandError", "CommandRequest", "CommandServer"]

CACHE_SIZE = 256
TIMEOUT_S = 10.0


class CommandRequest(BaseModel):
    """The JSON body of a request."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128, description="Request id; repeats are deduped.")
    args: dict[str, Any] = Field(default_factory=dict, description="Command arguments.")


Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class CommandServer:
    """Receives requests from the uplink's connection and answers them.

    Args:
        registry: The commands (shared with the control socket).
        config: The running config (topic root, device id, `commands.allow`/`deny`).
        emit: Where the audit events go.
        inc: Counter port for requests refused at the door (size, rate).
    """

    def __init__(
        self,
        registry: CommandRegistry,
        config: Callable[[], AgentConfig],
        emit: Emit,
        inc: Inc | None = None,
    ) -> None:
        self.registry = registry
        self.config = config
        self.emit = emit
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self.limits = DoorLimits(lambda: self.config().commands, inc=inc)
        # Requests from paho's callback, and failures of their tasks (raised by run()).
        self._requests: asyncio.Queue[tuple[mqtt.Client, mqtt.MQTTMessage] | BaseException] = (
            asyncio.Queue()
        )

    @property
    def root(self) -> str:
        """Topic root of the current config (it may change on reload)."""
        return self.config().topic_root

    @property
    def request_filter(self) -> str:
        """Topic filter the uplink subscribes to."""
        return f"{self.root}/cmd/+"

    def on_connected(self, client: mqtt.Client) -> None:
        """Subscribe on every new connection (clean start)."""
        if self.config().commands.enabled:
            client.subscribe(self.request_filter, qos=1)

    def on_message(self, client: mqtt.Client, message: mqtt.MQTTMessage) -> None:
        """paho callback on the loop thread: queue the request for `run()`."""
        self._requests.put_nowait((client, message))

    async def run(self) -> None:
        """Answer queued requests, each in its own task, until cancelled (supervised).

        A request whose handling fails on a bug (beyond the answer `internal`) ends this
        call with that exception, so the supervisor reports it and starts it again; the
        queue and the reply cache survive the restart.
        """
        loop = asyncio.get_running_loop()
        while True:
            item = await self._requests.get()
            if isinstance(item, BaseException):
                raise item
            task = loop.create_task(self._handle(*item))
            self._tasks.add(task)
            task.add_done_callback(self._handled)

    def _handled(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (err := task.exception()) is not None:
            self._requests.put_nowait(err)  # run() raises it: the supervisor's to report

    async def close(self) -> None:
        """Cancel requests in hand; safe to call twice."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, client: mqtt.Client, message: mqtt.MQTTMessage) -> None:
        received = time.time()
        # The name as sent (the 3.1.1 reply topic repeats it), and the command it stands for
        # (`sync_resend` for `sync.resend`): limits, allow/deny and the reply use that one.
        sent = bounded(message.topic.rsplit("/", 1)[-1], NAME_CHARS)
        name = self.registry.canonical(sent)
        props = getattr(message, "properties", None)
        default_topic = f"{self.root}/reply/{sent}"
        response_topic = reply_topic(getattr(props, "ResponseTopic", None), default_topic)
        correlation = getattr(props, "CorrelationData", None)
        request_id: str | None = None
        # Checked before parsing: a flood or a huge request costs a comparison, no more.
        size = len(message.payload) + len(correlation or b"")
        refusal = self.limits.check(name, size)
        if refusal is None and correlation is not None and len(correlation) > MAX_CORRELATION_BYTES:
            response_topic, correlation = default_topic, None
            refusal = self.limits.refuse_too_large(name, "correlation data", MAX_CORRELATION_BYTES)
        if refusal is not None:
            err = refusal.error
            if refusal.audit:
                self._audit(name, None, False, f"{err.code}: {err}")
            if refusal.answer:
                error = bounded_error(err.code, str(err), err.details)
                self._publish(
                    client, response_topic, correlation, self._reply(None, name, False, error=error)
                )
            return
        try:
            try:
                raw = loads_finite(message.payload)
                request = CommandRequest.model_validate(raw)
            except (ValueError, UnicodeDecodeError) as err:
                if isinstance(raw_id := _maybe_id(message.payload), str) and len(raw_id) <= 128:
                    request_id = raw_id
                detail = (
                    err.errors(include_url=False, include_input=False)
                    if isinstance(err, ValidationError)
                    else None
                )
                raise CommandError(
                    "bad_request",
                    'the request must be a JSON object {"id": str, "args": {...}}',
                    _jsonable(detail),
                ) from err
            request_id = request.id
            cached = self._cache.get(request.id)
            if cached is not None:
                self._publish(client, response_topic, correlation, cached)
                return
            handler = self.registry.remote(name)
            if handler is None:
                raise CommandError(
                    "unknown_command", f"unknown command {name!r}", self.registry.remote_names()
                )
            if not self.config().commands.permits(name):
                raise CommandError("forbidden", f"command {name!r} is not allowed on this gateway")
            args = {**request.args, "_received_ts": received, "_request_id": request.id}
            result = await asyncio.wait_for(handler(args), timeout=TIMEOUT_S)
            reply = self._reply(request_id, name, True, result=result)
            self._remember(request.id, reply)
            self._audit(name, request_id, True, None)
        except CommandError as err:
            reply = self._reply(
                request_id, name, False, error=bounded_error(err.code, str(err), err.details)
            )
            if request_id is not None and err.code not in ("bad_request",):
                self._remember(request_id, reply)
            self._audit(name, request_id, False, bounded(f"{err.code}: {err}", 512))
        except TimeoutError:
            reply = self._reply(
                request_id, name, False, error={"code": "timeout", "message": "command timed out"}
            )
            self._audit(name, request_id, False, "timeout")
        except Exception as err:  # a bug: answer rather than leave the caller waiting
            log.exception("command %s failed", name)
            reply = self._reply(request_id, name, False, error=bounded_error("internal", str(err)))
            self._audit(name, request_id, False, bounded(f"internal: {err}", 512))
        self._publish(client, response_topic, correlation, reply)

    def _reply(self, request_id: str | None, name: str, ok: bool, **body: Any) -> bytes:
        return dumps(
            {
                "device": self.config().device.id,
                "id": request_id,
                "command": name,
                "ok": ok,
                "ts": round(time.time(), 6),
                **body,
            }
        )

    def _remember(self, request_id: str, reply: bytes) -> None:
        self._cache[request_id] = reply
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    def _publish(
        self, client: mqtt.Client, topic: str, correlation: bytes | None, payload: bytes
    ) -> None:
        properties = None
        if correlation is not None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.CorrelationData = correlation
        client.publish(topic, payload, qos=1, properties=properties)

    def _audit(self, name: str, request_id: str | None, ok: bool, error: str | None) -> None:
        self.emit(
            "command.executed" if ok else "command.rejected",
            "info" if ok else "warning",
            command=name,
            request_id=request_id,
            error=error,
        )


class AgentCommands:
    """The agent's own commands, for both doors (see `register`).

    Args:
        config: The running config.
        config_path: The config file (None: the embedded default, not persistable).
        status: Everything `status` shows.
        reload: Re-read the config between two pipeline rounds; returns the outcome.
        flush: Pack pending results into the outbox now; returns the outbox depth.
        sensor_health: Per-sensor health, by name.
        state: starting, running, reloading or stopping.
    """

    def __init__(
        self,
        *,
        config: Callable[[], AgentConfig],
        config_path: Path | None,
        status: Callable[[], Awaitable[dict[str, Any]]],
        reload: Callable[[], Awaitable[dict[str, Any]]],
        flush: Callable[[], Awaitable[int]],
        sensor_health: Callable[[], dict[str, Any]],
        state: Callable[[], str],
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.status = status
        self.reload = reload
        self.flush = flush
        self.sensor_health = sensor_health
        self.state = state
        self._background: set[asyncio.Future[Any]] = set()  # reloads answered before they run

    def register(self, registry: CommandRegistry) -> None:
        """Add the commands to `registry` (`config.*` over MQTT only)."""
        registry.register("ping", self._ping)
        registry.register("status", self._status, local_reply=lambda r: {"ok": True, "status": r})
        registry.register("reload", self._reload, local_reply=_reload_reply)
        registry.register("config.get", self._config_get, local=False)
        registry.register("config.set", self._config_set, local=False)
        registry.register("sync.flush", self._sync_flush)
        registry.register("sensors.list", self._sensors_list)

    async def _ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "echo": bounded(args.get("echo")),
            "request_ts": bounded(args.get("ts")),
            "received_ts": args.get("_received_ts", time.time()),
            "replied_ts": time.time(),
            "pid": os.getpid(),
            "state": self.state(),
        }

    async def _status(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.status()

    async def _reload(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.reload()

    async def _config_get(self, args: dict[str, Any]) -> dict[str, Any]:
        text = render_config(self.config())
        return {
            "config": tomllib.loads(_tomlish(text)),
            "source": str(self.config_path or "embedded default"),
        }

    async def _config_set(self, args: dict[str, Any]) -> dict[str, Any]:
        values = args.get("values")
        if not isinstance(values, dict) or not values:
            raise CommandError(
                "bad_request", 'config.set needs args.values: {"section.key": value}'
            )
        path = self.config_path
        if path is None:
            raise CommandError(
                "not_persistable", "the daemon runs on its embedded default; start it with --config"
            )
        if any(str(key).split(".")[0] == "device" for key in values):
            raise CommandError("forbidden", "device identity cannot be changed remotely")
        # Imported here: the round-trip TOML library costs the daemon ~10 MB and ~0.1 s at
        # start, for a command that may never come.
        from edge_agent.config_edit import edit_config

        try:
            edit = await asyncio.to_thread(edit_config, path, values)
        except ConfigEditError as err:
            code = {"bad_key": "bad_request"}.get(err.code, err.code)
            message = "rejected; nothing changed" if code == "invalid_config" else str(err)
            raise CommandError(code, message, err.details or [str(err)]) from err
        outcome: Any = {"ok": True}
        if edit.previous is not None and any(str(key).startswith("mqtt.") for key in values):
            # The reload replaces this very session: answer on it first, then reload. The
            # daemon reverts by itself (`config.reverted`) if the new session never connects.
            task = asyncio.ensure_future(self.reload())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            outcome = "scheduled: the broker connection is replaced after this reply"
        elif edit.previous is not None:
            outcome = await self.reload()
        return {
            "persisted": str(path),
            "previous": str(edit.previous) if edit.previous else None,
            "changed": edit.changed,
            "reload": outcome,
        }

    async def _sync_flush(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"outbox_depth": await self.flush()}

    async def _sensors_list(self, args: dict[str, Any]) -> dict[str, Any]:
        health = self.sensor_health()
        return {
            "sensors": [
                {**s.model_dump(mode="json"), "health": health.get(s.name)}
                for s in self.config().sensors
            ]
        }


def _reload_reply(summary: dict[str, Any]) -> dict[str, Any]:
    return {"ok": bool(summary.get("ok")), "reload": summary, "error": summary.get("error")}


def _maybe_id(payload: bytes | bytearray) -> Any:
    try:
        data = loads_finite(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    return data.get("id") if isinstance(data, dict) else None


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str)) if value is not None else None


def _tomlish(text: str) -> str:
    """render_config output minus its comment lines is valid TOML."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))
