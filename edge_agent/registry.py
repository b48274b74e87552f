"""One command registry for both doors: MQTT (`<root>/cmd/<name>`) and the control socket.

A command is one handler, `async (args) -> result`, that raises `CommandError` to refuse.
The MQTT command server answers `{"ok": true, "result": ...}` or the error; the control
socket answers `{"ok": true, **result}` (or a shape the command asks for, e.g. `status`
under `"status"`) or `{"ok": false, "error": ..., "code": ...}`. A command may serve only
one door (`remote=False`: the local technician only), and may be known locally by another
name (OTA's `model.list` is `models.list` on the control socket).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from edge_agent.errors import CommandError

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
Reply = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Command:
    """One registered command."""

    name: str
    handler: Handler
    remote: bool = True
    """Served over MQTT (subject to `commands.allow`/`deny`)."""
    local: str | None = None
    """Name on the control socket (None: not served there)."""
    local_reply: Reply | None = None
    """Shapes the control-socket reply from the result (default `{"ok": true, **result}`)."""


class CommandRegistry:
    """Commands by name, for the MQTT command server and the control socket."""

    def __init__(self) -> None:
        self._remote: dict[str, Command] = {}
        self._local: dict[str, Command] = {}

    def register(
        self,
        name: str,
        handler: Handler,
        *,
        remote: bool = True,
        local: bool | str = True,
        local_reply: Reply | None = None,
    ) -> None:
        """Add a command; `local` is True (same name), a local name, or False.

        Raises:
            ValueError: the name is taken on a door it would serve, or an MQTT name has a
                `_` (reserved for spelling a `.`, see `canonical`).
        """
        if remote and "_" in name:
            raise ValueError(f"command {name!r}: MQTT command names have no '_'")
        local_name = name if local is True else (local or None)
        command = Command(name, handler, remote, local_name, local_reply)
        if remote and name in self._remote:
            raise ValueError(f"command {name!r} is already registered")
        if local_name is not None and local_name in self._local:
            raise ValueError(f"control command {local_name!r} is already registered")
        if remote:
            self._remote[name] = command
        if local_name is not None:
            self._local[local_name] = command

    def remote(self, name: str) -> Handler | None:
        """The MQTT handler of `name`, or None."""
        command = self._remote.get(name)
        return command.handler if command is not None else None

    def canonical(self, name: str) -> str:
        """The MQTT command `name` stands for: itself, or with every `_` read as `.`.

        Some brokers refuse a `.` in a topic (NATS 2.9) or split the topic there (RabbitMQ
        3.10), so `<root>/cmd/sync_resend` reaches `sync.resend`. Registered names have no
        `_`, so the reading is unambiguous; an unknown name is returned as it is.
        """
        if name in self._remote or "_" not in name:
            return name
        dotted = name.replace("_", ".")
        return dotted if dotted in self._remote else name

    def remote_names(self) -> list[str]:
        """Every command served over MQTT."""
        return sorted(self._remote)

    def local_names(self) -> list[str]:
        """Every command served on the control socket."""
        return sorted(self._local)

    def local_view(self) -> Mapping[str, Handler]:
        """The control socket's commands as a live mapping (sees later registrations)."""
        return _LocalView(self)

    def local(self, name: str) -> Handler | None:
        """The control-socket handler of `name` (request in, reply out), or None."""
        command = self._local.get(name)
        if command is None:
            return None
        return _control_handler(command)


def _control_handler(command: Command) -> Handler:
    async def call(request: dict[str, Any]) -> dict[str, Any]:
        args = {k: v for k, v in request.items() if k != "cmd"}
        try:
            result = await command.handler(args)
        except CommandError as err:
            return {"ok": False, "error": err.message, "code": err.code}
        if command.local_reply is not None:
            return command.local_reply(result)
        return result if "ok" in result else {"ok": True, **result}

    return call


class _LocalView(Mapping[str, Handler]):
    def __init__(self, registry: CommandRegistry) -> None:
        self._registry = registry

    def __getitem__(self, name: str) -> Handler:
        handler = self._registry.local(name)
        if handler is None:
            raise KeyError(name)
        return handler

    def __iter__(self) -> Iterator[str]:
        return iter(self._registry.local_names())

    def __len__(self) -> int:
        return len(self._registry.local_names())
