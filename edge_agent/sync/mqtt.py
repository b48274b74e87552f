"""MQTT uplink on paho-mqtt 2.x, driven by the asyncio loop.

paho's socket is handed to the event loop (`add_reader`/`add_writer`), so every
paho callback runs on the loop thread and nothing here needs a lock. Each
connection attempt uses a fresh paho client: the SQLite outbox is the only
queue, so paho never re-sends on its own and a message is deleted from the
outbox only after its PUBACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.brokers import refusal_hint
from edge_agent.config import AgentConfig
from edge_agent.events import Emit
from edge_agent.store.checks import parse_count
from edge_agent.store.db import OutboxRow, Store, Txn, dumps, fetch_outbox
from edge_agent.store.delivered import ack_outbox
from edge_agent.store.meta import get_json
from edge_agent.sync.hosts import Failover, Node
from edge_agent.sync.refused import RefusedTopics
from edge_agent.sync.tls import load_tls

log = logging.getLogger(__name__)

# Outbox rows read ahead of the in-flight window per store round trip.
PREFETCH = 256

# CONNACK reason "Unsupported protocol version" (MQTT 5 0x84; 3.1.1's return code 1, which
# paho reports with the same code).
UNSUPPORTED_PROTOCOL = 0x84
# Why a CONNECT counts as refused when the broker closed the connection without answering.
NO_CONNACK = "closed without a CONNACK"


def protocol_key(host: str, port: int) -> str:
    """The meta key remembering that the broker at host:port refused MQTT 5."""
    return f"mqtt_protocol:{host}:{port}"


def _check_protocol(saved: dict[str, Any]) -> None:
    if saved["protocol"] != "3.1.1":
        raise ValueError(f"protocol is {saved['protocol']!r}, not '3.1.1'")


def _set_meta(txn: Txn, key: str, value: Any) -> None:
    txn.conn.execute(
        "INSERT INTO meta(key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, json.dumps(value)),
    )


def _check_reservation(saved: dict[str, Any]) -> None:
    """A stored status reservation must be `{"seq": <count>, "used": <bool>}`."""
    parse_count(saved["seq"])
    if not isinstance(saved["used"], bool):
        raise TypeError(f"used is {saved['used']!r}, not a bool")


@dataclass
class UplinkStats:
    """What the uplink did, for heartbeats and `status`."""

    connected: bool = False
    connects: int = 0
    connect_failures: int = 0
    published: int = 0
    acked: int = 0
    last_error: str | None = None
    connected_since: float | None = None
    protocol: str | None = None  # of the current (or last) session: "5" or "3.1.1"
    protocol_fallback: bool = False  # mqtt.protocol = "auto" fell back to 3.1.1
    host: str | None = None  # "host:port" of the node of the current (or last) session


class Backoff:
    """Capped exponential backoff with full jitter, so a fleet does not reconnect in lockstep."""

    def __init__(self, minimum: float, maximum: float, rng: random.Random | None = None) -> None:
        self.minimum = minimum
        self.maximum = max(maximum, minimum)
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """Delay before the next attempt: uniform in [min, min(max, min * 2^failures)]."""
        ceiling = min(self.maximum, self.minimum * (2**self.failures))
        self.failures = min(self.failures + 1, 32)
        return self._rng.uniform(self.minimum, ceiling)

    def reset(self) -> None:
        """Call after a connection proved healthy."""
        self.failures = 0


class TokenBucket:
    """Rate limit for the outbox drain: `rate` messages/s, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.tokens = self.burst
        self.stamp: float | None = None

    def take(self, now: float) -> float:
        """Spend one token; returns how long to wait first (0 when one was available)."""
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class _TrackingContext(ssl.SSLContext):
    """An SSL context that remembers its sockets.

    paho does not close the socket when the TLS handshake fails (a wrong CA, a missing
    client certificate); closing every socket this context wrapped plugs that leak.
    """

    def __init__(self, protocol: int) -> None:
        super().__init__()  # SSLContext takes its protocol in __new__
        self.sockets: list[ssl.SSLSocket] = []

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        self.sockets.append(sock)
        return sock

    def close_all(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self.sockets = []


class _Connection:
    """One paho client bound to the event loop for the life of one TCP connection."""

    def __init__(self, uplink: MqttUplink, loop: asyncio.AbstractEventLoop, version: str) -> None:
        self.uplink = uplink
        self.loop = loop
        cfg = uplink.config.mqtt
        protocol = MQTTProtocolVersion.MQTTv5 if version == "5" else MQTTProtocolVersion.MQTTv311
        self.version = version
        # The CONNACK's reason, None while none came (a disconnect also settles `connack`).
        self.connack_reason: ReasonCode | None = None
        self.v5 = protocol == MQTTProtocolVersion.MQTTv5
        kwargs: dict[str, Any] = {}
        if not self.v5:
            kwargs["clean_session"] = True
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=uplink.config.client_id,
            protocol=protocol,
            **kwargs,
        )
        if cfg.username:
            self.client.username_pw_set(cfg.username, cfg.secret())
        self._tls: _TrackingContext | None = None
        if cfg.tls:
            context = _TrackingContext(ssl.PROTOCOL_TLS_CLIENT)
            load_tls(cfg, context)  # a bad file: ConfigError naming it; the component restarts
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            self._tls = context
            self.client.tls_set_context(context)
        self.client.on_message = self._on_message
        self.client.max_inflight_messages_set(cfg.max_inflight)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_socket_open = self._on_socket_open
        self.client.on_socket_close = self._on_socket_close
        self.client.on_socket_register_write = self._on_register_write
        self.client.on_socket_unregister_write = self._on_unregister_write
        self.connack: asyncio.Future[ReasonCode] = loop.create_future()
        self.closed = asyncio.Event()
        self.inflight: dict[int, int] = {}
        self.topics: dict[int, str] = {}  # mid -> topic of the in-flight outbox rows
        self.drained = asyncio.Event()
        self._misc: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None
        self._loop_thread = threading.get_ident()

    # paho socket callbacks: may fire on a worker thread during connect(), so hop to the loop.
    def _in_loop(self, fn: Callable[[], None]) -> None:
        if threading.get_ident() == self._loop_thread:
            fn()
        else:
            self.loop.call_soon_threadsafe(fn)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        def register() -> None:
            self._sock = sock
            self.loop.add_reader(sock, self._read)
            self._misc = self.loop.create_task(self._misc_loop(), name="mqtt-misc")

        self._in_loop(register)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        def unregister() -> None:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(sock)
                self.loop.remove_writer(sock)
            if self._misc is not None:
                self._misc.cancel()
            self.closed.set()
            self.uplink.wake.set()

        self._in_loop(unregister)

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(lambda: self.loop.add_writer(sock, self._write))

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        def unregister() -> None:
            with contextlib.suppress(Exception):
                self.loop.remove_writer(sock)

        self._in_loop(unregister)

    def _read(self) -> None:
        self.client.loop_read()

    def _write(self) -> None:
        self.client.loop_write()

    async def _misc_loop(self) -> None:
        # Keep-alive pings and timeouts: paho wants loop_misc() about once a second.
        while self.client.loop_misc() == mqtt.MQTT_ERR_SUCCESS:  # noqa: ASYNC110 - periodic
            await asyncio.sleep(1.0)

    # paho protocol callbacks (loop thread)
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self.connack_reason = reason
        if not self.connack.done():
            self.connack.set_result(reason)

    def version_refused(self) -> bool:
        """The broker refused this protocol version: a CONNACK saying so, or (after our
        CONNECT went out) closing the connection without any CONNACK."""
        if self.connack_reason is not None:
            return bool(self.connack_reason.value == UNSUPPORTED_PROTOCOL)
        return self.closed.is_set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if not self.connack.done():
            self.connack.set_result(reason)
        self.closed.set()
        self.uplink.wake.set()

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        row_id = self.inflight.pop(mid, None)
        topic = self.topics.pop(mid, "")
        if not self.inflight:
            self.drained.set()
        if row_id is None or row_id < 0:
            return
        if reason.is_failure:
            # The broker refused it (ACL, quota): the row stays, its topic is parked.
            self.uplink.refused_publish(topic, str(reason))
            return
        self.uplink.acked(row_id, topic)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        handler = self.uplink.on_command
        if handler is not None:
            handler(self, message)

    def close(self) -> None:
        if self._misc is not None:
            self._misc.cancel()
        if self._sock is not None:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self._sock)
                self.loop.remove_writer(self._sock)
        sock = self.client.socket()
        if sock is not None:
            # Close without DISCONNECT, so the broker publishes our last will.
            with contextlib.suppress(OSError):
                sock.close()
        if self._tls is not None:
            self._tls.close_all()
        # paho may still call these from its own cleanup (garbage collection of a client
        # whose socket it did not see closed), possibly after the loop is gone.
        self.client.on_socket_close = None
        self.client.on_socket_unregister_write = None


class MqttUplink:
    """Keeps an MQTT session up and drains the outbox through it."""

    def __init__(
        self,
        config: AgentConfig,
        store: Store,
        *,
        on_state: Callable[[bool], None] | None = None,
        emit: Emit | None = None,
        inc: Callable[..., None] | None = None,
    ) -> None:
        self.config = config
        self.emit = emit
        self.inc = inc
        self.refused = RefusedTopics(config.mqtt.reconnect_min_s, config.mqtt.reconnect_max_s)
        self.store = store
        self.stats = UplinkStats()
        self.backoff = Backoff(config.mqtt.reconnect_min_s, config.mqtt.reconnect_max_s)
        self.bucket = TokenBucket(config.mqtt.max_messages_per_s, config.mqtt.max_inflight)
        self.on_command: Callable[[_Connection, mqtt.MQTTMessage], None] | None = None
        self.on_connected: Callable[[_Connection], None] | None = None
        # Whether acknowledged rows are kept for resend requests (the daemon hands in the
        # running config's setting, which a reload may change).
        self.keep_delivered: Callable[[], bool] = lambda: config.sync.keep_delivered_s > 0
        self.wake = asyncio.Event()
        self._stop_ev = asyncio.Event()
        self.idle = asyncio.Event()
        self._on_state = on_state
        self._acks: list[int] = []
        self._deleting: set[int] = set()
        self._ack_task: asyncio.Task[None] | None = None
        self._conn: _Connection | None = None
        self._will: tuple[int, str] | None = None
        self._birth: bytes | None = None  # this connection's `online` status, as published
        self.status_topic = f"{config.topic_root}/status"
        cfg = config.mqtt
        self.hosts = Failover(
            cfg.nodes(), rest_min_s=cfg.reconnect_min_s, rest_max_s=cfg.reconnect_max_s
        )
        self.node = self.hosts.current  # of the current (or next) attempt
        self._logged: set[str] = set()  # errors logged since the last accepted session
        self.where = str(self.node)
        self._trial = False  # trying 3.1.1 after MQTT 5 was refused (auto)
        self._refusal: str | None = None  # the broker's answer to MQTT 5, while trying 3.1.1

    # -- called by the daemon ----------------------------------------------------------------

    def notify(self) -> None:
        """New rows are in the outbox."""
        self.wake.set()

    def note_error(self, message: str, *, hint: bool = True) -> None:
        """Remember an error; logged in full once until a session is accepted (with several
        nodes failing in turn, each one's error is logged once, not once per round). A
        configured value that makes a broker refuse or drop connections is named with it
        (`refusal_hint`)."""
        if hint and (why := refusal_hint(self.config)):
            message = f"{message} ({why})"
        if message not in self._logged:
            log.warning("mqtt: %s", message)
            if len(self._logged) >= 64:
                self._logged.clear()
            self._logged.add(message)
        self.stats.last_error = message

    def refused_publish(self, topic: str, reason: str) -> None:
        """A PUBACK refused an outbox row: park its topic, count, announce a new episode."""
        kind = topic.rsplit("/", 1)[-1]
        if self.inc is not None:
            self.inc("mqtt_publish_refused", kind=kind)
        if self.refused.refused(topic, reason, time.monotonic()):
            self.note_error(
                f"broker refuses publishes to {topic}: {reason}; kept in the outbox", hint=False
            )
            if self.emit is not None:
                self.emit("uplink.refused", "warning", topic=topic, reason=reason)

    def acked(self, row_id: int, topic: str = "") -> None:
        """A PUBACK arrived for an outbox row."""
        if self.refused.accepted(topic):
            log.info("mqtt: the broker accepts publishes to %s again", topic)
        self.stats.acked += 1
        self._acks.append(row_id)
        self._deleting.add(row_id)
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = asyncio.get_running_loop().create_task(self._flush_acks())
        self.wake.set()

    async def _flush_acks(self) -> None:
        while self._acks:
            ids, self._acks = self._acks, []
            await self.store.call(ack_outbox(ids, keep=self.keep_delivered()))
            self._deleting.difference_update(ids)

    # -- the session --------------------------------------------------------------------------

    def _status_body(self, state: str, seq: int, msg_id: str) -> bytes:
        return dumps(
            {
                "device": self.config.device.id,
                "seq": seq,
                "msg_id": msg_id,
                "ts": round(time.time(), 6),
                "state": state,
                "tenant": self.config.device.tenant,
                "site": self.config.device.site,
            }
        )

    async def _allocate_status(self) -> tuple[int, str, int, str]:
        """The status sequence number of the next connection, with two fresh msg_ids.

        `status` is a state topic: its `seq` numbers connections, and the `online` and
        `offline` of one connection share it. The number is reused by every attempt until
        one connection is accepted, so failed attempts do not burn numbers.
        """

        def op(txn: Txn) -> int:
            saved = get_json(txn, "status_reservation", _check_reservation)
            if saved is not None and not saved["used"]:
                return int(saved["seq"])
            seq = txn.next_seq("status")
            _set_meta(txn, "status_reservation", {"seq": seq, "used": False})
            return seq

        seq = await self.store.call(op)
        return seq, uuid.uuid4().hex, seq, uuid.uuid4().hex

    async def _use_status_reservation(self) -> None:
        def op(txn: Txn) -> None:
            saved = get_json(txn, "status_reservation", _check_reservation)
            if saved is not None:
                saved["used"] = True
                _set_meta(txn, "status_reservation", saved)

        await self.store.call(op)

    # -- protocol negotiation -------------------------------------------------------------

    async def _first_protocol(self) -> str:
        """The version to try first with this node: the fixed setting, or for `auto` MQTT 5
        unless this node refused it before (remembered in the store's meta table)."""
        setting = self.config.mqtt.protocol
        self._trial = False
        self.stats.protocol_fallback = False
        if setting != "auto":
            return setting
        key = protocol_key(self.node.host, self.node.port)
        saved = await self.store.call(lambda txn: get_json(txn, key, _check_protocol))
        if saved is None:
            return "5"
        self.stats.protocol_fallback = True
        log.info(
            "mqtt: using MQTT 3.1.1 with %s, which refused MQTT 5 before (%s)",
            self.where,
            saved.get("reason", "unsupported protocol version"),
        )
        return "3.1.1"

    async def _accepted_protocol(self, version: str) -> None:
        """A CONNACK accepted `version`: remember a fallback, forget it when 5 is accepted."""
        self.stats.protocol = version
        key = protocol_key(self.node.host, self.node.port)
        if self._trial:
            self._trial = False
            self.stats.protocol_fallback = True
            reason = self._refusal or "unsupported protocol version"
            log.warning(
                "mqtt: %s refused MQTT 5 (%s) and accepted 3.1.1: using 3.1.1 with it from "
                "now on (remembered; features needing MQTT 5 degrade, see docs/mqtt.md)",
                self.where,
                reason,
            )
            value = {"protocol": "3.1.1", "reason": reason, "at": round(time.time(), 3)}
            await self.store.call(lambda txn: _set_meta(txn, key, value))
        elif version == "5":
            self.stats.protocol_fallback = False
            await self.store.call(
                lambda txn: txn.conn.execute("DELETE FROM meta WHERE key = ?", (key,))
            )

    def _version_refused(self, version: str, why: str) -> tuple[str, bool]:
        """The broker refused `version`: the version to try next, and whether at once."""
        setting = self.config.mqtt.protocol
        if setting == "auto" and version == "5" and not self._trial:
            self._trial, self._refusal = True, why
            log.debug("mqtt: %s refused MQTT 5 (%s); trying MQTT 3.1.1", self.where, why)
            return "3.1.1", True
        if setting == "auto" and version == "3.1.1" and not self._trial and why == NO_CONNACK:
            # This node took 3.1.1 before (remembered): a close before any answer is a node
            # that is not ready (a cluster electing leaders), not a refusal of the version.
            self.note_error(
                f"broker {self.where} closed the connection before answering; it accepted "
                "MQTT 3.1.1 before, trying it again"
            )
            return "3.1.1", False
        if setting == "auto":
            # 3.1.1 failed as well (or a remembered 3.1.1 is refused now): start over with 5.
            self.note_error(f"broker {self.where} refused MQTT 5 and 3.1.1 ({why})")
            self._trial = False
            self.stats.protocol_fallback = False
            return ("5" if version == "3.1.1" else "3.1.1"), False
        other = "3.1.1" if setting == "5" else "5"
        self.note_error(
            f"broker {self.where} refused MQTT {setting} ({why}): "
            f'set mqtt.protocol = "{other}" (or "auto")'
        )
        return setting, False

    async def run(self) -> None:
        """Connect, drain, reconnect forever (until cancelled or `stop()`).

        With several nodes (`mqtt.hosts`) a failed attempt or a lost session moves on to
        the next node that `self.hosts` chooses; the protocol memory is per node.
        """
        loop = asyncio.get_running_loop()
        cfg = self.config.mqtt
        node: Node | None = None
        version = "5"
        while True:
            if self._stop_ev.is_set():
                break
            chosen = self.hosts.next()
            if chosen != node:
                node = self.node = chosen
                self.where = str(node)
                version = await self._first_protocol()
            online_seq, online_id, will_seq, will_id = await self._allocate_status()
            conn = _Connection(self, loop, version)
            self._conn = conn
            conn.client.will_set(
                self.status_topic,
                self._status_body("offline", will_seq, will_id),
                qos=1,
                retain=True,
            )
            self._will = (will_seq, will_id)
            connected = False
            sent = False
            why = "stopped"
            try:
                await asyncio.wait_for(
                    asyncio.to_thread(conn.client.connect, node.host, node.port, cfg.keepalive_s),
                    timeout=15,
                )
                sent = True
                reason = await asyncio.wait_for(asyncio.shield(conn.connack), timeout=15)
                if reason.is_failure:
                    # Never treat a refused CONNACK as a connection.
                    raise ConnectionRefusedError(f"broker refused the connection: {reason}")
                connected = True
                self.hosts.connected(node)
                await self._accepted_protocol(version)
                # Birth first: the will registered with CONNECT must never be the only state
                # a consumer sees for this connection.
                self._birth = self._status_body("online", online_seq, online_id)
                conn.client.publish(self.status_topic, self._birth, qos=1, retain=True)
                await self._use_status_reservation()
                self._set_connected(True)
                if self.on_connected is not None:
                    self.on_connected(conn)
                healthy_after = loop.time() + 10.0
                await self._drain(conn, healthy_after)
            except asyncio.CancelledError:
                why = "cancelled"
                raise
            except BaseException as err:
                why = str(err) or type(err).__name__
                if not isinstance(err, OSError | TimeoutError | ConnectionError):
                    raise  # a bug: the supervisor reports it and starts the session again
                what = why
                if sent and not connected and conn.version_refused():
                    self.stats.connect_failures += 1  # reported by _version_refused below
                elif connected:
                    self.note_error(f"connection to {self.where} lost: {what}")
                else:
                    self.stats.connect_failures += 1
                    self.note_error(
                        f"broker {self.where} unreachable: {what}; everything is kept "
                        "in the outbox and sent once it is reachable"
                    )
            finally:
                for row_id in conn.inflight.values():
                    self.refused.lost(row_id)
                if connected:
                    self._set_connected(False, why)
                conn.close()
                self._conn = None
            if self._stop_ev.is_set():
                break
            if sent and not connected and conn.version_refused():
                reason_code = conn.connack_reason
                why = str(reason_code) if reason_code is not None else NO_CONNACK
                version, at_once = self._version_refused(version, why)
                if at_once:
                    continue
            elif not connected and self._trial:
                self._trial = False  # 3.1.1 failed for another reason: next time 5 again
                version = "5"
            pause = self.hosts.lost(node, why) if connected else self.hosts.failed(node, why)
            if pause is None:  # a round in which no node answered: back off
                pause = self.backoff.next_delay()
                log.debug("mqtt: reconnecting in %.2f s", pause)
            else:
                log.log(
                    logging.INFO if connected else logging.DEBUG,
                    "mqtt: trying %s next (in %.2f s)",
                    self.hosts.current,
                    pause,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_ev.wait(), timeout=pause)

    def _set_connected(self, connected: bool, reason: str = "") -> None:
        self.stats.connected = connected
        node = self.node
        if connected:
            self.stats.connects += 1
            self.stats.connected_since = time.time()
            self.stats.host = str(node)
            log.info("mqtt: connected to %s", node)
            self.stats.last_error = None
            self._logged.clear()
            if self.emit is not None:
                self.emit(
                    "mqtt.connected", host=node.host, port=node.port, protocol=self.stats.protocol
                )
        else:
            self.stats.connected_since = None
            if self.emit is not None and not self._stop_ev.is_set():  # not a clean stop
                self.emit("mqtt.disconnected", "warning", reason=reason, host=str(node))
        if self._on_state is not None:
            self._on_state(connected)

    async def _drain(self, conn: _Connection, healthy_after: float) -> None:
        loop = asyncio.get_running_loop()
        window = self.config.mqtt.max_inflight
        # Rows read ahead of the in-flight window, so one store round trip feeds many publishes.
        pending: deque[OutboxRow] = deque()
        queued: set[int] = set()
        while not conn.closed.is_set():
            if loop.time() > healthy_after:
                self.backoff.reset()
            self.idle.clear()
            if len(pending) < window:
                exclude = set(conn.inflight.values()) | self._deleting | queued
                held = self.refused.held(time.monotonic())
                for row in await self.store.call(fetch_outbox(PREFETCH, exclude, held)):
                    pending.append(row)
                    queued.add(row.id)
            while pending and len(conn.inflight) < window and not conn.closed.is_set():
                row = pending.popleft()
                queued.discard(row.id)
                if not self.refused.may_send(row.topic, row.id, time.monotonic()):
                    continue  # its topic is refused: the row waits in the outbox
                wait = self.bucket.take(loop.time())
                if wait > 0:
                    await asyncio.sleep(wait)
                properties = None
                if row.encoding and conn.v5:
                    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                    properties.UserProperty = [("content-encoding", row.encoding)]
                    properties.ContentType = "application/json"
                info = conn.client.publish(
                    row.topic, row.payload, qos=1, retain=row.retain, properties=properties
                )
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    pending.appendleft(row)
                    queued.add(row.id)
                    break
                conn.inflight[info.mid] = row.id
                conn.topics[info.mid] = row.topic
                conn.drained.clear()
                self.stats.published += 1
            if not pending and not conn.inflight and not self._acks:
                self.idle.set()
            self.wake.clear()
            if conn.closed.is_set():
                break
            with contextlib.suppress(TimeoutError):
                # Woken by a PUBACK, new outbox rows, or the connection closing.
                await asyncio.wait_for(self.wake.wait(), timeout=0.5)
        if not self._stop_ev.is_set():
            raise ConnectionResetError("connection lost")

    def reannounce(self) -> bool:
        """Publish this connection's birth again (retained, same seq, msg_id and bytes).

        For consumers that learn who is online only from live messages (brokers that send
        retained messages to exact-topic subscribers only). Returns False when not connected.
        """
        conn, birth = self._conn, self._birth
        if conn is None or birth is None or not self.stats.connected or conn.closed.is_set():
            return False
        info = conn.client.publish(self.status_topic, birth, qos=1, retain=True)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    async def stop(self, timeout: float = 3.0) -> None:
        """Let in-flight messages be acknowledged, publish `offline`, disconnect cleanly."""
        self._stop_ev.set()
        conn = self._conn
        if conn is None or not self.stats.connected:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def left() -> float:
            return max(0.05, deadline - loop.time())

        # Drain what is queued now (final summaries, the stop event) while the link is up.
        self.idle.clear()
        self.wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle.wait(), timeout=left())
        if self._ack_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ack_task, timeout=left())
        if self._will is not None and not conn.closed.is_set():
            seq, msg_id = self._will
            info = conn.client.publish(
                self.status_topic, self._status_body("offline", seq, msg_id), qos=1, retain=True
            )
            conn.inflight[info.mid] = -1  # not an outbox row: acknowledged, never deleted
            conn.drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.drained.wait(), timeout=left())
            conn.client.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.closed.wait(), timeout=1.0)
