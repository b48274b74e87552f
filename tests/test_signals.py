"""Graceful stop and live reload of a real `edge-agent run` process.

Everything is real: emulated IMUs write protocol-v1 frames to pseudo-terminals in
this process, the daemon reads them through pyserial, runs the shipped ONNX model,
commits to SQLite and publishes through a private mosquitto; the test plays systemd
with a notify socket and signals.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.inference.bundle import shipped_models_dir
from edge_agent.service.control import request
from edge_agent.service.startup import NotifyListener
from firmware_bridge.emulator import CsvRecording, DeviceEmulator, SyntheticMotion
from tests.broker import Mosquitto, collector, wait_for
from tests.daemon_proc import cli, events, start_daemon, stop_daemon, write_config

RECORDING = shipped_models_dir() / "imu-activity" / "recordings" / "heldout.csv"
MANIFEST = json.loads(
    (shipped_models_dir() / "imu-activity" / "1.0.0" / "manifest.json").read_text()
)
WINDOW = MANIFEST["input"]["window"]
HOP = MANIFEST["input"]["hop"]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path_factory.mktemp("broker")) as b:
        yield b


def _status(sock: Path) -> dict[str, Any]:
    return request(sock, "status")["status"]


def test_sigterm_with_data_in_flight_exits_0_and_loses_nothing(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """Two devices stream as fast as the daemon reads. SIGTERM arrives mid-stream: the
    daemon exits 0, every sample it read became a window result in SQLite (counted from
    the samples it reports in `agent.stopped`), every result reached the broker, and the
    retained status says `offline`. The stop time is printed."""
    emulators = {
        name: DeviceEmulator(
            CsvRecording(RECORDING).with_offset(offset), device_id=name, max_rate=True
        )
        for name, offset in (("fast-0", 0), ("fast-1", 600))
    }
    for emu in emulators.values():
        emu.start()
    db = tmp_path / "agent.db"
    config = write_config(
        tmp_path / "agent.toml",
        db=db,
        mqtt_port=broker.port,
        device="gw-term",
        sensors=[{"name": n, "link": "serial", "port": e.tty_path} for n, e in emulators.items()],
    )
    log = tmp_path / "daemon.log"
    root = "edge/t1/s1/gw-term"
    try:
        with collector(broker.port, f"{root}/#") as sub:
            proc = start_daemon(config, log)
            try:
                wait_for(lambda: db.with_suffix(".sock").exists(), 30, "control socket")
                wait_for(
                    lambda: _status(db.with_suffix(".sock"))["windows_committed"] > 500,
                    30,
                    "results flowing",
                )
            finally:
                started = time.monotonic()
                code = stop_daemon(proc, log)
                stop_s = time.monotonic() - started
            assert code == 0, log.read_text()
            print(f"\nSIGTERM -> exit with data in flight: {stop_s:.3f} s")
            wait_for(
                lambda: sub.of("status") and sub.of("status")[-1].payload["state"] == "offline",
                10,
                "offline status",
            )
            conn = sqlite3.connect(db)
            try:
                rows = dict(
                    conn.execute("SELECT sensor, count(*) FROM results GROUP BY sensor").fetchall()
                )
                summarised: dict[str, int] = {}
                for (body,) in conn.execute("SELECT body FROM summaries"):
                    s = json.loads(body)
                    summarised[s["sensor"]] = (
                        summarised.get(s["sensor"], 0) + s["windows_processed"]
                    )
                assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
                cursor = conn.execute("SELECT value FROM meta WHERE key='results_cursor'")
                assert (
                    int(cursor.fetchone()[0])
                    == conn.execute("SELECT max(id) FROM results").fetchone()[0]
                )
            finally:
                conn.close()
            stopped = events(db, "agent.stopped")
            assert len(stopped) == 1
            samples = stopped[0][3]["samples"]
            for name, emu in emulators.items():
                # What arrived (samples after HELLO) became windows, all of them committed.
                expected = (samples[name] - WINDOW) // HOP + 1
                assert rows[name] == expected, (name, rows[name], samples[name])
                assert summarised[name] == rows[name]
                assert samples[name] <= emu.samples_sent
            uploaded = sum(m.payload["count"] for m in sub.of("results"))
            wait_for(
                lambda: sum(m.payload["count"] for m in sub.of("results")) == sum(rows.values()),
                10,
                f"all {sum(rows.values())} results at the broker (had {uploaded})",
            )
    finally:
        for emu in emulators.values():
            emu.close()


def test_sighup_restarts_only_what_changed(broker: Mosquitto, tmp_path: Path) -> None:
    """Four sensors stream in real time. The config changes one sensor, removes one, adds
    one and changes the MQTT keep-alive; SIGHUP applies it. The two untouched sensors keep
    their streams (no lost/reconnect events, sample counters keep growing, no missing
    window), the changed one restarts, the broker session is re-established, and systemd
    sees RELOADING=1 then READY=1. A broken config is then refused with the reason while
    the daemon keeps running."""
    names = ("keep-a", "keep-b", "change-c", "drop-e", "add-d")
    emulators = {
        name: DeviceEmulator(SyntheticMotion(50.0, seed=i), device_id=name, hello_every_s=0.5)
        for i, name in enumerate(names)
    }
    for emu in emulators.values():
        emu.start()
    db = tmp_path / "agent.db"
    sock = db.with_suffix(".sock")

    def sensors(which: tuple[str, ...], **change_c: Any) -> list[dict[str, Any]]:
        out = []
        for n in which:
            s: dict[str, Any] = {"name": n, "link": "serial", "port": emulators[n].tty_path}
            if n == "change-c":
                s.update(change_c)
            out.append(s)
        return out

    config = tmp_path / "agent.toml"
    write_config(
        config,
        db=db,
        mqtt_port=broker.port,
        device="gw-hup",
        sensors=sensors(("keep-a", "keep-b", "change-c", "drop-e")),
    )
    log = tmp_path / "daemon.log"
    try:
        with (
            NotifyListener(tmp_path) as notify,
            collector(broker.port, "edge/t1/s1/gw-hup/status") as sub,
        ):
            proc = start_daemon(config, log, {"NOTIFY_SOCKET": str(notify.path)})
            try:
                assert notify.wait_for("READY=1", 30) is not None, log.read_text()

                def all_streaming() -> dict[str, Any] | None:
                    st = _status(sock)
                    rates = [s["rate_hz"] or 0 for s in st["sensors"].values()]
                    samples = [s["samples"] for s in st["sensors"].values()]
                    # Two windows each (50 Hz devices, a 10 Hz model: 5 samples per step).
                    return st if min(rates) > 0 and min(samples) >= 5 * (WINDOW + HOP) else None

                before = wait_for(all_streaming, 30, "four sensors streaming", 0.2)
                online_before = sum(m.payload["state"] == "online" for m in sub.of("status"))
                write_config(
                    config,
                    db=db,
                    mqtt_port=broker.port,
                    device="gw-hup",
                    sensors=sensors(("keep-a", "keep-b", "change-c", "add-d"), gap_policy="ignore"),
                    sections={"mqtt": {"keepalive_s": 45}},
                )
                reloaded_at = time.time()
                os.kill(proc.pid, signal.SIGHUP)
                assert notify.wait_for("RELOADING=1", 10) is not None
                ready = notify.wait_for("READY=1", 30)
                assert ready is not None
                assert "reloaded" in ready

                def settled() -> dict[str, Any] | None:
                    st = _status(sock)
                    if set(st["sensors"]) != {"keep-a", "keep-b", "change-c", "add-d"}:
                        return None
                    fresh = st["sensors"]["change-c"]["samples"] > 0
                    added = st["sensors"]["add-d"]["samples"] > 0
                    # Two more windows of the untouched sensors after the reload.
                    grown = all(
                        st["sensors"][k]["samples"] >= before["sensors"][k]["samples"] + 10 * HOP
                        for k in ("keep-a", "keep-b")
                    )
                    ok = fresh and added and grown and st["mqtt"]["connected"]
                    return st if ok else None

                after = wait_for(settled, 30, "changed and added sensors streaming", 0.2)
                for keep in ("keep-a", "keep-b"):
                    assert after["sensors"][keep]["samples"] > before["sensors"][keep]["samples"]
                    assert after["sensors"][keep]["gaps"] == 0
                    assert after["sensors"][keep]["windows_dropped"] == 0
                # The restarted sensor's counters started over with its new stream.
                assert (
                    after["sensors"]["change-c"]["samples"]
                    < before["sensors"]["change-c"]["samples"]
                    + (time.time() - reloaded_at + 1) * 50
                )
                wait_for(
                    lambda: (
                        sum(m.payload["state"] == "online" for m in sub.of("status"))
                        > online_before
                    ),
                    10,
                    "a new online status after the MQTT change",
                )

                # A broken config is refused; nothing changes, the daemon keeps running.
                config.write_text(config.read_text().replace("keepalive_s = 45", "keepalive_s = 1"))
                refused = cli("reload", "--config", str(config))
                assert refused.returncode == 1
                assert "mqtt.keepalive_s" in refused.stdout
                assert "previous config" in refused.stdout
                assert _status(sock)["state"] == "running"
            finally:
                code = stop_daemon(proc, log)
            assert code == 0, log.read_text()
    finally:
        for emu in emulators.values():
            emu.close()

    reconfigured = {
        sensor: body["change"] for _, _, sensor, body in events(db, "sensor.reconfigured")
    }
    assert reconfigured == {"drop-e": "removed", "change-c": "restarted", "add-d": "added"}
    by_sensor: dict[str | None, list[str]] = {}
    for _, kind, sensor, _ in events(db):
        by_sensor.setdefault(sensor, []).append(kind)
    for keep in ("keep-a", "keep-b"):
        assert by_sensor[keep].count("sensor.connected") == 1, by_sensor[keep]
        assert "sensor.lost" not in by_sensor[keep]
    assert by_sensor["change-c"].count("sensor.connected") == 2
    assert len(events(db, "agent.reload_failed")) == 1
    # No window of the untouched sensors is missing around the reload.
    conn = sqlite3.connect(db)
    try:
        for keep in ("keep-a", "keep-b"):
            starts = [
                r[0]
                for r in conn.execute(
                    "SELECT t_start FROM results WHERE sensor = ? ORDER BY id", (keep,)
                )
            ]
            steps = [b - a for a, b in itertools.pairwise(starts)]
            assert len(steps) >= 3, "two windows before the reload, two after"
            assert max(steps) < 1.5 * min(steps), (keep, steps)
    finally:
        conn.close()
