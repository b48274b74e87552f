"""Real time: emulated sensors at 100 Hz, the daemon's CPU, memory and window latency."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import numpy as np

from edge_agent.bench.harness import RATE_HZ, cpu_seconds, emit, rss_mb, thread_cpu, wait
from edge_agent.bench.timed import bench_config, running_daemon

__all__ = ["emulator_main", "realtime_worker_main"]


def emulator_main(devices: int) -> None:
    """Real-time emulated IMUs (synthetic motion, 100 Hz) until stdin closes."""
    from firmware_bridge.emulator import DeviceEmulator, SyntheticMotion

    emulators = [
        DeviceEmulator(SyntheticMotion(RATE_HZ, seed=i), device_id=f"imu-{i}")
        for i in range(devices)
    ]
    with contextlib.ExitStack() as stack:
        for emu in emulators:
            stack.enter_context(emu)
        emit({"ttys": [e.tty_path for e in emulators]})
        sys.stdin.read()


def realtime_worker_main(
    ttys: list[str], warmup: float, seconds: float, port: int, db: Path
) -> None:
    """The daemon at real time: CPU, memory and window latency over a steady stretch."""
    config = bench_config(ttys, db, port)
    with running_daemon(config) as (daemon, watch):
        wait(lambda: watch.committed >= len(ttys), 30, "first windows", 0.01)
        time.sleep(warmup)
        watch.reset()
        committed = watch.committed
        threads0 = thread_cpu()
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        time.sleep(seconds)
        cpu, wall = cpu_seconds() - cpu0, time.monotonic() - wall0
        threads1 = thread_cpu()
        rss = rss_mb()
        latencies = list(watch.latencies_ms)
        stages = np.asarray(watch.stages, dtype=np.float64).reshape(-1, 4)
        committed = watch.committed - committed
        health = daemon.sensor_health()
        mqtt = daemon.uplink.stats.acked if daemon.uplink else 0
    lat = np.asarray(latencies, dtype=np.float64)
    emit(
        {
            "window_latency_ms_p50": float(np.percentile(lat, 50)) if len(lat) else None,
            "window_latency_ms_p99": float(np.percentile(lat, 99)) if len(lat) else None,
            "window_latency_ms_max": float(lat.max()) if len(lat) else None,
            "cpu_percent_10x100hz": 100.0 * cpu / wall,
            "rss_mb": rss,
            "realtime_windows": committed,
            "realtime_samples": sum(h["samples"] for h in health.values()),
            "realtime_mqtt_acked": mqtt,
            # Where window latency goes: read → inference start (link thread, hand-off to
            # the loop, ingest), the model, inference end → committed (store thread).
            "latency_breakdown_ms_p50": {
                name: round(float(np.percentile(stages[:, b] - stages[:, a], 50)) * 1e3, 3)
                for name, a, b in (("to_inference", 0, 1), ("model", 1, 2), ("to_commit", 2, 3))
            }
            if len(stages)
            else None,
            "latency_breakdown_ms_p99": {
                name: round(float(np.percentile(stages[:, b] - stages[:, a], 99)) * 1e3, 3)
                for name, a, b in (("to_inference", 0, 1), ("model", 1, 2), ("to_commit", 2, 3))
            }
            if len(stages)
            else None,
            "cpu_percent_by_thread": {
                name: round(100.0 * (threads1[name] - threads0.get(name, 0.0)) / wall, 3)
                for name in sorted(threads1)
            },
        }
    )
