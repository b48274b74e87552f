"""The daemon on a thread of a bench worker, observed through its hooks: first frames, target
reached, the stages of each window's latency."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt

from edge_agent.bench.harness import MODEL, PROFILE_ENV
from edge_agent.config import AgentConfig, parse_config
from edge_agent.inference.runtime import Runtime, Segments
from edge_agent.pipeline.engine import PipelineObserver
from edge_agent.pipeline.results import ResultBatch

if TYPE_CHECKING:
    from edge_agent.daemon import Daemon

__all__ = ["RecordingRuntime", "Stopwatch", "bench_config", "on_loop", "running_daemon"]

T = TypeVar("T")


def bench_config(
    ttys: list[str],
    db: Path,
    broker_port: int,
    *,
    device: str = "bench",
    sync: dict[str, Any] | None = None,
) -> AgentConfig:
    """A config for a bench daemon: serial sensors on `ttys` running the shipped model."""
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


class Stopwatch:
    """Times the data path of one daemon through its observer hooks (nothing is overridden).

    The hooks run on the daemon's threads; the bench thread reads the figures. A list is
    replaced, never cleared in place, so `reset` cannot race an append.

    Attributes:
        first_frames_mono: When the first read reached the pipeline: where ingest starts.
        target_windows: Windows to wait for; set it before data flows.
        target_reached: Set once `target_windows` windows were committed.
        target_mono: When that happened.
        committed: Windows committed so far (counted by the commit hook).
        latencies_ms: Read → commit of every window since `reset` (the read that completed
            it returned → its result committed), as the summaries count it.
        stages: (read, inference start, inference end, commit) per committed batch since
            `reset`.
    """

    MAX_SAMPLES = 100_000

    def __init__(self) -> None:
        self.first_frames_mono: float | None = None
        self.target_windows: int | None = None
        self.target_reached = threading.Event()
        self.target_mono: float | None = None
        self.committed = 0
        self.latencies_ms: list[float] = []
        self.stages: list[tuple[float, float, float, float]] = []
        self._marks: dict[int, tuple[float, float, float]] = {}

    def observer(self) -> PipelineObserver:
        """The hooks to hand to the daemon."""
        return PipelineObserver(
            on_frames=self._frames, on_inferred=self._inferred, on_committed=self._committed
        )

    def reset(self) -> None:
        """Start a new measured stretch: forget latencies and stages seen so far."""
        self.latencies_ms = []
        self.stages = []

    def _frames(self, sensor: str, recv_mono: float) -> None:
        if self.first_frames_mono is None:
            self.first_frames_mono = recv_mono

    def _inferred(self, batches: list[ResultBatch], start: float, end: float) -> None:
        for b in batches:
            self._marks[id(b)] = (b.recv_mono, start, end)

    def _committed(self, batches: list[ResultBatch], committed_mono: float) -> None:
        latencies, stages = self.latencies_ms, self.stages
        for b in batches:
            n = len(b)
            self.committed += n
            if len(latencies) < self.MAX_SAMPLES:
                latencies.extend([(committed_mono - b.recv_mono) * 1000.0] * min(n, 1000))
            mark = self._marks.pop(id(b), None)
            if mark is not None and len(stages) < self.MAX_SAMPLES:
                stages.append((*mark, committed_mono))
        target = self.target_windows
        if target is not None and self.target_mono is None and self.committed >= target:
            self.target_mono = time.monotonic()
            self.target_reached.set()


class RecordingRuntime(Runtime):
    """A model's runtime that keeps (a bounded share of) the batches it is given.

    The ingest bench replays them on a bare ONNX Runtime session afterwards, to tell the
    model's cost from the pipeline's. It is put in service with the daemon's public hot
    swap, like any other runtime.
    """

    name = "recording"

    def __init__(self, inner: Runtime, limit: int = 50_000) -> None:
        super().__init__(inner.bundle, threads=inner.threads)
        self.inner = inner
        self.limit = limit
        self.recorded: list[npt.NDArray[np.float32]] = []
        self._kept = 0

    def infer(self, windows: npt.NDArray[np.float32], segments: Segments) -> Any:
        """Keep a copy (outside the timed run), then run as the daemon would."""
        if self._kept < self.limit:
            self.recorded.append(windows.copy())
            self._kept += len(windows)
        return super().infer(windows, segments)

    def run(self, windows: npt.NDArray[np.float32]) -> Any:
        """The wrapped runtime's run."""
        return self.inner.run(windows)

    def run_streams(self, windows: npt.NDArray[np.float32], segments: Segments) -> Any:
        """The wrapped runtime's run over windows of several streams."""
        return self.inner.run_streams(windows, segments)

    def close(self) -> None:
        """Close the wrapped runtime."""
        self.inner.close()


def on_loop(daemon: Daemon, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run a coroutine on the daemon's event loop from a bench thread and return its result."""
    loop = daemon.loop
    if loop is None:
        raise RuntimeError("the daemon is not running")
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


def _run_profiled(coro: Coroutine[Any, Any, None]) -> None:
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


def _links_up(daemon: Daemon) -> bool:
    return bool(
        daemon.ready.is_set() and daemon.links and all(x.connected for x in daemon.links.values())
    )


@contextlib.contextmanager
def running_daemon(
    config: AgentConfig,
    until: Callable[[Daemon], object] = _links_up,
    timeout: float = 40.0,
) -> Iterator[tuple[Daemon, Stopwatch]]:
    """A daemon on a thread of this process, timed by a `Stopwatch`; stopped cleanly on exit.

    Yields once `until(daemon)` holds (by default: ready, every link connected). The bench is
    one of the two things that run the composition root (the other is `edge_agent.runner`);
    it watches the daemon only through its observer hooks and public members.
    """
    from edge_agent.daemon import Daemon, serving_in_thread

    watch = Stopwatch()
    daemon = Daemon(config, handle_signals=False, observer=watch.observer())
    with serving_in_thread(daemon, until=until, timeout=timeout, runner=_run_profiled) as served:
        yield served, watch
