"""The daemon on a thread of a bench worker, with stopwatches: first frames, target reached,
and the stages of each window's latency."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge_agent.bench.harness import MODEL, PROFILE_ENV

__all__ = ["bench_config", "running_daemon"]


def bench_config(
    ttys: list[str],
    db: Path,
    broker_port: int,
    *,
    device: str = "bench",
    sync: dict[str, Any] | None = None,
) -> Any:
    from edge_agent.config import parse_config

    return parse_config(
        {
            "device": {"id": device},
            "mqtt": {"port": broker_port, "reconnect_min_s": 0.2, "reconnect_max_s": 2.0},
            "sync": sync or {},
            "storage": {"path": str(db)},
            "logging": {"level": "WARNING", "show_results": False},
            "sensors": [
                {"name": f"imu-{i}", "link": "serial", "port": t, "models": [MODEL]}
                for i, t in enumerate(ttys)
            ],
        },
        source="bench",
        environ={},
    )


@contextlib.contextmanager
def running_daemon(config: Any) -> Iterator[Any]:
    """A `Daemon` on a thread of this process, stopped cleanly on exit.

    It notes when the first frames reached it (`first_frames_mono`), where ingest starts.
    """
    from edge_agent.daemon import Daemon, serving_in_thread
    from edge_agent.pipeline.engine import PipelineObserver

    class TimedDaemon(Daemon):
        """The daemon with stopwatches (its observer hooks): first frames, target reached,
        latency stages."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.first_frames_mono: float | None = None
            self.target_windows: int | None = None
            self.target_reached = threading.Event()
            self.target_mono: float | None = None
            # (window close, inference start, inference end, commit) per committed batch.
            self.stages: list[tuple[float, float, float, float]] = []
            self.marks: dict[int, tuple[float, float, float]] = {}
            observer = PipelineObserver(
                on_frames=self._frames, on_inferred=self._inferred, on_committed=self._committed
            )
            super().__init__(*args, observer=observer, **kwargs)

        def _frames(self, sensor: str, recv_mono: float) -> None:
            if self.first_frames_mono is None:
                self.first_frames_mono = recv_mono

        def _inferred(self, batches: Any, start: float, end: float) -> None:
            for b in batches:
                self.marks[id(b)] = (b.recv_mono, start, end)

        def _committed(self, batches: Any, committed_mono: float) -> None:
            for b in batches:
                mark = self.marks.pop(id(b), None)
                if mark is not None and len(self.stages) < 100_000:
                    self.stages.append((*mark, committed_mono))
            target = self.target_windows
            if target is not None and self.target_mono is None and self.windows_committed >= target:
                self.target_mono = time.monotonic()
                self.target_reached.set()

    def run(coro: Any) -> None:
        profile_to = os.environ.get(PROFILE_ENV)
        if not profile_to:
            asyncio.run(coro)
            return
        # The event loop thread under cProfile: where the daemon's own Python time goes.
        import cProfile

        profiler = cProfile.Profile()
        try:
            profiler.runcall(asyncio.run, coro)
        finally:
            profiler.dump_stats(profile_to)

    def ready(d: Any) -> bool:
        return bool(d.ready.is_set() and d.links and all(x.connected for x in d.links.values()))

    daemon = TimedDaemon(config, handle_signals=False)
    with serving_in_thread(daemon, until=ready, timeout=40.0, runner=run) as served:
        yield served
