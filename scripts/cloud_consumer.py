"""Reference cloud consumer: subscribe to a fleet's telemetry, check it, store it, report.

Every message under `<prefix>/+/+/+/#` is decoded (zlib payloads included), validated
against the payload models of `edge_agent.contract.payloads`, and stored in a SQLite file when
it is new; duplicates (a `msg_id` seen before), conflicts (a seq reused by a different
message) and rejected payloads (with the reason) are kept too. On exit (SIGINT, SIGTERM,
`--duration`, `--idle-exit`) it prints a JSON report: per gateway and topic, gaps,
duplicates and how far back they reached, out-of-order arrivals and end-to-end latency
(`ts` in the envelope → arrival here). See `edge_agent.contract.Ledger.report`.

    python scripts/cloud_consumer.py --port 1883 --db consumer.db
    python scripts/cloud_consumer.py --share cloud --db shared.db   # one member of a group
    python scripts/cloud_consumer.py --report-only --db shared.db    # report, no broker

Behind a clustered broker, run several members with the same `--share` group and the same
`--db` (on a shared disk) or report over the union: each member sees only part of the
stream, so gaps are only meaningful over everything the group stored.

Exit status: 0 when the report is clean, 1 when it lists violations, 2 on a usage or
connection error (`--share` where the broker has no shared subscriptions included).

This SQLite checker is the contract's test instrument; the reference consumer that lands
telemetry in PostgreSQL and repairs gaps is `edge-agent-cloud` (edge_agent/cloud,
docs/cloud.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.cloud.args import (
    add_broker_arguments,
    broker_arguments_error,
    password,
    tls_context,
)
from edge_agent.contract import Ledger

log = logging.getLogger("cloud_consumer")

COMMIT_INTERVAL_S = 0.2


def content_encoding(message: mqtt.MQTTMessage) -> str | None:
    """The `content-encoding` MQTT 5 user property of a message, if any."""
    props = getattr(message, "properties", None)
    for key, value in getattr(props, "UserProperty", None) or []:
        if key == "content-encoding":
            return str(value)
    return None


class Consumer:
    """One MQTT subscriber feeding a `Ledger`.

    paho's network thread calls `_on_message`; the main thread commits a few times a second.
    One lock serialises the two, so the SQLite connection is never used concurrently.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ledger = Ledger(args.db, prefix=args.prefix)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.subscribed = threading.Event()
        self.last_message = time.monotonic()
        self.counts: dict[str, int] = {}
        self.connect_error: str | None = None
        self.fatal: str | None = None
        v5 = args.protocol == "5"
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=args.client_id or f"cloud-consumer-{os.getpid()}-{time.monotonic_ns()}",
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            **({} if v5 else {"clean_session": args.session_expiry == 0}),
        )
        if args.username:
            self.client.username_pw_set(args.username, password(args))
        if args.tls or args.cafile:
            self.client.tls_set_context(tls_context(args.cafile, args.certfile, args.keyfile))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.client.reconnect_delay_set(1, 10)
        self.filter = f"{args.prefix.rstrip('/')}/+/+/+/#"
        if args.share:
            self.filter = f"$share/{args.share}/{self.filter}"

    # paho callbacks (network thread)
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self.connect_error = f"broker refused the connection: {reason}"
            log.error("%s", self.connect_error)
            return
        if self.args.share and getattr(props, "SharedSubscriptionAvailable", 1) == 0:
            # Subscribing anyway would be granted and deliver nothing on some brokers.
            self.connect_error = (
                "the broker says shared subscriptions are not available (CONNACK "
                "SharedSubscriptionAvailable = 0): use its native way (docs/cloud.md)"
            )
            self.stop.set()
            return
        log.info("connected; subscribing to %s", self.filter)
        client.subscribe(self.filter, qos=1)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        if any(r.is_failure for r in reasons):
            self.connect_error = f"subscription to {self.filter} refused: {reasons}"
            log.error("%s", self.connect_error)
            self.stop.set()
            return
        self.subscribed.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if not self.stop.is_set():
            log.warning("disconnected (%s); paho reconnects", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        received = time.time()
        try:
            with self.lock:
                outcome = self.ledger.record(
                    message.topic,
                    bytes(message.payload),
                    retained=bool(message.retain),
                    received=received,
                    content_encoding=content_encoding(message),
                )
                if self.ledger.pending >= 1000:  # bound a transaction under a burst
                    self.ledger.commit()
        except Exception as err:
            # The ledger cannot store (disk, database locked too long): a report from here
            # on would be wrong, so stop and say so rather than drop messages silently.
            self.fatal = f"storing a message from {message.topic} failed: {err!r}"
            log.exception("%s", self.fatal)
            self.stop.set()
            return
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        self.last_message = time.monotonic()
        if outcome in ("rejected", "conflict"):
            log.warning("%s: %s", message.topic, outcome)

    # main thread
    def run(self) -> int:
        args = self.args
        props = None
        clean_start: mqtt.CleanStartOption = mqtt.MQTT_CLEAN_START_FIRST_ONLY  # 3.1.1: unused
        if args.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if args.session_expiry:
                props.SessionExpiryInterval = args.session_expiry
            clean_start = args.session_expiry == 0
        try:
            self.client.connect(
                args.host, args.port, keepalive=30, clean_start=clean_start, properties=props
            )
        except OSError as err:
            print(f"cannot reach the broker {args.host}:{args.port}: {err}", file=sys.stderr)
            return 2
        self.client.loop_start()
        started = time.monotonic()
        try:
            deadline = started + 10
            while not self.subscribed.wait(0.1):
                if not self.stop.is_set() and time.monotonic() < deadline:
                    continue
                print(
                    f"not subscribed: {self.connect_error or 'no CONNACK/SUBACK within 10 s'}",
                    file=sys.stderr,
                )
                return 2
            # Tests and scripts wait for this line before they start publishing.
            print(f"subscribed {self.filter}", file=sys.stderr, flush=True)
            while not self.stop.wait(COMMIT_INTERVAL_S):
                with self.lock:
                    self.ledger.commit()
                now = time.monotonic()
                if args.duration and now - started >= args.duration:
                    break
                if args.idle_exit and now - self.last_message >= args.idle_exit:
                    break
        finally:
            self.stop.set()
            self.client.disconnect()
            self.client.loop_stop()
            with self.lock:
                self.ledger.commit()
        if self.fatal:
            print(self.fatal, file=sys.stderr)
            return 2
        return 0

    def report(self) -> dict[str, Any]:
        with self.lock:
            return self.ledger.report(
                expect_from_first=self.args.expect_from_first,
                inflight_window=self.args.inflight_window,
                check_order=self.args.check_order,
            )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_broker_arguments(p, protocols=("5", "3.1.1"))
    p.add_argument("--db", required=True, type=Path, help="SQLite file to store messages in")
    p.add_argument("--duration", type=float, default=0, metavar="S", help="stop after S seconds")
    p.add_argument(
        "--idle-exit", type=float, default=0, metavar="S", help="stop after S quiet seconds"
    )
    p.add_argument(
        "--expect-from-first",
        action="store_true",
        help="count seqs before the first received as missing (subscribed before gateways began)",
    )
    p.add_argument(
        "--inflight-window",
        type=int,
        metavar="N",
        help="flag duplicates that reach more than N messages back",
    )
    p.add_argument(
        "--check-order",
        action="store_true",
        help="flag messages that arrive after a higher seq of their topic (not with --share)",
    )
    p.add_argument("--report-only", action="store_true", help="print the report of --db; no MQTT")
    p.add_argument("--report", type=Path, help="also write the JSON report to this file")
    p.add_argument("-v", "--verbose", action="store_true", help="log connection events")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if problem := broker_arguments_error(args):
        print(problem, file=sys.stderr)
        return 2
    if args.share and args.protocol != "5":
        print(
            "--share needs MQTT 5 shared subscriptions; on a 3.1.1-only broker (NATS, "
            "RabbitMQ 3.x) use its native way: NATS queue groups, AMQP consumers on amq.topic "
            "(docs/cloud.md)",
            file=sys.stderr,
        )
        return 2
    if args.report_only:
        with Ledger(args.db, prefix=args.prefix) as ledger:
            report = ledger.report(
                expect_from_first=args.expect_from_first,
                inflight_window=args.inflight_window,
                check_order=args.check_order,
            )
    else:
        consumer = Consumer(args)
        stop = consumer.stop
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        try:
            code = consumer.run()
            if code:
                return code
            report = consumer.report()
            report["session"] = {"outcomes": consumer.counts, "filter": consumer.filter}
        finally:
            consumer.ledger.close()
    text = json.dumps(report, indent=2, sort_keys=False)
    if args.report:
        args.report.write_text(text + "\n")
    print(text, flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
