"""The sensors' links: opened from the config, closed on reload or stop, and their health.

Each enabled sensor has one link (serial, BLE, emulated; `firmware_bridge.links`) that
owns its reconnect loop and hands decoded frames to the pipeline (the `LinkSink`). A link
that cannot be opened is an event (`sensor.failed`), never fatal: the others run on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig
from edge_agent.errors import BundleError, EdgeAgentError, RuntimeBackendError
from edge_agent.events import Emit
from edge_agent.inference.bundle import Bundle
from edge_agent.inference.runtime import open_runtime
from edge_agent.pipeline.engine import Pipeline
from edge_agent.pipeline.stream import ModelSlot
from firmware_bridge.links import Link, open_link

log = logging.getLogger(__name__)

FindBundle = Callable[[str, list[Path]], Bundle]


class SensorLinks:
    """The open links by sensor name, feeding `pipeline`."""

    def __init__(self, config: Callable[[], AgentConfig], pipeline: Pipeline, emit: Emit) -> None:
        self.config = config
        self.pipeline = pipeline
        self.emit = emit
        self.links: dict[str, Link] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self, name: str) -> None:
        """Open and start one enabled sensor's link (a failure is an event, not fatal)."""
        sensor = next((s for s in self.config().sensors if s.name == name), None)
        if sensor is None or not sensor.enabled:
            return
        try:
            link = open_link(sensor.link, sensor, self.pipeline)
            if self.loop is not None:
                link.bind_loop(self.loop)  # serial ports are read on the loop: no thread hop
            link.start()
        except (EdgeAgentError, OSError, ValueError) as err:
            self.emit("sensor.failed", "error", sensor=sensor.name, reason=str(err))
            return
        self.links[sensor.name] = link

    async def stop(self, name: str) -> None:
        """Close one sensor's link and forget its streams (their partial windows go with them)."""
        link = self.links.pop(name, None)
        if link is not None:
            await asyncio.to_thread(link.close)
        self.pipeline.forget_sensor(name)

    async def close_all(self) -> None:
        """Close every link (their threads end; the streams stay for the final flush)."""
        await asyncio.gather(*(asyncio.to_thread(link.close) for link in self.links.values()))

    def close_now(self) -> None:
        """Close every link from here (the last step of shutdown); safe to call twice."""
        for link in self.links.values():
            link.close()

    def health(self) -> dict[str, Any]:
        """Per-sensor state for heartbeats and `status`."""
        out: dict[str, Any] = {}
        now = time.monotonic()
        for cfg in self.config().sensors:
            link = self.links.get(cfg.name)
            streams = self.pipeline.sensor_streams(cfg.name)
            dec = link.decoder.stats if link else None
            last = max((s.stats.last_data_mono or 0.0 for s in streams), default=0.0)
            out[cfg.name] = {
                "link": cfg.link,
                "state": "disabled"
                if not cfg.enabled
                else ("connected" if link and link.connected else "disconnected"),
                "seconds_since_data": round(now - last, 3) if last else None,
                "samples": sum(s.stats.samples for s in streams),
                "frames_lost": sum(s.stats.frames_lost for s in streams),
                "gaps": sum(s.stats.gaps for s in streams),
                "crc_errors": dec.crc_errors if dec else 0,
                "resyncs": dec.resyncs if dec else 0,
                "windows_dropped": sum(m.cursor.dropped for s in streams for m in s.attached),
                "hellos_rejected": sum(s.stats.hellos_rejected for s in streams),
                "input_rejected": link.decoder.rejected() if link else 0,
                "samples_before_hello": sum(s.stats.samples_before_hello for s in streams),
                "models": {
                    m.slot.ref: (m.failed or "ok") if m.enabled else m.reason
                    for s in streams
                    for m in s.attached
                },
            }
        return out


def load_models(
    config: AgentConfig,
    pipeline: Pipeline,
    find: FindBundle,
    search: list[Path],
    emit: Emit,
    sensors: list[str] | None = None,
) -> None:
    """Load the models of `sensors` (all by default) into the pipeline's slots (blocking).

    A model shared by several sensors is loaded once. One that cannot be found or opened
    is an event (`model.load_failed`); its sensors run their other models.
    """
    slots_by_ref = pipeline.slots
    for sensor in config.sensors:
        if sensors is not None and sensor.name not in sensors:
            continue
        slots: list[ModelSlot] = []
        for ref in sensor.models:
            try:
                if ref not in slots_by_ref:
                    bundle = find(ref, search)
                    runtime = open_runtime(bundle)
                    slots_by_ref[ref] = ModelSlot(bundle, runtime)
                    log.info(
                        "model %s loaded from %s (%s)",
                        bundle.ref,
                        bundle.path,
                        bundle.manifest.runtime,
                    )
                slots.append(slots_by_ref[ref])
            except (BundleError, RuntimeBackendError) as err:
                emit("model.load_failed", "error", sensor=sensor.name, model=ref, reason=str(err))
        pipeline.sensor_models[sensor.name] = slots


def models_health(pipeline: Pipeline) -> dict[str, Any]:
    """The loaded models by reference: runtime, task, path and the sensors running them."""
    users: dict[str, list[str]] = {}
    for sensor, slots in pipeline.sensor_models.items():
        for slot in slots:
            users.setdefault(slot.ref, []).append(sensor)
    return {
        slot.ref: {
            "runtime": slot.bundle.manifest.runtime,
            "task": slot.bundle.manifest.task,
            "path": str(slot.bundle.path),
            "sensors": sorted(users.get(slot.ref, [])),
        }
        for slot in pipeline.slots.values()
    }
