"""What the common MQTT brokers accept of what this gateway puts on the wire.

Pure rules, no I/O. `broker_quirks(config)` lists every configured value that a broker
refuses or mangles: the client id, the topic segments (`<prefix>/<tenant>/<site>/<device>`
is in every topic, the retained `status` and the last will included), topic length and
depth, the size of the largest message, the protocol version. `refusal_hint(config)` turns
the quirks that make a broker refuse or drop the connection into one line for the uplink's
log. Where each fact comes from (the brokers' documentation, or a run here) is in
docs/brokers.md.

With `mqtt.broker` naming a broker, only that broker's rules apply (`config validate` fails
on them). With "generic" (the default) the value rules of every known broker apply as
warnings, but not the rules about a broker's own setup (TLS for AWS IoT Core, the topic
shapes of Azure IoT Hub), which would be noise for a gateway pointed at mosquitto.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import get_args

from edge_agent.config import AgentConfig, BrokerKind

__all__ = [
    "BROKER_NAMES",
    "KNOWN_BROKERS",
    "Quirk",
    "broker_quirks",
    "daemon_topics",
    "largest_message_bytes",
    "refusal_hint",
]

KNOWN_BROKERS: tuple[str, ...] = tuple(k for k in get_args(BrokerKind) if k != "generic")
"""Brokers with rules here (every value of `mqtt.broker` but "generic")."""

BROKER_NAMES: dict[str, str] = {
    "mosquitto": "mosquitto",
    "nats": "NATS",
    "rabbitmq": "RabbitMQ",
    "emqx": "EMQX",
    "hivemq": "HiveMQ",
    "vernemq": "VerneMQ",
    "aws-iot-core": "AWS IoT Core",
    "azure-iot-hub": "Azure IoT Hub",
}
"""How each broker is named in messages."""

KINDS = ("results", "summary", "events", "heartbeat", "status")
"""Telemetry topics `<root>/<kind>`; `status` is retained and is the last will."""

COMMAND_NAME_BYTES = 24
"""Room kept for a command name in `<root>/reply/<name>` (the longest today has 14)."""

RESULT_BYTES = 64
"""Estimated JSON bytes one window result adds to a `results` message (two timestamps, a
short label, a confidence); plus `MESSAGE_OVERHEAD` per message."""
MESSAGE_OVERHEAD = 1024

AWS_TOPIC_BYTES = 256
AWS_TOPIC_SLASHES = 7
AWS_CLIENT_ID_BYTES = 128
AWS_PAYLOAD_BYTES = 128 * 1024
AZURE_PAYLOAD_BYTES = 256 * 1024
NATS_PAYLOAD_BYTES = 1024 * 1024  # max_payload default
EMQX_PACKET_BYTES = 1024 * 1024  # mqtt.max_packet_size default

_EVENT_GRID = (
    "an MQTT broker instead: Azure Event Grid's MQTT broker, or a broker of your own bridged "
    "to IoT Hub (Azure IoT Edge, an MQTT bridge); see docs/brokers.md"
)


@dataclass(frozen=True)
class Quirk:
    """A configured value a broker refuses or mangles.

    Attributes:
        broker: The broker (a `mqtt.broker` value, never "generic").
        key: The config key holding the value ("device.id").
        value: The value as configured.
        problem: What the broker does with it.
        fix: What to use instead.
        refuses: Whether the broker refuses or drops the connection over it (so the uplink's
            log names it when that happens).
        short: The problem in a few words, for the uplink's log line (default: `problem`).
    """

    broker: str
    key: str
    value: str
    problem: str
    fix: str
    refuses: bool = False
    short: str = ""

    @property
    def broker_name(self) -> str:
        """The broker as named in messages ("NATS")."""
        return BROKER_NAMES.get(self.broker, self.broker)

    @property
    def setting(self) -> str:
        """The value as a line of the config file (`device.id = "gw.01"`)."""
        return _setting(self.key, self.value)

    def describe(self) -> str:
        """One line: which broker the value breaks, how, and what to use instead."""
        return f"{self.broker_name}: {self.setting}: {self.problem}; use {self.fix}"


def _setting(key: str, value: str) -> str:
    """`key = "value"` as written in the TOML file (numbers and booleans bare)."""
    if value in ("true", "false") or key == "sync.results_per_message":
        return f"{key} = {value}"
    return f"{key} = {json.dumps(value, ensure_ascii=False)}"


def daemon_topics(config: AgentConfig) -> list[str]:
    """Every topic the gateway publishes or subscribes to, longest command reply included.

    `<root>/<kind>` for the telemetry kinds, `<root>/cmd/+` and `<root>/reply/<name>` of the
    remote commands, and `<prefix>/announce` of the fleet re-announce.
    """
    root = config.topic_root
    return [
        *(f"{root}/{kind}" for kind in KINDS),
        f"{root}/cmd/+",
        f"{root}/reply/{'x' * COMMAND_NAME_BYTES}",
        f"{config.mqtt.topic_prefix}/announce",
    ]


def largest_message_bytes(config: AgentConfig) -> int | None:
    """Estimated size of the largest message the gateway sends (a full `results` message),
    or None when it stays small (results not uploaded, or compressed: size unknown ahead)."""
    sync = config.sync
    if not sync.upload_results or config.mqtt.compress_results:
        return None
    return sync.results_per_message * RESULT_BYTES + MESSAGE_OVERHEAD


def _segments(config: AgentConfig) -> list[tuple[str, str]]:
    """The configured values that are in every topic of the gateway, with their keys."""
    d = config.device
    return [
        ("mqtt.topic_prefix", config.mqtt.topic_prefix),
        ("device.tenant", d.tenant),
        ("device.site", d.site),
        ("device.id", d.id),
    ]


def _client_id_key(config: AgentConfig) -> str:
    return "mqtt.client_id" if config.mqtt.client_id else "mqtt.client_id (default)"


def _size_fix(limit: int) -> str:
    per_message = max(1, (limit - MESSAGE_OVERHEAD) // RESULT_BYTES)
    return f"sync.results_per_message = {per_message} (or mqtt.compress_results = true)"


def _too_big(broker: str, limit: int, what: str) -> Callable[[AgentConfig], Iterator[Quirk]]:
    def rule(config: AgentConfig) -> Iterator[Quirk]:
        size = largest_message_bytes(config)
        if size is not None and size > limit:
            yield Quirk(
                broker,
                "sync.results_per_message",
                str(config.sync.results_per_message),
                f"a full results message is about {size // 1024} KiB; {what} {limit // 1024} KiB",
                _size_fix(limit),
            )

    return rule


# -- NATS (its MQTT listener maps topics onto NATS subjects) ------------------------------------


def _nats(config: AgentConfig) -> Iterator[Quirk]:
    for key, value in _segments(config):
        if " " in value:
            yield Quirk(
                "nats",
                key,
                value,
                "NATS refuses MQTT topics with a space, and this value is in every topic of "
                "the gateway (its last will too): the connection is closed at once",
                _setting(key, value.replace(" ", "-")),
                refuses=True,
                short="NATS refuses a space in topics",
            )
        if "." in value:
            yield Quirk(
                "nats",
                key,
                value,
                "NATS before 2.10 refuses MQTT topics with a '.' (a NATS subject separator), "
                "and this value is in every topic of the gateway (its last will too): the "
                "connection is closed at once, every time",
                _setting(key, value.replace(".", "-")),
                refuses=True,
                short="NATS before 2.10 refuses a '.' in topics",
            )
    yield from _too_big("nats", NATS_PAYLOAD_BYTES, "NATS refuses messages over max_payload,")(
        config
    )


def _nats_named(config: AgentConfig) -> Iterator[Quirk]:
    if config.mqtt.protocol == "5":
        yield Quirk(
            "nats",
            "mqtt.protocol",
            "5",
            "NATS speaks MQTT 3.1.1 only and refuses MQTT 5",
            'mqtt.protocol = "auto" (or "3.1.1")',
        )


# -- RabbitMQ (rabbitmq_mqtt: topics become AMQP routing keys on amq.topic) ---------------------


def _rabbitmq(config: AgentConfig) -> Iterator[Quirk]:
    for key, value in _segments(config):
        if "." in value:
            yield Quirk(
                "rabbitmq",
                key,
                value,
                "RabbitMQ (3.10, run here) turns a '.' into a topic level ('/' and '.' both "
                "separate AMQP routing key words): subscribers get edge/.../gw/01/status for "
                "gw.01, wildcard subscriptions such as edge/+/+/+/status miss it and the "
                "consumer does not recognise it",
                _setting(key, value.replace(".", "-")),
                short="RabbitMQ turns a '.' into a topic level",
            )


def _rabbitmq_named(config: AgentConfig) -> Iterator[Quirk]:
    if config.mqtt.protocol == "5":
        yield Quirk(
            "rabbitmq",
            "mqtt.protocol",
            "5",
            "RabbitMQ before 3.13 speaks MQTT 3.1.1 only and refuses MQTT 5",
            'mqtt.protocol = "auto" (uses 5 from RabbitMQ 3.13 on)',
        )


# -- AWS IoT Core ---------------------------------------------------------------------------------


def _aws(config: AgentConfig) -> Iterator[Quirk]:
    client_id = config.client_id
    size = len(client_id.encode())
    if size > AWS_CLIENT_ID_BYTES:
        yield Quirk(
            "aws-iot-core",
            _client_id_key(config),
            client_id,
            f"the client id has {size} bytes; AWS IoT Core refuses more than {AWS_CLIENT_ID_BYTES}",
            f"mqtt.client_id of at most {AWS_CLIENT_ID_BYTES} bytes (the thing name is usual)",
            refuses=True,
            short=f"AWS IoT Core refuses client ids over {AWS_CLIENT_ID_BYTES} bytes",
        )
    topics = daemon_topics(config)
    longest = max(topics, key=lambda t: len(t.encode()))
    over = len(longest.encode()) - AWS_TOPIC_BYTES
    if over > 0:
        key, value = max(_segments(config), key=lambda kv: len(kv[1].encode()))
        yield Quirk(
            "aws-iot-core",
            key,
            value,
            f"topics of this gateway reach {len(longest.encode())} bytes "
            f"({longest.rsplit('/', 2)[0]}/...); AWS IoT Core refuses topics over "
            f"{AWS_TOPIC_BYTES} bytes",
            f"shorten {key} (or the other topic segments) by {over} bytes or more",
            refuses=True,
            short=f"AWS IoT Core refuses topics over {AWS_TOPIC_BYTES} bytes",
        )
    slashes = max(t.count("/") for t in topics)
    if slashes > AWS_TOPIC_SLASHES:
        prefix = config.mqtt.topic_prefix
        keep = prefix.count("/") - (slashes - AWS_TOPIC_SLASHES)
        yield Quirk(
            "aws-iot-core",
            "mqtt.topic_prefix",
            prefix,
            f"topics of this gateway have {slashes} '/'; AWS IoT Core refuses more than "
            f"{AWS_TOPIC_SLASHES} (the gateway adds 5 after the prefix)",
            f"a topic_prefix with at most {max(keep, 0)} '/'",
            refuses=True,
            short=f"AWS IoT Core refuses topics with more than {AWS_TOPIC_SLASHES} '/'",
        )
    if config.mqtt.topic_prefix.startswith("$"):
        yield Quirk(
            "aws-iot-core",
            "mqtt.topic_prefix",
            config.mqtt.topic_prefix,
            "topics starting with '$' are reserved by AWS IoT Core ($aws/...)",
            "a topic_prefix without a leading '$'",
            refuses=True,
            short="AWS IoT Core reserves topics starting with '$'",
        )
    yield from _too_big("aws-iot-core", AWS_PAYLOAD_BYTES, "AWS IoT Core refuses payloads over")(
        config
    )


def _aws_named(config: AgentConfig) -> Iterator[Quirk]:
    mqtt = config.mqtt
    if not mqtt.tls:
        yield Quirk(
            "aws-iot-core",
            "mqtt.tls",
            "false",
            "AWS IoT Core accepts MQTT over TLS only (port 8883)",
            "mqtt.tls = true, mqtt.port = 8883, with the thing's certificate as "
            "mqtt.cert_file and mqtt.key_file",
            refuses=True,
            short="AWS IoT Core takes TLS connections only",
        )
    elif mqtt.cert_file is None and not mqtt.username:
        yield Quirk(
            "aws-iot-core",
            "mqtt.cert_file",
            "",
            "AWS IoT Core authenticates devices by their X.509 client certificate",
            "mqtt.cert_file and mqtt.key_file: the thing's certificate and private key",
            refuses=True,
            short="AWS IoT Core needs the thing's client certificate",
        )


# -- Azure IoT Hub (not an MQTT broker: its own topics only) ---------------------------------------


def _azure_named(config: AgentConfig) -> Iterator[Quirk]:
    yield Quirk(
        "azure-iot-hub",
        "mqtt.topic_prefix",
        config.mqtt.topic_prefix,
        "IoT Hub takes device messages only on devices/{device_id}/messages/events/ and "
        "commands on its own $iothub/ topics: it closes the connection on a publish to "
        "<prefix>/<tenant>/<site>/<device>/<kind> or a subscription to <root>/cmd/+",
        _EVENT_GRID,
        refuses=True,
        short="IoT Hub takes its own topics only",
    )
    yield Quirk(
        "azure-iot-hub",
        "mqtt.broker",
        "azure-iot-hub",
        "IoT Hub keeps no retained messages: the gateway's online/offline `status` "
        "(retained, and its last will) would reach no consumer that starts later",
        _EVENT_GRID,
    )
    if config.client_id != config.device.id:
        yield Quirk(
            "azure-iot-hub",
            _client_id_key(config),
            config.client_id,
            "IoT Hub refuses a client id other than the device id registered in the hub",
            _setting("mqtt.client_id", config.device.id),
            refuses=True,
            short="IoT Hub takes the device id as client id only",
        )
    if not config.mqtt.tls:
        yield Quirk(
            "azure-iot-hub",
            "mqtt.tls",
            "false",
            "IoT Hub accepts MQTT over TLS only (port 8883)",
            "mqtt.tls = true, mqtt.port = 8883",
            refuses=True,
            short="IoT Hub takes TLS connections only",
        )
    yield from _too_big("azure-iot-hub", AZURE_PAYLOAD_BYTES, "IoT Hub refuses messages over")(
        config
    )


_EMQX = _too_big("emqx", EMQX_PACKET_BYTES, "EMQX refuses packets over mqtt.max_packet_size,")


def _none(config: AgentConfig) -> Iterator[Quirk]:
    return iter(())


# Per broker: (rules of values, applied for "generic" too; rules of the broker's own setup).
_RULES: dict[str, tuple[Callable[[AgentConfig], Iterator[Quirk]], ...]] = {
    "mosquitto": (_none, _none),
    "nats": (_nats, _nats_named),
    "rabbitmq": (_rabbitmq, _rabbitmq_named),
    "emqx": (_EMQX, _none),
    "hivemq": (_none, _none),
    "vernemq": (_none, _none),
    "aws-iot-core": (_aws, _aws_named),
    "azure-iot-hub": (_none, _azure_named),
}


def broker_quirks(config: AgentConfig, broker: str | None = None) -> list[Quirk]:
    """Every quirk of `broker` (default: `mqtt.broker`) with this config.

    "generic" applies the value rules of every known broker (warnings: the broker is not
    known), without the rules about a broker's own setup.
    """
    chosen = broker or config.mqtt.broker
    if chosen == "generic":
        return [q for name in KNOWN_BROKERS for q in _RULES[name][0](config)]
    values, setup = _RULES[chosen]
    return [*values(config), *setup(config)]


def refusal_hint(config: AgentConfig, limit: int = 2) -> str | None:
    """A one-line hint for when the broker refuses or drops the connection, or None.

    Names the configured values that make a broker do that, and what to use instead; with
    `mqtt.broker = "generic"` each is said to be a guess ("if the broker is NATS").
    """
    quirks = [q for q in broker_quirks(config) if q.refuses]
    if not quirks:
        return None
    guess = config.mqtt.broker == "generic"
    parts = []
    for quirk in quirks[:limit]:
        who = f"if the broker is {quirk.broker_name}, " if guess else ""
        parts.append(
            f"{who}{quirk.setting} may be why: {quirk.short or quirk.problem}; use {quirk.fix}"
        )
    more = len(quirks) - limit
    tail = f" (+{more} more: edge-agent config validate)" if more > 0 else ""
    return "; ".join(parts) + tail
