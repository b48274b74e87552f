"""Nothing dropped unannounced at start: an emulated sensor's first samples reach the gateway
behind a HELLO, and samples a device sends before any HELLO are counted and reported.

The emulated link runs a real emulator on a real pty read through pyserial; the stream
tests feed real v1 frames into a real `SensorStream` running the shipped anomaly model.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import parse_config
from edge_agent.pipeline.stream import SensorStream
from firmware_bridge.links.emulated import EmulatedLink
from firmware_bridge.protocol.v1 import Frame, FrameType
from tests.broker import wait_for
from tests.test_frame_sense import _slot, frame, good_channels, imu, notices, raw_hello


@dataclass
class Sink:
    """Collects what the link hands on (from its thread)."""

    frames: list[Frame] = field(default_factory=list)
    opens: list[int] = field(default_factory=list)
    """len(frames) when each `connected` state came."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_frames(
        self, sensor: str, frames: list[Frame], recv_mono: float, recv_wall: float
    ) -> None:
        with self.lock:
            self.frames.extend(frames)

    def on_link_state(self, sensor: str, state: str, detail: str) -> None:
        with self.lock:
            if state == "connected":
                self.opens.append(len(self.frames))

    def snapshot(self) -> list[Frame]:
        with self.lock:
            return list(self.frames)


def _recording(path: Path, samples: int = 400) -> Path:
    rows = ["timestamp,ax[g],ay[g],az[g],gx[rad/s],gy[rad/s],gz[rad/s]"]
    rows += [f"{i / 100:.2f},{i / 1000:.3f},0,1,0,0,0" for i in range(samples)]
    path.write_text("\n".join(rows) + "\n")
    return path


def _link(recording: Path, sink: Sink) -> EmulatedLink:
    cfg = parse_config(
        {"sensors": [{"name": "e", "link": "emulated", "recording": str(recording)}]},
        source="test",
    )
    return EmulatedLink(cfg.sensors[0], sink)


def test_the_first_samples_of_the_recording_arrive_behind_a_hello(tmp_path: Path) -> None:
    sink = Sink()
    link = _link(_recording(tmp_path / "r.csv"), sink)
    link.start()
    try:
        wait_for(
            lambda: sum(1 for f in sink.snapshot() if f.frame_type == FrameType.IMU_BATCH) >= 5,
            10.0,
            "five IMU frames",
        )
        frames = sink.snapshot()
        assert frames[0].frame_type == FrameType.HELLO
        first_imu = next(f for f in frames if f.frame_type == FrameType.IMU_BATCH)
        # The recording starts at ax = 0.000 g: nothing before it was lost.
        assert first_imu.seq <= 1
        assert first_imu.samples()[0][0] == 0
        assert link.emulator.samples_dropped == 0
    finally:
        link.close()


def test_a_reopened_link_gets_the_layout_again_at_once(tmp_path: Path) -> None:
    """After a replug the new tty brings a HELLO within its first frames, not only at the next
    periodic one (every 2 s, 20 frames here)."""
    sink = Sink()
    link = _link(_recording(tmp_path / "r.csv", samples=3000), sink)
    link.start()
    try:
        wait_for(lambda: link.connected and len(sink.snapshot()) > 2, 10.0, "first frames")
        link.emulator.replug()
        # The reader notices the old tty is gone, reopens the new one and is handed a HELLO.
        wait_for(lambda: len(sink.opens) >= 2, 10.0, "the reopen")
        reopened = sink.opens[1]
        wait_for(lambda: len(sink.snapshot()) > reopened + 4, 10.0, "frames after the reopen")
        after = [f for f in sink.snapshot()[reopened:] if f.frame_type != FrameType.STATUS]
        assert FrameType.HELLO in [f.frame_type for f in after[:3]]
    finally:
        link.close()


@pytest.mark.parametrize("early_frames", [1, 3])
def test_samples_before_a_hello_are_counted_and_reported_once(early_frames: int) -> None:
    stream = SensorStream("late-hello", [_slot()])
    early = [imu(10, 6, seq=i + 1) for i in range(early_frames)]
    assert stream.ingest(early, 1.0, time.time()) == []
    assert stream.stats.samples_before_hello == 10 * early_frames
    assert not notices(stream, "sensor.samples_before_hello")

    hello = frame(FrameType.HELLO, raw_hello(10.0, good_channels()), seq=early_frames + 1)
    stream.ingest([hello, imu(10, 6, seq=early_frames + 2)], 2.0, time.time())
    reported = notices(stream, "sensor.samples_before_hello")
    assert reported == [{"samples": 10 * early_frames, "total": 10 * early_frames}]
    # The same HELLO again (a periodic one) reports nothing new.
    stream.ingest([hello], 3.0, time.time())
    assert len(notices(stream, "sensor.samples_before_hello")) == 1


def test_the_heartbeat_contract_carries_the_count() -> None:
    from edge_agent.contract.payloads import SensorHealth

    health = SensorHealth.model_validate(
        {
            "link": "emulated",
            "state": "connected",
            "seconds_since_data": 0.1,
            "samples": 100,
            "frames_lost": 0,
            "gaps": 0,
            "crc_errors": 0,
            "resyncs": 0,
            "windows_dropped": 0,
            "samples_before_hello": 96,
            "models": {},
        }
    )
    assert health.samples_before_hello == 96


def test_a_device_streaming_before_its_hello_shows_in_status_and_events(tmp_path: Path) -> None:
    """A real serial sensor (an emulator on a pty, not held) streams before the daemon opens
    its port; pyserial's open discards the HELLO, so samples arrive without a layout until
    the next periodic HELLO (every 8 s here, well after the daemon has opened the port). The
    technician sees them counted in `status` and announced."""
    from firmware_bridge.emulator import DeviceEmulator, SyntheticMotion
    from tests.daemon_proc import cli, events, start_daemon, stop_daemon, write_config

    emulator = DeviceEmulator(
        SyntheticMotion(rate_hz=50.0, seed=1), device_id="early", hello_every_s=8.0
    )
    emulator.start()
    db = tmp_path / "agent.db"
    config = write_config(
        tmp_path / "agent.toml",
        db=db,
        sensors=[{"name": "early", "link": "serial", "port": emulator.tty_path}],
    )
    log = tmp_path / "daemon.log"
    proc = start_daemon(config, log)
    try:

        def before_hello() -> list[tuple[float, str, str | None, dict[str, Any]]]:
            try:
                return events(db, "sensor.samples_before_hello") if db.exists() else []
            except sqlite3.OperationalError:  # the daemon has not created its tables yet
                return []

        reported = wait_for(before_hello, 30, "sensor.samples_before_hello")
        _, _, sensor, body = reported[0]
        assert sensor == "early"
        assert body["samples"] > 0
        assert body["total"] == body["samples"]
        done = cli("status", "--json", env={"EDGE_AGENT_CONFIG": str(config)})
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        assert status["sensors"]["early"]["samples_before_hello"] >= body["total"]
    finally:
        code = stop_daemon(proc, log)
        emulator.close()
    assert code == 0, log.read_text()
