"""`edge-agent bench --quick --json`: the contract's keys are there and make sense.

A real run (emulator processes on ptys, daemon workers, SQLite, mosquitto when installed);
no speed thresholds here, those are the benchmark's business (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

CONTRACT = [
    "ingest_samples_per_s",
    "raw_read_samples_per_s",
    "window_latency_ms_p50",
    "window_latency_ms_p99",
    "model_only_us_per_window",
    "pipeline_us_per_window",
    "overhead_ratio",
    "cpu_percent_10x100hz",
    "rss_mb",
    "decode_v1_samples_per_s",
]


def test_quick_bench_prints_one_sane_json_object() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent", "bench", "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=110,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)  # exactly one JSON document on stdout
    for key in CONTRACT:
        value = result[key]
        assert isinstance(value, float), (key, value)
        assert math.isfinite(value), (key, value)
        assert value > 0, (key, value)
    # Nothing lost on the way: every window of every sample was committed.
    assert result["ingest_lost"] == 0
    assert result["ingest_windows"] == result["ingest_windows_expected"] > 0
    assert result["ingest_samples_seen"] == (
        result["plan"]["ingest_streams"] * result["plan"]["ingest_samples_per_stream"]
    )
    assert result["window_latency_ms_p50"] <= result["window_latency_ms_p99"]
    assert result["realtime_windows"] > 0
    assert result["overhead_ratio"] == (
        result["pipeline_us_per_window"] / result["model_only_us_per_window"]
    )
    assert set(result["targets"]) >= {"ingest_samples_per_s", "rss_mb", "cpu_percent_10x100hz"}
    assert all(isinstance(t["met"], bool) for t in result["targets"].values())
    assert result["machine"]["cpus"] >= 1
