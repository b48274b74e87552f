"""`watch` on the control socket: live signals, results, events and health from a running
daemon with the emulated sensors of the embedded default.
"""

from __future__ import annotations

import itertools
import json
import math
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config import AgentConfig
from edge_agent.daemon import Daemon, serving_in_thread
from edge_agent.service.control import TailFanout, request, stream
from edge_agent.service.live import LiveFeed, parse_watch


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Path]]:
    tmp = tmp_path_factory.mktemp("live")
    config = AgentConfig.model_validate(
        {
            "storage": {"path": str(tmp / "agent.db")},
            "mqtt": {"port": 1, "reconnect_max_s": 1.0},
            "logging": {"show_results": False},
            "metrics": {"enabled": False},
        }
    )
    d = Daemon(config, handle_signals=False)
    with serving_in_thread(d, until=lambda d: d.windows_committed > 0):
        yield d, tmp / "agent.sock"


def _records(sock: Path, seconds: float, **args: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    for record in stream(sock, "watch", **args):
        out.append(record)
        if time.monotonic() > deadline:
            break
    return out


def test_watch_sends_signals_that_advance_results_and_health(
    daemon: tuple[Daemon, Path],
) -> None:
    _, sock = daemon
    records = _records(sock, 3.0, rate_hz=5, points=40, history_s=5)
    assert records[0]["ok"] is True
    signals = [r for r in records if r.get("type") == "signals" and r["sensor"] == "imu-0"]
    assert len(signals) >= 3
    first = signals[0]
    assert len(first["channels"]) == len(first["v"]) == len(first["units"])
    assert all(len(ch) == len(first["t"]) for ch in first["v"])
    assert len(first["t"]) <= 40 * 5  # the history, down-sampled
    assert all(math.isfinite(x) for ch in first["v"] for x in ch)
    ends = [s["t"][-1] for s in signals]
    assert ends == sorted(ends)
    assert ends[-1] > ends[0]  # the plot's data advances
    assert {r["sensor"] for r in records if r.get("type") == "signals"} == {"imu-0", "imu-1"}
    health = [r for r in records if r.get("type") == "health"]
    assert health
    assert health[-1]["status"]["sensors"]["imu-0"]["state"] == "connected"
    storage = health[-1]["storage"]
    assert storage["outbox_oldest_age_s"] >= 0  # nothing reaches a broker on port 1
    assert 0 < storage["disk_free_bytes"] <= storage["disk_total_bytes"]
    assert storage["db_bytes"] > 0
    (timing,) = health[-1]["timing"].values()
    assert timing["calls"] >= 1
    assert timing["ms_per_call"] > 0
    assert any(r.get("type") == "result" for r in records)


def test_watch_of_one_sensor_sends_only_that_sensor(daemon: tuple[Daemon, Path]) -> None:
    _, sock = daemon
    records = _records(sock, 1.5, sensors=["imu-1"], results=False)
    sensors = {r["sensor"] for r in records if r.get("type") in ("signals", "result")}
    assert sensors == {"imu-1"}
    assert not [r for r in records if r.get("type") == "result"]


@pytest.mark.parametrize(
    "args",
    [{"rate_hz": 0}, {"rate_hz": "fast"}, {"points": 10**6}, {"sensors": "imu-0"}, {"events": 1}],
)
def test_watch_refuses_options_without_sense(
    daemon: tuple[Daemon, Path], args: dict[str, Any]
) -> None:
    _, sock = daemon
    (reply,) = itertools.islice(stream(sock, "watch", **args), 1)
    assert reply["ok"] is False
    assert reply["error"].startswith("bad request:")
    assert request(sock, "ping")["ok"] is True  # the socket serves on


def test_a_watcher_that_hangs_up_is_forgotten(daemon: tuple[Daemon, Path]) -> None:
    d, sock = daemon
    live = d.service.live
    assert live is not None
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(sock))
        client.sendall(b'{"cmd": "watch"}\n')
        assert json.loads(client.makefile().readline())["ok"] is True
        assert live.watchers == 1
    deadline = time.monotonic() + 5
    while live.watchers:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert not d.service.tail.active


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["sensors", "rate_hz", "points", "history_s", "health_s", "events"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(10**9), 10**9),
            st.floats(),
            st.text(max_size=5),
            st.lists(st.one_of(st.text(max_size=300), st.integers()), max_size=70),
        ),
    )
)
def test_parse_watch_accepts_only_sensible_options(request: dict[str, Any]) -> None:
    """The `watch` door: any JSON-like options either parse into bounded values or are refused."""
    try:
        options = parse_watch(request)
    except ValueError as err:
        message = str(err)
    else:
        message = ""
    if message:
        assert message.startswith("'")  # names the option
        return
    assert 0.2 <= options.rate_hz <= 20
    assert 1 <= options.points <= 1000
    assert 0 <= options.history_s <= 120
    assert 0.1 <= options.health_s <= 60
    assert options.sensors is None or len(options.sensors) <= 64


def test_watch_timing_names_a_version_on_probation(daemon: tuple[Daemon, Path]) -> None:
    """The models' figures say which version is on probation (OTA's watch list)."""
    d, _ = daemon
    (slot,) = d.slots.values()
    live = LiveFeed(
        streams=lambda: d.streams,
        status=d.service.status,
        tail=TailFanout(),
        probation=lambda: {slot.bundle.path: object()},
    )
    timing = live._timing()[slot.ref]
    assert timing["probation"] is True
    assert timing["version"] == slot.bundle.manifest.version
    assert d.service.live is not None
    assert d.service.live._timing()[slot.ref]["probation"] is False
