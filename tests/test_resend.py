"""Gap repair and fleet re-announce against a real daemon process and a real mosquitto.

The loss is real: a clean-session subscriber is disconnected while the daemon publishes,
so the broker keeps nothing for it; on reconnecting it sees the gap in `seq`, asks
`sync.resend` and gets the very messages (same bytes) another subscriber saw live.
"""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent.config import parse_config
from edge_agent.errors import CommandError
from edge_agent.service.control import request
from edge_agent.sync.resend import MAX_SEQS, Resender
from tests.broker import Mosquitto, wait_for
from tests.command_support import REPLY_TOPIC, answering, send_command
from tests.daemon_proc import start_daemon, stop_daemon

ROOT = "edge/t/s/gw-rs"
SUMMARY = f"{ROOT}/summary"


class Client:
    """An MQTT client that keeps every raw message by topic, and answers by correlation."""

    def __init__(self, port: int, filters: list[str], *, v5: bool = True) -> None:
        self.port = port
        self.filters = filters
        self.raw: list[tuple[str, bytes]] = []
        self.replies: dict[bytes, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.v5 = v5
        self.connect()

    def connect(self) -> None:
        """A new connection (a fresh paho client: paho leaks a socket pair on a restart)."""
        self._subscribed.clear()
        kwargs: dict[str, Any] = {} if self.v5 else {"clean_session": True}
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"cloud-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5 if self.v5 else MQTTProtocolVersion.MQTTv311,
            **kwargs,
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect("127.0.0.1", self.port)
        self.client.subscribe([(f, 1) for f in self.filters])
        self.client.loop_start()
        assert self._subscribed.wait(10)

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            corr = getattr(getattr(msg, "properties", None), "CorrelationData", None)
            if corr is not None:
                self.replies[corr] = json.loads(msg.payload)
            else:
                self.raw.append((msg.topic, bytes(msg.payload)))

    def of(self, topic: str) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(p) for t, p in self.raw if t == topic]

    def bytes_by_seq(self, topic: str) -> dict[int, list[bytes]]:
        with self._lock:
            out: dict[int, list[bytes]] = {}
            for t, p in self.raw:
                if t == topic:
                    out.setdefault(json.loads(p)["seq"], []).append(p)
            return out

    def request(self, name: str, args: dict[str, Any], timeout: float = 15) -> dict[str, Any]:
        body = json.dumps({"id": uuid.uuid4().hex, "args": args}).encode()
        return send_command(self.client, ROOT, name, body, self.replies, timeout)


@dataclass
class Setup:
    cloud: Client
    proc: subprocess.Popen[bytes]
    port: int
    control: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("resend")
    with Mosquitto(tmp) as broker:
        config = tmp / "agent.toml"
        config.write_text(
            f'[device]\nid = "gw-rs"\ntenant = "t"\nsite = "s"\n\n'
            f"[mqtt]\nport = {broker.port}\n\n"
            # One heartbeat at start; summaries every second: a steady stream to lose.
            "[sync]\nheartbeat_interval_s = 3600\nsummary_interval_s = 1\n\n"
            f'[storage]\npath = "{tmp / "rs.db"}"\n\n'
            "[metrics]\nenabled = false\n\n"
            "[logging]\nshow_results = false\n\n"
            '[[sensors]]\nname = "imu-0"\nlink = "emulated"\n'
        )
        log = tmp / "daemon.log"
        proc = start_daemon(config, log)
        cloud = Client(broker.port, [REPLY_TOPIC, SUMMARY, f"{ROOT}/status", f"{ROOT}/heartbeat"])
        try:
            wait_for(lambda: answering(cloud.request, {}), 30, "the daemon answering commands")
            yield Setup(cloud, proc, broker.port, tmp / "rs.sock")
        finally:
            cloud.disconnect()
            stop_daemon(proc, log)


def test_a_real_loss_is_seen_and_repaired_with_the_same_messages(setup: Setup) -> None:
    cloud = setup.cloud
    lossy = Client(setup.port, [SUMMARY], v5=False)  # clean session: nothing kept for it
    try:
        wait_for(lambda: lossy.of(SUMMARY), 10, "a first summary")
        lossy.disconnect()
        seen = max(m["seq"] for m in lossy.of(SUMMARY))
        wait_for(lambda: max(cloud.bytes_by_seq(SUMMARY)) >= seen + 3, 15, "summaries meanwhile")
        lossy.connect()
        wait_for(lambda: max(m["seq"] for m in lossy.of(SUMMARY)) > seen + 3, 10, "the stream")
        got = sorted({m["seq"] for m in lossy.of(SUMMARY)})
        missing = sorted(set(range(got[0], got[-1] + 1)) - set(got))
        assert missing, "the subscriber saw no gap"
        first, last = missing[0], missing[-1]

        reply = cloud.request("sync.resend", {"topic": SUMMARY, "from_seq": first, "to_seq": last})
        assert reply["ok"] is True, reply
        result = reply["result"]
        assert result["resent"] == [[first, last]]
        assert (result["pending"], result["evicted"], result["unissued"]) == ([], [], [])

        wait_for(lambda: set(missing) <= set(lossy.bytes_by_seq(SUMMARY)), 10, "the resent")
        wait_for(
            lambda: all(len(cloud.bytes_by_seq(SUMMARY)[s]) == 2 for s in missing),
            10,
            "the resent at the live subscriber",
        )
        live, repaired = cloud.bytes_by_seq(SUMMARY), lossy.bytes_by_seq(SUMMARY)
        for seq in missing:
            assert repaired[seq] == [live[seq][0]]  # same seq, msg_id, ts, body: same bytes
            assert len(live[seq]) == 2  # every subscriber gets the resend: dedup by msg_id

        # After their PUBACK they are kept again (one copy): a second request resends them.
        def resent_again() -> dict[str, Any] | None:
            args = {"topic": SUMMARY, "from_seq": first, "to_seq": last}
            again = cloud.request("sync_resend", args)["result"]  # the `_` spelling
            return again if again["resent"] else None

        assert wait_for(resent_again, 10, "the rows kept again")["resent"] == [[first, last]]

        top = max(cloud.bytes_by_seq(SUMMARY))
        ahead = cloud.request(
            "sync.resend", {"topic": SUMMARY, "from_seq": top + 1000, "to_seq": top + 1009}
        )["result"]
        assert ahead["unissued"] == [[top + 1000, top + 1009]]
        assert ahead["resent"] == ahead["pending"] == ahead["evicted"] == []
        status = cloud.request("status", {})["result"]
        assert status["mqtt"]["resent"] >= 2 * len(missing)
        assert status["mqtt"]["resend_requests"] >= 3
    finally:
        lossy.disconnect()


BAD_ARGS: list[dict[str, Any]] = [
    {},
    {"topic": SUMMARY},
    {"topic": SUMMARY, "from_seq": True, "to_seq": 2},
    {"topic": SUMMARY, "from_seq": 1.0, "to_seq": 2},
    {"topic": SUMMARY, "from_seq": "1", "to_seq": 2},
    {"topic": SUMMARY, "from_seq": 0, "to_seq": 2},
    {"topic": SUMMARY, "from_seq": 5, "to_seq": 4},
    {"topic": SUMMARY, "from_seq": 1, "to_seq": MAX_SEQS + 1},
    {"topic": SUMMARY, "from_seq": 1, "to_seq": 2**70},
    {"topic": "edge/t/s/other-gw/summary", "from_seq": 1, "to_seq": 2},
    {"topic": f"{ROOT}/status", "from_seq": 1, "to_seq": 2},
    {"topic": f"{ROOT}/summary/+", "from_seq": 1, "to_seq": 2},
    {"topic": ["x"], "from_seq": 1, "to_seq": 2},
]


def test_bad_arguments_are_answered_bad_request_and_the_daemon_keeps_running(
    setup: Setup,
) -> None:
    for args in BAD_ARGS:
        reply = setup.cloud.request("sync.resend", args)
        assert reply["ok"] is False, args
        assert reply["error"]["code"] == "bad_request", (args, reply)
    assert setup.cloud.request("ping", {})["ok"] is True
    assert setup.proc.poll() is None


def test_announce_republishes_the_birth_and_a_heartbeat_once_per_interval(setup: Setup) -> None:
    cloud = setup.cloud
    status = f"{ROOT}/status"
    wait_for(lambda: cloud.of(status) and cloud.of(f"{ROOT}/heartbeat"), 10, "birth, heartbeat")
    birth = cloud.of(status)[-1]
    assert birth["state"] == "online"
    beats = len(cloud.of(f"{ROOT}/heartbeat"))
    cloud.client.publish("edge/announce", json.dumps({"ts": 1.0}), qos=1)
    wait_for(lambda: len(cloud.of(status)) >= 2, 10, "the birth again")
    again = cloud.of(status)[-1]
    assert (again["seq"], again["msg_id"], again["state"]) == (
        birth["seq"],
        birth["msg_id"],
        "online",
    )
    wait_for(lambda: len(cloud.of(f"{ROOT}/heartbeat")) > beats, 10, "a heartbeat now")
    # A second one within 10 s is counted and ignored.
    cloud.client.publish("edge/announce", json.dumps({"ts": 2.0}), qos=1)
    counters = wait_for(
        lambda: (
            (c := cloud.request("status", {})["result"]["counters"]).get(
                'mqtt_announces{outcome="ignored"}'
            )
            and c
        ),
        10,
        "the second announce counted",
    )
    assert counters['mqtt_announces{outcome="handled"}'] == 1
    assert cloud.request("status", {})["result"]["mqtt"]["announces"] == 1
    assert len(cloud.of(status)) == 2
    assert len(cloud.of(f"{ROOT}/heartbeat")) == beats + 1


def test_the_control_socket_serves_the_same_command(setup: Setup) -> None:
    """The technician's door: the same handler, answered in the control socket's shape."""
    top = max(setup.cloud.bytes_by_seq(SUMMARY))
    reply = request(
        setup.control, "sync.resend", topic=SUMMARY, from_seq=top + 500, to_seq=top + 501
    )
    assert reply["ok"] is True, reply
    assert reply["unissued"] == [[top + 500, top + 501]]
    bad = request(setup.control, "sync.resend", topic=SUMMARY, from_seq=2, to_seq=1)
    assert (bad["ok"], bad["code"]) == (False, "bad_request")


CONFIG = parse_config(
    {"device": {"id": "gw-rs", "tenant": "t", "site": "s"}}, source="test", environ={}
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(
    topic=st.sampled_from([SUMMARY, f"{ROOT}/events", f"{ROOT}/status", "x", ""]) | JSON,
    first=st.integers(-5, 2**64) | JSON,
    last=st.integers(-5, 2**64) | JSON,
    extra=st.dictionaries(st.text(max_size=8), JSON, max_size=2),
)
def test_the_argument_parser_accepts_only_sense(
    topic: Any, first: Any, last: Any, extra: dict[str, Any]
) -> None:
    """Whatever the args, `parse` returns a sane range of one of this gateway's topics or
    refuses with bad_request; nothing else escapes."""
    resender = Resender(lambda: CONFIG, call=None, notify=lambda: None, emit=lambda *a, **k: None)  # type: ignore[arg-type]
    args = {**extra, "topic": topic, "from_seq": first, "to_seq": last}
    try:
        parsed_topic, kind, a, b = resender.parse(args)
    except CommandError as err:
        code = err.code
    else:
        code = "ok"
        assert parsed_topic == f"{ROOT}/{kind}"
        assert kind != "status"
        assert type(a) is int
        assert type(b) is int
        assert 1 <= a <= b < 2**63
        assert b - a < MAX_SEQS
    assert code in ("ok", "bad_request")
