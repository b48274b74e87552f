"""The command doors: a size cap, a per-gateway rate limit, replies that never echo
unbounded input, and requests checked for sense (MQTT and the control socket).

The limits are checked with an explicit clock; the end-to-end tests run a real daemon
process against a real mosquitto (MQTT 5 request/response) and a real control socket.
Hypothesis sends arbitrary JSON to every registered command through the broker, and
arbitrary bytes to the control socket.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.config import CommandsConfig
from edge_agent.service.control import ControlServer, TailFanout
from edge_agent.sync.limits import (
    ECHO_CHARS,
    DoorLimits,
    TokenBucket,
    bounded,
    bounded_error,
    loads_finite,
    reply_topic,
)
from tests.broker import Mosquitto, wait_for
from tests.daemon_proc import start_daemon, stop_daemon, write_config
from tests.test_commands import Requester

ROOT = "edge/t/s/gw-cmd"  # the topic root tests.test_commands.Requester talks to

# -- the limits themselves -------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_grants_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0  # one token back after 1 / rate
    assert bucket.take(0.5) > 0
    assert [bucket.take(10.0) for _ in range(3)] == [0.0, 0.0, 0.0]  # never more than burst
    assert bucket.take(10.0) > 0


def test_a_flood_is_limited_answered_at_the_rate_and_audited_once() -> None:
    clock = Clock()
    config = CommandsConfig(rate_per_s=1.0, burst=3)
    limits = DoorLimits(lambda: config, clock)
    assert [limits.check("ping", 10) for _ in range(3)] == [None, None, None]
    refusals = [limits.check("ping", 10) for _ in range(10)]
    assert all(r is not None and r.error.code == "rate_limited" for r in refusals)
    assert [r.audit for r in refusals if r] == [True] + [False] * 9  # one event per episode
    assert sum(r.answer for r in refusals if r) == 3  # refusals themselves at most the burst
    assert limits.stats.rate_limited == 10
    assert limits.stats.unanswered == 7
    first = refusals[0]
    assert first is not None
    assert first.error.details["retry_after_s"] > 0
    clock.now += 1.0
    assert limits.check("ping", 10) is None  # the episode ends
    clock.now += 1.0
    assert limits.check("ping", 10) is None
    again = limits.check("ping", 10)
    assert again is not None
    assert again.audit  # a new episode is reported again


def test_size_limits_and_the_chunk_exception() -> None:
    config = CommandsConfig()
    limits = DoorLimits(lambda: config, Clock())
    assert limits.check("ping", config.max_request_bytes) is None
    too_large = limits.check("ping", config.max_request_bytes + 1)
    assert too_large is not None
    assert too_large.error.code == "too_large"
    assert "commands.max_request_bytes" in str(too_large.error)
    assert limits.check("model.chunk", 100_000) is None  # a 48 KiB piece, base64 in JSON
    assert limits.check("model.chunk", config.max_bulk_request_bytes + 1) is not None
    assert limits.check("faces.add", 500_000) is None  # a batch of templates
    assert limits.check("faces.remove", 500_000) is not None  # ids only: the normal cap


def test_a_reloaded_rate_applies_at_once() -> None:
    clock = Clock()
    config = CommandsConfig(rate_per_s=100.0, burst=100)
    current = [config]
    limits = DoorLimits(lambda: current[0], clock)
    assert limits.check("ping", 1) is None
    current[0] = CommandsConfig(rate_per_s=0.1, burst=1)
    assert limits.check("ping", 1) is None
    refused = limits.check("ping", 1)
    assert refused is not None
    assert refused.error.code == "rate_limited"


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=400),
    lambda inner: (
        st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=30), inner, max_size=8)
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(value=_JSON, limit=st.integers(8, 600))
def test_bounded_values_never_exceed_their_limit(value: Any, limit: int) -> None:
    out = bounded(value, limit)
    text = json.dumps(out, allow_nan=False)  # finite: NaN and inf never reach a reply
    if isinstance(out, str):
        assert len(out) <= limit + 1  # the cut marker
    elif isinstance(out, list | dict):
        assert len(text) <= limit
    else:
        assert out is None or isinstance(out, bool | int | float)


@settings(max_examples=200, deadline=None)
@given(message=st.text(max_size=3000), details=_JSON)
def test_error_objects_are_short(message: str, details: Any) -> None:
    error = bounded_error("bad_request", message, details)
    assert len(json.dumps(error, allow_nan=False)) < 16_000


def test_reply_topics_with_wildcards_fall_back() -> None:
    assert reply_topic("cloud/replies", "d") == "cloud/replies"
    for bad in ("", "a/#", "a/+/b", "a\x00b", None, 5):
        assert reply_topic(bad, "d") == "d"


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a": -Infinity}', "[" * 100_000])
def test_requests_carry_finite_numbers_and_sane_nesting(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a number|nested|Expecting"):
        loads_finite(text)


# -- a real daemon behind a real broker -------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Requester, Path]]:
    tmp = tmp_path_factory.mktemp("limits")
    with Mosquitto(tmp) as broker:
        db = tmp / "gw.db"
        config = write_config(
            tmp / "agent.toml",
            db=db,
            device="gw-cmd",
            mqtt_port=broker.port,
            sensors=[{"name": "imu-0", "link": "emulated", "models": []}],
            sections={
                "device": {"tenant": "t", "site": "s"},
                "commands": {"rate_per_s": 10_000.0, "burst": 10_000},
            },
        )
        log = tmp / "daemon.log"
        proc = start_daemon(config, log)
        req = Requester(broker.port)
        try:
            wait_for(lambda: _answers(req), 30, "command subscription")
            yield req, config
            assert proc.poll() is None, log.read_text()
        finally:
            req.close()
            stop_daemon(proc, log)


def _answers(req: Requester) -> bool:
    try:
        req.request("ping", {"id": uuid.uuid4().hex}, timeout=1)
    except AssertionError:
        return False
    return True


def _raw_request(req: Requester, name: str, payload: bytes) -> tuple[dict[str, Any], int]:
    """Send raw bytes; return the reply and its size on the wire."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    sizes: dict[bytes, int] = {}
    original = req._on_message

    def measure(client: Any, userdata: Any, msg: Any) -> None:
        corr = getattr(msg.properties, "CorrelationData", None)
        if corr is not None:
            sizes[corr] = len(msg.payload)
        original(client, userdata, msg)

    corr = uuid.uuid4().bytes
    req.client.on_message = measure
    try:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "cloud/replies"
        props.CorrelationData = corr
        req.client.publish(f"{ROOT}/cmd/{name}", payload, qos=1, properties=props)
        reply = wait_for(lambda: req.replies.get(corr), 30, f"reply to {name}")
    finally:
        req.client.on_message = original
    return reply, sizes[corr]


def test_a_10_mb_command_gets_a_short_too_large_reply(gateway: tuple[Requester, Path]) -> None:
    req, _ = gateway
    payload = json.dumps({"id": "big", "args": {"echo": "x" * 10_000_000}}).encode()
    reply, size = _raw_request(req, "ping", payload)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "too_large"
    assert size < 1024
    assert req.request("ping", {"id": "after-big"})["ok"] is True


def test_model_chunks_keep_their_own_limit(gateway: tuple[Requester, Path]) -> None:
    req, _ = gateway
    body = {
        "id": "chunk",
        "args": {"sha256": "0" * 64, "size": 1, "offset": 0, "data": "A" * 100_000},
    }
    assert req.request("model.chunk", body)["error"]["code"] != "too_large"
    ping = {"id": "fat-ping", "args": {"echo": "A" * 100_000}}
    assert req.request("ping", ping)["error"]["code"] == "too_large"


def test_replies_never_echo_unbounded_input(gateway: tuple[Requester, Path]) -> None:
    req, _ = gateway
    reply, size = _raw_request(
        req, "ping", json.dumps({"id": "echo", "args": {"echo": "y" * 60_000}}).encode()
    )
    assert reply["ok"] is True
    assert len(reply["result"]["echo"]) <= ECHO_CHARS + 1
    assert size < 2048
    for body in (
        {"id": "z" * 60_000},  # an id over 128 characters is not repeated
        {"id": "k", "args": [], "k" * 60_000: 1},  # an unknown key is not quoted whole
    ):
        reply, size = _raw_request(req, "ping", json.dumps(body).encode())
        assert reply["error"]["code"] == "bad_request"
        assert size < 8192
        assert reply["id"] in (None, "k")
    reply, size = _raw_request(req, "q" * 20_000, b'{"id": "long-name"}')
    assert reply["error"]["code"] == "unknown_command"
    assert size < 8192


def test_nan_and_deep_nesting_are_bad_requests(gateway: tuple[Requester, Path]) -> None:
    req, _ = gateway
    for payload in (b'{"id": "n", "args": {"ts": NaN}}', b"[" * 60_000):
        reply, _ = _raw_request(req, "ping", payload)
        assert reply["error"]["code"] == "bad_request"


@pytest.mark.parametrize(
    "values",
    [
        {"mqtt.host": ""},
        {"mqtt.host": " "},
        {"storage.path": ""},
        {"sync.summary_interval_s": 1e-9},
    ],
)
def test_config_set_that_would_brick_or_flood_is_refused_and_nothing_saved(
    gateway: tuple[Requester, Path], values: dict[str, Any]
) -> None:
    req, config = gateway
    before = config.read_bytes()
    reply = req.request("config.set", {"id": uuid.uuid4().hex, "args": {"values": values}})
    assert reply["ok"] is False
    assert reply["error"]["code"] == "invalid_config"
    (key,) = values
    assert any(key in d for d in reply["error"]["details"]), reply
    assert config.read_bytes() == before
    assert req.request("ping", {"id": uuid.uuid4().hex})["ok"] is True


def _keys(value: Any) -> set[str]:
    """Every key of a nested JSON value."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def test_the_running_daemons_control_socket_refuses_nonsense_and_stays_up(
    gateway: tuple[Requester, Path],
) -> None:
    """The real daemon's control socket: an oversized line, garbage and NaN are refused
    with short answers; the daemon keeps answering on both doors."""
    req, config = gateway
    sock = config.parent / "gw.sock"
    (reply,) = _exchange(sock, b'{"cmd": "ping", "pad": "' + b"x" * 100_000 + b'"}\n')
    assert reply["code"] == "too_large"
    for line in (b"\xff\x00garbage", b'{"cmd": "ping", "ts": NaN}', b'{"cmd": "x' + b"y" * 200):
        (reply,) = _exchange(sock, line + b"\n")
        assert reply["ok"] is False
        assert len(json.dumps(reply)) < 1024
    (ping,) = _exchange(sock, b'{"cmd": "ping", "echo": "' + b"e" * 10_000 + b'"}\n')
    assert ping["ok"] is True
    assert len(json.dumps(ping)) < 2048
    assert req.request("ping", {"id": uuid.uuid4().hex})["ok"] is True


def _command_names(req: Requester) -> list[str]:
    reply = req.request("no.such.command", {"id": uuid.uuid4().hex})
    names = reply["error"]["details"]
    assert "ping" in names
    assert "config.set" in names
    return sorted(names)


_ARG_NAMES = st.sampled_from(
    ["echo", "ts", "values", "sha256", "size", "offset", "data", "model", "version", "url",
     "inline", "activate", "deployment", "id", "name", "limit", "sensor"]
) | st.text(max_size=12)  # fmt: skip
_ARGS = st.dictionaries(_ARG_NAMES, _JSON, max_size=5)


@settings(
    max_examples=80,  # each is a broker round trip to the daemon
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_json_to_any_command_gets_a_bounded_answer(
    gateway: tuple[Requester, Path], data: st.DataObject
) -> None:
    """Arbitrary JSON arguments (and arbitrary JSON bodies) to every registered command,
    through the broker: each gets a reply with `ok`, an error reply stays short, and the
    daemon keeps answering."""
    req, config = gateway
    names = _command_names(req)
    name = data.draw(st.sampled_from(names), label="command")
    if data.draw(st.booleans(), label="whole body"):
        body: Any = data.draw(_JSON, label="body")
    else:
        body = {"id": uuid.uuid4().hex, "args": data.draw(_ARGS, label="args")}
    if name == "config.set":
        before = config.read_bytes()
    reply, size = _raw_request(req, name, json.dumps(body).encode())
    assert isinstance(reply["ok"], bool)
    if not reply["ok"]:
        assert size < 20_000
        assert isinstance(reply["error"]["code"], str)
    if name == "config.set" and not reply["ok"]:
        assert config.read_bytes() == before


def test_a_flood_is_answered_rate_limited_and_audited_once(
    gateway: tuple[Requester, Path],
) -> None:
    """The gateway's rate drops to 2/s (burst 3) by config.set; a burst of 40 pings gets
    a few answers, the rest `rate_limited` (and some none at all), and one audit event."""
    req, _ = gateway
    slow = {"commands.rate_per_s": 2.0, "commands.burst": 3}
    assert req.request("config.set", {"id": "slow", "args": {"values": slow}})["ok"] is True
    try:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        sent = []
        for i in range(40):
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = "cloud/replies"
            props.CorrelationData = corr = f"flood-{i}".encode()
            sent.append(corr)
            req.client.publish(f"{ROOT}/cmd/ping", json.dumps({"id": f"f{i}"}), 1, properties=props)
        # 3 admitted and 3 refusals answered at once; more only as the buckets refill.
        wait_for(lambda: sum(c in req.replies for c in sent) >= 6, 15, "flood answers")
        time.sleep(0.5)  # stragglers, if any
        replies = [req.replies[c] for c in sent if c in req.replies]
        limited = [r for r in replies if not r["ok"]]
        assert limited
        assert all(r["error"]["code"] == "rate_limited" for r in limited)
        assert all(r["error"]["details"]["retry_after_s"] > 0 for r in limited)
        assert len(replies) < 40  # refusals are limited too: no reply amplification
        audits = [
            e for e in req.events
            if e["event"] == "command.rejected" and "rate_limited" in str(e.get("error"))
        ]  # fmt: skip
        assert len(audits) <= 2
        status = req.request("status", {"id": uuid.uuid4().hex}, timeout=10)
        assert 'commands_refused{reason="rate_limited"}' in _keys(status), status
    finally:
        fast = {"commands.rate_per_s": 10_000.0, "commands.burst": 10_000}

        def restored() -> bool:
            reply = req.request(
                "config.set", {"id": uuid.uuid4().hex, "args": {"values": fast}}, timeout=5
            )
            return bool(reply["ok"])

        wait_for(restored, 30, "the fast rate back", interval=0.6)


# -- the control socket ---------------------------------------------------------------------


async def _echo(request: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "cmd": request["cmd"]}


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A ControlServer on its own loop thread, with a 4 KiB request cap."""
    path = tmp_path_factory.mktemp("ctl") / "ctl.sock"
    ready = threading.Event()
    stop: list[asyncio.Event] = []

    async def main() -> None:
        server = ControlServer(path, {"ping": _echo}, TailFanout(), max_request_bytes=4096)
        await server.start()
        stop.append(asyncio.Event())
        ready.set()
        try:
            await stop[0].wait()
        finally:
            await server.close()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), name="ctl-loop")
    thread.start()
    assert ready.wait(10)
    yield path
    loop.call_soon_threadsafe(stop[0].set)
    thread.join(10)
    loop.close()


def _exchange(path: Path, data: bytes) -> list[dict[str, Any]]:
    """Send `data`, half-close, and read every reply line until the server hangs up."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may hang up on an oversized request while we still write
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return [json.loads(line) for line in b"".join(chunks).splitlines() if line.strip()]


def test_control_requests_over_the_cap_are_refused(control: Path) -> None:
    (reply,) = _exchange(control, b'{"cmd": "ping", "pad": "' + b"x" * 10_000 + b'"}\n')
    assert reply["ok"] is False
    assert reply["code"] == "too_large"
    assert _exchange(control, b'{"cmd": "ping"}\n') == [{"ok": True, "cmd": "ping"}]


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        (b'{"cmd": "' + b"p" * 500 + b'"}', "at most 64"),
        (b'{"cmd": "ping", "x": NaN}', "not a number"),
        (b"[" * 3000, "nested"),
        (b'{"cmd": "tail", "sensor": 5}', "sensor"),
        (b'{"cmd": "tail", "events": "yes"}', "events"),
        (b"\xff\xfe", "bad request"),
    ],
)
def test_control_requests_are_checked_for_sense(control: Path, line: bytes, needle: str) -> None:
    (reply,) = _exchange(control, line + b"\n")
    assert reply["ok"] is False
    assert needle in reply["error"]
    assert len(json.dumps(reply)) < 1024


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(
        st.binary(max_size=300)
        | _JSON.map(lambda v: json.dumps(v).encode())
        | st.fixed_dictionaries({"cmd": st.text(max_size=80)}, optional={"sensor": _JSON})
        .map(lambda v: json.dumps(v).encode()),
        min_size=1,
        max_size=4,
    )
)  # fmt: skip
def test_any_bytes_on_the_control_socket_get_json_answers(
    control: Path, lines: list[bytes]
) -> None:
    """Arbitrary lines over the real socket: every answer is a short JSON object, and the
    server keeps serving."""
    data = b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n"
    for reply in _exchange(control, data):
        assert isinstance(reply, dict)
        assert "ok" in reply
        assert len(json.dumps(reply)) < 4096
    assert _exchange(control, b'{"cmd": "ping"}\n') == [{"ok": True, "cmd": "ping"}]
