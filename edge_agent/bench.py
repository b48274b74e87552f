"""`edge-agent bench`: the performance contract, measured on this machine, as one JSON object.

Every figure comes from real parts: protocol-v1 bytes written to real pseudo-terminals by
emulator *processes*, read by the daemon through pyserial, cut into windows, run through the
shipped model and committed to a real SQLite file. The daemon runs in its own worker process
per phase, so its CPU time and memory are its own and one phase cannot inflate another's.

Phases:
    decode     `Decoder.feed` over an in-memory v1 stream: `decode_v1_samples_per_s`.
    raw read   the ingest bytes read from the ptys and discarded: `raw_read_samples_per_s`.
    ingest     the same bytes through the whole daemon as fast as it goes, every window
               accounted for: `ingest_samples_per_s`; the model's share of the work:
               `model_only_us_per_window` (a bare ONNX Runtime session on the same batches),
               `pipeline_us_per_window`, `overhead_ratio`.
    realtime   10 emulated sensors at 100 Hz in real time (a 10 Hz model, so the pipeline
               decimates): `window_latency_ms_p50/p99`, `cpu_percent_10x100hz`, `rss_mb`.

The method and the figures of a reference machine are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import IO, Any

import numpy as np

from edge_agent.sync.bench import bench_uplink

RATE_HZ = 100.0
MODEL = "imu-activity"
WINDOW, HOP, DECIMATION = 20, 10, 10  # the shipped model at 10 Hz on 100 Hz sensors
READ_CHUNK = 1 << 16
PROFILE_ENV = "EDGE_AGENT_BENCH_PROFILE"
"""If set, a worker profiles its event loop thread with cProfile and writes the stats there."""


@dataclass(frozen=True)
class Plan:
    """Sizes of one bench run."""

    ingest_streams: int
    ingest_samples: int
    """Samples per stream in the ingest and raw-read phases."""
    frame_samples: int
    realtime_sensors: int
    realtime_warmup_s: float
    realtime_seconds: float

    @classmethod
    def make(cls, quick: bool) -> Plan:
        """The full plan, or a quick one for tests and a first look."""
        if quick:
            return cls(2, 100_000, 32, 10, 1.0, 3.0)
        return cls(4, 1_000_000, 32, 10, 3.0, 20.0)


# --------------------------------------------------------------------------------------------
# Helpers shared by the processes.
# --------------------------------------------------------------------------------------------


def _emit(obj: dict[str, Any], out: IO[str] | None = None) -> None:
    """One JSON line on stdout: how workers talk to the orchestrator."""
    stream = out or sys.stdout
    stream.write(json.dumps(obj) + "\n")
    stream.flush()


def _open_pty() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(slave)
    return master, slave, os.ttyname(slave)


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _thread_cpu() -> dict[str, float]:
    """CPU seconds per kind of thread of this process (from /proc, ns resolution)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            on_cpu_ns = int((task / "schedstat").read_text().split()[0])
            name = names.get(int(task.name), "native (runtime pools)")
            # Threads of one kind (link-imu-0..9) are summed under their common prefix.
            key = name.rstrip("0123456789").rstrip("-_") or name
            out[key] = out.get(key, 0.0) + on_cpu_ns / 1e9
    return out


def _rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def ingest_stream(samples: int, frame_samples: int) -> bytes:
    """The bytes one emulated 100 Hz IMU sends for `samples` samples (HELLO first)."""
    from firmware_bridge.emulator import SyntheticMotion, encode_stream

    return encode_stream(
        SyntheticMotion(RATE_HZ, seed=0), samples, frame_samples, device_id="bench"
    )


def expected_windows(samples: int) -> int:
    """Windows the shipped 10 Hz model gets from `samples` samples of a 100 Hz stream."""
    decimated = samples // DECIMATION
    return 0 if decimated < WINDOW else (decimated - WINDOW) // HOP + 1


# --------------------------------------------------------------------------------------------
# Emulator processes.
# --------------------------------------------------------------------------------------------


def feeder_main(streams: int, samples: int, frame_samples: int) -> None:
    """Serve pre-encoded streams on ptys: one round of writing per `go` line on stdin.

    Writing pre-encoded bytes (made by the emulator's own encoder) keeps the writer far
    faster than any reader, so the reader's rate is what gets measured.
    """
    data = ingest_stream(samples, frame_samples)
    ptys = [_open_pty() for _ in range(streams)]
    _emit({"ttys": [p[2] for p in ptys], "bytes": len(data)})

    def write_all(master: int) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(master, view[:READ_CHUNK]) :]

    for line in sys.stdin:
        if line.strip() != "go":
            break
        threads = [threading.Thread(target=write_all, args=(p[0],)) for p in ptys]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _emit({"written": len(data) * streams})
    for master, slave, _ in ptys:
        os.close(master)
        os.close(slave)


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
        _emit({"ttys": [e.tty_path for e in emulators]})
        sys.stdin.read()


# --------------------------------------------------------------------------------------------
# Daemon workers.
# --------------------------------------------------------------------------------------------


def _config(
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
def _running_daemon(config: Any) -> Iterator[Any]:
    """A `Daemon` on a thread of this process, stopped cleanly on exit.

    It notes when the first frames reached it (`first_frames_mono`), where ingest starts.
    """
    from edge_agent.daemon import Daemon, serving_in_thread
    from firmware_bridge.protocol.v1 import Frame

    class TimedDaemon(Daemon):
        """The daemon with stopwatches: first frames, target reached, latency stages."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.first_frames_mono: float | None = None
            self.target_windows: int | None = None
            self.target_reached = threading.Event()
            self.target_mono: float | None = None
            # (window close, inference start, inference end, commit) per committed batch.
            self.stages: list[tuple[float, float, float, float]] = []
            self.marks: dict[int, tuple[float, float, float]] = {}

        def _infer_all(self, emitted: Any) -> Any:
            start = time.monotonic()
            batches = super()._infer_all(emitted)
            end = time.monotonic()
            for b in batches:
                self.marks[id(b)] = (b.recv_mono, start, end)
            return batches

        def _committed_threadsafe(self, batches: Any) -> None:
            now = time.monotonic()
            for b in batches:
                mark = self.marks.pop(id(b), None)
                if mark is not None and len(self.stages) < 100_000:
                    self.stages.append((*mark, now))
            super()._committed_threadsafe(batches)

        def _committed(self, lat: Any) -> None:
            super()._committed(lat)
            target = self.target_windows
            if target is not None and self.target_mono is None and self.windows_committed >= target:
                self.target_mono = time.monotonic()
                self.target_reached.set()

        def on_frames(
            self, sensor: str, frames: list[Frame], recv_mono: float, recv_wall: float
        ) -> None:
            if self.first_frames_mono is None:
                self.first_frames_mono = recv_mono
            super().on_frames(sensor, frames, recv_mono, recv_wall)

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


def _wait(predicate: Any, timeout: float, what: str, interval: float = 0.001) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def ingest_worker_main(ttys: list[str], samples: int, broker_port: int, db: Path) -> None:
    """Run the daemon on the feeder's ptys until every window is committed; report rates."""
    from edge_agent.inference.bundle import find_bundle, shipped_models_dir

    config = _config(ttys, db, broker_port)
    windows_expected = expected_windows(samples) * len(ttys)
    recorded: list[np.ndarray[Any, np.dtype[np.float32]]] = []
    with _running_daemon(config) as daemon:
        slot = daemon.slots[MODEL]
        original_infer = slot.runtime.infer
        kept = [0]

        def recording_infer(windows: Any, segments: Any) -> Any:
            # Keep (a bounded share of) the batches the daemon ran, to replay them bare later.
            if kept[0] < 50_000:
                recorded.append(windows.copy())
                kept[0] += len(windows)
            return original_infer(windows, segments)

        slot.runtime.infer = recording_infer
        # Set before any data flows (the feeder waits for "ready"), read on the loop thread.
        daemon.target_windows = windows_expected
        busy_before = slot.runtime.stats.busy_ns
        cpu_before = _cpu_seconds()
        threads_before = _thread_cpu()
        _emit({"ready": True})
        if not daemon.target_reached.wait(600):
            raise TimeoutError("bench: the daemon did not commit every window within 600 s")
        done = daemon.target_mono
        cpu = _cpu_seconds() - cpu_before
        threads_after = _thread_cpu()
        stats = slot.runtime.stats
        health = daemon.sensor_health()
        links = [(link.decoder.stats, link.stats) for link in daemon.links.values()]
    lost = sum(h["frames_lost"] + h["crc_errors"] + h["windows_dropped"] for h in health.values())
    samples_seen = sum(h["samples"] for h in health.values())
    elapsed = done - daemon.first_frames_mono
    windows = daemon.windows_committed

    # The bare runtime on the same batches, in the same process: what the model alone costs.
    import onnxruntime as ort

    bundle = find_bundle(MODEL, [shipped_models_dir()])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        str(bundle.model_path), options, providers=["CPUExecutionProvider"]
    )
    feed = bundle.manifest.input.name
    for batch in recorded[:20]:
        session.run(None, {feed: batch})
    start = time.perf_counter_ns()
    for batch in recorded:
        session.run(None, {feed: batch})
    bare_ns = time.perf_counter_ns() - start
    bare_windows = sum(len(b) for b in recorded)
    _emit(
        {
            "ingest_samples_per_s": samples * len(ttys) / elapsed,
            "ingest_seconds": elapsed,
            "ingest_cpu_seconds": cpu,
            "ingest_windows": windows,
            "ingest_windows_expected": windows_expected,
            "ingest_samples_seen": samples_seen,
            "ingest_lost": lost,
            "ingest_reads": sum(s.reads for _, s in links),
            "ingest_frames": sum(d.frames_ok for d, _ in links),
            "model_calls": stats.calls,
            "model_largest_batch": stats.largest_batch,
            "inference_us_per_window": (stats.busy_ns - busy_before) / 1e3 / max(1, windows),
            "model_only_us_per_window": bare_ns / 1e3 / max(1, bare_windows),
            "pipeline_us_per_window": elapsed * 1e6 / max(1, windows),
            "pipeline_cpu_us_per_window": cpu * 1e6 / max(1, windows),
            # CPU per sample by kind of thread: where the single core goes at full speed.
            "ingest_cpu_ns_per_sample_by_thread": {
                name: round(
                    (threads_after[name] - threads_before.get(name, 0.0)) * 1e9 / samples_seen, 1
                )
                for name in sorted(threads_after)
            },
        }
    )


def raw_read_worker_main(ttys: list[str], total_bytes: int) -> None:
    """Read the feeder's ptys like the serial link does, and discard the bytes."""
    import serial

    ports = []
    for path in ttys:
        port = serial.Serial()
        port.port = path
        port.baudrate = 921_600
        port.timeout = 0.2
        port.exclusive = True
        port.open()
        ports.append(port)
    got = [0] * len(ports)
    first: list[float] = []
    last = [0.0] * len(ports)

    def read(i: int) -> None:
        port = ports[i]
        while got[i] < total_bytes:
            waiting = port.in_waiting
            data = port.read(min(waiting, READ_CHUNK) if waiting else 1)
            if data:
                now = time.monotonic()
                if not first:
                    first.append(now)
                got[i] += len(data)
                last[i] = now

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(ports))]
    for t in threads:
        t.start()
    _emit({"ready": True})
    for t in threads:
        t.join()
    for port in ports:
        port.close()
    _emit({"raw_read_seconds": max(last) - first[0], "raw_read_bytes": sum(got)})


def realtime_worker_main(
    ttys: list[str], warmup: float, seconds: float, port: int, db: Path
) -> None:
    """The daemon at real time: CPU, memory and window latency over a steady stretch."""
    config = _config(ttys, db, port)
    with _running_daemon(config) as daemon:
        _wait(lambda: daemon.windows_committed >= len(ttys), 30, "first windows", 0.01)
        time.sleep(warmup)
        for acc in daemon.summaries.values():
            acc.latencies_ms.clear()
        committed = daemon.windows_committed
        threads0 = _thread_cpu()
        cpu0, wall0 = _cpu_seconds(), time.monotonic()
        time.sleep(seconds)
        cpu, wall = _cpu_seconds() - cpu0, time.monotonic() - wall0
        threads1 = _thread_cpu()
        rss = _rss_mb()
        latencies = [v for acc in daemon.summaries.values() for v in acc.latencies_ms]
        stages = np.asarray(daemon.stages[-len(latencies) :], dtype=np.float64).reshape(-1, 4)
        committed = daemon.windows_committed - committed
        health = daemon.sensor_health()
        mqtt = daemon.uplink.stats.acked if daemon.uplink else 0
    lat = np.asarray(latencies, dtype=np.float64)
    _emit(
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


# --------------------------------------------------------------------------------------------
# The orchestrator.
# --------------------------------------------------------------------------------------------


class _Proc:
    """A bench subprocess speaking JSON lines on stdout."""

    def __init__(self, *args: str, profile: Path | None = None) -> None:
        self.args = args
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
        if profile is not None:
            env[PROFILE_ENV] = str(profile)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.bench", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"bench {self.args[0]} exited early:\n{err[-4000:]}")
        result: dict[str, Any] = json.loads(line)
        return result

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self, timeout: float = 30.0) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _broker(workdir: Path) -> Iterator[tuple[int, str]]:
    """A private mosquitto when one is installed, else a port nobody listens on."""
    port = _free_port()
    binary = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if binary is None:
        yield port, "none (mosquitto not installed; the uplink keeps retrying)"
        return
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait(lambda: _accepting(port), 10, "mosquitto", 0.02)
        yield port, "mosquitto on loopback"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _accepting(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


def measure_decode(samples: int, frame_samples: int) -> dict[str, Any]:
    """`Decoder.feed` alone over an in-memory stream, in 64 KiB reads."""
    from firmware_bridge.protocol.v1 import Decoder

    data = ingest_stream(samples, frame_samples)
    chunks = [data[i : i + READ_CHUNK] for i in range(0, len(data), READ_CHUNK)]
    best = float("inf")
    for _ in range(3):
        decoder = Decoder()
        start = time.perf_counter()
        for chunk in chunks:
            decoder.feed(chunk)
        best = min(best, time.perf_counter() - start)
    return {"decode_v1_samples_per_s": samples / best}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str | None] = {}
    for name in ("numpy", "onnxruntime", "pyserial", "paho-mqtt"):
        try:
            versions[name] = package_version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        **versions,
    }


def run_bench(
    quick: bool = False, progress: IO[str] | None = None, profile_dir: Path | None = None
) -> dict[str, Any]:
    """Run every phase; returns the figures (see the module docstring).

    With `profile_dir`, the ingest and real-time workers profile their event loop thread
    (cProfile; `ingest.pstats`, `realtime.pstats`), which slows them: use for diagnosis only.
    """
    plan = Plan.make(quick)
    began = time.monotonic()

    def say(text: str) -> None:
        if progress is not None:
            progress.write(f"bench: {text}\n")
            progress.flush()

    result: dict[str, Any] = {}
    say("decode")
    result.update(measure_decode(plan.ingest_samples, plan.frame_samples))
    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-") as tmp:
        work = Path(tmp)
        with _broker(work) as (port, broker):
            feeder = _Proc(
                "feed",
                str(plan.ingest_streams),
                str(plan.ingest_samples),
                str(plan.frame_samples),
            )
            try:
                info = feeder.read()
                ttys, size = info["ttys"], int(info["bytes"])
                say(f"raw read: {plan.ingest_streams} ptys × {size / 1e6:.1f} MB")
                raw = _Proc("raw-read", json.dumps(ttys), str(size))
                try:
                    raw.read()  # ready
                    feeder.send("go")
                    raw_result = raw.read()
                    feeder.read()
                finally:
                    raw.close()
                total = plan.ingest_samples * plan.ingest_streams
                result["raw_read_samples_per_s"] = total / raw_result["raw_read_seconds"]
                say("ingest through the daemon")
                ingest = _Proc(
                    "ingest",
                    json.dumps(ttys),
                    str(plan.ingest_samples),
                    str(port),
                    str(work / "ingest.db"),
                    profile=profile_dir / "ingest.pstats" if profile_dir else None,
                )
                try:
                    ingest.read()  # ready
                    feeder.send("go")
                    result.update(ingest.read())
                    feeder.read()
                finally:
                    ingest.close(120)
            finally:
                feeder.close()
            say(f"real time: {plan.realtime_sensors} sensors at {RATE_HZ:g} Hz")
            emulator = _Proc("emulate", str(plan.realtime_sensors))
            try:
                ttys = emulator.read()["ttys"]
                realtime = _Proc(
                    "realtime",
                    json.dumps(ttys),
                    str(plan.realtime_warmup_s),
                    str(plan.realtime_seconds),
                    str(port),
                    str(work / "realtime.db"),
                    profile=profile_dir / "realtime.pstats" if profile_dir else None,
                )
                try:
                    result.update(realtime.read())
                finally:
                    realtime.close(60)
            finally:
                emulator.close()
            if broker.startswith("mosquitto"):
                say("uplink: outbox drain against bare paho QoS 1")
                result.update(bench_uplink("127.0.0.1", port, n=2000 if quick else 10_000))
                say("uplink bytes per sensor hour (default summary mode)")
                result.update(measure_uplink_bytes(port, work, seconds=6.0 if quick else 15.0))
    say("decoders of every device profile")
    result.update(measure_profiles(0.6 if quick else 2.0))
    say("start → READY, SIGTERM → exit")
    result.update(measure_startup())
    result.update(_optional_benches(quick, say))
    result["ingest_vs_raw_read"] = result["ingest_samples_per_s"] / result["raw_read_samples_per_s"]
    result["overhead_ratio"] = result["pipeline_us_per_window"] / result["model_only_us_per_window"]
    result["bench_seconds"] = time.monotonic() - began
    result["plan"] = {
        "quick": quick,
        "ingest_streams": plan.ingest_streams,
        "ingest_samples_per_stream": plan.ingest_samples,
        "samples_per_frame": plan.frame_samples,
        "sensor_rate_hz": RATE_HZ,
        "model": MODEL,
        "realtime_sensors": plan.realtime_sensors,
        "realtime_seconds": plan.realtime_seconds,
        "broker": broker,
    }
    result["machine"] = machine()
    result["targets"] = check_targets(result)
    return result


def measure_profiles(seconds: float) -> dict[str, Any]:
    """`decode_<protocol>_samples_per_s` of every device profile but v1 (measured above)."""
    from firmware_bridge.profiles import bench_decoders

    figures = bench_decoders(seconds)
    return {
        k: v
        for k, v in figures.items()
        if k.startswith("decode_") and k != "decode_v1_samples_per_s"
    }


def measure_startup() -> dict[str, Any]:
    """Process start → READY=1 and SIGTERM → exit of `edge-agent run`, as systemd sees them."""
    from edge_agent.service.startup import measure_lifecycle

    with tempfile.TemporaryDirectory(prefix="edge-agent-start-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
        env |= {
            "EDGE_AGENT_STORAGE__PATH": str(Path(tmp) / "start.db"),
            "EDGE_AGENT_MQTT__PORT": str(_free_port()),
            "EDGE_AGENT_LOGGING__SHOW_RESULTS": "false",
        }
        argv = [sys.executable, "-m", "edge_agent", "run"]
        measure_lifecycle(argv, env)  # first start creates the database: not the steady case
        runs = [measure_lifecycle(argv, env) for _ in range(3)]
    ready = sorted(r.ready_s for r in runs)
    return {
        "startup_ready_s": round(ready[len(ready) // 2], 3),
        "startup_ready_s_runs": [round(r, 3) for r in ready],
        "stop_s": round(sorted(r.stop_s for r in runs)[1], 3),
    }


def measure_uplink_bytes(port: int, work: Path, seconds: float) -> dict[str, Any]:
    """Bytes one sensor costs the uplink per hour with the default sync settings.

    A daemon with two emulated sensors runs at real time with short intervals while a
    subscriber counts what arrives per topic kind (payload, topic and MQTT fixed header);
    the average message size of each kind is then scaled to the default cadence (a summary
    per sensor and model every minute, a heartbeat every 30 s shared by the gateway's
    sensors, no per-window results) and divided by the number of sensors.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edge_agent.config import SyncConfig

    sizes: dict[str, list[int]] = {}
    lock = threading.Lock()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        kind = msg.topic.rsplit("/", 1)[-1]
        with lock:
            # Fixed header (~2-4 bytes) + topic length field + topic + QoS 1 packet id.
            sizes.setdefault(kind, []).append(len(msg.payload) + len(msg.topic) + 2 + 2 + 3)

    sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-bytes")
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.subscribe("edge/+/+/bench-bytes/#", qos=1)
    sub.loop_start()
    sensors = 2
    emulator = _Proc("emulate", str(sensors))
    try:
        ttys = emulator.read()["ttys"]
        worker = _Proc(
            "uplink-bytes", json.dumps(ttys), str(seconds), str(port), str(work / "b.db")
        )
        try:
            worker.read()
        finally:
            worker.close(60)
    finally:
        emulator.close()
        sub.disconnect()
        sub.loop_stop()
    defaults = SyncConfig()
    avg = {k: sum(v) / len(v) for k, v in sizes.items() if v}
    per_hour = avg.get("summary", 0.0) * 3600 / defaults.summary_interval_s  # per sensor+model
    per_hour += avg.get("heartbeat", 0.0) * 3600 / defaults.heartbeat_interval_s / sensors
    return {
        "uplink_bytes_per_sensor_hour": round(per_hour),
        "uplink_message_bytes_avg": {k: round(v) for k, v in sorted(avg.items())},
    }


def uplink_bytes_worker_main(ttys: list[str], seconds: float, port: int, db: Path) -> None:
    """The daemon at real time with short sync intervals, for `measure_uplink_bytes`."""
    config = _config(
        ttys,
        db,
        port,
        device="bench-bytes",
        sync={"heartbeat_interval_s": 1.0, "summary_interval_s": 2.0},
    )
    with _running_daemon(config):
        time.sleep(seconds)
    _emit({"done": True})


def _optional_benches(quick: bool, say: Any) -> dict[str, Any]:
    """Figures of subsystems that ship their own measurement (hot swap, face identification)."""
    out: dict[str, Any] = {}
    try:
        ota = importlib.import_module("edge_agent.ota.bench")
    except ImportError:
        pass
    else:
        say("model hot swap under a live stream")
        out.update(ota.bench_hot_swap())
    try:
        faces = importlib.import_module("edge_agent.faces.bench")
    except ImportError:
        return out
    say("1:N face identification over a 100,000 × 512 gallery")
    identify = faces.bench_identify(n=100_000, queries=100 if quick else 300)
    out.update(identify)
    # The names for the same figures (gallery of 100,000 × 512, float32, same run).
    out["face_identify_ms_p99_100k"] = identify.get("identify_p99_ms")
    out["numpy_matvec_ms_100k"] = identify.get("numpy_matvec_p99_ms")
    say("face crop → decision with the demo model")
    out.update(faces.bench_crop_to_decision(crops=30 if quick else 100))
    return out


# The brief's targets for a 2-core x86 machine: (figure, comparison, bound).
TARGETS: list[tuple[str, str, float]] = [
    ("ingest_samples_per_s", ">=", 1_000_000),
    ("ingest_vs_raw_read", ">=", 0.5),
    ("window_latency_ms_p99", "<=", 2.0),
    ("cpu_percent_10x100hz", "<=", 2.0),
    ("rss_mb", "<=", 80.0),
    ("startup_ready_s", "<=", 1.0),
    ("outbox_drain_ratio", ">=", 0.7),
    ("hot_swap_pause_ms", "<=", 1.0),
    ("windows_dropped_during_swap", "<=", 0),
    ("rollback_after_failed_check_ms", "<=", 5000.0),
    ("identify_p99_ms", "<=", 5.0),
    ("identify_overhead_ratio", "<=", 1.5),
]


def check_targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target with the measured value and whether it is met (reported, never enforced)."""
    out: dict[str, dict[str, Any]] = {}
    for key, op, bound in TARGETS:
        value = result.get(key)
        met = value is not None and (value >= bound if op == ">=" else value <= bound)
        out[key] = {"target": f"{op} {bound:g}", "value": value, "met": bool(met)}
    return out


def format_table(result: dict[str, Any]) -> str:
    """The figures as aligned text, targets beside them, for a terminal."""
    lines = []
    targets = result.get("targets", {})
    for key, value in result.items():
        if isinstance(value, dict):
            continue
        shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
        note = ""
        if key in targets:
            t = targets[key]
            note = f"   target {t['target']}: {'met' if t['met'] else 'MISSED'}"
        lines.append(f"{key:<30} {shown:>20}{note}")
    m = result.get("machine", {})
    lines.append(f"{'machine':<30} {m.get('cpu')} × {m.get('cpus')}, Python {m.get('python')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the bench's helper processes (`python -m edge_agent.bench MODE ...`)."""
    parser = argparse.ArgumentParser(prog="python -m edge_agent.bench")
    parser.add_argument(
        "mode", choices=["feed", "emulate", "raw-read", "ingest", "realtime", "uplink-bytes"]
    )
    parser.add_argument("args", nargs="*")
    ns = parser.parse_args(argv)
    a = ns.args
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if ns.mode == "feed":
        feeder_main(int(a[0]), int(a[1]), int(a[2]))
    elif ns.mode == "emulate":
        emulator_main(int(a[0]))
    elif ns.mode == "raw-read":
        raw_read_worker_main(json.loads(a[0]), int(a[1]))
    elif ns.mode == "ingest":
        ingest_worker_main(json.loads(a[0]), int(a[1]), int(a[2]), Path(a[3]))
    elif ns.mode == "uplink-bytes":
        uplink_bytes_worker_main(json.loads(a[0]), float(a[1]), int(a[2]), Path(a[3]))
    else:
        realtime_worker_main(json.loads(a[0]), float(a[1]), float(a[2]), int(a[3]), Path(a[4]))


if __name__ == "__main__":
    main()
