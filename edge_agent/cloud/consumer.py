"""`CloudConsumer`: the MQTT side of the reference consumer.

paho's network thread only queues what arrives (`Inbound`); the consumer's own thread
takes a batch off the queue a few times a second, stores it in one transaction
(`CloudStore.write`), handles `sync.resend` replies, and asks gateways for the gaps that
stayed open past the grace period. Every connection, the first and each reconnect, ends
with a fleet re-announce (`<prefix>/announce`), so a broker that keeps retained messages
from wildcard subscribers still lets the consumer learn who is online.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.cloud.args import tls_context
from edge_agent.cloud.ingest import Inbound, Rejected, classify, reply_root
from edge_agent.cloud.store import BatchOutcome, CloudStore, DueGap
from edge_agent.contract.ranges import MAX_RESEND_SEQS, Range, merge, size
from edge_agent.contract.topics import parse_topic

__all__ = ["SHARE_ALTERNATIVES", "CloudConsumer", "ConsumerOptions", "UsageError"]

log = logging.getLogger("edge_agent.cloud")

UNSUPPORTED_PROTOCOL = 0x84  # CONNACK "Unsupported protocol version" (3.1.1's 1, as paho says)
COMMAND = "sync.resend"
COMMAND_TOPIC = "sync_resend"
"""The command's topic level: the `_` spelling every broker carries (NATS 2.9 refuses a `.`
in a topic, RabbitMQ 3.10 makes it a level); the gateway reads it as `sync.resend`."""
MAX_REPLY_BYTES = 1 << 20
MAX_REPLY_RANGES = 10_000
PENDING_TTL_S = 600.0
MAX_PENDING = 10_000

SHARE_ALTERNATIVES = (
    "scale out with the broker's own mechanism instead: NATS: members of one queue group "
    "subscribing to the subject `<prefix>.>` (NATS maps MQTT topics to subjects); RabbitMQ: "
    "AMQP consumers on one queue bound to the `amq.topic` exchange with the routing key "
    "`<prefix>.#`; or run a single consumer without --share (see docs/cloud.md)"
)


class UsageError(Exception):
    """The consumer cannot run as asked (exit status 2): the message says why and what to do."""


@dataclass
class ConsumerOptions:
    """How to reach the broker and how to consume."""

    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "edge"
    protocol: str = "auto"
    share: str | None = None
    client_id: str | None = None
    session_expiry: int = 0
    """Seconds the broker keeps the session across disconnects (0: a clean session)."""
    username: str | None = None
    password: str | None = None
    tls: bool = False
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    commit_interval_s: float = 0.2
    max_batch: int = 2000
    repair: bool = True
    duration_s: float = 0.0
    idle_exit_s: float = 0.0
    connect_timeout_s: float = 10.0


class CloudConsumer:
    """One MQTT subscriber writing through a `CloudStore`.

    Args:
        options: Broker, subscription and pacing.
        store: The PostgreSQL side (its schema is created by `run`).
        stop: Set it to end `run` (signal handlers do).
    """

    def __init__(
        self, options: ConsumerOptions, store: CloudStore, stop: threading.Event | None = None
    ) -> None:
        self.options = options
        self.store = store
        self.stop = stop or threading.Event()
        self.prefix = options.prefix.rstrip("/")
        self.client_id = options.client_id or f"edge-cloud-{time.time_ns():x}"
        safe = re.sub(r"[^A-Za-z0-9_-]", "-", self.client_id)
        # Two levels under the prefix: outside the telemetry filter `<prefix>/+/+/+/#`, so a
        # shared subscription never hands this member's replies to another.
        self.reply_topic = f"{self.prefix}/_consumers/{safe}"
        self.filter = f"{self.prefix}/+/+/+/#"
        if options.share:
            self.filter = f"$share/{options.share}/{self.filter}"
        self.inbox: queue.Queue[Inbound] = queue.Queue()
        self.counts: dict[str, int] = {}
        self.version: str | None = None
        self.connections = 0
        self.announces = 0
        self.fatal: str | None = None
        self.last_message = time.monotonic()
        self._connack = threading.Event()
        self._reason: ReasonCode | None = None
        self._subscribed = threading.Event()
        self._client: mqtt.Client | None = None
        self._ids = itertools.count(1)
        self._pending: dict[str, tuple[int, str, float]] = {}
        self._warned: set[str] = set()

    # -- connection ------------------------------------------------------------------------

    def _new_client(self, version: str) -> mqtt.Client:
        o = self.options
        v5 = version == "5"
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else o.session_expiry == 0,
        )
        if o.username:
            client.username_pw_set(o.username, o.password)
        if o.tls or o.cafile:
            client.tls_set_context(tls_context(o.cafile, o.certfile, o.keyfile))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 5)
        return client

    def connect(self) -> str:
        """Connect, negotiating the version (`auto`: 5, else 3.1.1); returns the version.

        Raises:
            UsageError: the broker is unreachable or refuses, or `--share` cannot work on it.
        """
        o = self.options
        versions = ["5", "3.1.1"] if o.protocol == "auto" else [o.protocol]
        why = "no CONNACK"
        for version in versions:
            client = self._new_client(version)
            self._connack.clear()
            self._reason = None
            self.version = version
            self._client = client
            props = None
            clean: Any = mqtt.MQTT_CLEAN_START_FIRST_ONLY
            if version == "5":
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                if o.session_expiry:
                    props.SessionExpiryInterval = o.session_expiry
                clean = o.session_expiry == 0
            try:
                client.connect(o.host, o.port, keepalive=30, clean_start=clean, properties=props)
            except OSError as err:
                raise UsageError(f"cannot reach the broker {o.host}:{o.port}: {err}") from err
            client.loop_start()
            got = self._connack.wait(o.connect_timeout_s)
            reason = self.connack_reason()
            if got and reason is not None and not reason.is_failure:
                if self.fatal:
                    raise UsageError(self.fatal)
                if not self._subscribed.wait(o.connect_timeout_s):
                    raise UsageError(self.fatal or f"no SUBACK for {self.filter}")
                if self.fatal:
                    raise UsageError(self.fatal)
                return version
            self._drop_client()
            refused = reason is None or reason.value == UNSUPPORTED_PROTOCOL
            why = "closed without CONNACK" if reason is None else str(reason)
            if got and refused and version != versions[-1]:
                log.info("%s:%s refused MQTT %s (%s); trying 3.1.1", o.host, o.port, version, why)
                continue
            if self.fatal:
                raise UsageError(self.fatal)
            break
        raise UsageError(
            f"broker {o.host}:{o.port} refused the connection (MQTT {'/'.join(versions)}): {why}"
        )

    def connack_reason(self) -> ReasonCode | None:
        """The last CONNACK's reason (None while none came)."""
        return self._reason

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.disconnect()
            client.loop_stop()

    # paho callbacks (network thread)
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._reason = reason
        if reason.is_failure:
            trial = self.options.protocol == "auto" and self.version == "5"
            if not (trial and reason.value == UNSUPPORTED_PROTOCOL):
                log.error("broker refused the connection: %s", reason)
            self._connack.set()
            return
        if self.options.share:
            where = f"{self.options.host}:{self.options.port}"
            if self.version != "5":
                self.fatal = (
                    f"--share {self.options.share} needs MQTT 5 shared subscriptions, and "
                    f"{where} speaks MQTT 3.1.1 only; {SHARE_ALTERNATIVES}"
                )
            elif getattr(props, "SharedSubscriptionAvailable", 1) == 0:
                self.fatal = (
                    f"--share {self.options.share}: {where} says shared subscriptions are not "
                    f"available (CONNACK SharedSubscriptionAvailable = 0); {SHARE_ALTERNATIVES}"
                )
            if self.fatal:
                self.fatal = self.fatal.replace("<prefix>", self.prefix)
                self.stop.set()
                self._connack.set()
                return
        self.connections += 1
        client.subscribe(self.filter, qos=1)
        if self.version == "5":
            client.subscribe(self.reply_topic, qos=1)
        # After every (re)connect: gateways publish their status again, for brokers that
        # never send retained messages to wildcard subscribers.
        client.publish(f"{self.prefix}/announce", json.dumps({"ts": round(time.time(), 3)}), qos=1)
        self.announces += 1
        log.info("connected (MQTT %s); subscribing to %s", self.version, self.filter)
        self._connack.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._connack.set()  # a close without CONNACK settles the wait too
        if not self.stop.is_set() and self.connections:
            log.warning("disconnected (%s); reconnecting", reason)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        if any(r.is_failure for r in reasons):
            self.fatal = f"subscription refused: {[str(r) for r in reasons]}"
            log.error("%s", self.fatal)
            self.stop.set()
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        props = getattr(message, "properties", None)
        encoding = None
        for key, value in getattr(props, "UserProperty", None) or []:
            if key == "content-encoding":
                encoding = str(value)
        self.inbox.put(
            Inbound(
                message.topic,
                bytes(message.payload),
                bool(message.retain),
                time.time(),
                encoding,
                getattr(props, "CorrelationData", None),
            )
        )

    # -- the writer thread -------------------------------------------------------------------

    def run(self, ready: Callable[[str], None] | None = None) -> int:
        """Consume until `stop` is set (or `duration_s` / `idle_exit_s`); returns 0, or 2
        when the database failed for good or the broker refused the subscription."""
        self.store.ensure_schema()
        self.connect()
        if ready is not None:
            ready(self.filter)
        started = time.monotonic()
        try:
            while not self.stop.is_set():
                batch = self._take()
                self._process(batch)
                now = time.monotonic()
                if self.options.duration_s and now - started >= self.options.duration_s:
                    break
                if self.options.idle_exit_s and now - self.last_message >= self.options.idle_exit_s:
                    break
        finally:
            self.stop.set()
            self._drop_client()
            with contextlib.suppress(psycopg.Error):
                self._process(self._take(block=False))
        return 2 if self.fatal else 0

    def _take(self, block: bool = True) -> list[Inbound]:
        items: list[Inbound] = []
        deadline = time.monotonic() + (self.options.commit_interval_s if block else 0)
        while len(items) < self.options.max_batch:
            try:
                timeout = deadline - time.monotonic()
                if timeout > 0:
                    items.append(self.inbox.get(timeout=timeout))
                else:
                    items.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        if items:
            self.last_message = time.monotonic()
        return items

    def _process(self, batch: list[Inbound]) -> None:
        replies = [i for i in batch if self._is_reply(i)]
        classified = [classify(i, self.prefix) for i in batch if not self._is_reply(i)]
        now = time.time()
        if classified:
            for outcome in self._write(classified, now):
                for key, n in outcome.counts.items():
                    self.counts[key] = self.counts.get(key, 0) + n
            for item in classified:
                if isinstance(item, Rejected):
                    log.warning("%s: rejected: %s", item.inbound.topic, item.reason[:300])
        for reply in replies:
            self._reply(reply, now)
        if self.options.repair and self._client is not None:
            for gap in self._with_db(lambda: self.store.claim_due(now)):
                self._ask(gap, now)
            for probe in self._with_db(lambda: self.store.claim_tails(now)):
                self._ask(probe, now, "tail_probes")

    def _write(self, items: list[Any], now: float) -> list[BatchOutcome]:
        """Store a batch; if the database refuses it for its content (a value the checks
        let through), store the messages one by one and reject the ones it refuses."""
        try:
            return [self._with_db(lambda: self.store.write(items, now))]
        except psycopg.OperationalError:
            raise
        except psycopg.Error as err:
            log.warning("a batch was refused (%s); storing its messages one by one", err)
        outcomes = []
        for item in items:
            try:
                outcomes.append(self._write_one(item, now))
            except psycopg.OperationalError:
                raise
            except psycopg.Error as err:
                reason = f"refused by the database: {str(err).splitlines()[0][:300]}"
                outcomes.append(self._write_one(Rejected(item.inbound, reason), now))
        return outcomes

    def _write_one(self, item: Any, now: float) -> BatchOutcome:
        outcome: BatchOutcome = self._with_db(lambda: self.store.write([item], now))
        return outcome

    def _with_db(self, op: Callable[[], Any]) -> Any:
        """Run a store operation; on a lost database connection reconnect with backoff."""
        delay = 0.5
        while True:
            try:
                return op()
            except psycopg.OperationalError as err:
                if self.stop.is_set():
                    raise
                log.error("PostgreSQL: %s; retrying in %.1f s", err, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                with contextlib.suppress(psycopg.Error):
                    self.store.reconnect()

    # -- gap repair ---------------------------------------------------------------------------

    def _ask(self, gap: DueGap, now: float, counter: str = "resend_requests") -> None:
        client = self._client
        if client is None:
            return
        for lo, hi in gap.spans:
            request_id = f"{self.client_id}-{next(self._ids)}"
            body = {"id": request_id, "args": {"topic": gap.topic, "from_seq": lo, "to_seq": hi}}
            props = None
            if self.version == "5":
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.ResponseTopic = self.reply_topic
                props.CorrelationData = request_id.encode()
            client.publish(
                f"{gap.root}/cmd/{COMMAND_TOPIC}", json.dumps(body), qos=1, properties=props
            )
            self._pending[request_id] = (gap.gap_id, gap.topic, now)
            self.counts[counter] = self.counts.get(counter, 0) + 1
            log.info(
                "asked %s for %s %d..%d (attempt %d)", gap.root, gap.topic, lo, hi, gap.attempt
            )
        if len(self._pending) > MAX_PENDING:
            cutoff = now - PENDING_TTL_S
            self._pending = {k: v for k, v in self._pending.items() if v[2] >= cutoff}

    def _is_reply(self, item: Inbound) -> bool:
        return item.topic == self.reply_topic or (
            reply_root(item.topic, self.prefix, (COMMAND, COMMAND_TOPIC)) is not None
        )

    def _reply(self, item: Inbound, now: float) -> None:
        """A `sync.resend` answer: note it, record what the gateway evicted. Anything that
        does not read as one is counted and logged, never trusted."""
        body = parse_reply(item, self.prefix, self.reply_topic)
        if isinstance(body, str):
            self.counts["bad_replies"] = self.counts.get("bad_replies", 0) + 1
            log.warning("ignoring a reply on %s: %s", item.topic, body)
            return
        request_id = body.get("id")
        pending = self._pending.pop(request_id, None) if isinstance(request_id, str) else None
        if not body["ok"]:
            error = body.get("error") or {}
            text = f"{error.get('code')}: {error.get('message')}"[:512]
            self.counts["resend_refused"] = self.counts.get("resend_refused", 0) + 1
            key = f"{body.get('device')}:{error.get('code')}"
            if key not in self._warned:
                self._warned.add(key)
                log.warning("%s refused sync.resend: %s", body.get("device"), text)
            if pending is not None and pending[0]:
                self._with_db(lambda: self.store.note_error(pending[0], text))
            return
        result = body["result"]
        summary: dict[str, Any] = {
            key: size(result[key]) for key in ("resent", "pending", "evicted", "unissued")
        }
        summary["at"] = round(now, 3)
        self.counts["resend_replies"] = self.counts.get("resend_replies", 0) + 1
        self._with_db(
            lambda: self.store.apply_reply(
                result["topic"], result["from_seq"], result["to_seq"], result["evicted"], summary
            )
        )


def _ranges(value: Any, lo: int, hi: int) -> list[Range] | None:
    if not isinstance(value, list) or len(value) > MAX_REPLY_RANGES:
        return None
    out: list[Range] = []
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)
            or not lo <= item[0] <= item[1] <= hi
        ):
            return None
        out.append((item[0], item[1]))
    return merge(out)


def parse_reply(item: Inbound, prefix: str, reply_topic: str) -> dict[str, Any] | str:
    """A `sync.resend` reply checked for sense, or why it is not one.

    The ranges of an `ok` reply are merged and must lie within the request's range; its
    topic must be a telemetry topic of the device that answered (and, on a 3.1.1 reply
    topic, of that topic's gateway).
    """
    if len(item.payload) > MAX_REPLY_BYTES:
        return f"over {MAX_REPLY_BYTES} bytes"
    try:
        body = json.loads(item.payload)
    except (UnicodeDecodeError, ValueError):
        return "not JSON"
    if not isinstance(body, dict) or body.get("command") != COMMAND:
        return "not a sync.resend reply"
    if not isinstance(body.get("ok"), bool):
        return "no ok"
    if not body["ok"]:
        return body
    result = body.get("result")
    if not isinstance(result, dict):
        return "no result"
    topic, lo, hi = result.get("topic"), result.get("from_seq"), result.get("to_seq")
    if not isinstance(topic, str) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi)
    ):
        return "result lacks topic/from_seq/to_seq"
    assert isinstance(lo, int)
    assert isinstance(hi, int)
    if not 1 <= lo <= hi or hi - lo + 1 > MAX_RESEND_SEQS:
        return f"range {lo}..{hi} makes no sense"
    name = parse_topic(topic, prefix)
    if name is None or name.kind == "status" or name.device != body.get("device"):
        return f"topic {topic!r} is not a telemetry topic of device {body.get('device')!r}"
    root = reply_root(item.topic, prefix, (COMMAND, COMMAND_TOPIC))
    if item.topic != reply_topic and (root is None or not topic.startswith(root + "/")):
        return f"topic {topic!r} is not of the gateway that answered"
    checked: dict[str, Any] = {"topic": topic, "from_seq": lo, "to_seq": hi}
    for key in ("resent", "pending", "evicted", "unissued"):
        ranges = _ranges(result.get(key, []), lo, hi)
        if ranges is None:
            return f"result.{key} is not a list of [first, last] within {lo}..{hi}"
        checked[key] = ranges
    return {**body, "result": checked}
