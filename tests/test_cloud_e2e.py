"""The PostgreSQL reference consumer end to end: real daemons, real brokers (a private
mosquitto, a private nats-server), a private PostgreSQL, emulated sensors on real
pseudo-terminals.

- two members of one `$share` group store the daemon's stream together, every seq once;
- `--share` on NATS (MQTT 3.1.1, no shared subscriptions) exits 2 and says what to use;
- the fleet re-announce gives a gateway's status row when no retained status is delivered;
- a consumer restarted with a clean session misses messages for real; the gap is asked for
  with `sync.resend` and filled;
- NATS restarted twice under a running daemon: the consumer ends with no gap.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.cloud.consumer import CloudConsumer, ConsumerOptions
from edge_agent.cloud.store import CloudStore, RepairTiming
from firmware_bridge.emulator import DeviceEmulator
from tests.broker import Mosquitto, collector, wait_for
from tests.daemon_proc import emulators_config, start_daemon, stop_daemon, write_config
from tests.nats import Nats
from tests.postgres import Postgres

FAST = RepairTiming(grace_s=0.5, retry_s=1.0, retry_max_s=2.0, tail_probe_s=1.0)


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nats]:
    with Nats(tmp_path_factory.mktemp("nats")) as server:
        yield server


def daemon_config(tmp: Path, port: int, emus: list[DeviceEmulator], device: str) -> Path:
    # Brokers restart under running daemons here: back within half a second.
    return emulators_config(tmp, port, emus, device, reconnect_max_s=0.5)


def query(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            return conn.execute(sql, args).fetchall()  # type: ignore[call-overload, no-any-return]
        except psycopg.errors.UndefinedTable:
            return []  # the consumer has not created its tables yet


def seq_problems(dsn: str, device: str) -> list[str]:
    """Per topic of `device`: seqs not exactly 1..last, and gaps not closed."""
    problems = []
    for topic, n, lo, hi in query(
        dsn,
        "SELECT topic, count(*), min(seq), max(seq) FROM messages WHERE device = %s GROUP BY topic",
        device,
    ):
        if (lo, n) != (1, hi):
            problems.append(f"{topic}: {n} messages, seq {lo}..{hi}")
    problems += [
        f"{t} {a}..{b} {s}"
        for t, a, b, s in query(
            dsn,
            "SELECT topic, from_seq, to_seq, state FROM gaps WHERE device = %s "
            "AND state IN ('open', 'requested')",
            device,
        )
    ]
    return problems


def no_gap_left(dsn: str, device: str, timeout: float) -> None:
    """Wait until every seq of `device` is stored and its gaps are closed; else fail
    naming what is missing."""
    try:
        wait_for(lambda: not seq_problems(dsn, device), timeout, "no gap left")
    except AssertionError as err:
        gaps = query(dsn, "SELECT * FROM gaps WHERE device = %s", device)
        raise AssertionError(f"{err}: {seq_problems(dsn, device)}; gaps: {gaps}") from None


def every_result(dsn: str, device: str, db: Path, timeout: float) -> None:
    """Wait until the windows stored for `device` are those its database committed; else
    fail with what the database holds."""
    try:
        wait_for(lambda: results_count(dsn, device) == committed(db), timeout, "every result")
    except AssertionError as err:
        streams = query(
            dsn,
            "SELECT topic, first_seq, last_seq, received, updated_at, probed_at FROM streams "
            "WHERE device = %s",
            device,
        )
        raise AssertionError(
            f"{err}: {results_count(dsn, device)} of {committed(db)} windows; streams "
            f"{streams}; {seq_problems(dsn, device)}; {query(dsn, 'SELECT * FROM gateways')}"
        ) from None


def results_count(dsn: str, device: str) -> int:
    rows = query(
        dsn,
        "SELECT coalesce(sum((payload->>'count')::int), 0) FROM messages "
        "WHERE device = %s AND kind = 'results'",
        device,
    )
    return int(rows[0][0]) if rows else 0


def committed(db: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM results").fetchone()[0])
    finally:
        conn.close()


def delivered(db: Path, kind: str) -> int:
    """The highest seq of `kind` the daemon's broker acknowledged (kept for sync.resend)."""
    import sqlite3

    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT max(seq) FROM delivered WHERE topic LIKE ?", (f"%/{kind}",)
        ).fetchone()
        return int(row[0] or 0)
    finally:
        conn.close()


def cloud_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge_agent.cloud", *args]


def start_member(dsn: str, port: int, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    err = out.with_suffix(".err")
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            cloud_cli("run", "--dsn", dsn, "--port", str(port), *extra),
            stdout=stdout,
            stderr=stderr,
        )
    wait_for(
        lambda: proc.poll() is not None or b"subscribed" in err.read_bytes(),
        20,
        "the consumer to subscribe",
    )
    assert proc.poll() is None, err.read_text()
    return proc


@contextmanager
def consumer(
    dsn: str, port: int, timing: RepairTiming = FAST, **options: Any
) -> Iterator[CloudConsumer]:
    """A consumer running in this process (on a thread), stopped on exit. The database
    predates the gateways (`from_first`)."""
    store = CloudStore(dsn, timing=timing, from_first=True)
    c = CloudConsumer(ConsumerOptions(port=port, **options), store)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            c.run()
        except BaseException as err:  # surfaced by the test
            failure.append(err)

    thread = threading.Thread(target=run, name="cloud-consumer")
    thread.start()
    try:
        wait_for(lambda: failure or c.connections, 20, "the consumer to connect")
        assert not failure, failure
        yield c
    finally:
        c.stop.set()
        thread.join(20)
        store.close()
    assert not failure, failure


def test_two_members_of_a_share_group_store_every_seq_once(
    tmp_path: Path, postgres: Postgres, emulators: list[DeviceEmulator]
) -> None:
    """`edge-agent-cloud run --share` twice on mosquitto: each member stores part of the
    stream, the database has every seq of every topic exactly once, no gap left open."""
    dsn = postgres.database()
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    with Mosquitto(tmp_path) as broker:
        members = [start_member(dsn, broker.port, o, "--share", "cloud") for o in outs]
        try:
            log = tmp_path / "daemon.log"
            daemon = start_daemon(daemon_config(tmp_path, broker.port, emulators, "gw-sh"), log)
            try:
                wait_for(lambda: results_count(dsn, "gw-sh") >= 60, 30, "results stored")
            finally:
                assert stop_daemon(daemon, log) == 0, log.read_text()[-4000:]
            expected = committed(tmp_path / "gw-sh.db")
            wait_for(lambda: results_count(dsn, "gw-sh") == expected, 10, "every result")
            wait_for(
                lambda: query(dsn, "SELECT 1 FROM gateways WHERE online = false"),
                10,
                "the offline status",
            )
        finally:
            for proc in members:
                proc.terminate()
            codes = [proc.wait(20) for proc in members]
    reports = [json.loads(o.read_text()) for o in outs]
    assert codes == [0, 0], [o.with_suffix(".err").read_text() for o in outs]
    shares = [r["session"]["outcomes"].get("accepted", 0) for r in reports]
    assert all(n > 0 for n in shares), f"each member stored part of the stream: {shares}"
    assert seq_problems(dsn, "gw-sh") == []
    assert query(dsn, "SELECT coalesce(sum(duplicates), 0), count(*) FROM streams")[0][0] == 0
    assert sum(shares) == query(dsn, "SELECT count(*) FROM messages")[0][0]
    done = subprocess.run(cloud_cli("report", "--dsn", dsn), capture_output=True, check=False)
    assert done.returncode == 0, done.stdout[-3000:]
    assert json.loads(done.stdout)["gateways"]["t1/s1/gw-sh"]["online"] is False


def _share_run(dsn: str, port: int) -> subprocess.CompletedProcess[str]:
    """`edge-agent-cloud run --share g` against the broker on `port`."""
    return subprocess.run(
        cloud_cli("run", "--dsn", dsn, "--port", str(port), "--share", "g"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_share_is_refused_loudly_where_the_broker_has_none(nats: Nats, postgres: Postgres) -> None:
    """NATS speaks MQTT 3.1.1 only: no shared subscriptions, so `--share` would silently
    get nothing. The consumer negotiates down to 3.1.1, then exits 2 naming what to use."""
    done = _share_run(postgres.database(), nats.mqtt_port)
    assert done.returncode == 2, done.stderr
    assert "speaks MQTT 3.1.1 only" in done.stderr
    assert "NATS: members of one queue group" in done.stderr
    assert "amq.topic" in done.stderr
    # The SQLite checker refuses the same, before it even connects.
    script = Path(__file__).resolve().parents[1] / "scripts" / "cloud_consumer.py"
    done = subprocess.run(
        [sys.executable, str(script), "--db", "x.db", "--protocol", "3.1.1", "--share", "g"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "NATS queue groups" in done.stderr


class _NoSharedSubscriptions(threading.Thread):
    """A listener that answers any CONNECT with an MQTT 5 CONNACK saying
    SharedSubscriptionAvailable = 0, then closes.

    No broker on this machine says that (mosquitto offers shared subscriptions; NATS and
    RabbitMQ 3.10 speak 3.1.1 only), so this CONNACK is the one part made up here: the
    consumer's check of it is what is tested.
    """

    def __init__(self) -> None:
        super().__init__(name="no-share", daemon=True)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.connects = 0

    def run(self) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNACK)  # type: ignore[no-untyped-call]
        props.SharedSubscriptionAvailable = 0
        body = b"\x00\x00" + props.pack()
        connack = bytes([0x20, len(body)]) + body
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(65536)  # the CONNECT
                    self.connects += 1
                    conn.sendall(connack)
                    conn.recv(65536)  # until the client closes

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes accept(): close() alone does not on Linux
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.join(10)
        assert not self.is_alive(), "the listener thread did not end"


def test_share_is_refused_when_the_connack_says_shared_subscriptions_are_unavailable(
    tmp_path: Path, postgres: Postgres
) -> None:
    """An MQTT 5 broker whose CONNACK says SharedSubscriptionAvailable = 0: `--share`
    exits 2 naming the property and the native alternatives, instead of a silent 0."""
    listener = _NoSharedSubscriptions()
    listener.start()
    try:
        done = _share_run(postgres.database(), listener.port)
        assert done.returncode == 2, done.stderr
        assert "SharedSubscriptionAvailable = 0" in done.stderr
        assert "amq.topic" in done.stderr
        assert listener.connects == 1  # MQTT 5 was accepted: no 3.1.1 attempt
        # The SQLite checker reads the same CONNACK property and refuses the same way.
        script = Path(__file__).resolve().parents[1] / "scripts" / "cloud_consumer.py"
        argv = ["--db", str(tmp_path / "checker.db"), "--port", str(listener.port), "--share", "g"]
        checker = subprocess.run(
            [sys.executable, str(script), *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        listener.close()
    assert checker.returncode == 2, checker.stderr
    assert "SharedSubscriptionAvailable = 0" in checker.stderr


def _clear_retained(port: int, topic: str) -> None:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="clear")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def test_reannounce_gives_the_status_when_no_retained_one_is_delivered(
    tmp_path: Path, postgres: Postgres
) -> None:
    """A running daemon's retained birth is cleared (as a broker that keeps retained
    messages from wildcard subscribers would never send it); a consumer that starts asks
    the fleet to announce itself and gets the gateway's status row from the daemon."""
    dsn = postgres.database()
    with Mosquitto(tmp_path) as broker:
        log = tmp_path / "daemon.log"
        config = write_config(
            tmp_path / "gw-ann.toml",
            db=tmp_path / "gw-ann.db",
            sensors=[],
            mqtt_port=broker.port,
            device="gw-ann",
            sections={"sync": {"heartbeat_interval_s": 3600.0}},
        )
        daemon = start_daemon(config, log)
        try:
            with collector(broker.port, "edge/t1/s1/gw-ann/status") as sub:
                wait_for(lambda: sub.of("status"), 30, "the daemon's birth")
            _clear_retained(broker.port, "edge/t1/s1/gw-ann/status")
            with consumer(dsn, broker.port) as c:
                wait_for(
                    lambda: query(dsn, "SELECT 1 FROM gateways WHERE online IS NOT NULL"),
                    10,
                    "the gateway's status row",
                )
                assert c.announces == 1
            rows = query(dsn, "SELECT online FROM gateways WHERE device = 'gw-ann'")
            assert rows == [(True,)]
            logged = query(dsn, "SELECT retained FROM status_log")
            assert logged == [(False,)], "it came from the re-announce, not the retained copy"
        finally:
            assert stop_daemon(daemon, log) == 0, log.read_text()[-4000:]


def test_a_gap_made_real_is_asked_for_and_filled(
    tmp_path: Path, postgres: Postgres, emulators: list[DeviceEmulator]
) -> None:
    """A consumer with a clean session stops while the daemon goes on publishing: what was
    published meanwhile is gone from the broker. The next consumer sees the seq jump, asks
    `sync.resend` after the grace period, and the gateway's kept copies fill the gap."""
    dsn = postgres.database()
    db = tmp_path / "gw-gap.db"
    log = tmp_path / "daemon.log"
    with Mosquitto(tmp_path) as broker:
        config = daemon_config(tmp_path, broker.port, emulators, "gw-gap")
        with consumer(dsn, broker.port):  # subscribed before the daemon's first message
            daemon = start_daemon(config, log)
            try:
                wait_for(lambda: results_count(dsn, "gw-gap") >= 20, 30, "results stored")
            except BaseException:
                stop_daemon(daemon, log)
                raise
        try:
            stored = query(dsn, "SELECT max(seq) FROM messages WHERE kind = 'results'")[0][0]
            wait_for(
                lambda: delivered(db, "results") >= stored + 3,
                30,
                "results delivered to the broker while no consumer was there",
            )
            # No tail probe: it would ask for the missed messages before the seq jump shows.
            with consumer(dsn, broker.port, replace(FAST, tail_probe_s=0)) as c:
                try:
                    wait_for(
                        lambda: query(dsn, "SELECT 1 FROM gaps WHERE state = 'repaired'"),
                        20,
                        "a repaired gap",
                    )
                except AssertionError as err:
                    gaps = query(dsn, "SELECT * FROM gaps")
                    streams = query(dsn, "SELECT topic, first_seq, last_seq, received FROM streams")
                    raise AssertionError(
                        f"{err}: gaps {gaps}; streams {streams}; {c.counts}"
                    ) from None
                no_gap_left(dsn, "gw-gap", 20)
                assert stop_daemon(daemon, log) == 0, log.read_text()[-4000:]
                every_result(dsn, "gw-gap", db, 10)
                no_gap_left(dsn, "gw-gap", 10)
        finally:
            assert stop_daemon(daemon, log) == 0, log.read_text()[-4000:]
    assert c.counts.get("resend_requests", 0) >= 1
    assert c.counts.get("resend_replies", 0) >= 1
    rows = query(
        dsn,
        "SELECT topic, to_seq - from_seq + 1, attempts FROM gaps WHERE state = 'repaired'",
    )
    results_gap = [r for r in rows if r[0].endswith("/results")]
    assert results_gap, rows
    assert all(n >= 1 and attempts >= 1 for _, n, attempts in rows)
    assert query(dsn, "SELECT count(*) FROM gaps WHERE state <> 'repaired'") == [(0,)]


def test_nats_restarted_twice_the_consumer_ends_with_no_gap(
    tmp_path: Path, postgres: Postgres, nats: Nats, emulators: list[DeviceEmulator]
) -> None:
    """The loss is real here: NATS restarted under a running daemon (protocol auto, 3.1.1
    on NATS) and a consumer with a persistent session. Whatever NATS loses is asked for
    again; at the end every seq of every topic is stored and no gap is open."""
    dsn = postgres.database()
    db = tmp_path / "gw-nats.db"
    log = tmp_path / "daemon.log"
    daemon = start_daemon(daemon_config(tmp_path, nats.mqtt_port, emulators, "gw-nats"), log)
    try:
        with consumer(dsn, nats.mqtt_port, client_id="cloud-nats", session_expiry=3600) as c:
            assert c.version == "3.1.1"
            for restart in range(3):
                floor = results_count(dsn, "gw-nats")
                wait_for(
                    lambda floor=floor, n=restart + 1: (
                        c.connections == n and results_count(dsn, "gw-nats") >= floor + 20
                    ),
                    30,
                    f"the consumer connected and results flowing ({restart} restarts)",
                )
                if restart < 2:
                    nats.stop()
                    nats.start()
            # The sensors stop; the gateway runs on and answers sync.resend: a loss in the
            # middle is revealed by the next seq, one at the end by the tail probe.
            for e in emulators:
                e.close()
            every_result(dsn, "gw-nats", db, 30)
            no_gap_left(dsn, "gw-nats", 30)
            assert stop_daemon(daemon, log) == 0, log.read_text()[-4000:]
            every_result(dsn, "gw-nats", db, 10)
            no_gap_left(dsn, "gw-nats", 10)
    finally:
        assert stop_daemon(daemon, log) == 0, log.read_text()[-4000:]
    assert c.announces == c.connections >= 3  # a re-announce after every connection


def test_postgres_restarted_under_the_consumer_loses_nothing(
    tmp_path: Path, emulators: list[DeviceEmulator], caplog: pytest.LogCaptureFixture
) -> None:
    """The database goes away mid-stream (a fast shutdown cuts the consumer's connection)
    and comes back: the consumer retries the batch in hand with backoff, keeps what arrives
    meanwhile, and ends with every result and no gap."""
    caplog.set_level(logging.ERROR, logger="edge_agent.cloud")
    with Postgres() as pg, Mosquitto(tmp_path) as broker:
        dsn = pg.database()
        db = tmp_path / "gw-pg.db"
        log = tmp_path / "daemon.log"
        config = daemon_config(tmp_path, broker.port, emulators, "gw-pg")
        with consumer(dsn, broker.port) as c:
            daemon = start_daemon(config, log)
            try:
                wait_for(lambda: results_count(dsn, "gw-pg") >= 10, 30, "results stored")
                before = results_count(dsn, "gw-pg")
                pg.restart()
                wait_for(lambda: results_count(dsn, "gw-pg") > before + 10, 30, "storing again")
            finally:
                assert stop_daemon(daemon, log) == 0, log.read_text()[-4000:]
            every_result(dsn, "gw-pg", db, 20)
            no_gap_left(dsn, "gw-pg", 10)
            assert c.connections == 1  # the broker session was never dropped
    lost = [r.getMessage() for r in caplog.records if "PostgreSQL" in r.getMessage()]
    assert lost, "the outage was never noticed"
