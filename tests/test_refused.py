"""Publishes the broker refuses (MQTT 5 PUBACK >= 0x80), against a real mosquitto with an ACL."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path
from typing import Any

from edge_agent.config import parse_config
from edge_agent.store.db import Store, Txn, outbox_depth
from edge_agent.sync.mqtt import MqttUplink
from edge_agent.sync.refused import RefusedTopics
from tests.broker import Mosquitto, collector, until

DENY_RESULTS = "topic readwrite #\ntopic deny edge/+/+/+/results\n"
ALLOW_ALL = "topic readwrite #\n"


class AclBroker(Mosquitto):
    """mosquitto with an ACL file (reloaded on SIGHUP) and a log that names every denial."""

    def __init__(self, workdir: Path, acl: str) -> None:
        super().__init__(workdir)
        self.acl = workdir / "acl"
        self.acl.write_text(acl)
        self._extra = f"acl_file {self.acl}\nlog_type debug\n"

    def allow(self, acl: str) -> None:
        self.acl.write_text(acl)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def denials(self) -> int:
        return self.log.read_text(errors="replace").count("Denied PUBLISH")


def test_refused_topic_is_parked_not_hot_looped_and_leaves_once_allowed(tmp_path: Path) -> None:
    """20 `results` rows denied by the ACL: each refused once, then one probe per backoff
    step; `events` keep flowing; after the ACL allows them (SIGHUP) they are delivered."""
    events: list[tuple[str, str, dict[str, Any]]] = []
    counts: dict[str, int] = {}

    def emit(kind: str, severity: str = "info", sensor: str | None = None, **body: Any) -> None:
        events.append((kind, severity, body))

    def inc(name: str, n: int = 1, **labels: str) -> None:
        counts[name] = counts.get(name, 0) + n

    with AclBroker(tmp_path, DENY_RESULTS) as broker, collector(broker.port, "edge/#") as sub:
        config = parse_config(
            {
                "device": {"id": "gw-acl", "tenant": "t", "site": "s"},
                "mqtt": {"port": broker.port, "reconnect_min_s": 0.5, "reconnect_max_s": 1.0},
            },
            source="test",
            environ={},
        )
        store = Store(tmp_path / "acl.db", device_id="gw-acl", topic_root=config.topic_root)
        store.open()

        def fill(txn: Txn) -> None:
            for i in range(20):
                txn.enqueue("results", {"count": 1, "windows": {"label": [f"w{i}"]}})
            txn.enqueue("events", {"event": "test.first"})

        store.submit(fill).result(5)
        uplink = MqttUplink(config, store, emit=emit, inc=inc)
        topic = f"{config.topic_root}/results"

        async def run() -> None:
            task = asyncio.create_task(uplink.run())
            try:
                await until(lambda: topic in uplink.refused.parked, 10, "results parked")
                await until(lambda: sub.of("events"), 10, "the first event")
                # Other topics keep flowing while results are parked.
                store.submit(lambda txn: txn.enqueue("events", {"event": "test.second"}))
                uplink.notify()
                await until(lambda: len(sub.of("events")) >= 2, 10, "the second event")
                # Not hot-looped: after each row's first refusal, one probe per backoff step.
                start = time.monotonic()
                await until(lambda: uplink.refused.total >= 23, 15, "three probes")
                elapsed = time.monotonic() - start
                await asyncio.sleep(0)  # let a PUBACK read in the same pass be counted
                assert uplink.refused.total <= 20 + elapsed / 0.5 + 2
                assert counts["mqtt_publish_refused"] == uplink.refused.total
                await until(lambda: broker.denials() >= uplink.refused.total, 5, "the broker's log")
                assert broker.denials() == uplink.refused.total
                assert await store.call(outbox_depth()) == 20  # kept, not dropped
                refused = [e for e in events if e[0] == "uplink.refused"]
                assert len(refused) == 1  # one event per episode, not per refusal
                assert refused[0][1] == "warning"
                assert refused[0][2] == {"topic": topic, "reason": "Not authorized"}
                health = uplink.refused.health(time.monotonic())
                assert health[topic]["reason"] == "Not authorized"
                assert 0 <= health[topic]["retry_in_s"] <= 1.0
                assert not sub.of("results")
                broker.allow(ALLOW_ALL)
                await until(lambda: len(sub.of("results")) == 20, 15, "results after the ACL")
                await until(lambda: not uplink.refused.parked, 5, "the topic released")
                await until(uplink.idle.is_set, 5, "the drain idle")
                assert await store.call(outbox_depth()) == 0
                seqs = sorted(m.payload["seq"] for m in sub.of("results"))
                assert seqs == list(range(1, 21))
            finally:
                await uplink.stop(timeout=2)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        try:
            asyncio.run(asyncio.wait_for(run(), 45))
        finally:
            store.close()


def test_refused_topics_backoff_probe_and_release() -> None:
    """The parking rules without a broker: one probe when due, doubling capped waits."""
    parked = RefusedTopics(1.0, 4.0, rng=random.Random(3))
    assert parked.refused("a", "Not authorized", now=0.0)
    assert not parked.refused("a", "Not authorized", now=0.1)  # an in-flight one: same step
    assert parked.held(0.2) == {"a"}
    assert not parked.may_send("a", 1, now=0.2)
    due = parked.parked["a"].retry_at
    assert 1.0 <= due <= 1.0
    assert parked.may_send("a", 7, now=due)  # the probe
    assert not parked.may_send("a", 8, now=due)  # only one
    assert parked.held(due) == {"a"}
    assert not parked.refused("a", "Quota exceeded", now=due + 0.1)
    step2 = parked.parked["a"].retry_at - (due + 0.1)
    assert 1.0 <= step2 <= 2.0
    for _ in range(6):  # capped
        now = parked.parked["a"].retry_at
        assert parked.may_send("a", 9, now=now)
        parked.refused("a", "Quota exceeded", now=now)
        assert parked.parked["a"].retry_at - now <= 4.0
    now = parked.parked["a"].retry_at
    assert parked.may_send("a", 10, now=now)
    parked.lost(10)  # connection closed before its PUBACK: may probe again
    assert parked.may_send("a", 11, now=now)
    assert parked.may_send("b", 12, now=now)  # other topics are not affected
    assert parked.accepted("a")
    assert not parked.accepted("a")
    assert parked.held(now) == set()
    assert parked.total == 9
