"""Hot swap and rollback, measured on a live daemon: `bench_hot_swap()` for `edge-agent bench`.

Method: a `Daemon` runs in this process on its own thread (`bench.timed.running_daemon`),
reading emulated IMUs through real pseudo-terminals as fast as it can (`max_rate`), running
the shipped activity model into a real SQLite file. While windows stream, the model is
swapped back and forth between two loaded versions (the shipped bundle and a copy under
another version number) `swaps` times with `Daemon.swap_model`, the same step an OTA
activation uses.

- `hot_swap_pause_ms`: the longest time the pipeline was held by a swap (the swap step on
  the pipeline task, timed with perf_counter_ns); `hot_swap_pause_ms_p50` its median.
- `windows_dropped_during_swap`: windows the streams cut (every model cursor's count)
  minus results stored, over the whole run with its swaps; 0 means none lost. Results
  run twice would make it negative; the per-stream version sequence is also checked to
  change only at swaps.
- `rollback_after_failed_check_ms`: a version is activated on probation (`ota.activate`, the
  path of the `models.activate` command), then its session fails (closed under it, as a
  crashed runtime would be); from the failed check to the previous version serving again,
  as reported in the `model.rolled_back` event.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from edge_agent.bench.harness import MODEL, free_port
from edge_agent.bench.timed import on_loop, running_daemon
from edge_agent.config import AgentConfig, parse_config
from edge_agent.events import Event
from edge_agent.inference.bundle import (
    Bundle,
    find_bundle,
    shipped_models_dir,
    write_manifest,
)
from edge_agent.inference.runtime import open_runtime


def _copy_as(bundle: Bundle, root: Path, version: str) -> Bundle:
    """The same model files under another version number."""
    dest = root / bundle.manifest.name / version
    dest.mkdir(parents=True)
    for name in bundle.manifest.files:
        shutil.copyfile(bundle.path / name, dest / name)
    raw = json.loads((bundle.path / "manifest.json").read_text(encoding="utf-8"))
    raw.pop("files")
    raw["version"] = version
    return write_manifest(dest, raw)


def _config(tmp: Path, ttys: list[str], trials: Path) -> AgentConfig:
    return parse_config(
        {
            "device": {"id": "bench-ota"},
            "mqtt": {"port": free_port(), "reconnect_min_s": 1.0, "reconnect_max_s": 5.0},
            "storage": {"path": str(tmp / "bench.db")},
            "logging": {"level": "WARNING", "show_results": False},
            "sync": {"summary_interval_s": 3600.0},
            "service": {"control_socket": str(tmp / "bench.sock")},
            "ota": {"probation_windows": 1_000_000, "probation_s": 3600.0},
            "models": {"dirs": [str(trials)]},
            "sensors": [
                {"name": f"imu-{i}", "link": "serial", "port": t, "models": [MODEL]}
                for i, t in enumerate(ttys)
            ],
        },
        source="bench",
        environ={},
    )


def bench_hot_swap(swaps: int = 20, sensors: int = 2, interval_s: float = 0.05) -> dict[str, Any]:
    """Measure the hot-swap pause, windows lost to swaps, and the automatic rollback time.

    Returns:
        `hot_swap_pause_ms` (max), `hot_swap_pause_ms_p50`, `hot_swap_swaps`,
        `windows_dropped_during_swap`, `windows_during_swap_run`,
        `rollback_after_failed_check_ms`.
    """
    from firmware_bridge.emulator import CsvRecording, DeviceEmulator

    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-ota-") as tmp_name:
        tmp = Path(tmp_name)
        shipped = find_bundle(MODEL, [shipped_models_dir()])
        other = _copy_as(shipped, tmp / "models", "1.0.1-bench")
        trials = tmp / "trial"  # searched by `ota.activate`; filled once the daemon serves
        trials.mkdir()
        # The held-out recording of the model being swapped, whatever emulators play by default.
        recording = CsvRecording(shipped_models_dir() / MODEL / "recordings" / "heldout.csv")
        emulators = [
            DeviceEmulator(recording.with_offset(0), device_id=f"imu-{i}", max_rate=True)
            for i in range(sensors)
        ]
        for emu in emulators:
            emu.start()
        try:
            config = _config(tmp, [emu.tty_path for emu in emulators], trials)
            started = running_daemon(config, until=lambda d: d.windows_committed >= 200)
            with started as (daemon, _watch):
                rolled_back = threading.Event()

                def listen(event: Event) -> None:
                    if event.kind == "model.rolled_back":
                        rolled_back.set()

                unsubscribe = daemon.bus.subscribe(listen)
                slot = daemon.slots[MODEL]
                pairs = [(slot.bundle, slot.runtime), (other, open_runtime(other))]
                pauses = []
                for i in range(swaps):
                    bundle, runtime = pairs[(i + 1) % 2]
                    swap = on_loop(daemon, daemon.swap_model(MODEL, bundle, runtime))
                    pauses.append(swap.pause_ns / 1e6)
                    time.sleep(interval_s)
                # A new version goes on probation through the OTA command's own path; then
                # its session fails under it, as a crashed runtime would.
                standby = next(r for _, r in pairs if r is not slot.runtime)
                _copy_as(shipped, trials, "1.0.2-bench")
                activated = on_loop(daemon, daemon.ota.activate(MODEL, "1.0.2-bench"), 60.0)
                if not activated.get("ok"):
                    raise RuntimeError(f"bench: the trial version was refused: {activated}")
                daemon.slots[MODEL].runtime.close()
                rolled_back.wait(10)
                unsubscribe()
            produced = sum(m.cursor.produced for s in daemon.streams.values() for m in s.attached)
            standby.close()
            conn = sqlite3.connect(config.storage.path)
            try:
                stored = conn.execute("SELECT count(*) FROM results").fetchone()[0]
                rows = conn.execute(
                    "SELECT body FROM events WHERE kind = 'model.rolled_back' ORDER BY id"
                ).fetchall()
                order = conn.execute(
                    "SELECT sensor, model_version FROM results ORDER BY id"
                ).fetchall()
            finally:
                conn.close()
        finally:
            for emu in emulators:
                emu.close()
    changes: dict[str, int] = {}
    last: dict[str, str] = {}
    for sensor, version in order:
        if last.get(sensor) not in (None, version):
            changes[sensor] = changes.get(sensor, 0) + 1
        last[sensor] = version
    rollback = json.loads(rows[-1][0]) if rows else {}
    return {
        "hot_swap_pause_ms": round(max(pauses), 4),
        "hot_swap_pause_ms_p50": round(statistics.median(pauses), 4),
        "hot_swap_swaps": swaps,
        "windows_dropped_during_swap": int(produced - stored),
        "windows_during_swap_run": int(produced),
        "version_changes_per_stream_max": max(changes.values(), default=0),
        "rollback_after_failed_check_ms": rollback.get("rollback_ms"),
        "rollback_signal": rollback.get("signal"),
    }


def main() -> None:
    """Print the figures as JSON (`python -m edge_agent.bench.ota`)."""
    print(json.dumps(bench_hot_swap(), indent=2))


if __name__ == "__main__":
    main()
