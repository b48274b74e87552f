"""The cloud side of remote commands in tests: an MQTT 5 request to `<root>/cmd/<name>` with
a response topic and correlation data, and its reply."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.broker import wait_for

REPLY_TOPIC = "cloud/replies"


def send_command(
    client: mqtt.Client,
    root: str,
    name: str,
    payload: bytes,
    replies: Mapping[bytes, dict[str, Any]],
    timeout: float,
) -> dict[str, Any]:
    """Publish the request and wait for its reply, which the client's `on_message` files in
    `replies` under the request's correlation data."""
    corr = uuid.uuid4().bytes
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = REPLY_TOPIC
    props.CorrelationData = corr
    client.publish(f"{root}/cmd/{name}", payload, qos=1, properties=props)
    return wait_for(lambda: replies.get(corr), timeout, f"reply to {name}")


def answering(request: Callable[..., object], body: Any) -> bool:
    """Whether `request("ping", body, timeout=1)` got its reply: the daemon subscribes to
    commands only after it connects, so tests ping until it answers."""
    try:
        request("ping", body, timeout=1)
    except AssertionError:
        return False
    return True
