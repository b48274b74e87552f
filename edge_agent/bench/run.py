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

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from edge_agent.bench.harness import MODEL, RATE_HZ, Proc, free_port, machine, private_broker
from edge_agent.bench.ingest import measure_decode
from edge_agent.bench.uplink import bench_uplink, measure_uplink_bytes

__all__ = ["TARGETS", "Plan", "check_targets", "format_table", "run_bench"]


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
        with private_broker(work) as (port, broker):
            feeder = Proc(
                "feed",
                str(plan.ingest_streams),
                str(plan.ingest_samples),
                str(plan.frame_samples),
            )
            try:
                info = feeder.read()
                ttys, size = info["ttys"], int(info["bytes"])
                say(f"raw read: {plan.ingest_streams} ptys × {size / 1e6:.1f} MB")
                raw = Proc("raw-read", json.dumps(ttys), str(size))
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
                ingest = Proc(
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
            emulator = Proc("emulate", str(plan.realtime_sensors))
            try:
                ttys = emulator.read()["ttys"]
                realtime = Proc(
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
    result.update(_subsystem_benches(quick, say))
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
            "EDGE_AGENT_MQTT__PORT": str(free_port()),
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


def _subsystem_benches(quick: bool, say: Any) -> dict[str, Any]:
    """Figures of the model hot swap and of face identification."""
    from edge_agent.bench import faces, ota

    out: dict[str, Any] = {}
    say("model hot swap under a live stream")
    out.update(ota.bench_hot_swap())
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
