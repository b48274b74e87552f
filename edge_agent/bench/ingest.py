"""Ingest: v1 decoding alone, the raw read of the ptys, and the whole daemon as fast as it goes.

The feeder process serves pre-encoded streams on ptys; the raw-read and ingest workers read
the same bytes, so `ingest_vs_raw_read` compares like with like."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edge_agent.bench.harness import (
    DECIMATION,
    HOP,
    MODEL,
    RATE_HZ,
    READ_CHUNK,
    WINDOW,
    cpu_seconds,
    emit,
    open_pty,
    thread_cpu,
)
from edge_agent.bench.timed import RecordingRuntime, bench_config, on_loop, running_daemon

__all__ = [
    "expected_windows",
    "feeder_main",
    "ingest_stream",
    "ingest_worker_main",
    "measure_decode",
    "raw_read_worker_main",
]


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


def feeder_main(streams: int, samples: int, frame_samples: int) -> None:
    """Serve pre-encoded streams on ptys: one round of writing per `go` line on stdin.

    Writing pre-encoded bytes (made by the emulator's own encoder) keeps the writer far
    faster than any reader, so the reader's rate is what gets measured.
    """
    data = ingest_stream(samples, frame_samples)
    ptys = [open_pty() for _ in range(streams)]
    emit({"ttys": [p[2] for p in ptys], "bytes": len(data)})

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
        emit({"written": len(data) * streams})
    for master, slave, _ in ptys:
        os.close(master)
        os.close(slave)


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
    emit({"ready": True})
    for t in threads:
        t.join()
    for port in ports:
        port.close()
    emit({"raw_read_seconds": max(last) - first[0], "raw_read_bytes": sum(got)})


def ingest_worker_main(ttys: list[str], samples: int, broker_port: int, db: Path) -> None:
    """Run the daemon on the feeder's ptys until every window is committed; report rates."""
    from edge_agent.inference.bundle import find_bundle, shipped_models_dir

    config = bench_config(ttys, db, broker_port)
    windows_expected = expected_windows(samples) * len(ttys)
    with running_daemon(config) as (daemon, watch):
        slot = daemon.slots[MODEL]
        # Keep (a bounded share of) the batches the daemon runs, to replay them bare later;
        # in service before any data flows (the feeder waits for "ready").
        recording = RecordingRuntime(slot.runtime)
        on_loop(daemon, daemon.swap_model(MODEL, slot.bundle, recording))
        watch.target_windows = windows_expected
        cpu_before = cpu_seconds()
        threads_before = thread_cpu()
        emit({"ready": True})
        if not watch.target_reached.wait(600):
            raise TimeoutError("bench: the daemon did not commit every window within 600 s")
        done = watch.target_mono
        cpu = cpu_seconds() - cpu_before
        threads_after = thread_cpu()
        stats = recording.stats
        health = daemon.sensor_health()
        links = [(link.decoder.stats, link.stats) for link in daemon.links.values()]
    recorded = recording.recorded
    lost = sum(h["frames_lost"] + h["crc_errors"] + h["windows_dropped"] for h in health.values())
    samples_seen = sum(h["samples"] for h in health.values())
    if done is None or watch.first_frames_mono is None:
        raise RuntimeError("bench: no frames reached the daemon")
    elapsed = done - watch.first_frames_mono
    windows = watch.committed

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
    emit(
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
            "inference_us_per_window": stats.busy_ns / 1e3 / max(1, windows),
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
