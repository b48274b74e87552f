"""Failure domains: each component that raises is restarted (or, for a model, disabled) and
reported, while a witness sensor's windows keep being committed to SQLite.

Real parts: emulated IMUs on real ptys, a real SQLite file, a real mosquitto, real ONNX
Runtime sessions (the NaN model is a real ONNX graph built with `onnx.helper`). The fault
is injected at the narrowest boundary, said in each test: a method of the one component
under test is wrapped to raise on its first call(s) (there is no outside input that makes
these components raise any more: that is what the other tests guard), or a model's runtime
`infer` raises. Restart delays are shrunk through the daemon's `backoff` parameter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import tomlkit
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.commands.control import render_status
from edge_agent.config import parse_config
from edge_agent.daemon import Daemon, serving_in_thread
from edge_agent.errors import StoreError
from edge_agent.faces.keys import generate_key, write_key_file
from edge_agent.faces.pipeline import FacePipeline
from edge_agent.inference.bundle import load_bundle
from edge_agent.inference.runtime import open_runtime
from edge_agent.ota.manager import OtaManager
from edge_agent.periodic import Heartbeat, ResultsPacker, Retention, SilenceMonitor, SummaryCloser
from edge_agent.pipeline.engine import Pipeline
from edge_agent.pipeline.stream import SensorStream
from edge_agent.service.control import ControlServer, request
from edge_agent.supervise import Backoff
from edge_agent.sync.commands import CommandServer
from edge_agent.sync.mqtt import MqttUplink
from firmware_bridge.emulator import DeviceEmulator, SyntheticMotion
from tests.broker import Mosquitto, wait_for
from tests.ota_support import make_bundle, nan_model

FAST = Backoff(initial_s=0.05, max_s=0.2, jitter=0.5)
GOOD, WITNESS, NAN = "imu-test", "imu-witness", "imu-nan"
ROOT = "edge/t/s/gw-sup"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    (tmp_path / "broker").mkdir()
    with Mosquitto(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """Model bundles at 100 Hz (10 windows/s from a 100 Hz emulator): two good ones (the
    witness sensor runs its own), a NaN one; `next/` holds a newer version of the first."""
    root = tmp_path / "models"
    make_bundle(root, "1.0.0", name=GOOD)
    make_bundle(root, "1.0.0", name=WITNESS)
    make_bundle(root, "1.0.0", name=NAN, model=nan_model)
    make_bundle(tmp_path / "next", "1.0.1", name=GOOD)
    return root


def stored_events(db: Path, kind: str) -> list[dict[str, Any]]:
    """Events of `kind` in the daemon's SQLite file, oldest first."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT sensor, body FROM events WHERE kind = ? ORDER BY id", (kind,)
        ).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()
    return [{"sensor": s, **json.loads(b)} for s, b in rows]


def committed(db: Path, sensor: str, model: str | None = None) -> int:
    """Window results of `sensor` (and `model`) committed to SQLite."""
    conn = sqlite3.connect(db)
    try:
        sql, args = "SELECT count(*) FROM results WHERE sensor = ?", [sensor]
        if model is not None:
            sql, args = sql + " AND model = ?", [sensor, model]
        return int(conn.execute(sql, args).fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def witness_keeps_committing(db: Path, sensor: str = "imu-0", windows: int = 15) -> None:
    """The witness sensor's windows keep reaching SQLite (10 windows/s when healthy)."""
    before = committed(db, sensor)
    wait_for(lambda: committed(db, sensor) >= before + windows, 20, f"{sensor} windows")


def failure_of(db: Path, component: str) -> dict[str, Any]:
    """Wait for `component.failed` and `component.restarted` of `component`."""
    failed = wait_for(
        lambda: [e for e in stored_events(db, "component.failed") if e["component"] == component],
        20,
        f"component.failed of {component}",
    )
    wait_for(
        lambda: [
            e for e in stored_events(db, "component.restarted") if e["component"] == component
        ],
        20,
        f"component.restarted of {component}",
    )
    return failed[0]


@contextlib.contextmanager
def gateway(
    tmp_path: Path,
    port: int,
    models: Path,
    *,
    sensors: dict[str, list[str]] | None = None,
    extra: dict[str, Any] | None = None,
) -> Iterator[tuple[Daemon, Path]]:
    """A daemon on a thread, with one 100 Hz emulator per sensor on a real pty."""
    sensors = sensors or {"imu-0": [WITNESS], "imu-1": [GOOD]}
    db = tmp_path / "agent.db"
    with contextlib.ExitStack() as stack:
        emulators = {
            name: stack.enter_context(
                DeviceEmulator(SyntheticMotion(100.0, seed=i), device_id=name)
            )
            for i, name in enumerate(sensors)
        }
        data = {
            "device": {"id": "gw-sup", "tenant": "t", "site": "s"},
            "mqtt": {"port": port, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
            "storage": {"path": str(db)},
            "logging": {"show_results": False},
            "models": {"dirs": [str(models)]},
            "sync": {
                "heartbeat_interval_s": 1.0,
                "results_interval_s": 1.0,
                "summary_interval_s": 1.0,
            },
            "service": {"control_socket": str(tmp_path / "agent.sock")},
            "ota": {"install_dir": str(tmp_path / "ota")},
            "sensors": [
                {"name": name, "link": "serial", "port": emu.tty_path, "models": refs}
                for (name, refs), emu in zip(sensors.items(), emulators.values(), strict=True)
            ],
            **(extra or {}),
        }
        path = tmp_path / "agent.toml"  # what a reload re-reads
        path.write_text(tomlkit.dumps(data), encoding="utf-8")
        config = parse_config(data, source="test", environ={})
        daemon = Daemon(config, handle_signals=False, backoff=FAST, config_path=path)
        with serving_in_thread(daemon, until=lambda d: d.windows_committed > 0) as served:
            yield served, db


def raise_first(
    monkeypatch: pytest.MonkeyPatch, cls: type, method: str, times: int = 1
) -> list[int]:
    """Wrap `cls.method` so its first `times` calls raise RuntimeError; returns the call count."""
    original = getattr(cls, method)
    calls = [0]

    if asyncio.iscoroutinefunction(original):

        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] <= times:
                raise RuntimeError(f"injected fault in {cls.__name__}.{method}")
            return await original(self, *args, **kwargs)

    else:

        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            calls[0] += 1
            if calls[0] <= times:
                raise RuntimeError(f"injected fault in {cls.__name__}.{method}")
            return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, wrapper)
    return calls


# -- models --------------------------------------------------------------------------------


def test_a_model_that_raises_outside_probation_no_longer_stops_every_stream(
    broker: Mosquitto, tmp_path: Path, models: Path
) -> None:
    """The "Why" case: a model whose runtime raises (fault injected at `Runtime.infer` of
    that one model's slot) is disabled for its stream with `model.failed`; the other model
    on the same stream and the witness sensor carry on; a new version (swap) re-enables it."""
    sensors = {"imu-0": [WITNESS], "imu-1": [GOOD, NAN]}
    good, nan = f"{GOOD}@1.0.0", f"{NAN}@1.0.0"
    with gateway(tmp_path, broker.port, models, sensors=sensors) as (daemon, db):
        wait_for(lambda: committed(db, "imu-1", GOOD) > 0, 20, "imu-1 results")
        slot = daemon.slots[GOOD]
        original = slot.runtime.infer

        def broken(windows: Any, segments: Any) -> Any:
            raise RuntimeError("injected: the session died")

        slot.runtime.infer = broken  # type: ignore[method-assign]
        failed = wait_for(
            lambda: [e for e in stored_events(db, "model.failed") if e["model"] == good],
            20,
            "model.failed",
        )
        slot.runtime.infer = original  # type: ignore[method-assign]
        assert failed[0]["sensor"] == "imu-1"
        assert failed[0]["reason"] == "raised RuntimeError: injected: the session died"
        health = daemon.sensor_health()["imu-1"]["models"]
        assert health[good] == "raised RuntimeError: injected: the session died"
        assert health[nan] == "returned NaN or infinite values"  # failed on its own
        witness_keeps_committing(db, "imu-0")
        stalled = committed(db, "imu-1", GOOD)
        # A new version re-enables it on the stream: its windows are committed again.
        bundle = load_bundle(tmp_path / "next" / GOOD / "1.0.1")
        runtime = open_runtime(bundle)
        assert daemon.loop is not None
        swap = asyncio.run_coroutine_threadsafe(
            daemon.swap_model(GOOD, bundle, runtime), daemon.loop
        ).result(10)
        for _, old in swap.replaced:
            old.close()
        recovered = wait_for(lambda: stored_events(db, "model.recovered"), 10, "recovered")
        assert recovered[0]["sensor"] == "imu-1"
        wait_for(lambda: committed(db, "imu-1", GOOD) >= stalled + 10, 20, "imu-1 again")
        assert daemon.sensor_health()["imu-1"]["models"][f"{GOOD}@1.0.1"] == "ok"
        witness_keeps_committing(db, "imu-0")


def test_a_model_returning_nan_is_disabled_for_its_stream_while_the_rest_carry_on(
    broker: Mosquitto, tmp_path: Path, models: Path
) -> None:
    """A real ONNX model whose every output is NaN: `model.failed` for that model on that
    stream, nothing of it stored; the good model beside it and the witness carry on."""
    sensors = {"imu-0": [WITNESS], "imu-1": [GOOD, NAN]}
    with gateway(tmp_path, broker.port, models, sensors=sensors) as (daemon, db):
        failed = wait_for(lambda: stored_events(db, "model.failed"), 20, "model.failed")
        assert failed[0]["sensor"] == "imu-1"
        assert failed[0]["model"] == f"{NAN}@1.0.0"
        assert failed[0]["reason"] == "returned NaN or infinite values"
        witness_keeps_committing(db, "imu-0")
        before = committed(db, "imu-1", GOOD)
        wait_for(lambda: committed(db, "imu-1", GOOD) >= before + 10, 20, "imu-1 good model")
        assert committed(db, "imu-1", NAN) == 0
        assert len(stored_events(db, "model.failed")) == 1  # disabled once, not per window
        health = daemon.sensor_health()["imu-1"]["models"]
        assert health[f"{NAN}@1.0.0"] == "returned NaN or infinite values"
        assert health[f"{GOOD}@1.0.0"] == "ok"
        # A reload gives it another chance: served again, then disabled again (still NaN).
        assert daemon.loop is not None
        outcome = asyncio.run_coroutine_threadsafe(daemon.reload(), daemon.loop).result(20)
        assert outcome["ok"], outcome
        recovered = wait_for(lambda: stored_events(db, "model.recovered"), 10, "recovered")
        assert (recovered[0]["sensor"], recovered[0]["by"]) == ("imu-1", "reload")
        wait_for(lambda: len(stored_events(db, "model.failed")) == 2, 20, "failed again")
        witness_keeps_committing(db, "imu-0")


# -- sensor streams --------------------------------------------------------------------------


def test_a_stream_whose_ingest_raises_is_restarted_and_the_others_never_notice(
    broker: Mosquitto, tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`SensorStream.ingest` raises for imu-1 only, three times (as a bug triggered by its
    data would): imu-1 is set aside, reported and restarted with backoff, with its layout;
    imu-0's windows never stop."""
    original = SensorStream.ingest
    faults = [0]

    def ingest(self: SensorStream, *args: Any, **kwargs: Any) -> Any:
        if self.name == "imu-1" and self.hello is not None and faults[0] < 3:
            faults[0] += 1
            raise ValueError("injected: a bug this stream's data triggers")
        return original(self, *args, **kwargs)

    with gateway(tmp_path, broker.port, models) as (daemon, db):
        monkeypatch.setattr(SensorStream, "ingest", ingest)
        failed = failure_of(db, "stream:imu-1")
        assert failed["error"] == "ValueError: injected: a bug this stream's data triggers"
        wait_for(lambda: len(stored_events(db, "component.failed")) >= 3, 20, "three failures")
        assert [e["restarts"] for e in stored_events(db, "component.failed")] == [1, 2, 3]
        witness_keeps_committing(db, "imu-0")
        before = committed(db, "imu-1")
        wait_for(lambda: committed(db, "imu-1") >= before + 10, 20, "imu-1 back")
        assert daemon.supervisor.health()["stream:imu-1"]["state"] == "running"


# -- supervised tasks ------------------------------------------------------------------------

TASKS: list[tuple[str, type, str]] = [
    ("heartbeat", Heartbeat, "beat"),
    ("results", ResultsPacker, "pack"),
    ("summaries", SummaryCloser, "close"),
    ("retention", Retention, "enforce"),
    ("silence", SilenceMonitor, "check"),
    ("pipeline", Pipeline, "_round"),
]


@pytest.mark.parametrize(("component", "cls", "method"), TASKS, ids=[t[0] for t in TASKS])
def test_a_periodic_task_or_the_pipeline_that_raises_is_restarted(
    broker: Mosquitto,
    tmp_path: Path,
    models: Path,
    monkeypatch: pytest.MonkeyPatch,
    component: str,
    cls: type,
    method: str,
) -> None:
    """`cls.method` (the one component) raises on its first call: `component.failed` with
    the error and restarts=1, `component.restarted`, the method runs again, and the witness
    sensor's windows keep being committed."""
    calls = raise_first(monkeypatch, cls, method)
    with gateway(tmp_path, broker.port, models) as (daemon, db):
        failed = failure_of(db, component)
        assert failed["error"] == f"RuntimeError: injected fault in {cls.__name__}.{method}"
        assert failed["restarts"] == 1
        wait_for(lambda: calls[0] >= 2, 20, f"{component} running again")
        witness_keeps_committing(db)
        assert daemon.supervisor.health()[component]["state"] == "running"


def test_the_mqtt_session_that_raises_is_restarted_and_reconnects(
    broker: Mosquitto, tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`MqttUplink._drain` raises once (a bug in the session, not a network error): the
    session is reported, restarted, and connects again (`mqtt.connected` twice)."""
    raise_first(monkeypatch, MqttUplink, "_drain")
    with gateway(tmp_path, broker.port, models) as (_, db):
        failure_of(db, "mqtt")
        wait_for(lambda: len(stored_events(db, "mqtt.connected")) >= 2, 20, "reconnected")
        connected = stored_events(db, "mqtt.connected")[-1]
        assert (connected["host"], connected["port"]) == ("127.0.0.1", broker.port)
        witness_keeps_committing(db)


class Requester:
    """An MQTT 5 client sending requests to the gateway and collecting replies."""

    def __init__(self, port: int) -> None:
        self.replies: dict[bytes, dict[str, Any]] = {}
        subscribed = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"cloud-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.on_message = lambda c, u, m: self.replies.__setitem__(
            m.properties.CorrelationData, json.loads(m.payload)
        )
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("cloud/replies", 1)
        self.client.loop_start()
        assert subscribed.wait(10)

    def send(self, name: str, args: dict[str, Any]) -> bytes:
        corr = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = "cloud/replies"
        props.CorrelationData = corr
        body = json.dumps({"id": uuid.uuid4().hex, "args": args})
        self.client.publish(f"{ROOT}/cmd/{name}", body, qos=1, properties=props)
        return corr

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def requester(port: int) -> Iterator[Requester]:
    r = Requester(port)
    try:
        yield r
    finally:
        r.close()


def test_the_command_server_that_raises_is_restarted_and_answers_again(
    broker: Mosquitto, tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`CommandServer._handle` raises on the first request: the command server is
    reported and restarted; the next request is answered."""
    raise_first(monkeypatch, CommandServer, "_handle")
    with gateway(tmp_path, broker.port, models) as (_, db), requester(broker.port) as cloud:
        wait_for(lambda: stored_events(db, "mqtt.connected"), 20, "gateway online")
        cloud.send("ping", {"echo": 1})
        failure_of(db, "commands")
        corr = cloud.send("ping", {"echo": 2})
        reply = wait_for(lambda: cloud.replies.get(corr), 20, "reply after the restart")
        assert reply["ok"]
        assert reply["result"]["echo"] == 2
        witness_keeps_committing(db)


def test_the_control_socket_that_raises_is_restarted_and_answers_again(
    broker: Mosquitto, tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ControlServer._conversation` raises on the first client: the socket is reported,
    reopened, and answers `status` (with the component's restart in it)."""
    raise_first(monkeypatch, ControlServer, "_conversation")
    sock = tmp_path / "agent.sock"
    with gateway(tmp_path, broker.port, models) as (_, db):
        with contextlib.suppress(Exception):
            request(sock, "ping", timeout=2)
        failure_of(db, "control")

        def status() -> dict[str, Any] | None:
            try:
                return request(sock, "status", timeout=2)
            except Exception:
                return None

        reply = wait_for(status, 20, "status after the restart")
        assert reply["ok"]
        assert reply["status"]["components"]["control"]["restarts"] == 1
        assert reply["status"]["health"]["state"] == "healthy"
        witness_keeps_committing(db)


def test_ota_that_raises_is_reported_and_restarted(
    broker: Mosquitto, tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`OtaManager.activate` raises (a bug, not a refused update) for a `model.activate`
    command: OTA is reported and restarted; the next command works and the witness runs."""
    raise_first(monkeypatch, OtaManager, "activate")
    with gateway(tmp_path, broker.port, models) as (_, db), requester(broker.port) as cloud:
        wait_for(lambda: stored_events(db, "mqtt.connected"), 20, "gateway online")
        corr = cloud.send("model.activate", {"model": GOOD, "version": "1.0.1"})
        accepted = wait_for(lambda: cloud.replies.get(corr), 20, "activate accepted")
        assert accepted["ok"]
        failed = failure_of(db, "ota")
        assert failed["error"] == "RuntimeError: injected fault in OtaManager.activate"
        corr = cloud.send("model.list", {})
        listing = wait_for(lambda: cloud.replies.get(corr), 20, "model.list")
        assert listing["ok"]
        witness_keeps_committing(db)


def test_faces_that_raise_are_reported_and_restarted(
    broker: Mosquitto, tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`FacePipeline._publish_audit` raises on its first call (the faces task's first
    step): faces are reported and restarted, publish again, and the IMU witness runs on."""
    calls = raise_first(monkeypatch, FacePipeline, "_publish_audit")
    key_file = tmp_path / "face.key"
    write_key_file(key_file, generate_key())
    faces = {
        "faces": {
            "enabled": True,
            "key_file": str(key_file),
            "gallery_path": str(tmp_path / "gallery.db"),
        }
    }
    with gateway(tmp_path, broker.port, models, extra=faces) as (_, db):
        failed = failure_of(db, "faces")
        assert failed["error"] == "RuntimeError: injected fault in FacePipeline._publish_audit"
        wait_for(lambda: calls[0] >= 2, 20, "faces running again")
        witness_keeps_committing(db)


def test_status_and_heartbeat_show_components_and_counters(
    broker: Mosquitto, tmp_path: Path, models: Path
) -> None:
    """The health board feeds `status`: every supervised component, the counters of events
    by kind, and healthy while nothing is degraded."""
    with gateway(tmp_path, broker.port, models) as (daemon, _):
        wait_for(lambda: daemon.windows_committed >= 20, 20, "windows")
        reply: Callable[[], dict[str, Any]] = lambda: request(  # noqa: E731
            daemon.config.service.control_socket,
            "status",
            timeout=5,  # type: ignore[arg-type]
        )
        status = reply()["status"]
        assert status["health"] == {"state": "healthy", "degraded": []}
        assert {"pipeline", "mqtt", "commands", "control", "ota", "heartbeat", "results"} <= set(
            status["components"]
        )
        assert all(c["restarts"] == 0 for c in status["components"].values())
        assert status["counters"]['events{kind="agent.started"}'] == 1
        assert "pipeline healthy" in render_status(status)
        daemon.health.degrade("disk full")
        degraded = reply()["status"]
        assert degraded["health"] == {"state": "degraded", "degraded": ["disk full"]}
        assert "degraded: disk full" in render_status(degraded)
        daemon.health.recover("disk full")


def test_a_store_that_cannot_persist_anything_ends_the_process(
    broker: Mosquitto, tmp_path: Path, models: Path
) -> None:
    """The one failure that is not contained: the store's writer thread ends (injected by
    handing it the stop marker its `close()` uses, the narrowest way to end that thread).
    `run()` ends with StoreError, which `run_daemon` turns into exit code 1 for systemd."""
    db = tmp_path / "agent.db"
    with DeviceEmulator(SyntheticMotion(100.0, seed=1), device_id="imu-0") as emu:
        config = parse_config(
            {
                "device": {"id": "gw-sup", "tenant": "t", "site": "s"},
                "mqtt": {"port": broker.port},
                "storage": {"path": str(db)},
                "logging": {"show_results": False},
                "models": {"dirs": [str(models)]},
                "service": {"control_socket": str(tmp_path / "agent.sock")},
                "sensors": [
                    {"name": "imu-0", "link": "serial", "port": emu.tty_path, "models": [GOOD]}
                ],
            },
            source="test",
            environ={},
        )
        daemon = Daemon(config, handle_signals=False, backoff=FAST)
        outcome: list[BaseException] = []

        def serve() -> None:
            try:
                asyncio.run(daemon.run())
            except BaseException as err:  # inspected below
                outcome.append(err)

        thread = threading.Thread(target=serve, name="daemon")
        thread.start()
        try:
            wait_for(lambda: daemon.windows_committed > 0 or outcome, 20, "windows")
            daemon.store._queue.put(None)  # the writer thread ends
            wait_for(lambda: outcome, 10, "run() to end")
        finally:
            daemon.request_stop()
            thread.join(30)
    assert not thread.is_alive()
    assert isinstance(outcome[0], BaseExceptionGroup)
    (err,) = outcome[0].exceptions
    assert isinstance(err, StoreError)
    assert "nothing can be persisted" in str(err)
