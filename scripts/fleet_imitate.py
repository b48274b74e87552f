"""Imitated gateways: what N gateways at the product's default cadence cost one broker.

A real gateway is an `edge-agent run` process; on a 2-core machine a few dozen of them
saturate the CPU long before a broker notices them (see `scripts/fleet_sim.py`). To put a
broker under the load of a real fleet, this opens N MQTT connections from one asyncio
process and has each of them do on the wire what a gateway does:

- CONNECT (MQTT 3.1.1, clean session, keep-alive 30 s) with a retained `offline` will on
  `<prefix>/<tenant>/<site>/<device>/status`, then the retained `online` birth;
- SUBSCRIBE to its command filter `<root>/cmd/+` and to the fleet's `<prefix>/announce`;
- every `--heartbeat-interval` s a QoS 1 heartbeat, every `--summary-interval` s one QoS 1
  summary per sensor and model, each of the size a real gateway sends (fleet_sim measures
  those sizes from real agents and passes them in), with a random phase per gateway;
- PINGREQ when nothing was sent for a keep-alive interval (30 s), as paho does.

Every PUBLISH is QoS 1 and its PUBACK is awaited, as the daemon's outbox does. The packets
are written by the small encoder below (CONNECT, PUBLISH, SUBSCRIBE, PINGREQ): a full
client per connection would make this process, not the broker, the bottleneck.

With `--tls` every connection is TLS, verifying the broker against `--cafile` (and with
`--certfile`/`--keyfile`, presenting a client certificate), as a gateway with `mqtt.tls`.

On SIGTERM, SIGINT or after `--duration` it prints JSON: connections up, messages sent and
acknowledged per kind, connect failures, the connect ramp (from the first connection
attempt to the last CONNACK: seconds, connects/s, per-connection connect latency) and, with
`--tls`, the TLS version and cipher of one connection.

    python scripts/fleet_imitate.py --port 1883 --gateways 10000 --duration 120
    python scripts/fleet_imitate.py --port 8883 --gateways 10000 --tls --cafile ca.crt
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import signal
import ssl
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

MAX_GATEWAYS = 50_000
KEEPALIVE_S = 30


# -- MQTT 3.1.1 packets --------------------------------------------------------------------------


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, keepalive: int, will_topic: str, will: bytes) -> bytes:
    """CONNECT, MQTT 3.1.1, clean session, a QoS 1 retained will."""
    flags = 0x02 | 0x04 | (1 << 3) | 0x20  # clean, will, will QoS 1, will retain
    variable = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    payload = _string(client_id) + _string(will_topic) + _string(will)
    body = variable + payload
    return bytes([0x10]) + _remaining_length(len(body)) + body


def publish_packet(topic: str, payload: bytes, mid: int, retain: bool = False) -> bytes:
    """PUBLISH at QoS 1."""
    body = _string(topic) + struct.pack("!H", mid) + payload
    return bytes([0x32 | (1 if retain else 0)]) + _remaining_length(len(body)) + body


def subscribe_packet(mid: int, filters: list[str]) -> bytes:
    body = struct.pack("!H", mid) + b"".join(_string(f) + b"\x01" for f in filters)
    return bytes([0x82]) + _remaining_length(len(body)) + body


PINGREQ = b"\xc0\x00"


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One packet: (type, body)."""
    head = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    return head >> 4, await reader.readexactly(length)


# -- one gateway ---------------------------------------------------------------------------------


@dataclass
class Totals:
    """What the whole imitated fleet did."""

    up: int = 0
    connect_failures: int = 0
    lost: int = 0
    sent: dict[str, int] = field(default_factory=dict)
    acked: int = 0
    first_attempt: float | None = None  # time.time() of the first connection attempt
    last_up: float | None = None  # time.time() of the last CONNACK
    connect_s: list[float] = field(default_factory=list)  # attempt to CONNACK, each gateway
    tls: dict[str, Any] | None = None  # version and cipher of the first TLS connection


def body(kind: str, device: str, seq: int, size: int, **extra: Any) -> bytes:
    """A JSON envelope padded to about `size` bytes."""
    doc: dict[str, Any] = {"device": device, "seq": seq, "ts": round(time.time(), 6)}
    doc.update(extra)
    text = json.dumps(doc, separators=(",", ":"))
    pad = max(0, size - len(text) - 10)
    doc["pad"] = "x" * pad
    return json.dumps(doc, separators=(",", ":")).encode()


async def gateway(index: int, args: argparse.Namespace, totals: Totals) -> None:
    device = f"imit-{index:05d}"
    root = f"{args.prefix}/{args.tenant}/{args.site}/{device}"
    seqs: dict[str, int] = {}
    mid = 0

    def next_mid() -> int:
        nonlocal mid
        mid = mid % 65535 + 1
        return mid

    def next_seq(kind: str) -> int:
        seqs[kind] = seqs.get(kind, 0) + 1
        return seqs[kind]

    attempt = time.time()
    if totals.first_attempt is None:
        totals.first_attempt = attempt
    try:
        if args.context is None:
            reader, writer = await asyncio.open_connection(args.host, args.port)
        else:
            reader, writer = await asyncio.open_connection(args.host, args.port, ssl=args.context)
    except OSError:  # TimeoutError is an OSError
        totals.connect_failures += 1
        return
    if args.context is not None and totals.tls is None:
        tls = writer.get_extra_info("ssl_object")
        if tls is not None:
            totals.tls = {"version": tls.version(), "cipher": tls.cipher()}
    status_seq = next_seq("status")
    will = body("status", device, status_seq, 150, state="offline")
    writer.write(connect_packet(f"edge-agent-fleet-{device}", KEEPALIVE_S, f"{root}/status", will))
    try:
        kind, data = await asyncio.wait_for(read_packet(reader), 30)
    except (OSError, asyncio.IncompleteReadError):  # TimeoutError is an OSError
        totals.connect_failures += 1
        writer.close()
        return
    if kind != 2 or len(data) < 2 or data[1] != 0:
        totals.connect_failures += 1
        writer.close()
        return
    totals.up += 1
    totals.last_up = time.time()
    totals.connect_s.append(totals.last_up - attempt)
    last_write = time.monotonic()

    def publish(kind: str, payload: bytes, retain: bool = False) -> None:
        nonlocal last_write
        writer.write(publish_packet(f"{root}/{kind}", payload, next_mid(), retain))
        totals.sent[kind] = totals.sent.get(kind, 0) + 1
        last_write = time.monotonic()

    async def acks() -> None:
        while True:
            kind, _ = await read_packet(reader)
            if kind == 4:  # PUBACK
                totals.acked += 1

    publish("status", body("status", device, status_seq, 150, state="online"), retain=True)
    writer.write(subscribe_packet(next_mid(), [f"{root}/cmd/+", f"{args.prefix}/announce"]))
    rng = random.Random(index)
    now = time.monotonic()
    due = {
        "heartbeat": now + rng.uniform(0, args.heartbeat_interval),
        "summary": now + rng.uniform(0, args.summary_interval),
    }
    reading = asyncio.ensure_future(acks())
    try:
        # One timer per gateway and no other wake-ups: the broker, not this loop, is measured.
        while not reading.done():
            now = time.monotonic()
            if now >= due["heartbeat"]:
                seq = next_seq("heartbeat")
                publish("heartbeat", body("heartbeat", device, seq, args.hb_bytes))
                due["heartbeat"] += args.heartbeat_interval
            if now >= due["summary"]:
                for _ in range(args.summaries):
                    seq = next_seq("summary")
                    publish("summary", body("summary", device, seq, args.summary_bytes))
                due["summary"] += args.summary_interval
            if now - last_write >= KEEPALIVE_S:
                writer.write(PINGREQ)
                last_write = now
            await writer.drain()
            await asyncio.sleep(max(0.01, min(*due.values(), last_write + KEEPALIVE_S) - now))
        totals.lost += 1  # the broker closed the connection
    except (OSError, ConnectionError):
        totals.lost += 1
    finally:
        reading.cancel()
        writer.close()


async def fleet(args: argparse.Namespace) -> Totals:
    totals = Totals()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[None]] = []
    # Connections start in batches every 0.1 s: a sleep per connection would stretch the
    # ramp once the loop is busy with the gateways already up.
    batch = max(1, round(args.connect_rate / 10))
    while len(tasks) < args.gateways and not stop.is_set():
        for _ in range(min(batch, args.gateways - len(tasks))):
            tasks.append(asyncio.ensure_future(gateway(len(tasks), args, totals)))
        await asyncio.sleep(0.1)
    print(json.dumps({"ramp_done": time.time(), "up": totals.up}), flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=args.duration)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return totals


def ramp(args: argparse.Namespace, totals: Totals) -> dict[str, Any]:
    """How long the fleet took to connect: first attempt to last CONNACK."""
    if totals.first_attempt is None or totals.last_up is None:
        return {"offered_connects_per_s": args.connect_rate, "all_up_s": None}
    seconds = totals.last_up - totals.first_attempt
    ms = sorted(s * 1000.0 for s in totals.connect_s)

    def q(p: float) -> float:
        return round(ms[min(len(ms) - 1, round(p / 100 * (len(ms) - 1)))], 1)

    return {
        "offered_connects_per_s": args.connect_rate,
        "started_at": round(totals.first_attempt, 3),
        "all_up_at": round(totals.last_up, 3),
        "all_up_s": round(seconds, 2),
        "connects_per_s": round(totals.up / seconds, 1) if seconds > 0 else None,
        "connect_ms": {"p50": q(50), "p90": q(90), "p99": q(99), "max": q(100)},
    }


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """A client context as the daemon's: verify the broker, TLS 1.2 or later."""
    if not args.tls:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if args.cafile:
        context.load_verify_locations(cafile=args.cafile)
    else:
        context.load_default_certs()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if args.certfile and args.keyfile:
        context.load_cert_chain(args.certfile, args.keyfile)
    return context


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--prefix", default="edge")
    p.add_argument("--tenant", default="fleet")
    p.add_argument("--site", default="imit")
    p.add_argument("--gateways", type=int, default=1000, help=f"1..{MAX_GATEWAYS}")
    p.add_argument("--duration", type=float, default=120, help="seconds after the ramp")
    p.add_argument("--connect-rate", type=float, default=500, help="new connections per s")
    p.add_argument("--heartbeat-interval", type=float, default=30.0)
    p.add_argument("--summary-interval", type=float, default=60.0)
    p.add_argument("--summaries", type=int, default=2, help="summaries per interval (sensors)")
    p.add_argument("--hb-bytes", type=int, default=1100, help="heartbeat size")
    p.add_argument("--summary-bytes", type=int, default=600, help="summary size")
    p.add_argument("--tls", action="store_true", help="connect with TLS, verifying the broker")
    p.add_argument("--cafile", help="CA that signed the broker's certificate (PEM)")
    p.add_argument("--certfile", help="client certificate for mutual TLS (PEM)")
    p.add_argument("--keyfile", help="client private key for mutual TLS (PEM)")
    args = p.parse_args(argv)
    if not 1 <= args.gateways <= MAX_GATEWAYS or args.connect_rate <= 0:
        p.error(f"--gateways must be 1..{MAX_GATEWAYS}, --connect-rate > 0")
    if bool(args.certfile) != bool(args.keyfile):
        p.error("--certfile and --keyfile go together")
    args.context = tls_context(args)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, args.gateways + 256)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    totals = asyncio.run(fleet(args))
    print(
        json.dumps(
            {
                "gateways": args.gateways,
                "up": totals.up,
                "connect_failures": totals.connect_failures,
                "lost": totals.lost,
                "sent": totals.sent,
                "acked": totals.acked,
                "ramp": ramp(args, totals),
                "tls": totals.tls,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
