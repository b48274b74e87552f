"""The daemon's figures as Prometheus metric families, read when scraped.

Nothing here sits on the data path: the collector reads what the components already keep
(the health board, the counters, each runtime's call-duration histogram, the pipeline's
window latency histogram, the outbox figures fetched just before) at scrape time and turns
them into metric families for `prometheus_client`'s exposition. Names follow Prometheus'
conventions: `edge_agent_` prefix, base units (seconds, bytes), `_total` for counters.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector

from edge_agent.metrics import Counters, Histogram

PREFIX = "edge_agent"

# Counters the components keep that are exported under their own, better names below.
_MAPPED = frozenset({"windows", "frames_set_aside"})
# Families built from other figures: a counter of the same name is not exported twice.
_RESERVED = frozenset(
    f"{PREFIX}_{n}"
    for n in (
        "frames", "samples", "crc_errors", "sequence_gaps", "frames_lost", "windows",
        "dropped", "component_restarts", "store_failed_commits", "inference_seconds",
        "window_latency_seconds", "model_info", "sensor_up", "degraded", "disk_full",
        "mqtt_connected", "outbox_depth", "outbox_oldest_age_seconds",
        "sensor_seconds_since_data",
    )
)  # fmt: skip
_NAME = re.compile(r"[^a-zA-Z0-9_]")


@dataclass(frozen=True, slots=True)
class ModelFigures:
    """What the exporter reads of one loaded model."""

    ref: str
    name: str
    version: str
    runtime: str
    seconds: Histogram


@dataclass
class Sources:
    """The narrow ports the exporter reads (handed over by the composition root).

    Attributes:
        health: The health board's snapshot (sensors, models, mqtt, store, components).
        counters: The daemon's counters.
        models: The loaded models with their call-duration histograms.
        frames: Frames received so far by sensor.
        window_latency: Seconds from a window's last read to its commit.
        outbox: The outbox's (depth, oldest message's wall time or None), fetched
            before each scrape (see `MetricsServer`).
    """

    health: Callable[[], Mapping[str, Any]]
    counters: Counters
    models: Callable[[], Iterable[ModelFigures]]
    frames: Callable[[], Mapping[str, int]]
    window_latency: Histogram
    outbox: tuple[int, float | None] | None = None
    clock: Callable[[], float] = field(default=time.time)


def _histogram(
    family: HistogramMetricFamily, labels: list[str], histogram: Histogram
) -> HistogramMetricFamily:
    buckets, total, _ = histogram.snapshot()
    family.add_metric(
        labels,
        [("+Inf" if math.isinf(b) else repr(b), float(n)) for b, n in buckets],
        sum_value=total,
    )
    return family


def _finite(value: Any) -> float | None:
    """A number fit for a sample (NaN/inf, None and non-numbers are left out)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


class DaemonCollector:
    """A `prometheus_client` collector over the daemon's `Sources`."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def describe(self) -> list[Metric]:
        """Nothing up front: the families depend on which sensors and models run."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every family, built from the figures as they are now."""
        src = self.sources
        health = src.health()
        yield from self._sensors(health.get("sensors", {}), src.frames())
        yield from self._models(list(src.models()))
        yield _histogram(
            HistogramMetricFamily(
                f"{PREFIX}_window_latency_seconds",
                "Seconds from the read that completed a window to its result's commit.",
                labels=[],
            ),
            [],
            src.window_latency,
        )
        yield from self._uplink(health)
        yield from self._components(health.get("components", {}))
        yield from self._counters(health)
        state = GaugeMetricFamily(
            f"{PREFIX}_degraded",
            "1 while the gateway is degraded (the reasons are in /healthz and status).",
        )
        state.add_metric([], 1.0 if health.get("degraded") else 0.0)
        yield state

    def _sensors(self, sensors: Mapping[str, Any], frames: Mapping[str, int]) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            f"{PREFIX}_sensor_up", "1 while the sensor's link is connected.", labels=["sensor"]
        )
        total = {
            "frames": CounterMetricFamily(
                f"{PREFIX}_frames", "Frames received from the sensor.", labels=["sensor"]
            ),
            "samples": CounterMetricFamily(
                f"{PREFIX}_samples", "Samples received from the sensor.", labels=["sensor"]
            ),
            "crc_errors": CounterMetricFamily(
                f"{PREFIX}_crc_errors", "Frames refused for a bad CRC.", labels=["sensor"]
            ),
            "gaps": CounterMetricFamily(
                f"{PREFIX}_sequence_gaps", "Gaps in the frame sequence.", labels=["sensor"]
            ),
            "frames_lost": CounterMetricFamily(
                f"{PREFIX}_frames_lost", "Frames missing at sequence gaps.", labels=["sensor"]
            ),
        }
        silent = GaugeMetricFamily(
            f"{PREFIX}_sensor_seconds_since_data",
            "Seconds since the sensor's last samples (absent before the first).",
            labels=["sensor"],
        )
        for name, h in sorted(sensors.items()):
            if not isinstance(h, Mapping) or h.get("state") == "disabled":
                continue
            up.add_metric([name], 1.0 if h.get("state") == "connected" else 0.0)
            total["frames"].add_metric([name], float(frames.get(name, 0)))
            for key in ("samples", "crc_errors", "gaps", "frames_lost"):
                value = _finite(h.get(key))
                if value is not None:
                    total[key].add_metric([name], value)
            since = _finite(h.get("seconds_since_data"))
            if since is not None:
                silent.add_metric([name], since)
        yield up
        yield from total.values()
        yield silent

    def _models(self, models: list[ModelFigures]) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            f"{PREFIX}_model_info",
            "A loaded model (always 1): its name, version and runtime.",
            labels=["model", "version", "runtime"],
        )
        seconds = HistogramMetricFamily(
            f"{PREFIX}_inference_seconds",
            "Duration of one inference call (a batch of windows) by model.",
            labels=["model"],
        )
        for m in sorted(models, key=lambda m: m.ref):
            info.add_metric([m.name, m.version, m.runtime], 1.0)
            _histogram(seconds, [m.ref], m.seconds)
        yield info
        yield seconds

    def _uplink(self, health: Mapping[str, Any]) -> Iterator[Metric]:
        src = self.sources
        connected = GaugeMetricFamily(
            f"{PREFIX}_mqtt_connected", "1 while the MQTT session is up (CONNACK accepted)."
        )
        connected.add_metric([], 1.0 if health.get("mqtt", {}).get("connected") else 0.0)
        yield connected
        if src.outbox is not None:
            depth, oldest = src.outbox
            gauge = GaugeMetricFamily(
                f"{PREFIX}_outbox_depth", "Messages waiting in the outbox for the broker."
            )
            gauge.add_metric([], float(depth))
            yield gauge
            age = GaugeMetricFamily(
                f"{PREFIX}_outbox_oldest_age_seconds",
                "Age of the oldest message waiting in the outbox (0 when empty).",
            )
            age.add_metric([], max(0.0, src.clock() - oldest) if oldest is not None else 0.0)
            yield age
        store = health.get("store", {})
        full = GaugeMetricFamily(f"{PREFIX}_disk_full", "1 while the store reports a full disk.")
        full.add_metric([], 1.0 if store.get("disk_full") else 0.0)
        yield full
        failed = CounterMetricFamily(
            f"{PREFIX}_store_failed_commits", "Store transactions that could not be committed."
        )
        failed.add_metric([], float(_finite(store.get("failed_commits")) or 0.0))
        yield failed

    def _components(self, components: Mapping[str, Any]) -> Iterator[Metric]:
        restarts = CounterMetricFamily(
            f"{PREFIX}_component_restarts",
            "Restarts of a supervised component after an unexpected failure.",
            labels=["component"],
        )
        for name, c in sorted(components.items()):
            if isinstance(c, Mapping):
                restarts.add_metric([name], float(_finite(c.get("restarts")) or 0.0))
        yield restarts

    def _counters(self, health: Mapping[str, Any]) -> Iterator[Metric]:
        sensors = health.get("sensors", {})
        items = self.sources.counters.items()
        windows = CounterMetricFamily(
            f"{PREFIX}_windows",
            "Windows decided and committed, by sensor and model.",
            labels=["sensor", "model"],
        )
        dropped = CounterMetricFamily(
            f"{PREFIX}_dropped",
            "Data dropped, by reason (evicted by retention, windows at gaps, frames of a "
            "stream set aside after a failure).",
            labels=["reason"],
        )
        others: dict[str, tuple[list[str], CounterMetricFamily]] = {}
        gap_windows = 0.0
        set_aside = 0.0
        for name, labels, value in items:
            if name == "windows":
                windows.add_metric([labels.get("sensor", ""), labels.get("model", "")], value)
            elif name == "frames_set_aside":
                set_aside += value
            elif name not in _MAPPED:
                metric = f"{PREFIX}_{_NAME.sub('_', name)}"
                if metric in _RESERVED or metric.removesuffix("_total") in _RESERVED:
                    continue
                keys = sorted(labels)
                known = others.get(metric)
                if known is None:
                    family = CounterMetricFamily(metric, f"'{name}' counted.", labels=keys)
                    known = others[metric] = (keys, family)
                if known[0] == keys:  # one label set per family, as the format requires
                    known[1].add_metric([labels[k] for k in keys], float(value))
        for h in sensors.values():
            if isinstance(h, Mapping):
                gap_windows += float(_finite(h.get("windows_dropped")) or 0.0)
        dropped.add_metric(["gap"], gap_windows)
        dropped.add_metric(["stream_failed"], set_aside)
        evicted = health.get("store", {}).get("dropped", {})
        if isinstance(evicted, Mapping):
            for kind, n in sorted(evicted.items()):
                amount = _finite(n)
                if amount is not None:
                    dropped.add_metric([f"evicted_{_NAME.sub('_', str(kind))}"], amount)
        yield windows
        yield dropped
        yield from (family for _, family in others.values())


def make_registry(sources: Sources) -> CollectorRegistry:
    """A registry (not the global one) with the daemon's collector and the process collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(sources))
    ProcessCollector(namespace="", registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The exposition in the Prometheus text format (version 0.0.4)."""
    return generate_latest(registry)
