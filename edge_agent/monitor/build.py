"""Builds the metrics server from the daemon's parts (imported only when metrics are on).

`prometheus_client` is imported here and in `exporter`, so a gateway with
`metrics.enabled = false` never loads it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from edge_agent.events import Emit
from edge_agent.health import HealthBoard
from edge_agent.metrics import Counters
from edge_agent.monitor.exporter import ModelFigures, Sources, make_registry, render
from edge_agent.monitor.server import MetricsServer, Verdict, judge_health
from edge_agent.store.txn import Op, Txn

if TYPE_CHECKING:
    from edge_agent.config import MetricsConfig
    from edge_agent.pipeline.engine import Pipeline


def outbox_figures() -> Op[tuple[int, float | None]]:
    """The outbox's depth and the wall time its oldest waiting message was queued."""

    def op(txn: Txn) -> tuple[int, float | None]:
        depth = int(txn.conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
        row = txn.conn.execute("SELECT created FROM outbox ORDER BY id LIMIT 1").fetchone()
        return depth, (float(row[0]) if row is not None else None)

    return op


def metrics_server(
    config: MetricsConfig,
    *,
    health: HealthBoard,
    counters: Counters,
    pipeline: Pipeline,
    store_call: Callable[[Op[Any]], Awaitable[Any]],
    state: Callable[[], str],
    stall: Callable[[], str | None],
    emit: Emit,
) -> MetricsServer:
    """The `/metrics` + `/healthz` server over the daemon's figures."""

    def models() -> Iterator[ModelFigures]:
        for slot in list(pipeline.slots.values()):
            manifest = slot.bundle.manifest
            seconds = slot.runtime.stats.seconds
            yield ModelFigures(slot.ref, manifest.name, manifest.version, manifest.runtime, seconds)

    def frames() -> dict[str, int]:
        out: dict[str, int] = {}
        for (name, _), stream in list(pipeline.streams.items()):
            out[name] = out.get(name, 0) + stream.stats.frames
        return out

    sources = Sources(
        health=health.snapshot,
        counters=counters,
        models=models,
        frames=frames,
        window_latency=pipeline.stats.window_latency,
    )
    registry = make_registry(sources)

    async def refresh() -> None:
        sources.outbox = await store_call(outbox_figures())

    def verdict() -> Verdict:
        depth = sources.outbox[0] if sources.outbox is not None else None
        return judge_health(state(), stall(), health.snapshot(), depth)

    return MetricsServer(
        config.host,
        config.port,
        metrics=lambda: render(registry),
        health=verdict,
        refresh=refresh,
        emit=emit,
    )
