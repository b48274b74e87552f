"""Broker quirks: the values the common brokers refuse or mangle, checked before they bite.

The rules are pure (`edge_agent.brokers`), tested per broker and by property; `config
validate` and `doctor` are run as the technician runs them; and the NATS case of the issue
(a '.' in the device id, the connection closed for good) runs against a real private
nats-server, once with the uplink alone and once with a whole daemon.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from edge_agent.brokers import (
    AWS_TOPIC_BYTES,
    KNOWN_BROKERS,
    broker_quirks,
    daemon_topics,
    refusal_hint,
)
from edge_agent.cli import app
from edge_agent.config import AgentConfig, parse_config
from edge_agent.service.control import request
from edge_agent.service.doctor import check_broker_quirks
from edge_agent.store.db import Store
from tests.broker import wait_for
from tests.daemon_proc import start_daemon, stop_daemon, write_config
from tests.nats import Nats
from tests.protocol_support import session


def _config(
    device: str = "gw-01",
    tenant: str = "t1",
    site: str = "s1",
    **sections: dict[str, Any],
) -> AgentConfig:
    data: dict[str, Any] = {"device": {"id": device, "tenant": tenant, "site": site}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_config(data, source="test", environ={})


AWS_TLS = {"tls": True, "port": 8883, "cert_file": "thing.crt", "key_file": "thing.key"}


def _of(config: AgentConfig, broker: str | None = None) -> dict[tuple[str, str], Any]:
    return {(q.broker, q.key): q for q in broker_quirks(config, broker)}


# -- NATS ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "overrides"),
    [
        ("device.id", {"device": "gw.01"}),
        ("device.tenant", {"tenant": "acme.eu"}),
        ("device.site", {"site": "plant.4"}),
    ],
)
def test_nats_refuses_a_dot_in_any_topic_segment(key: str, overrides: dict[str, str]) -> None:
    config = _config(**overrides)
    quirk = _of(config, "nats")[("nats", key)]
    assert quirk.refuses
    assert "'.'" in quirk.problem
    assert "." not in quirk.fix.split("=", 1)[1]
    assert "-" in quirk.fix


def test_nats_refuses_a_dot_or_space_in_the_prefix() -> None:
    dotted = _of(_config(mqtt={"topic_prefix": "acme.edge"}), "nats")
    assert dotted[("nats", "mqtt.topic_prefix")].fix == 'mqtt.topic_prefix = "acme-edge"'
    spaced = _of(_config(mqtt={"topic_prefix": "acme edge"}), "nats")
    assert "space" in spaced[("nats", "mqtt.topic_prefix")].problem


def test_nats_speaks_3_1_1_only_and_caps_message_size() -> None:
    five = _of(_config(mqtt={"protocol": "5", "broker": "nats"}))
    assert "3.1.1" in five[("nats", "mqtt.protocol")].fix
    assert ("nats", "mqtt.protocol") not in _of(_config(mqtt={"protocol": "auto"}), "nats")
    huge = _config(sync={"upload_results": True, "results_per_message": 50_000})
    assert ("nats", "sync.results_per_message") in _of(huge, "nats")
    # Compressed results have no size known ahead: no claim is made.
    packed = _config(
        sync={"upload_results": True, "results_per_message": 50_000},
        mqtt={"compress_results": True},
    )
    assert ("nats", "sync.results_per_message") not in _of(packed, "nats")


# -- RabbitMQ ----------------------------------------------------------------------------------


def test_rabbitmq_mangles_a_dot_and_refuses_mqtt_5_before_3_13() -> None:
    quirk = _of(_config(device="gw.01"), "rabbitmq")[("rabbitmq", "device.id")]
    assert not quirk.refuses  # it connects; the topic arrives with one level more
    assert "gw/01" in quirk.problem
    assert quirk.fix == 'device.id = "gw-01"'
    five = _of(_config(mqtt={"protocol": "5"}), "rabbitmq")[("rabbitmq", "mqtt.protocol")]
    assert "3.13" in five.problem


# -- AWS IoT Core -------------------------------------------------------------------------------


def test_aws_client_id_over_128_bytes() -> None:
    config = _config(mqtt={**AWS_TLS, "client_id": "c" * 129})
    quirk = _of(config, "aws-iot-core")[("aws-iot-core", "mqtt.client_id")]
    assert quirk.refuses
    assert "128" in quirk.problem
    # The default client id edge-agent-<tenant>-<device> counts too.
    default = _config(device="d" * 120, mqtt=AWS_TLS)
    assert ("aws-iot-core", "mqtt.client_id (default)") in _of(default, "aws-iot-core")


def test_aws_topic_length_names_the_longest_segment() -> None:
    config = _config(device="d" * 128, tenant="t" * 128, mqtt=AWS_TLS)
    assert max(len(t) for t in daemon_topics(config)) > AWS_TOPIC_BYTES
    quirks = _of(config, "aws-iot-core")
    length = next(q for q in quirks.values() if "bytes" in q.problem and "topic" in q.problem)
    assert length.key in ("device.id", "device.tenant")
    assert "shorten" in length.fix


def test_aws_topic_depth_counts_the_slashes_of_the_prefix() -> None:
    """The gateway adds 5 '/' after the prefix (<t>/<s>/<d>/reply/<name>): 2 fit in it."""
    assert ("aws-iot-core", "mqtt.topic_prefix") not in _of(
        _config(mqtt={**AWS_TLS, "topic_prefix": "acme/edge/v1"}), "aws-iot-core"
    )
    quirk = _of(_config(mqtt={**AWS_TLS, "topic_prefix": "acme/edge/v1/x"}), "aws-iot-core")[
        ("aws-iot-core", "mqtt.topic_prefix")
    ]
    assert "8 '/'" in quirk.problem
    assert "at most 2 '/'" in quirk.fix


def test_aws_reserved_dollar_topics_payload_cap_and_tls() -> None:
    reserved = _of(_config(mqtt={**AWS_TLS, "topic_prefix": "$aws/edge"}), "aws-iot-core")
    assert "reserved" in reserved[("aws-iot-core", "mqtt.topic_prefix")].problem
    big = _config(sync={"upload_results": True, "results_per_message": 5000}, mqtt=AWS_TLS)
    size = _of(big, "aws-iot-core")[("aws-iot-core", "sync.results_per_message")]
    allowed = int(size.fix.split("=")[1].split()[0])
    assert 1000 < allowed < 5000
    fits = _config(sync={"upload_results": True, "results_per_message": allowed}, mqtt=AWS_TLS)
    assert ("aws-iot-core", "sync.results_per_message") not in _of(fits, "aws-iot-core")
    plain = _of(_config(), "aws-iot-core")
    assert "8883" in plain[("aws-iot-core", "mqtt.tls")].fix
    no_cert = _of(_config(mqtt={"tls": True}), "aws-iot-core")
    assert ("aws-iot-core", "mqtt.cert_file") in no_cert


# -- Azure IoT Hub, and the brokers that take everything -------------------------------------------


def test_azure_iot_hub_never_fits_and_says_what_to_use_instead() -> None:
    config = _config(device="gw-01", mqtt={"client_id": "gw-01", "tls": True, "port": 8883})
    quirks = broker_quirks(config, "azure-iot-hub")
    assert {q.key for q in quirks} == {"mqtt.topic_prefix", "mqtt.broker"}
    assert any("retained" in q.problem for q in quirks)
    assert all("Event Grid" in q.fix for q in quirks)
    default_id = _of(_config(), "azure-iot-hub")[("azure-iot-hub", "mqtt.client_id (default)")]
    assert default_id.fix == 'mqtt.client_id = "gw-01"'


@pytest.mark.parametrize("broker", ["mosquitto", "hivemq", "vernemq"])
def test_brokers_without_quirks_take_dotted_ids(broker: str) -> None:
    config = _config(device="gw.01", tenant="a.b", mqtt={"topic_prefix": "x.y/z"})
    assert broker_quirks(config, broker) == []


def test_emqx_caps_packets_at_1_mb_by_default() -> None:
    big = _config(sync={"upload_results": True, "results_per_message": 20_000})
    assert ("emqx", "sync.results_per_message") in _of(big, "emqx")
    assert broker_quirks(_config(device="gw.01"), "emqx") == []


# -- generic, and the hint of the uplink ----------------------------------------------------------


def test_generic_warns_for_every_broker_but_not_about_their_own_setup() -> None:
    dotted = _of(_config(device="gw.01"))
    assert set(dotted) == {("nats", "device.id"), ("rabbitmq", "device.id")}
    # Plain MQTT to a local broker is no AWS or Azure problem until one of them is named.
    assert broker_quirks(_config()) == []


def test_refusal_hint_names_the_value_the_broker_and_the_fix() -> None:
    generic = refusal_hint(_config(device="gw.01"))
    assert generic is not None
    assert "if the broker is NATS" in generic
    assert 'device.id = "gw.01"' in generic
    assert 'use device.id = "gw-01"' in generic
    assert "RabbitMQ" not in generic  # it does not refuse the connection over it
    named = refusal_hint(_config(device="gw.01", mqtt={"broker": "nats"}))
    assert named is not None
    assert named.startswith('device.id = "gw.01" may be why: NATS')
    assert refusal_hint(_config(device="gw.01", mqtt={"broker": "rabbitmq"})) is None
    assert refusal_hint(_config()) is None
    many = refusal_hint(_config(device="a.b", tenant="c.d", site="e.f"))
    assert many is not None
    assert "(+1 more: edge-agent config validate)" in many


# -- properties ----------------------------------------------------------------------------------

_ID = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-",
              min_size=1, max_size=128)  # fmt: skip
_PREFIX = st.text(
    alphabet=st.characters(blacklist_characters="#+\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=64,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    device=_ID,
    tenant=_ID,
    site=_ID,
    prefix=_PREFIX,
    client_id=st.none() | st.text(min_size=1, max_size=256),
    broker=st.sampled_from(["generic", *KNOWN_BROKERS]),
    protocol=st.sampled_from(["auto", "5", "3.1.1"]),
    per_message=st.integers(1, 100_000),
    upload=st.booleans(),
    tls=st.booleans(),
)
def test_every_quirk_names_a_known_broker_and_a_fix(
    device: str,
    tenant: str,
    site: str,
    prefix: str,
    client_id: str | None,
    broker: str,
    protocol: str,
    per_message: int,
    upload: bool,
    tls: bool,
) -> None:
    mqtt: dict[str, Any] = {"topic_prefix": prefix, "broker": broker, "protocol": protocol}
    mqtt |= {"tls": tls} | ({"client_id": client_id} if client_id else {})
    config = _config(
        device, tenant, site, mqtt=mqtt, sync={"upload_results": upload,
                                                "results_per_message": per_message}
    )  # fmt: skip
    quirks = broker_quirks(config)
    for quirk in quirks:
        assert quirk.broker in KNOWN_BROKERS
        assert quirk.fix.strip()
        assert quirk.problem.strip()
        assert quirk.key.strip()
        if broker != "generic":
            assert quirk.broker == broker
    hint = refusal_hint(config)
    assert (hint is None) == (not any(q.refuses for q in quirks))
    assert hint is None or "\n" not in hint
    # A '.' anywhere in the topic root is always named for NATS, with a fix without it.
    if broker in ("generic", "nats"):
        for key, value in (("device.id", device), ("device.tenant", tenant)):
            if "." in value:
                quirk = next(q for q in quirks if q.broker == "nats" and q.key == key)
                assert quirk.refuses
                assert "." not in quirk.fix.split("=", 1)[1]


_PLAIN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(device=_PLAIN, tenant=_PLAIN, site=_PLAIN)
def test_plain_ids_with_the_default_prefix_raise_nothing(
    device: str, tenant: str, site: str
) -> None:
    """Ids of [a-z0-9-] (up to 40 characters) and the default prefix fit NATS, AWS IoT Core
    (configured as AWS requires: TLS on 8883 with the thing's certificate), mosquitto, and
    every broker when none is named."""
    config = _config(device, tenant, site, mqtt=AWS_TLS)
    for broker in ("nats", "aws-iot-core", "mosquitto", "generic"):
        assert broker_quirks(config, broker) == [], broker
    assert refusal_hint(config) is None


# -- config validate and doctor ----------------------------------------------------------------


def _write(path: Path, broker: str, device: str = "gw.01") -> Path:
    path.write_text(
        f'[device]\nid = "{device}"\ntenant = "t1"\nsite = "s1"\n'
        f'[mqtt]\nbroker = "{broker}"\nport = 1\n'
    )
    return path


def test_config_validate_fails_on_the_named_brokers_quirks(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["config", "validate", str(_write(tmp_path / "n.toml", "nats"))]
    )
    assert result.exit_code == 2
    assert 'NATS refuses or mangles (mqtt.broker = "nats"' in result.stderr
    assert 'NATS: device.id = "gw.01"' in result.stderr
    assert 'use device.id = "gw-01"' in result.stderr
    assert "ok" not in result.stdout


def test_config_validate_warns_naming_the_broker_when_generic(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["config", "validate", str(_write(tmp_path / "g.toml", "generic"))]
    )
    assert result.exit_code == 0, result.stderr
    assert 'warning: NATS: device.id = "gw.01"' in result.stderr
    assert 'warning: RabbitMQ: device.id = "gw.01"' in result.stderr
    assert ": ok (" in result.stdout
    clean = _write(tmp_path / "c.toml", "nats", device="gw-01")
    result = CliRunner().invoke(app, ["config", "validate", str(clean)])
    assert result.exit_code == 0
    assert not result.stderr


def test_doctor_says_which_broker_a_value_breaks_and_what_to_use(tmp_path: Path) -> None:
    named = check_broker_quirks(_config(device="gw.01", mqtt={"broker": "nats"}))
    assert named.status == "fail"
    assert named.summary == (
        "NATS refuses or mangles device.id = \"gw.01\": NATS before 2.10 refuses a '.' in topics"
    )
    assert named.fix == 'for NATS: use device.id = "gw-01"'
    generic = check_broker_quirks(_config(device="gw.01"))
    assert generic.status == "warn"
    assert "RabbitMQ" in generic.summary
    assert generic.fix is not None
    assert generic.fix.endswith("(or set mqtt.broker to yours)")
    assert check_broker_quirks(_config(mqtt={"broker": "nats"})).status == "pass"
    # The whole command, as the technician runs it.
    config = _write(tmp_path / "d.toml", "nats")
    result = CliRunner().invoke(
        app, ["doctor", "--config", str(config), "--timeout", "1", "--json"]
    )
    body = json.loads(result.stdout)
    check = next(c for c in body["checks"] if c["name"] == "compat")
    assert check["status"] == "fail"
    assert "gw-01" in check["fix"]
    assert result.exit_code == 2


# -- against a real NATS -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nats]:
    with Nats(tmp_path_factory.mktemp("nats")) as server:
        yield server


def test_nats_closing_on_a_dotted_id_is_explained_in_the_log(
    nats: Nats, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's case: nothing configured but the address. NATS closes every connection
    (the last will's topic has the '.'); the error line names the '.' and the fix."""
    config = _config(
        device="gw.01", mqtt={"port": nats.mqtt_port, "reconnect_min_s": 0.05,
                              "reconnect_max_s": 0.2}
    )  # fmt: skip
    store = Store(tmp_path / "q.db", device_id="gw.01", topic_root=config.topic_root)
    store.open()
    caplog.set_level(logging.WARNING, logger="edge_agent.sync.mqtt")
    try:
        uplink, events = session(
            config,
            store,
            lambda u: u.stats.connect_failures >= 3 and u.stats.last_error,
            "refused attempts",
        )
    finally:
        store.close()
    assert uplink.stats.connects == 0
    error = uplink.stats.last_error
    assert error is not None
    assert "if the broker is NATS" in error
    assert "refuses a '.' in topics" in error
    assert 'use device.id = "gw-01"' in error
    logged = [r.getMessage() for r in caplog.records if "gw-01" in r.getMessage()]
    assert logged
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    assert not [e for e in events if e[0] == "mqtt.connected"]


def test_daemon_named_nats_warns_at_start_and_status_says_why(nats: Nats, tmp_path: Path) -> None:
    """A daemon told it talks to NATS warns once at start; it runs anyway, and `status`
    shows the refused connection with the '.' and the fix."""
    db = tmp_path / "d.db"
    config = write_config(
        tmp_path / "d.toml",
        db=db,
        sensors=[],
        mqtt_port=nats.mqtt_port,
        device="gw.02",
        sections={"mqtt": {"broker": "nats", "reconnect_max_s": 0.2}},
    )
    log = tmp_path / "daemon.log"
    proc = start_daemon(config, log)
    try:
        status = wait_for(
            lambda: _mqtt_error(db.with_suffix(".sock")), 30, "a refused connection in status"
        )
    finally:
        assert stop_daemon(proc, log) == 0, log.read_text()[-4000:]
    assert "refuses a '.' in topics" in status
    assert 'use device.id = "gw-02"' in status
    text = log.read_text()
    start = 'mqtt: NATS: device.id = "gw.02": NATS before 2.10 refuses MQTT topics with a'
    assert text.count(start) == 1, text[-4000:]


def _mqtt_error(sock: Path) -> str | None:
    try:
        error = request(sock, "status")["status"]["mqtt"]["last_error"]
    except Exception:
        return None
    return error if isinstance(error, str) and "gw-02" in error else None


def test_dot_free_command_topics_work_through_nats(nats: Nats, tmp_path: Path) -> None:
    """`<root>/cmd/sensors_list` reaches `sensors.list` through a real NATS, and the reply
    comes back on `<root>/reply/sensors_list` (a dotted reply topic would get the gateway's
    own connection closed)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    db = tmp_path / "c.db"
    config = write_config(
        tmp_path / "c.toml", db=db, sensors=[], mqtt_port=nats.mqtt_port, device="gw-03"
    )
    root = "edge/t1/s1/gw-03"
    replies: list[tuple[str, dict[str, Any]]] = []
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="cloud-dashed",
        protocol=MQTTProtocolVersion.MQTTv311,
    )
    client.on_message = lambda c, u, m: replies.append((m.topic, json.loads(m.payload)))
    client.connect("127.0.0.1", nats.mqtt_port)
    client.subscribe(f"{root}/reply/+", qos=1)
    client.loop_start()
    log = tmp_path / "daemon.log"
    proc = start_daemon(config, log)
    try:

        def answered() -> tuple[str, dict[str, Any]] | None:
            client.publish(f"{root}/cmd/sensors_list", json.dumps({"id": "nats-1"}), qos=1)
            return next((r for r in replies if r[1].get("id") == "nats-1"), None)

        topic, body = wait_for(answered, 30, "a reply through NATS", interval=0.5)
    finally:
        client.disconnect()
        client.loop_stop()
        assert stop_daemon(proc, log) == 0, log.read_text()[-4000:]
    assert topic == f"{root}/reply/sensors_list"
    assert body["command"] == "sensors.list"
    assert body["ok"] is True
    assert "connection lost" not in log.read_text()
