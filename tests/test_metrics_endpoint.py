"""`/metrics` and `/healthz`: scraped from a running daemon with emulated sensors, parsed with
prometheus_client's own parser and checked by `promtool check metrics` (Debian's prometheus).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.config import AgentConfig
from edge_agent.daemon import Daemon, serving_in_thread
from edge_agent.metrics import Counters, Histogram
from edge_agent.monitor.exporter import ModelFigures, Sources, make_registry, render
from edge_agent.monitor.server import MetricsServer, Verdict, judge_health


def _config(tmp: Path, **metrics: Any) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "storage": {"path": str(tmp / "agent.db")},
            "mqtt": {"port": 1, "reconnect_max_s": 1.0},
            "logging": {"show_results": False},
            "metrics": {"port": 0, **metrics},
        }
    )


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode()


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _wait(cond: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon with the two emulated IMU sensors of the embedded default, metrics on."""
    tmp = tmp_path_factory.mktemp("metrics")
    d = Daemon(_config(tmp), handle_signals=False)

    def ready(d: Daemon) -> bool:
        return d.metrics is not None and d.metrics.listening.is_set() and d.windows_committed > 0

    with serving_in_thread(d, until=ready):
        yield d


def _url(d: Daemon, path: str) -> str:
    assert d.metrics is not None
    return f"http://127.0.0.1:{d.metrics.port}{path}"


def test_metrics_scrape_parses_and_counts_what_the_daemon_did(daemon: Daemon) -> None:
    _wait(lambda: daemon.windows_committed >= 4)
    status, text = _get(_url(daemon, "/metrics"))
    assert status == 200
    fam = _families(text)
    (slot,) = daemon.slots.values()  # the embedded default: one model for both sensors
    manifest = slot.bundle.manifest
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in fam.values() for s in f.samples
    }
    for sensor in ("imu-0", "imu-1"):
        assert samples[("edge_agent_sensor_up", (("sensor", sensor),))] == 1.0
        assert samples[("edge_agent_frames_total", (("sensor", sensor),))] > 0
        assert ("edge_agent_crc_errors_total", (("sensor", sensor),)) in samples
        assert ("edge_agent_sequence_gaps_total", (("sensor", sensor),)) in samples
        key = ("edge_agent_windows_total", (("model", manifest.name), ("sensor", sensor)))
        assert samples[key] >= 1
    assert fam["edge_agent_inference_seconds"].type == "histogram"
    count = samples[("edge_agent_inference_seconds_count", (("model", slot.ref),))]
    inf = samples[("edge_agent_inference_seconds_bucket", (("le", "+Inf"), ("model", slot.ref)))]
    assert count >= 1
    assert inf == count
    assert samples[("edge_agent_window_latency_seconds_count", ())] >= 4
    info = (("model", manifest.name), ("runtime", manifest.runtime), ("version", manifest.version))
    assert samples[("edge_agent_model_info", info)] == 1
    assert samples[("edge_agent_mqtt_connected", ())] == 0.0  # nothing listens on port 1
    assert samples[("edge_agent_outbox_depth", ())] >= 1  # results and events wait
    assert samples[("edge_agent_outbox_oldest_age_seconds", ())] >= 0
    assert ("edge_agent_dropped_total", (("reason", "gap"),)) in samples
    assert samples[("edge_agent_component_restarts_total", (("component", "pipeline"),))] == 0
    assert samples[("edge_agent_events_total", (("kind", "agent.started"),))] == 1
    assert samples[("process_resident_memory_bytes", ())] > 0


def test_metrics_pass_promtool(daemon: Daemon) -> None:
    _, text = _get(_url(daemon, "/metrics"))
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_healthz_is_ok_while_data_flows(daemon: Daemon) -> None:
    status, text = _get(_url(daemon, "/healthz"))
    assert status == 200
    body = json.loads(text)
    assert body["status"] == "ok"
    assert body["state"] == "running"
    assert body["reasons"] == []
    assert body["store"]["disk_full"] is False


def test_other_paths_and_methods_are_refused(daemon: Daemon) -> None:
    assert _get(_url(daemon, "/nope"))[0] == 404
    req = urllib.request.Request(_url(daemon, "/metrics"), data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    err.value.close()
    assert err.value.code == 405


def test_healthz_fails_when_progress_stops() -> None:
    healthy = {"state": "healthy", "degraded": [], "store": {"disk_full": False}}
    assert judge_health("running", None, healthy, 0).ok
    assert not judge_health("starting", None, healthy, 0).ok
    stalled = judge_health("running", "store stalled: 9 writes waiting", healthy, 3)
    assert not stalled.ok
    assert stalled.body["reasons"] == ["store stalled: 9 writes waiting"]
    full = judge_health(
        "running", None, {"degraded": ["disk full"], "store": {"disk_full": True}}, 3
    )
    assert not full.ok
    assert full.body["reasons"] == ["store cannot persist: disk full"]
    reverted = judge_health(
        "running", None, {"degraded": ["config reverted"], "store": {"disk_full": False}}, 0
    )
    assert reverted.ok
    assert reverted.body["status"] == "degraded"


def test_a_taken_port_is_reported_and_the_daemon_carries_on(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        d = Daemon(_config(tmp_path, port=port), handle_signals=False)
        seen: list[Any] = []
        d.bus.subscribe(lambda e: seen.append(e) if e.kind == "metrics.unavailable" else None)
        with serving_in_thread(d, until=lambda d: bool(seen) and d.windows_committed > 0):
            before = d.windows_committed
            _wait(lambda: d.windows_committed > before)
            assert d.supervisor.health()["metrics"]["restarts"] == 0
    assert seen[0].severity == "warning"
    assert str(port) in seen[0].body["reason"]


def test_metrics_off_serves_nothing_and_never_loads_prometheus_client(tmp_path: Path) -> None:
    d = Daemon(_config(tmp_path, enabled=False), handle_signals=False)
    with serving_in_thread(d, until=lambda d: d.windows_committed > 0):
        assert d.metrics is None
    probe = (
        "import sys; import edge_agent.daemon, edge_agent.cli; "
        "print('prometheus_client' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


# -- doors -------------------------------------------------------------------------------------

label_text = st.text(min_size=0, max_size=20)


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(
        st.tuples(
            st.text(min_size=1, max_size=20),
            st.dictionaries(st.sampled_from(["kind", "sensor", "x y", "le"]), label_text),
            st.integers(0, 2**40),
        ),
        max_size=8,
    ),
    sensors=st.dictionaries(
        label_text,
        st.fixed_dictionaries(
            {
                "state": st.sampled_from(["connected", "disconnected", "disabled", None]),
                "samples": st.one_of(st.integers(0, 10**9), st.floats(), st.none(), st.text()),
                "crc_errors": st.one_of(st.integers(0, 10**6), st.floats()),
                "seconds_since_data": st.one_of(st.none(), st.floats()),
            }
        ),
        max_size=3,
    ),
    latencies=st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=5),
)
def test_any_figures_give_an_exposition_the_parser_reads(
    counts: list[tuple[str, dict[str, str], int]],
    sensors: dict[str, Any],
    latencies: list[float],
) -> None:
    """Whatever names, labels and values the components report, the exposition stays valid."""
    counters = Counters()
    for name, labels, n in counts:
        counters.inc(name, n, **labels)
    latency = Histogram()
    for value in latencies:
        latency.observe(value)
    model = ModelFigures("m@1", "m", "1", "onnx", Histogram())
    sources = Sources(
        health=lambda: {"sensors": sensors, "degraded": [], "store": {"dropped": {"a b": 2}}},
        counters=counters,
        models=lambda: [model],
        frames=lambda: dict.fromkeys(sensors, 1),
        window_latency=latency,
        outbox=(3, time.time() - 5),
    )
    text = render(make_registry(sources)).decode()
    fam = _families(text)
    assert fam["edge_agent_window_latency_seconds"].type == "histogram"
    assert fam["edge_agent_outbox_depth"].samples[0].value == 3
    for f in fam.values():
        for s in f.samples:
            assert s.value == s.value  # no NaN ever reaches a sample


def _server() -> MetricsServer:
    def emit(kind: str, severity: str = "info", sensor: str | None = None, **body: Any) -> None:
        raise AssertionError(f"unexpected event {kind}")

    async def refresh() -> None:
        return None

    return MetricsServer(
        "127.0.0.1",
        0,
        metrics=lambda: b"# nothing\n",
        health=lambda: Verdict(True, {"status": "ok"}),
        refresh=refresh,
        emit=emit,
    )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=st.binary(max_size=12000))
def test_any_request_bytes_are_answered_or_hung_up_on(request: bytes) -> None:
    """The HTTP door: garbage, overlong heads and half requests never break the server."""

    async def scenario() -> None:
        server = _server()
        task = asyncio.create_task(server.run())
        await asyncio.wait_for(server.listening.wait(), 5)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request)
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 7)  # answered, or hung up on (b"")
        assert answer == b"" or answer.startswith(b"HTTP/1.1 ")
        writer.close()
        # Still serving: a proper request is answered.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert reply.startswith(b"HTTP/1.1 200 OK")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


def test_the_grafana_dashboard_uses_only_metrics_the_daemon_serves(daemon: Daemon) -> None:
    """config/grafana-dashboard.json: every series it queries is in a real scrape."""
    dashboard = json.loads(
        (Path(__file__).parent.parent / "config" / "grafana-dashboard.json").read_text()
    )
    _, text = _get(_url(daemon, "/metrics"))
    served = {s.name for f in _families(text).values() for s in f.samples}
    used: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\b(?:edge_agent|process)_[a-z_]+", target["expr"]))
    assert used
    assert used <= served, sorted(used - served)
    assert {"edge_agent_windows_total", "edge_agent_inference_seconds_bucket"} <= used


def test_a_metrics_change_is_applied_at_the_next_restart(tmp_path: Path) -> None:
    """A reload that changes `[metrics]` says a restart is needed (the server keeps serving)."""
    from edge_agent.service.reload import plan_reload

    old = _config(tmp_path)
    new = _config(tmp_path, port=9999)
    plan = plan_reload(old, new, {}, {})
    assert "metrics" in plan.restart_required
