"""OTA end to end: a real daemon process, emulated IMUs on ptys, a real mosquitto, a real
HTTPS server (CA made at test time), signed archives of real ONNX models.

Two emulated devices play the held-out recording at 100 Hz in real time; the sensors run
`imu-test`, the shipped activity graph with a 100 Hz manifest, so each stream yields a window
every 0.1 s of device time: a dropped window shows as a 0.2 s step in `t_end`, a window run
twice as a repeated `t_end`. The cloud side is an MQTT 5 client sending `model.deploy`.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import tarfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent.inference.bundle import load_bundle
from edge_agent.ota.archive import PackedArchive
from edge_agent.ota.repository import RESTARTED, read_state
from firmware_bridge.emulator import CsvRecording, DeviceEmulator
from tests.broker import Mosquitto, wait_for
from tests.command_support import REPLY_TOPIC, send_command
from tests.daemon_proc import cli, events, start_daemon, stop_daemon, write_config
from tests.ota_support import (
    RECORDING,
    FileServer,
    Publisher,
    constant_model,
    make_bundle,
    make_pki,
    nan_model,
    nan_on_live_data_model,
    read_members,
    slow_model,
    write_members,
    wrong_shape_model,
)

ROOT = "edge/t/s/gw-ota"
HOP_S = 0.1
MAX_BUNDLE = 3_000_000


# -- the cloud side --------------------------------------------------------------------------


class Cloud:
    """An MQTT 5 client that sends commands and collects their replies."""

    def __init__(self, port: int) -> None:
        self.replies: dict[bytes, dict[str, Any]] = {}
        self._ready = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"cloud-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(REPLY_TOPIC, 1)
        self.client.loop_start()
        assert self._ready.wait(10)

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        corr = getattr(msg.properties, "CorrelationData", None)
        if corr is not None:
            self.replies[corr] = json.loads(msg.payload)

    def request(self, name: str, args: dict[str, Any], timeout: float = 15) -> dict[str, Any]:
        body = json.dumps({"id": uuid.uuid4().hex, "args": args}).encode()
        return send_command(self.client, ROOT, name, body, self.replies, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- module fixtures: broker, https server, archives -------------------------------------------


@dataclass
class World:
    tmp: Path
    broker: Mosquitto
    files: FileServer
    ca: Path
    publisher: Publisher
    template: Path
    archives: dict[str, PackedArchive] = field(default_factory=dict)

    def url(self, archive: PackedArchive, mode: str = "f") -> str:
        return self.files.url(archive.path.name, mode)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("ota")
    ca, cert, key = make_pki(tmp / "pki")
    www = tmp / "www"
    publisher = Publisher(www)
    src = tmp / "src"
    template = tmp / "models"
    make_bundle(template, "1.0.0")
    archives = {
        "good": publisher.pack(make_bundle(src, "1.1.0")),
        "nan_live": publisher.pack(make_bundle(src, "1.2.0", model=nan_on_live_data_model)),
        "collapse": publisher.pack(make_bundle(src, "1.3.0", model=constant_model)),
        "nan": publisher.pack(make_bundle(src, "6.0.0", model=nan_model), golden=False),
        "shape": publisher.pack(make_bundle(src, "7.0.0", model=wrong_shape_model), golden=False),
        "slow": publisher.pack(
            make_bundle(src, "8.0.0", model=lambda p: slow_model(p, layers=4000))
        ),
    }
    stranger = Publisher(www)  # a key this gateway does not trust
    archives["untrusted"] = stranger.pack(make_bundle(src, "2.0.0"))
    padding = {"padding.bin": os.urandom(MAX_BUNDLE)}  # incompressible
    archives["oversized"] = publisher.pack(make_bundle(src, "3.0.0", extra_files=padding))
    good = archives["good"]
    members = read_members(good.path)
    flipped = []
    for info, data in members:
        if info.name == "model.onnx":  # one bit of the model flipped, the manifest as signed
            flipped.append((info, data[:100] + bytes([data[100] ^ 0x10]) + data[101:]))
        else:
            flipped.append((info, data))
    archives["flipped"] = _archive(write_members(www / "flipped.tar.gz", flipped))
    archives["missing"] = _archive(
        write_members(www / "missing.tar.gz", [m for m in members if m[0].name != "MODEL_CARD.md"])
    )
    evil = tarfile.TarInfo("../evil")
    archives["dotdot"] = _archive(
        write_members(www / "dotdot.tar.gz", [*members[:2], (evil, b"pwned"), *members[2:]])
    )
    (tmp / "broker").mkdir()
    with (
        Mosquitto(tmp / "broker") as broker,
        FileServer(www, tls=(cert, key), slow_bps=8_000) as files,
    ):
        yield World(tmp, broker, files, ca, publisher, template, archives)


def _archive(path: Path) -> PackedArchive:
    from edge_agent.ota.archive import file_sha256

    return PackedArchive(path, "imu-test", "?", file_sha256(path), path.stat().st_size, None)


# -- one gateway per test ------------------------------------------------------------------------


@dataclass
class Gateway:
    world: World
    dir: Path
    db: Path
    config: Path
    log: Path
    cloud: Cloud
    proc: subprocess.Popen[bytes] | None = None

    @property
    def install(self) -> Path:
        return self.dir / "ota"

    def start(self) -> None:
        self.proc = start_daemon(self.config, self.log)
        wait_for(self._ping, 30, "the daemon answering commands")

    def _ping(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited:\n{self.log.read_text()[-4000:]}")
        try:
            self.cloud.request("ping", {}, timeout=0.5)
        except AssertionError:
            return False
        return True

    def stop(self) -> None:
        if self.proc is not None:
            assert stop_daemon(self.proc, self.log) == 0, self.log.read_text()[-4000:]
            self.proc = None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [body for _, _, _, body in events(self.db, kind)] if self.db.exists() else []

    def wait_event(self, kind: str, timeout: float = 20, **match: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            for body in self.events(kind):
                if all(body.get(k) == v for k, v in match.items()):
                    return body
            return None

        try:
            return wait_for(found, timeout, f"event {kind} {match}")
        except AssertionError:
            print(self.log.read_text()[-6000:])
            raise

    def results(self) -> list[tuple[int, str, str, float, float | None]]:
        conn = sqlite3.connect(f"{self.db.as_uri()}?mode=ro", uri=True)
        try:
            return conn.execute(
                "SELECT id, sensor, model_version, t_end, confidence FROM results ORDER BY id"
            ).fetchall()
        finally:
            conn.close()

    def wait_results(self, more: int, version: str, timeout: float = 20) -> None:
        """`more` new results after now, all tagged `version`."""
        start = len(self.results())
        wait_for(lambda: len(self.results()) >= start + more, timeout, f"{more} more results")
        assert {r[2] for r in self.results()[start:]} == {version}

    def deploy(self, archive: PackedArchive, url: str | None = None) -> dict[str, Any]:
        args = {
            "url": url or self.world.url(archive),
            "sha256": archive.sha256,
            "size": archive.size,
            "deployment": uuid.uuid4().hex[:8],
        }
        reply = self.cloud.request("model.deploy", args)
        reply["deployment"] = args["deployment"]
        return reply

    def cli(self, *args: str) -> Any:
        return cli(*args, "--config", str(self.config))


@pytest.fixture
def gateway(world: World, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Gateway]:
    """A daemon streaming two emulated IMUs through imu-test 1.0.0, ready for commands."""
    ota: dict[str, Any] = getattr(request, "param", {})
    models = tmp_path / "models"
    shutil.copytree(world.template, models)
    db = tmp_path / "agent.db"
    emus = [
        DeviceEmulator(
            CsvRecording(RECORDING).with_offset(600 * i), device_id=f"imu-{i}", rate_hz=100.0
        )
        for i in range(2)
    ]
    for e in emus:
        e.start()
    config = write_config(
        tmp_path / "agent.toml",
        db=db,
        device="gw-ota",
        mqtt_port=world.broker.port,
        sensors=[
            {"name": f"imu-{i}", "link": "serial", "port": e.tty_path, "models": ["imu-test"]}
            for i, e in enumerate(emus)
        ],
        sections={
            "device": {"tenant": "t", "site": "s"},
            "mqtt": {"reconnect_min_s": 0.1},
            "models": {"dirs": [str(models)]},
            "ota": {
                "trusted_keys": [world.publisher.public],
                "ca_file": str(world.ca),
                "max_bundle_bytes": MAX_BUNDLE,
                "download_attempts": 2,
                "latency_budget_ms": 5.0,
                "probation_windows": 40,
                "probation_s": 1.0,
                **ota,
            },
        },
    )
    cloud = Cloud(world.broker.port)
    gw = Gateway(world, tmp_path, db, config, tmp_path / "daemon.log", cloud)
    try:
        gw.start()
        gw.wait_results(10, "1.0.0")
        yield gw
    finally:
        try:
            if gw.proc is not None:
                gw.stop()
        finally:
            cloud.close()
            for e in emus:
                e.close()


def _assert_continuous(results: list[tuple[int, str, str, float, float | None]]) -> None:
    """Per sensor, window ends step by exactly one hop: none dropped, none run twice."""
    by_sensor: dict[str, list[float]] = {}
    for _, sensor, _, t_end, _ in results:
        by_sensor.setdefault(sensor, []).append(t_end)
    for sensor, ends in by_sensor.items():
        steps = [b - a for a, b in itertools.pairwise(ends)]
        bad = [(i, round(s, 3)) for i, s in enumerate(steps) if not 0.5 * HOP_S < s < 1.5 * HOP_S]
        assert bad == [], f"{sensor}: window steps off one hop at {bad[:5]}"


def _versions_in_order(
    results: list[tuple[int, str, str, float, float | None]],
) -> dict[str, list[str]]:
    """Per sensor, the versions that produced its results, each run of equal versions once."""
    out: dict[str, list[str]] = {}
    for _, sensor, version, _, _ in results:
        seq = out.setdefault(sensor, [])
        if not seq or seq[-1] != version:
            seq.append(version)
    return out


# -- tests ---------------------------------------------------------------------------------------

REJECTIONS = [
    ("flipped", "verify", "sha256"),
    ("untrusted", "verify", "untrusted_key"),
    ("missing", "verify", "missing_file"),
    ("dotdot", "verify", "unsafe_entry"),
    ("truncated", "download", "truncated"),
    ("oversized", "download", "oversized"),
    ("shape", "stage", "input_shape"),
    ("nan", "stage", "non_finite"),
    ("slow", "stage", "latency"),
]


def test_each_bad_update_is_rejected_while_the_old_model_keeps_serving(gateway: Gateway) -> None:
    archives = gateway.world.archives
    for case, stage, check in REJECTIONS:
        archive = archives["good" if case == "truncated" else case]
        url = gateway.world.url(archive, "cut") if case == "truncated" else None
        reply = gateway.deploy(archive, url)
        if case == "oversized":  # refused before a byte is fetched
            assert (reply["ok"], reply["error"]["code"]) == (False, "oversized"), reply
        else:
            assert reply["ok"], reply
        event = gateway.wait_event("model.rejected", deployment=reply["deployment"])
        assert (event["stage"], event["check"]) == (stage, check), event
        assert event["reason"], event
        gateway.wait_results(10, "1.0.0")
    assert not (gateway.dir / "evil").exists()
    assert not (gateway.install / "evil").exists()
    assert not (gateway.install / "imu-test").exists()  # nothing was installed
    assert read_state(gateway.install).models == {}
    _assert_continuous(gateway.results())


def test_good_update_under_a_live_stream_drops_no_window_survives_a_restart_and_rolls_back(
    gateway: Gateway,
) -> None:
    good = gateway.world.archives["good"]
    reply = gateway.deploy(good)
    assert reply["ok"], reply
    staged = gateway.wait_event("model.staged", version="1.1.0")
    activated = gateway.wait_event("model.activated", version="1.1.0")
    confirmed = gateway.wait_event("model.confirmed", version="1.1.0")
    assert staged["signer"] == good.signer
    assert activated["previous"] == "1.0.0"
    assert activated["pause_ms"] >= 0, activated  # its size is the benchmark's business
    assert confirmed["probation"]["windows"] >= 40
    assert confirmed["probation"]["label_drift"] == 0.0
    gateway.wait_results(20, "1.1.0")
    results = gateway.results()
    assert _versions_in_order(results) == {"imu-0": ["1.0.0", "1.1.0"], "imu-1": ["1.0.0", "1.1.0"]}
    _assert_continuous(results)
    # The downloaded archive is gone once installed; the version is verifiable in place.
    assert list((gateway.install / ".downloads").iterdir()) == []
    assert load_bundle(gateway.install / "imu-test" / "1.1.0").manifest.version == "1.1.0"
    listed = gateway.cloud.request("model.list", {})["result"]["models"]["imu-test"]
    assert (listed["active"], listed["history"], listed["serving"]) == (
        "1.1.0",
        ["1.0.0"],
        ["1.1.0"],
    )
    # A restart keeps the active version.
    gateway.stop()
    before = len(gateway.results())
    gateway.start()
    gateway.wait_results(10, "1.1.0")
    assert {r[2] for r in gateway.results()[before:]} == {"1.1.0"}
    # The technician's CLI reaches the running daemon through its control socket.
    listed_cli = gateway.cli("models", "list", "--json")
    assert listed_cli.returncode == 0, listed_cli.stderr
    body = json.loads(listed_cli.stdout)["models"]["imu-test"]
    assert (body["active"], body["serving"]) == ("1.1.0", ["1.1.0"])
    rolled = gateway.cli("models", "rollback", "imu-test")
    assert rolled.returncode == 0, rolled.stderr
    back = gateway.wait_event("model.rolled_back", signal="operator")
    assert (back["from_version"], back["to_version"]) == ("1.1.0", "1.0.0")
    assert back["rollback_ms"] < 5000
    gateway.wait_results(10, "1.0.0")
    _assert_continuous(gateway.results()[before:])


def test_probation_failures_roll_back_within_seconds(gateway: Gateway) -> None:
    archives = gateway.world.archives
    # NaN on real motion only: it passes staging (its golden and probe windows are tame).
    reply = gateway.deploy(archives["nan_live"])
    assert reply["ok"], reply
    gateway.wait_event("model.activated", version="1.2.0")
    back = gateway.wait_event("model.rolled_back", from_version="1.2.0")
    assert (back["signal"], back["to_version"]) == ("non_finite", "1.0.0")
    assert back["rollback_ms"] < 5000
    gateway.wait_results(10, "1.0.0")
    # Always the same label: caught at the end of probation by the label distribution.
    # This one arrives inline, in chunks over MQTT (a site that reaches only the broker).
    collapse = archives["collapse"]
    data = collapse.path.read_bytes()
    for offset in range(0, len(data), 2048):
        chunk = {"sha256": collapse.sha256, "size": collapse.size, "offset": offset}
        chunk["data"] = base64.b64encode(data[offset : offset + 2048]).decode()
        reply = gateway.cloud.request("model.chunk", chunk)
        assert reply["ok"], reply
    assert reply["result"] == {"received": collapse.size, "complete": True}
    reply = gateway.cloud.request(
        "model.deploy", {"inline": True, "sha256": collapse.sha256, "size": collapse.size}
    )
    assert reply["ok"], reply
    back = gateway.wait_event("model.rolled_back", from_version="1.3.0")
    assert back["signal"] == "label_collapse", back
    assert back["rollback_ms"] < 5000
    gateway.wait_results(10, "1.0.0")
    results = gateway.results()
    assert all(r[4] is not None for r in results), "no NaN result was stored"
    _assert_continuous(results)
    state = read_state(gateway.install).models["imu-test"]
    assert (state.active, state.trial) == ("1.0.0", None)
    assert set(state.failed) == {"1.2.0", "1.3.0"}
    # A technician installs from a URL: the CLI downloads (progress bar), checks the
    # signature, and hands the archive to the running daemon, which stages and swaps it.
    good = archives["good"]
    installed = gateway.cli(
        "models", "install", gateway.world.url(good), "--sha256", good.sha256,
        "--size", str(good.size),
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    assert json.loads(installed.stdout[installed.stdout.index("{") :])["activated"] is True
    gateway.wait_event("model.confirmed", version="1.1.0")


def _restart_and_check_previous_serves(gateway: Gateway) -> list[str]:
    """After a SIGKILL: restart; 1.0.0 serves, nothing half-written is visible.

    Returns:
        The versions installed.
    """
    gateway.kill()
    before = len(gateway.results())
    gateway.start()
    gateway.wait_results(10, "1.0.0")
    assert {r[2] for r in gateway.results()[before:]} == {"1.0.0"}
    assert list((gateway.install / ".staging").iterdir()) == []
    state = read_state(gateway.install).models.get("imu-test")
    assert state is None or (state.trial is None and state.active in (None, "1.0.0"))
    versions = gateway.install / "imu-test"
    installed = sorted(p.name for p in versions.iterdir()) if versions.exists() else []
    for version in installed:
        load_bundle(versions / version)  # complete and verified, or not there at all
    return installed


@pytest.mark.parametrize("gateway", [{"probation_s": 60.0}], indirect=True)
def test_sigkill_during_staging_download_or_activation_leaves_the_previous_version_active(
    gateway: Gateway,
) -> None:
    world = gateway.world
    # Staging: the archive is unpacked and the (slow) model's self-test is running.
    gateway.deploy(world.archives["slow"])
    staging = gateway.install / ".staging"
    wait_for(
        lambda: any((d / "manifest.json").exists() for d in staging.iterdir()),
        10,
        "the bundle unpacked and its self-test running",
    )
    assert _restart_and_check_previous_serves(gateway) == []
    # Download: bytes are trickling in.
    good = world.archives["good"]
    gateway.deploy(good, world.url(good, "slow"))
    part = gateway.install / ".downloads" / f"{good.sha256}.part"
    wait_for(lambda: part.exists() and part.stat().st_size > 0, 10, "the download to start")
    assert _restart_and_check_previous_serves(gateway) == []
    # The next deploy of the same archive resumes where the killed one stopped...
    kept = part.stat().st_size
    gateway.deploy(good)
    assert world.files.requests[-1] == (f"/f/{good.path.name}", f"bytes={kept}-")
    # ...and activation: the new version serves, on probation.
    gateway.wait_event("model.activated", version="1.1.0")
    assert _restart_and_check_previous_serves(gateway) == ["1.1.0"]
    back = gateway.wait_event("model.rolled_back", signal="restart")
    assert (back["from_version"], back["to_version"], back["reason"]) == (
        "1.1.0",
        "1.0.0",
        RESTARTED,
    )
