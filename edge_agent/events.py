"""The event bus: typed events from every component to the log, the store, `tail` and metrics.

Components get the `Emit` port (`bus.emit`), never the daemon. Listeners are called on the
event loop's thread: an event emitted on another thread (a model loading on a worker, a
link thread) is handed over with `call_soon_threadsafe`. A listener that raises is logged
once with its traceback, then only counted (`listener_failures`), and never reaches the
other listeners or the emitter (the shape of Home Assistant's dispatcher).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from edge_agent.metrics import Counters

log = logging.getLogger(__name__)

Severity = Literal["info", "warning", "error"]

LEVELS: dict[str, int] = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened, as every listener sees it."""

    kind: str
    """Dotted name: "sensor.silent", "component.failed", "config.reverted", ..."""
    severity: Severity
    sensor: str | None
    body: Mapping[str, Any]
    """JSON-able details."""
    wall: float
    """`time.time()` when emitted."""


class Emit(Protocol):
    """The narrow port handed to components to report an event."""

    def __call__(
        self, kind: str, severity: Severity = "info", sensor: str | None = None, **body: Any
    ) -> None: ...


Listener = Callable[[Event], None]


class EventBus:
    """Delivers events to subscribed listeners on the event loop's thread."""

    def __init__(self, counters: Counters | None = None) -> None:
        self.counters = counters
        self._lock = threading.Lock()
        self._listeners: tuple[tuple[object, Listener], ...] = ()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._reported: set[tuple[int, type[BaseException]]] = set()

    def bind(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Deliver on `loop` from now on (called from the loop's thread); None: inline."""
        self._loop = loop
        self._loop_thread = threading.get_ident() if loop is not None else None

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` for every event from now on; returns the unsubscribe callable.

        Unsubscribing twice is harmless.
        """
        token = object()  # one per subscription: the same listener may be subscribed twice
        with self._lock:
            self._listeners = (*self._listeners, (token, listener))

        def unsubscribe() -> None:
            with self._lock:
                self._listeners = tuple(e for e in self._listeners if e[0] is not token)

        return unsubscribe

    def emit(
        self, kind: str, severity: Severity = "info", sensor: str | None = None, **body: Any
    ) -> None:
        """Report an event (thread-safe; never raises because of a listener)."""
        event = Event(kind, severity, sensor, body, time.time())
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread:
            self._deliver(event)
            return
        try:
            loop.call_soon_threadsafe(self._deliver, event)
        except RuntimeError:  # the loop is closed: deliver here rather than lose it
            self._deliver(event)

    def _deliver(self, event: Event) -> None:
        for _, listener in self._listeners:
            try:
                listener(event)
            except Exception as err:
                self._listener_failed(listener, event, err)

    def _listener_failed(self, listener: Listener, event: Event, err: Exception) -> None:
        key = (id(listener), type(err))
        name = getattr(listener, "__qualname__", repr(listener))
        if self.counters is not None:
            self.counters.inc("listener_failures", listener=name)
        if key in self._reported:
            return
        self._reported.add(key)
        log.error(
            "event listener %s failed on %s (logged once; repeats are counted): %s",
            name,
            event.kind,
            err,
            exc_info=err,
        )


def log_listener(logger: logging.Logger) -> Listener:
    """A listener that writes each event as one log line at its severity."""

    def log_event(event: Event) -> None:
        detail = " ".join(f"{k}={v}" for k, v in event.body.items())
        where = f" [{event.sensor}]" if event.sensor else ""
        logger.log(
            LEVELS.get(event.severity, logging.ERROR), "event %s%s %s", event.kind, where, detail
        )

    return log_event


def count_listener(counters: Counters) -> Listener:
    """A listener that counts events by kind (`events{kind=...}`)."""

    def count_event(event: Event) -> None:
        counters.inc("events", kind=event.kind)

    return count_event
