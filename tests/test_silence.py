"""Silence detection: a stream that stops delivering data raises `sensor.silent`, then
`sensor.recovered` when data returns.

The watchdog's rules are checked with explicit times; the daemon test uses a real emulated
device on a pty whose firmware "hangs" (it stays plugged in but sends nothing), a real
SQLite file and a real mosquitto. The silence limit is shrunk through the config.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.pipeline.silence import SilenceWatch
from firmware_bridge.emulator import DeviceEmulator, SyntheticMotion
from tests.broker import Mosquitto, collector, wait_for
from tests.test_hotplug import ROOT, agent_config, broker, events, running_daemon, samples

__all__ = ["broker"]  # the fixture, shared with the hot-plug tests


def feed(
    watch: SilenceWatch, start: float, end: float, rate: float, declared: float | None
) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """Data at ``rate`` Hz from ``start`` to ``end``, checked ten times a second."""
    out: list[tuple[str, dict[str, Any]]] = []
    t, total = start, 0
    while t <= end + 1e-9:
        total = int((t - start) * rate)
        event = watch.check(t, t, total, declared)
        if event:
            out.append(event)
        t += 0.1
    return out, total


def test_silent_once_then_recovered() -> None:
    watch = SilenceWatch(limit_s=2.0)
    assert feed(watch, 0.0, 5.0, 50.0, 50.0)[0] == []
    assert watch.check(6.9, 5.0, 250, 50.0) is None  # 1.9 s quiet
    kind, body = watch.check(7.05, 5.0, 250, 50.0)  # type: ignore[misc]
    assert kind == "sensor.silent"
    assert body["limit_s"] == 2.0
    assert body["expected_rate_hz"] == 50.0
    assert watch.check(9.0, 5.0, 250, 50.0) is None  # reported once per silence
    kind, body = watch.check(9.1, 9.05, 260, 50.0)  # type: ignore[misc]
    assert kind == "sensor.recovered"
    assert body["silent_for_s"] == 4.05


def test_a_slow_device_gets_three_periods() -> None:
    """A device declaring 0.5 Hz is not silent between two samples 2 s apart."""
    watch = SilenceWatch(limit_s=2.0)
    assert watch.effective_limit(0.5) == 6.0
    assert watch.check(5.0, 0.0, 1, 0.5) is None
    assert watch.check(6.1, 0.0, 1, 0.5) is not None


def test_the_learned_rate_wins_over_the_declared_one() -> None:
    """HELLO says 100 Hz but the device really sends 0.4 Hz: the limit follows the data."""
    watch = SilenceWatch(limit_s=2.0)
    t = 0.0
    for k in range(1, 6):
        t = k * 2.5
        assert watch.check(t, t, k, 100.0) is None
    assert watch.learned_rate_hz == pytest.approx(0.4)
    assert watch.effective_limit(100.0) == pytest.approx(7.5)


def test_never_delivered_is_not_silent() -> None:
    assert SilenceWatch().check(100.0, None, 0, 10.0) is None


def test_hung_firmware_raises_silent_and_recovered(broker: Mosquitto, tmp_path: Path) -> None:
    """The device stays connected but stops sending: `sensor.silent` is stored and published
    (no `sensor.lost`: the link is fine); when it sends again, `sensor.recovered`."""
    with DeviceEmulator(SyntheticMotion(50.0, seed=5), device_id="hung") as emulator:
        sensor = {"name": "hung", "link": "serial", "port": emulator.tty_path}
        config = agent_config(tmp_path, broker.port, [{**sensor, "silence_limit_s": 0.5}])
        with collector(broker.port, f"{ROOT}/#") as sub, running_daemon(config) as daemon:
            wait_for(lambda: samples(daemon, "hung") >= 50, 10, "data flowing")
            emulator.pause()
            paused = time.monotonic()
            wait_for(lambda: events(sub, "sensor.silent", "hung"), 10, "silent event")
            stream = next(s for (name, _), s in daemon.streams.items() if name == "hung")
            assert stream.stats.last_data_mono is not None
            published_after = time.monotonic() - max(paused, stream.stats.last_data_mono)
            silent = events(sub, "sensor.silent", "hung")[0]
            assert silent["severity"] == "warning"
            assert silent["limit_s"] == 0.5
            assert silent["expected_rate_hz"] > 0

            emulator.resume()
            wait_for(lambda: events(sub, "sensor.recovered", "hung"), 10, "recovered event")
            assert events(sub, "sensor.recovered", "hung")[0]["silent_for_s"] >= 0.5
            assert not events(sub, "sensor.lost", "hung")
            assert len(events(sub, "sensor.silent", "hung")) == 1
            print(f"last data → silent event at the broker: {published_after:.3f} s (limit 0.5 s)")
