"""Applies a configuration reload (SIGHUP, `edge-agent reload`, `config.set`) to the running agent.

`service/reload.py` computes what changed (`plan_reload`); the `Reloader` carries it out:
it restarts exactly the sensors whose settings or models changed, reloads those models,
restarts the upstream cadence tasks when `sync` changed and the MQTT session when the broker
changed, and reports the outcome (`agent.reloaded` / `agent.reload_failed`). It runs on the
pipeline task between two rounds (the pipeline's `reload` port), so no window is dropped.
It gets narrow ports from the composition root (a config getter and setter, the sensor
links, the pipeline, spawn/cancel callables, `emit`), never the daemon.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.config import AgentConfig
from edge_agent.config_guard import read_config
from edge_agent.errors import BundleError, ConfigError
from edge_agent.events import Emit
from edge_agent.inference.bundle import Bundle
from edge_agent.pipeline.engine import Pipeline
from edge_agent.sensors import SensorLinks
from edge_agent.service.reload import plan_reload

if TYPE_CHECKING:
    from edge_agent.config_guard import ConfigGuard
    from edge_agent.sync.mqtt import MqttUplink

log = logging.getLogger("edge_agent")

SYNC_TASKS = ("heartbeat", "results", "summaries")
"""The periodic tasks that follow the `sync` settings (restarted when they change)."""

Start = Callable[[], Coroutine[Any, Any, None]]


class Reloader:
    """Re-reads the configuration file and applies the difference to the running parts.

    Args:
        config: The running configuration (getter).
        set_config: Makes a configuration the running one.
        config_path: The file a reload re-reads (None: the embedded default).
        source: How the configuration's origin is named in replies and events.
        emit: The event port.
        pipeline: Its model slots and per-sensor model lists are updated in place.
        sensors: The sensor links; changed ones are stopped and started again.
        resolve: What the new configuration's model references resolve to (blocking; over
            the air versions applied).
        load_models: Loads the models of the named sensors into the pipeline (blocking).
        serving: Whether the supervised tasks run (before that, nothing is restarted).
        spawn: Runs a coroutine factory as a supervised component under a name.
        cancel: Cancels named components and waits for them.
        start_periodic: Starts named periodic tasks.
        close_interval: Closes the running summary interval (before the cadence changes).
        uplink: The current MQTT session, if any.
        new_uplink: Builds the MQTT session for a configuration and makes it the current one.
        guard: The config guard, told of every applied reload (None: no guard).
        stopped: Whether the agent was asked to stop (a reload is then refused).
        set_state: Sets the daemon's state (`reloading`, then `running`).
        reloading: Told when a reload starts (the service hub's notice).
        reloaded: Told the outcome when it ends.
    """

    def __init__(
        self,
        *,
        config: Callable[[], AgentConfig],
        set_config: Callable[[AgentConfig], None],
        config_path: Path | None,
        source: Callable[[], str],
        emit: Emit,
        pipeline: Pipeline,
        sensors: SensorLinks,
        resolve: Callable[[AgentConfig], dict[str, Bundle | BundleError]],
        load_models: Callable[[list[str]], None],
        serving: Callable[[], bool],
        spawn: Callable[[str, Start], None],
        cancel: Callable[..., Awaitable[None]],
        start_periodic: Callable[..., None],
        close_interval: Callable[[], Awaitable[None]],
        uplink: Callable[[], MqttUplink | None],
        new_uplink: Callable[[AgentConfig], MqttUplink],
        guard: ConfigGuard | None,
        stopped: Callable[[], bool],
        set_state: Callable[[str], None],
        reloading: Callable[[], None],
        reloaded: Callable[[dict[str, Any]], None],
    ) -> None:
        self.config = config
        self.set_config = set_config
        self.config_path = config_path
        self.source = source
        self.emit = emit
        self.pipeline = pipeline
        self.sensors = sensors
        self.resolve = resolve
        self.load_models = load_models
        self.serving = serving
        self.spawn = spawn
        self.cancel = cancel
        self.start_periodic = start_periodic
        self.close_interval = close_interval
        self.uplink = uplink
        self.new_uplink = new_uplink
        self.guard = guard
        self.stopped = stopped
        self.set_state = set_state
        self.reloading = reloading
        self.reloaded = reloaded
        self.lock = asyncio.Lock()
        """Held while a reload applies; stopping takes it so a reload in progress finishes."""
        self._from: Path | None = None  # the good copy, when the file itself is not to be read

    def revert_to(self, path: Path) -> None:
        """Make the next reload read `path` (the config guard's way back to a good copy)."""
        self._from = path if path != self.config_path else None

    async def reload_now(self) -> dict[str, Any]:
        """Apply a reload now (the pipeline's `reload` port, between two rounds)."""
        if self.stopped():
            return {"ok": False, "error": "the daemon is stopping; reload not applied"}
        async with self.lock:
            self.set_state("reloading")
            self.reloading()
            try:
                outcome = await self.apply(self.source())
            finally:
                self.set_state("running")
            self.reloaded(outcome)
        return outcome

    async def apply(self, source: str) -> dict[str, Any]:
        """Read the configuration and apply what changed; returns the reply of `reload`."""
        path, self._from = self._from or self.config_path, None
        try:
            new, raw = await asyncio.to_thread(read_config, path)
        except ConfigError as err:
            self.emit("agent.reload_failed", "error", config=source, reason=str(err))
            return {"ok": False, "config": source, "error": str(err)}
        old = self.config()
        slots = self.pipeline.slots
        loaded = {ref: slot.bundle for ref, slot in slots.items()}
        resolved = await asyncio.to_thread(self.resolve, new)
        plan = plan_reload(old, new, loaded, resolved)
        # Keys built into the store and the socket keep their running values until a restart.
        new = new.model_copy(
            update={
                "device": old.device,
                "storage": old.storage,
                "mqtt": new.mqtt.model_copy(update={"topic_prefix": old.mqtt.topic_prefix}),
                "service": new.service.model_copy(
                    update={"control_socket": old.service.control_socket}
                ),
            }
        )
        restart = [*plan.removed, *plan.changed]
        await asyncio.gather(*(self.sensors.stop(name) for name in restart))
        previous_slots = dict(slots)
        for ref in plan.models_changed:
            slots.pop(ref, None)
        self.set_config(new)
        for name in plan.removed:
            self.pipeline.sensor_models.pop(name, None)
        await asyncio.to_thread(self.load_models, [*plan.added, *plan.changed])
        in_use = {ref for s in new.sensors if s.enabled for ref in s.models}
        for ref in [r for r in slots if r not in in_use]:
            del slots[ref]
        for slot in previous_slots.values():
            if all(slot is not kept for kept in slots.values()):
                slot.runtime.close()
        self.pipeline.revive_models()  # a model disabled at run time gets another chance
        for name in [*plan.changed, *plan.added]:
            self.sensors.start(name)
        for name, change in [
            *((n, "removed") for n in plan.removed),
            *((n, "restarted") for n in plan.changed),
            *((n, "added") for n in plan.added),
        ]:
            self.emit("sensor.reconfigured", sensor=name, change=change)
        if plan.logging_changed:
            logging.getLogger().setLevel(new.logging.level)
        if plan.sync_changed and self.serving():
            await self.cancel(*SYNC_TASKS)
            await self.close_interval()
            self.start_periodic(*SYNC_TASKS)
        uplink = self.uplink()
        if plan.mqtt_changed and self.serving() and uplink is not None:
            await uplink.stop(timeout=3.0)
            await self.cancel("mqtt")
            self.spawn("mqtt", self.new_uplink(new).run)
        if self.guard is not None and raw:
            self.guard.reloaded(new, raw, broker_changed=plan.mqtt_changed)
        summary = plan.summary()
        self.emit("agent.reloaded", config=source, **summary)
        if plan.restart_required:
            log.warning(
                "reload: %s changed; restart the service to apply (running values kept)",
                ", ".join(plan.restart_required),
            )
        return {"ok": True, "config": source, **summary}
