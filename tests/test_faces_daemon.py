"""Faces end to end: an emulated camera on a real pty, the daemon in this process, a real
mosquitto, real ONNX Runtime, a real encrypted gallery file.

The camera module is the emulator in firmware_bridge/camera.py (no camera hardware here);
everything after the pty is the production path.
"""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PilImage

from edge_agent.config import parse_config
from edge_agent.daemon import Daemon
from edge_agent.faces.embedder import open_embedder
from edge_agent.faces.keys import generate_key, write_key_file
from edge_agent.faces.store import GalleryStore
from edge_agent.faces.synthetic import synthetic_face
from firmware_bridge.camera import CameraEmulator
from firmware_bridge.protocol.v1 import EmbeddingType
from tests.broker import Mosquitto, collector, wait_for


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    (tmp_path / "broker").mkdir()
    with Mosquitto(tmp_path / "broker") as b:
        yield b


def _command(port: int, root: str, name: str, args: dict[str, Any] | None = None) -> Any:
    """One MQTT 5 request/response round trip to the daemon's command topic."""
    import uuid

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    replies: list[Any] = []
    subscribed = threading.Event()
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
    )
    client.on_message = lambda c, u, m: replies.append(json.loads(m.payload))
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.subscribe("cloud/faces-replies", qos=1)
    client.loop_start()
    try:
        assert subscribed.wait(10)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "cloud/faces-replies"
        props.CorrelationData = b"1"
        body = json.dumps({"id": uuid.uuid4().hex, "args": args or {}})
        client.publish(f"{root}/cmd/{name}", body, qos=1, properties=props)
        return wait_for(lambda: replies and replies[0], 15, f"reply to {name}")
    finally:
        client.disconnect()
        client.loop_stop()


def _events(db: Path, kind: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT sensor, body FROM events WHERE kind = ? ORDER BY id", (kind,)
        ).fetchall()
    except sqlite3.OperationalError:  # the daemon has not created the table yet
        return []
    finally:
        conn.close()
    return [{"sensor": s, **json.loads(b)} for s, b in rows]


def test_crops_and_embeddings_become_decisions_without_biometrics_upstream(
    broker: Mosquitto, tmp_path: Path
) -> None:
    key_file = tmp_path / "face.key"
    key = generate_key()
    write_key_file(key_file, key)
    gallery = tmp_path / "gallery.db"
    embedder = open_embedder("face-embed-demo")
    with GalleryStore(gallery, key) as store:
        for person in (1, 2, 3):
            vectors = embedder.embed([synthetic_face(person, 0), synthetic_face(person, 1)])
            store.enroll(
                f"emp-{person}", vectors, embedder.ref, actor="test", name=f"Person {person}"
            )
    db = tmp_path / "agent.db"
    with (
        CameraEmulator(device_id="gate-cam", chunk_size=4096) as cam,
        collector(broker.port, "edge/+/+/+/events") as upstream,
    ):
        config = parse_config(
            {
                "device": {"id": "gw-faces"},
                "mqtt": {"port": broker.port},
                "storage": {"path": str(db)},
                "logging": {"show_results": False},
                "faces": {
                    "enabled": True,
                    "key_file": str(key_file),
                    "gallery_path": str(gallery),
                    "top_k": 2,
                },
                "sensors": [{"name": "gate", "link": "serial", "port": cam.tty_path, "models": []}],
            },
            source="test",
            environ={},
        )
        daemon = Daemon(config, handle_signals=False)
        failure: list[BaseException] = []

        def serve() -> None:
            try:
                asyncio.run(daemon.run())
            except BaseException as err:  # surfaced below
                failure.append(err)

        thread = threading.Thread(target=serve, name="daemon")
        thread.start()
        try:
            wait_for(lambda: failure or _events(db, "face.gallery_loaded"), 30, "gallery loaded")
            assert not failure, failure
            loaded = _events(db, "face.gallery_loaded")[0]
            assert (loaded["identities"], loaded["templates"]) == (3, 6)
            assert loaded["threshold"] == embedder.spec.threshold
            # The enrolments made before start are published as audit events.
            wait_for(lambda: len(_events(db, "face.audit")) == 3, 10, "audit published")
            wait_for(lambda: daemon.faces and daemon.streams, 10, "camera stream seen")

            cam.send_crop(synthetic_face(2, 5))  # RGB888, 10 chunks of 4096 bytes
            jpeg = io.BytesIO()
            PilImage.fromarray(synthetic_face(3, 6, noise=1.0)).save(jpeg, "JPEG", quality=97)
            cam.send_crop(jpeg=jpeg.getvalue())
            cam.send_crop(synthetic_face(777, 0))  # nobody we know
            on_camera = embedder.embed([synthetic_face(1, 7)])[0]
            cam.send_embedding(on_camera, embedder.ref, EmbeddingType.FLOAT16)
            cam.send_embedding(on_camera, "arcface-r100@2.0.0")  # another model's space
            assert cam.wait_sent()
            wait_for(
                lambda: (
                    len(_events(db, "face.match")) >= 3
                    and _events(db, "face.unknown")
                    and _events(db, "face.rejected")
                ),
                20,
                "decisions",
            )
            matches = _events(db, "face.match")
            assert [(m["identity"], m["source"]) for m in matches] == [
                ("emp-2", "crop"),
                ("emp-3", "crop"),
                ("emp-1", "embedding"),
            ]
            for m in matches:
                assert m["sensor"] == "gate"
                assert m["score"] >= m["threshold"]
                assert (m["model"], m["model_version"]) == ("face-embed-demo", "1.0.0")
                assert m["latency_ms"] > 0
                assert len(m["candidates"]) == 2
            unknown = _events(db, "face.unknown")[0]
            assert unknown["score"] < unknown["threshold"]
            assert "identity" not in unknown
            rejected = _events(db, "face.rejected")[0]
            assert rejected["reason"] == "model_mismatch"
            assert "arcface-r100@2.0.0" in rejected["detail"]

            # Enrolment by another process while the daemon runs (here: another
            # connection) is picked up, audited upstream, and used for the next face.
            with GalleryStore(gallery, key) as other:
                vectors = embedder.embed([synthetic_face(777, 1), synthetic_face(777, 2)])
                other.enroll("visitor-7", vectors, embedder.ref, actor="cli:tech", name="Vis")
            wait_for(
                lambda: any(e["identity"] == "visitor-7" for e in _events(db, "face.audit")),
                10,
                "new enrolment noticed",
            )
            cam.send_crop(synthetic_face(777, 3))
            assert cam.wait_sent()
            wait_for(
                lambda: any(m["identity"] == "visitor-7" for m in _events(db, "face.match")),
                10,
                "visitor recognised",
            )
            wait_for(
                lambda: (
                    len([m for m in upstream.of("events") if m.payload["event"] == "face.match"])
                    >= 4
                ),
                15,
                "matches published",
            )
            # The gallery is reconciled from the cloud with MQTT commands on the same daemon.
            reply = _command(broker.port, "edge/default/default/gw-faces", "faces.checksum")
            assert reply["ok"] is True, reply
            assert reply["result"]["identities"] >= 3
        finally:
            daemon.request_stop()
            thread.join(30)
        assert not thread.is_alive(), "daemon did not stop"
        assert not failure, failure

    # Upstream: decisions carry ids, scores, latency and model version — no image, no
    # embedding, no name.
    face_messages = [m.payload for m in upstream.messages if m.payload["event"].startswith("face.")]
    assert face_messages
    for payload in face_messages:
        text = json.dumps(payload)
        assert "Person" not in text
        assert "Vis" not in text.replace("visitor", "")
        for value in payload.values():
            assert not (isinstance(value, list) and len(value) > 2), payload
        assert len(text) < 1500
    assert daemon.faces is not None
    health = daemon.faces.health()
    assert health["matches"] == 4
    assert health["identities"] == 4
    embedder.close()


def test_a_wrong_key_disables_faces_with_an_event_and_the_daemon_runs_on(
    broker: Mosquitto, tmp_path: Path
) -> None:
    gallery = tmp_path / "gallery.db"
    with GalleryStore(gallery, generate_key()) as store:
        store.enroll(
            "a", np.ones((1, 128), np.float32), "face-embed-demo@1.0.0", actor="t", name="A"
        )
    before = gallery.read_bytes()
    key_file = tmp_path / "wrong.key"
    write_key_file(key_file, generate_key())
    db = tmp_path / "agent.db"
    config = parse_config(
        {
            "mqtt": {"port": broker.port},
            "storage": {"path": str(db)},
            "faces": {"enabled": True, "key_file": str(key_file), "gallery_path": str(gallery)},
            "sensors": [],
        },
        source="test",
        environ={},
    )
    daemon = Daemon(config, handle_signals=False)
    thread = threading.Thread(target=lambda: asyncio.run(daemon.run()), name="daemon")
    thread.start()
    try:
        wait_for(lambda: _events(db, "face.unavailable"), 20, "face.unavailable")
        wait_for(lambda: daemon.state == "running", 10, "daemon running")
    finally:
        daemon.request_stop()
        thread.join(30)
    assert not thread.is_alive()
    reason = _events(db, "face.unavailable")[0]["reason"]
    assert "does not open" in reason
    assert str(key_file) in reason
    assert daemon.faces is None
    assert gallery.read_bytes() == before
