"""The seams every component is wired through: the event bus, the health board, counters
and the supervisor.

No fakes: real threads, a real event loop, real exceptions raised by listeners, providers
and components. The supervisor's backoff is shrunk through its `Backoff` parameter.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from typing import Any

import pytest

from edge_agent.errors import CommandError, EdgeAgentError
from edge_agent.events import Event, EventBus, count_listener, log_listener
from edge_agent.health import HealthBoard
from edge_agent.metrics import Counters
from edge_agent.supervise import Backoff, Supervisor

FAST = Backoff(initial_s=0.001, max_s=0.004, jitter=0.5)


def test_a_failing_listener_never_reaches_the_others_and_is_logged_once_then_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counters = Counters()
    bus = EventBus(counters)
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise ValueError("listener bug")

    bus.subscribe(broken)
    bus.subscribe(seen.append)
    with caplog.at_level(logging.ERROR, logger="edge_agent.events"):
        for i in range(5):
            bus.emit("sensor.silent", "warning", sensor="imu-0", n=i)  # never raises
    assert [e.body["n"] for e in seen] == [0, 1, 2, 3, 4]
    assert all(e.kind == "sensor.silent" and e.sensor == "imu-0" for e in seen)
    failures = [r for r in caplog.records if "listener" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None  # with its traceback
    assert counters.total("listener_failures") == 5


def test_unsubscribe_twice_is_safe_and_stops_delivery() -> None:
    bus = EventBus()
    seen: list[str] = []
    unsubscribe = bus.subscribe(lambda e: seen.append(e.kind))
    bus.emit("a")
    unsubscribe()
    unsubscribe()
    bus.emit("b")
    assert seen == ["a"]


def test_the_same_listener_subscribed_twice_is_removed_one_at_a_time() -> None:
    bus = EventBus()
    seen: list[str] = []

    def listener(event: Event) -> None:
        seen.append(event.kind)

    first = bus.subscribe(listener)
    second = bus.subscribe(listener)
    bus.emit("x")
    first()
    first()
    bus.emit("y")
    second()
    bus.emit("z")
    assert seen == ["x", "x", "y"]


def test_emit_from_other_threads_is_delivered_on_the_loop_thread_without_loss() -> None:
    """Eight threads emit at once; every event arrives, each on the loop's thread."""
    counters = Counters()
    bus = EventBus(counters)
    bus.subscribe(count_listener(counters))
    threads_seen: set[int] = set()
    received: list[Event] = []

    def listener(event: Event) -> None:
        threads_seen.add(threading.get_ident())
        received.append(event)

    bus.subscribe(listener)

    async def main() -> int:
        bus.bind(asyncio.get_running_loop())
        loop_thread = threading.get_ident()

        def worker(k: int) -> None:
            for i in range(200):
                bus.emit("load", worker=k, i=i)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads) or len(received) < 1600:
            await asyncio.sleep(0.001)
        return loop_thread

    loop_thread_id = asyncio.run(asyncio.wait_for(main(), 20))
    bus.bind(None)
    assert len(received) == 1600
    assert threads_seen == {loop_thread_id}
    assert counters.get("events", kind="load") == 1600


def test_after_the_loop_closes_events_are_delivered_inline() -> None:
    bus = EventBus()
    seen: list[str] = []
    bus.subscribe(lambda e: seen.append(e.kind))

    async def bind() -> None:
        bus.bind(asyncio.get_running_loop())

    asyncio.run(bind())
    done = threading.Event()

    def late() -> None:
        bus.emit("late")
        done.set()

    threading.Thread(target=late).start()
    assert done.wait(5)
    assert seen == ["late"]


def test_log_listener_writes_one_line_at_the_event_severity(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    logger = logging.getLogger("edge_agent.test_events")
    bus.subscribe(log_listener(logger))
    with caplog.at_level(logging.INFO, logger="edge_agent.test_events"):
        bus.emit("model.failed", "error", sensor="imu-1", model="m", reason="nan")
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "event model.failed [imu-1] model=m reason=nan"


def test_health_board_snapshot_degrade_recover_and_a_failing_provider() -> None:
    counters = Counters()
    board = HealthBoard(counters)
    remove = board.provide("store", lambda: {"commits": 3})

    def broken() -> dict[str, Any]:
        raise RuntimeError("provider bug")

    board.provide("mqtt", broken)
    snap = board.snapshot()
    assert snap["state"] == "healthy"
    assert snap["degraded"] == []
    assert snap["store"] == {"commits": 3}
    assert snap["mqtt"] == {"error": "RuntimeError: provider bug"}
    board.degrade("disk full")
    board.degrade("disk full")
    board.degrade("config reverted")
    assert board.snapshot()["state"] == "degraded"
    assert board.snapshot()["degraded"] == ["disk full", "config reverted"]
    board.recover("disk full")
    board.recover("never degraded")
    assert board.degraded == ["config reverted"]
    board.recover("config reverted")
    remove()
    remove()
    snap = board.snapshot()
    assert snap["state"] == "healthy"
    assert "store" not in snap
    assert counters.get("health_provider_failures", provider="mqtt") == 4
    with pytest.raises(ValueError, match="reserved"):
        board.provide("state", dict)


def test_counters_by_labels_and_snapshot_under_concurrency() -> None:
    counters = Counters()

    def work() -> None:
        for _ in range(1000):
            counters.inc("frames", sensor="a")
            counters.inc("frames", 2, sensor="b")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counters.inc("restarts")
    assert counters.get("frames", sensor="a") == 4000
    assert counters.total("frames") == 12000
    assert counters.snapshot() == {
        'frames{sensor="a"}': 4000,
        'frames{sensor="b"}': 8000,
        "restarts": 1,
    }


def test_command_error_is_part_of_the_tree_and_carries_its_data() -> None:
    err = CommandError("busy", "another deployment is in progress", {"stage": "download"})
    assert isinstance(err, EdgeAgentError)
    assert (err.code, err.message, err.details) == (
        "busy",
        "another deployment is in progress",
        {"stage": "download"},
    )
    assert str(err) == "another deployment is in progress"


def test_backoff_grows_is_capped_and_jittered() -> None:
    backoff = Backoff(initial_s=1.0, max_s=8.0, factor=2.0, jitter=0.5)
    rng = random.Random(7)
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert all(min(base * 0.75, 8.0) <= d <= min(base * 1.25, 8.0) for d in delays)
        assert len(set(delays)) > 1  # jittered


def test_supervisor_restarts_a_failing_component_logs_once_and_publishes_each_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []

    def emit(kind: str, severity: str = "info", sensor: str | None = None, **body: Any) -> None:
        events.append((kind, body))

    counters = Counters()
    supervisor = Supervisor(emit, backoff=FAST, counters=counters)
    runs = [0]

    async def component() -> None:
        runs[0] += 1
        if runs[0] <= 3:
            raise OSError("port vanished")

    with caplog.at_level(logging.ERROR, logger="edge_agent.supervise"):
        asyncio.run(asyncio.wait_for(supervisor.run("sensor:imu-0", component), 10))
    assert runs[0] == 4  # three failures, then a clean stop: not restarted again
    failed = [b for k, b in events if k == "component.failed"]
    assert failed == [
        {"component": "sensor:imu-0", "error": "OSError: port vanished", "restarts": n}
        for n in (1, 2, 3)
    ]
    assert [k for k, _ in events].count("component.restarted") == 3
    logged = [r for r in caplog.records if "sensor:imu-0" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert counters.get("component_failures", component="sensor:imu-0") == 3
    assert counters.get("repeated_errors", component="sensor:imu-0") == 2
    assert supervisor.health()["sensor:imu-0"]["state"] == "stopped"
    assert supervisor.health()["sensor:imu-0"]["restarts"] == 3


def test_cancellation_is_a_stop_not_a_failure() -> None:
    events: list[str] = []
    supervisor = Supervisor(lambda kind, *a, **k: events.append(kind), backoff=FAST)
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    async def main() -> None:
        task = asyncio.create_task(supervisor.run("heartbeat", forever))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert events == []
    assert supervisor.health()["heartbeat"] == {
        "state": "stopped",
        "restarts": 0,
        "last_error": None,
        "last_failure": None,
    }
