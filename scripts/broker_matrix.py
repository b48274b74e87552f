"""What the common brokers do with the gateway's traffic, checked against real ones here.

Starts private brokers on free loopback ports (mosquitto, nats-server with its MQTT
listener and JetStream, a RabbitMQ node with `rabbitmq_mqtt`) and, for each row of the
matrix (mosquitto spoken to with MQTT 5 and with 3.1.1, NATS, RabbitMQ), checks:

- protocol: the version the gateway's uplink settles on with `mqtt.protocol = "auto"`
  (for the mosquitto 3.1.1 row: with "3.1.1" set), and what the broker answered to MQTT 5;
- retained to wildcard: a retained `status` reaches a new subscriber of `edge/+/+/+/#`
  (and one of the exact topic, for comparison);
- $share: two subscribers of `$share/g/edge/+/+/+/results`, N messages published: how
  many arrived, split how, and what the SUBACK said;
- refused publish: a QoS 1 publish to a topic the broker's ACL denies (mosquitto only; an
  `acl_file` here): the PUBACK's reason code, and whether the message went anywhere;
- loss across a restart: a QoS 1 stream from bare paho, the broker restarted mid-stream
  (SIGTERM, same data directory), a persistent-session subscriber: acknowledged seqs that
  never arrived.

Prints a Markdown table and the JSON of every figure. With `--record FILE` it writes the
table, the versions and the date into FILE between `<!-- broker-matrix:start -->` and
`<!-- broker-matrix:end -->` (under a "## Tested here" heading, appended when missing).

    python scripts/broker_matrix.py
    python scripts/broker_matrix.py --restarts 3 --rate 2000 --record docs/brokers.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the private broker helpers live with the tests

from edge_agent.config import parse_config  # noqa: E402
from edge_agent.store.db import Store, enqueue  # noqa: E402
from edge_agent.sync.mqtt import MqttUplink, protocol_key  # noqa: E402
from tests.broker import MOSQUITTO, Mosquitto, ServerProcess  # noqa: E402
from tests.nats import Nats  # noqa: E402
from tests.rabbitmq import RabbitMQ, rabbitmq_version  # noqa: E402

START, END = "<!-- broker-matrix:start -->", "<!-- broker-matrix:end -->"
SHARE_FILTER = "$share/g/edge/+/+/+/results"


def _until(predicate: Callable[[], Any], timeout: float) -> bool:
    """Poll until `predicate` holds; False (not an error) when `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class Probe:
    """A bare paho client: connects (waiting for the CONNACK), optionally subscribes, and
    records what arrives and what the broker acknowledged."""

    def __init__(
        self,
        port: int,
        protocol: str,
        client_id: str,
        *,
        topic_filter: str | None = None,
        persistent: bool = False,
    ) -> None:
        self.v5 = protocol == "5"
        version = MQTTProtocolVersion.MQTTv5 if self.v5 else MQTTProtocolVersion.MQTTv311
        extra: dict[str, Any] = {} if self.v5 else {"clean_session": not persistent}
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=version,
            **extra,
        )
        self.lock = threading.Lock()
        self.messages: list[tuple[str, bytes, bool]] = []
        self.suback: list[str] = []
        self.pubacks: dict[int, str] = {}
        self.acked = 0
        self.connack: Any = None
        self.session_present: list[bool] = []  # the CONNACK flag of every connection
        self.connack_props: dict[str, Any] = {}
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.filter = topic_filter
        self.client.reconnect_delay_set(0.1, 1.0)
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        props = None
        if self.v5 and persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        kwargs: dict[str, Any] = {"clean_start": not persistent} if self.v5 else {}
        self.client.connect("127.0.0.1", port, 30, properties=props, **kwargs)
        self.client.loop_start()
        if not self._connected.wait(10):
            self.close()
            raise RuntimeError(f"{client_id}: no CONNACK from port {port}")
        if topic_filter is not None and not self._subscribed.wait(10):
            self.close()
            raise RuntimeError(f"{client_id}: no SUBACK for {topic_filter}")

    def _on_connect(self, c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connack = reason
        self.session_present.append(bool(flags.session_present))
        if props is not None and hasattr(props, "json"):
            self.connack_props = props.json()
        if not reason.is_failure:
            if self.filter is not None:
                c.subscribe(self.filter, qos=1)
            self._connected.set()

    def _on_subscribe(self, c: Any, u: Any, mid: int, codes: list[Any], props: Any) -> None:
        self.suback = [str(code) for code in codes]
        self._subscribed.set()

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def _on_publish(self, c: Any, u: Any, mid: int, reason: Any, props: Any) -> None:
        with self.lock:
            self.pubacks[mid] = f"0x{reason.value:02X} {reason}"
            self.acked += 1

    def received(self) -> list[tuple[str, bytes, bool]]:
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        with suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def probe(port: int, protocol: str, client_id: str, **kwargs: Any) -> Iterator[Probe]:
    p = Probe(port, protocol, client_id, **kwargs)
    try:
        yield p
    finally:
        p.close()


@dataclass
class Row:
    """One line of the matrix: a broker and the MQTT version the probes speak to it."""

    name: str
    kind: str  # mosquitto | nats | rabbitmq
    protocol: str  # what the probes speak: "5" or "3.1.1"
    setting: str  # the gateway's mqtt.protocol for the negotiation check
    server: ServerProcess
    port: int
    device: str
    results: dict[str, Any] = field(default_factory=dict)

    def topic(self, kind: str) -> str:
        return f"edge/t1/s1/{self.device}/{kind}"


# -- the checks ------------------------------------------------------------------------


def check_negotiation(row: Row, workdir: Path) -> dict[str, Any]:
    """The gateway's own uplink with `row.setting`: the version it settles on."""
    config = parse_config(
        {
            "device": {"id": row.device, "tenant": "t1", "site": "s1"},
            "mqtt": {
                "port": row.port,
                "protocol": row.setting,
                "reconnect_min_s": 0.05,
                "reconnect_max_s": 0.2,
            },
        },
        source="broker-matrix",
        environ={},
    )
    store = Store(workdir / f"{row.device}.db", device_id=row.device, topic_root=config.topic_root)
    store.open()
    try:
        store.submit(enqueue("heartbeat", {"n": 1})).result(5)
        uplink = MqttUplink(config, store)

        async def run() -> None:
            task = asyncio.create_task(uplink.run())
            try:
                deadline = time.monotonic() + 20
                while uplink.stats.acked < 1 and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)  # the uplink offers no event for an ack
            finally:
                await uplink.stop(timeout=2)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        asyncio.run(run())
        key = protocol_key(config.mqtt.host, config.mqtt.port)

        def remembered(txn: Any) -> Any:
            found = txn.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return None if found is None else json.loads(found[0])

        saved = store.submit(remembered).result(5)
    finally:
        store.close()
    return {
        "setting": row.setting,
        "protocol": uplink.stats.protocol if uplink.stats.acked else None,
        "fallback": uplink.stats.protocol_fallback,
        "refused_5": (saved or {}).get("reason"),
        "last_error": uplink.stats.last_error,
    }


def check_retained(row: Row) -> dict[str, Any]:
    """A retained status, then a new wildcard subscriber and a new exact-topic one."""
    topic = row.topic("status")
    with probe(row.port, row.protocol, f"{row.device}-pub") as pub:
        pub.client.publish(topic, b'{"state":"online"}', qos=1, retain=True).wait_for_publish(10)
        out: dict[str, Any] = {}
        for name, topic_filter in (("wildcard", "edge/+/+/+/#"), ("exact", topic)):
            with probe(
                row.port, row.protocol, f"{row.device}-{name}", topic_filter=topic_filter
            ) as sub:
                got = _until(lambda s=sub: any(m[0] == topic for m in s.received()), 3.0)
                out[name] = got
        pub.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)  # clear it
    return out


def check_share(row: Row, count: int) -> dict[str, Any]:
    """Two members of one shared subscription; `count` messages: who got what."""
    topic = row.topic("results")
    with (
        probe(row.port, row.protocol, f"{row.device}-sh1", topic_filter=SHARE_FILTER) as a,
        probe(row.port, row.protocol, f"{row.device}-sh2", topic_filter=SHARE_FILTER) as b,
        probe(row.port, row.protocol, f"{row.device}-shpub") as pub,
    ):
        for seq in range(count):
            pub.client.publish(topic, json.dumps({"seq": seq}).encode(), qos=1)
        _until(lambda: pub.acked >= count, 10)
        _until(lambda: len(a.received()) + len(b.received()) >= count, 3.0)
        got_a, got_b = len(a.received()), len(b.received())
        shared = a.connack_props.get("SharedSubscriptionAvailable")
        return {
            "published": count,
            "received": [got_a, got_b],
            "suback": a.suback,
            "connack_shared_available": shared,
        }


def check_refused(row: Row) -> dict[str, Any]:
    """A QoS 1 publish the ACL denies: the PUBACK's reason, and whether it went anywhere."""
    if row.kind != "mosquitto":
        return {"configured": False}
    topic = row.topic("denied")
    with (
        probe(row.port, row.protocol, f"{row.device}-aclsub", topic_filter="edge/#") as sub,
        probe(row.port, row.protocol, f"{row.device}-aclpub") as pub,
    ):
        info = pub.client.publish(topic, b'{"seq":1}', qos=1)
        _until(lambda: info.mid in pub.pubacks, 10)
        delivered = _until(lambda: any(m[0] == topic for m in sub.received()), 2.0)
        return {"configured": True, "puback": pub.pubacks.get(info.mid), "delivered": delivered}


def _ranges(seqs: list[int]) -> list[list[int]]:
    """[first, last] runs of consecutive numbers."""
    out: list[list[int]] = []
    for seq in seqs:
        if out and out[-1][1] == seq - 1:
            out[-1][1] = seq
        else:
            out.append([seq, seq])
    return out


def _acked(info: mqtt.MQTTMessageInfo) -> bool:
    """Whether the broker acknowledged the message. (`is_published()` raises for a message
    queued while disconnected even after paho sent it on reconnect and got its PUBACK.)"""
    return bool(info._published)


def check_restart(row: Row, rate: int, restarts: int, interval: float) -> dict[str, Any]:
    """A QoS 1 stream from bare paho with `restarts` broker restarts in it; the
    acknowledged seqs a persistent-session subscriber never got."""
    topic = row.topic("stream")
    durable = f"{row.device}-durable"
    sub = Probe(row.port, row.protocol, durable, topic_filter=topic, persistent=True)
    pub = Probe(row.port, row.protocol, f"{row.device}-stream", persistent=True)
    sent: list[tuple[int, mqtt.MQTTMessageInfo]] = []
    stop = threading.Event()

    def publish() -> None:
        seq = 0
        began = time.monotonic()
        while not stop.is_set():
            if len(sent) - pub.acked >= 1000 or seq >= rate * (time.monotonic() - began):
                time.sleep(0.002)
                continue
            seq += 1
            sent.append((seq, pub.client.publish(topic, str(seq).encode(), qos=1)))

    outages: list[float] = []
    thread = threading.Thread(target=publish, name="matrix-publisher")
    thread.start()
    try:
        for _ in range(restarts):
            time.sleep(interval)
            down = time.monotonic()
            if isinstance(row.server, RabbitMQ):
                row.server.restart()
            else:
                row.server.stop()
                row.server.start()
            outages.append(round(time.monotonic() - down, 2))
        time.sleep(interval)
    finally:
        stop.set()
        thread.join()
    _until(lambda: all(_acked(info) for _, info in sent), 30)
    acked = {seq for seq, info in sent if _acked(info)}

    def got() -> set[int]:
        return {int(payload) for t, payload, _ in sub.received() if t == topic}

    _until(lambda: acked <= got(), 30)
    received = got()
    arrivals = len([m for m in sub.received() if m[0] == topic])
    pub.close()
    sub.close()
    return {
        "published": len(sent),
        "lost_ranges": _ranges(sorted(acked - received))[:20],
        "acked": len(acked),
        "received": len(received),
        "duplicates": arrivals - len(received),
        "lost_acked": len(acked - received),
        "restarts": restarts,
        "restart_seconds": outages,
        # Reconnections of the durable subscriber that found no session on the broker.
        "session_lost": sub.session_present[1:].count(False),
    }


# -- brokers ---------------------------------------------------------------------------


def _acl_mosquitto(workdir: Path, queue: int) -> Mosquitto:
    """mosquitto with persistence (for the restart check) and an ACL denying `denied`."""
    acl = workdir / "acl"
    acl.write_text("topic readwrite #\ntopic deny edge/+/+/+/denied\n")
    broker = Mosquitto(workdir, persistence=True)
    # mosquitto drops what goes beyond max_queued_messages (default 1,000) for a
    # disconnected durable session: at the stream's rate that is a setting showing, not the
    # restart. A cloud consumer's broker needs a larger queue anyway.
    extra = f"acl_file {acl}\nmax_queued_messages {queue}\n"
    broker._extra = extra  # type: ignore[attr-defined]  # read by Mosquitto.start
    return broker


def versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        return (done.stdout or done.stderr).strip().splitlines()[0]

    return {
        "mosquitto": first_line([MOSQUITTO, "-h"]).removeprefix("mosquitto version "),
        "nats-server": first_line(["nats-server", "--version"]).split("v")[-1],
        "rabbitmq": rabbitmq_version(),
        "paho-mqtt": paho.mqtt.__version__,
    }


def run_rows(workdir: Path, args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    for protocol in ("5", "3.1.1") if "mosquitto" in args.brokers else ():
        broker = _acl_mosquitto(workdir, args.mosquitto_queue)
        device = "gw-m5" if protocol == "5" else "gw-m311"
        setting = "auto" if protocol == "5" else "3.1.1"
        rows.append(
            Row(
                f"mosquitto (MQTT {protocol})",
                "mosquitto",
                protocol,
                setting,
                broker,
                broker.port,
                device,
            )
        )
    if "nats" in args.brokers:
        nats = Nats(workdir)
        rows.append(Row("NATS", "nats", "3.1.1", "auto", nats, nats.mqtt_port, "gw-nats"))
    if "rabbitmq" in args.brokers:
        rmq = RabbitMQ(workdir)
        rows.append(Row("RabbitMQ", "rabbitmq", "3.1.1", "auto", rmq, rmq.mqtt_port, "gw-rmq"))
    for row in rows:
        began = time.monotonic()
        row.server.start()
        row.results["start_seconds"] = round(time.monotonic() - began, 2)
        try:
            print(f"{row.name}: negotiation", file=sys.stderr)
            row.results["negotiation"] = check_negotiation(row, workdir)
            print(f"{row.name}: retained", file=sys.stderr)
            row.results["retained"] = check_retained(row)
            print(f"{row.name}: $share", file=sys.stderr)
            row.results["share"] = check_share(row, args.share_count)
            print(f"{row.name}: refused publish", file=sys.stderr)
            row.results["refused"] = check_refused(row)
            print(f"{row.name}: restarts", file=sys.stderr)
            row.results["restart"] = check_restart(row, args.rate, args.restarts, args.interval)
        finally:
            row.server.stop()
    return rows


# -- the report ------------------------------------------------------------------------


def _cells(row: Row) -> list[str]:
    r = row.results
    neg = r["negotiation"]
    if neg["protocol"] is None:
        protocol = f"none ({neg['last_error']})"
    elif neg["fallback"]:
        protocol = f"3.1.1 (MQTT 5: {neg['refused_5']})"
    else:
        protocol = f"{neg['protocol']}" + (" (set)" if neg["setting"] != "auto" else "")
    ret = r["retained"]
    retained = "yes" if ret["wildcard"] else f"no (exact topic: {'yes' if ret['exact'] else 'no'})"
    sh = r["share"]
    total = sum(sh["received"])
    share = f"{total}/{sh['published']} ({sh['received'][0]}+{sh['received'][1]})"
    if total == 0:
        share += f", SUBACK {', '.join(sh['suback'])}"
    ref = r["refused"]
    if not ref["configured"]:
        refused = "not configured here"
    elif row.protocol == "5":
        refused = f"PUBACK {ref['puback']}" + (", delivered" if ref["delivered"] else "")
    else:
        refused = f"invisible (PUBACK {ref['puback']}" + (
            ", delivered)" if ref["delivered"] else ", not delivered)"
        )
    rs = r["restart"]
    loss = f"{rs['lost_acked']} of {rs['acked']:,} acked ({rs['restarts']} restarts)"
    return [row.name, protocol, retained, share, refused, loss]


def markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    head = [
        "broker",
        'daemon\'s `mqtt.protocol = "auto"`',
        "retained → `edge/+/+/+/#`",
        f"`{SHARE_FILTER}`, 2 members",
        "publish refused by ACL",
        "acked QoS 1 lost across restarts",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    v = meta["versions"]
    note = (
        f"Run on {meta['date']} with `python scripts/broker_matrix.py` (mosquitto "
        f"{v['mosquitto']}, nats-server {v['nats-server']} with JetStream, RabbitMQ "
        f"{v['rabbitmq']} with `rabbitmq_mqtt`; probes: paho-mqtt {v['paho-mqtt']}). "
        f"Restart check: {meta['rate']} QoS 1 messages/s from bare paho, the broker restarted "
        f"(SIGTERM, same data) every {meta['interval']:g} s, a persistent-session subscriber; "
        f"mosquitto with `max_queued_messages {meta['mosquitto_queue']}`."
    )
    lines += ["", textwrap.fill(note, width=92)]
    return "\n".join(lines)


def record(path: Path, text: str) -> None:
    """Put `text` between the markers; without them, it becomes the "## Tested here"
    section (replacing what was there) or is appended as one."""
    block = f"{START}\n{text}\n{END}"
    old = path.read_text() if path.exists() else "# Brokers\n"
    heading = "## Tested here"
    if START in old and END in old:
        new = old[: old.index(START)] + block + old[old.index(END) + len(END) :]
    elif heading in old:
        at = old.index(heading)
        after = old.find("\n## ", at + len(heading))
        rest = "" if after < 0 else old[after:]
        new = old[:at] + f"{heading}\n\n{block}\n" + rest
    else:
        new = old.rstrip("\n") + f"\n\n{heading}\n\n{block}\n"
    path.write_text(new)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--brokers",
        type=lambda v: v.split(","),
        default=["mosquitto", "nats", "rabbitmq"],
        help="comma-separated subset of mosquitto,nats,rabbitmq",
    )
    parser.add_argument(
        "--mosquitto-queue",
        type=int,
        default=100_000,
        help="mosquitto's max_queued_messages (its default, 1000, is small for this rate)",
    )
    parser.add_argument("--share-count", type=int, default=100)
    parser.add_argument("--rate", type=int, default=2000, help="stream messages per second")
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between restarts")
    parser.add_argument("--record", type=Path, help="write the table into this Markdown file")
    parser.add_argument("--json", type=Path, help="write the JSON here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="broker-matrix-") as tmp:
        rows = run_rows(Path(tmp), args)
    meta = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        "versions": versions(),
        "rate": args.rate,
        "interval": args.interval,
        "mosquitto_queue": args.mosquitto_queue,
    }
    table = markdown(rows, meta)
    report = {**meta, "rows": {row.name: row.results for row in rows}}
    print(table)
    print()
    print(json.dumps(report, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if args.record:
        record(args.record, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
