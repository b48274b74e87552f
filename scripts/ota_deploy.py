#!/usr/bin/env python3
"""Deploy a signed model archive to one gateway over MQTT and follow it to its outcome.

The cloud side of docs/ota.md, for operators and for trying it out: sends `model.deploy`
(with a URL the gateway downloads from, or `--inline` to push the archive itself in
`model.chunk` pieces, for sites that reach only the broker), then prints the gateway's
`model.*` events until the update is confirmed, refused or rolled back.

    python scripts/ota_deploy.py --root edge/acme/plant-1/gw-17 \\
        --archive imu-activity-1.1.0.bundle.tar.gz \\
        --url https://models.example.com/imu-activity-1.1.0.bundle.tar.gz

Exit status: 0 confirmed, 1 refused or rolled back, 2 no outcome before --timeout.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

CHUNK = 48 * 1024  # raw bytes per model.chunk (base64 makes it ~64 KiB on the wire)
FINAL = {"model.confirmed": 0, "model.rejected": 1, "model.rolled_back": 1}


class Session:
    """Requests with MQTT 5 response topics; events of one gateway as they arrive."""

    def __init__(self, host: str, port: int, root: str) -> None:
        self.root = root
        self.replies: dict[bytes, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.reply_topic = f"ota-deploy/{uuid.uuid4().hex[:12]}/reply"
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"ota-deploy-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(host, port)
        self.client.subscribe([(self.reply_topic, 1), (f"{root}/events", 1)])
        self.client.loop_start()
        if not subscribed.wait(10):
            raise SystemExit("error: no SUBACK from the broker within 10 s")

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        with self.cond:
            if msg.topic.endswith("/events"):
                self.events.append(body)
            else:
                corr = getattr(msg.properties, "CorrelationData", None)
                if corr is not None:
                    self.replies[corr] = body
            self.cond.notify_all()

    def request(self, name: str, args: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Send one request; a `rate_limited` answer is retried after the wait it names."""
        deadline = time.monotonic() + timeout
        while True:
            reply = self._request_once(name, args, max(1.0, deadline - time.monotonic()))
            error = reply.get("error") or {}
            if error.get("code") != "rate_limited" or time.monotonic() >= deadline:
                return reply
            time.sleep(float((error.get("details") or {}).get("retry_after_s", 1.0)))

    def _request_once(self, name: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        corr = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = corr
        body = json.dumps({"id": uuid.uuid4().hex, "args": args})
        self.client.publish(f"{self.root}/cmd/{name}", body, qos=1, properties=props)
        with self.cond:
            if not self.cond.wait_for(lambda: corr in self.replies, timeout):
                raise SystemExit(f"error: no reply to {name} within {timeout:.0f} s")
            return self.replies[corr]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--root", required=True, help="<prefix>/<tenant>/<site>/<device>")
    parser.add_argument("--archive", type=Path, required=True, help="The signed archive.")
    parser.add_argument("--url", help="Where the gateway downloads it (https://, file://).")
    parser.add_argument("--inline", action="store_true", help="Send it in model.chunk pieces.")
    parser.add_argument("--no-activate", action="store_true", help="Install only.")
    parser.add_argument("--timeout", type=float, default=600.0, help="Seconds to follow.")
    args = parser.parse_args(argv)
    if bool(args.url) == args.inline:
        parser.error("give --url or --inline")
    data = args.archive.read_bytes()
    sha256, size = hashlib.sha256(data).hexdigest(), len(data)
    session = Session(args.host, args.port, args.root)
    deployment = uuid.uuid4().hex[:12]
    request: dict[str, Any] = {
        "sha256": sha256,
        "size": size,
        "deployment": deployment,
        "activate": not args.no_activate,
    }
    if args.inline:
        for offset in range(0, size, CHUNK):
            piece = base64.b64encode(data[offset : offset + CHUNK]).decode()
            reply = session.request(
                "model.chunk", {"sha256": sha256, "size": size, "offset": offset, "data": piece}
            )
            if not reply["ok"]:
                print(json.dumps(reply, indent=2))
                return 1
            print(f"sent {reply['result']['received']} / {size} bytes", file=sys.stderr)
        request["inline"] = True
    else:
        request["url"] = args.url
    reply = session.request("model.deploy", request)
    print(json.dumps(reply, indent=2))
    if not reply["ok"]:
        return 1
    deadline = time.monotonic() + args.timeout
    seen = 0
    version: str | None = None
    while time.monotonic() < deadline:
        with session.cond:
            session.cond.wait_for(lambda n=seen: len(session.events) > n, 1.0)
            new, seen = session.events[seen:], len(session.events)
        for event in new:
            kind = str(event.get("event", ""))
            mine = event.get("deployment") == deployment or (
                version is not None and version in (event.get("version"), event.get("from_version"))
            )
            if not kind.startswith("model.") or not mine:
                continue
            version = version or event.get("version")
            print(json.dumps(event))
            if kind in FINAL and (kind != "model.confirmed" or event.get("version") == version):
                return FINAL[kind]
            if kind == "model.staged" and args.no_activate:
                return 0
    print("error: no outcome before --timeout", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
