"""A private mosquitto per test session, and a subscriber that records what arrives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.bench.harness import free_port  # the tests' port picker too


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll `predicate` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    """`wait_for` inside an event loop: poll without blocking the loop."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        await asyncio.sleep(0.02)


class ServerProcess:
    """A server process started from a config file, logging to a file, stopped by SIGTERM.

    Subclasses say how to start it (`start`); this holds the process, waits until its
    port accepts connections (failing with its log if it exits first) and stops it.
    """

    proc: subprocess.Popen[bytes] | None
    log: Path

    def launch(self, argv: list[str], log: Path, port: int, what: str, timeout: float) -> None:
        """Start `argv` with its output in `log`; return once `port` accepts connections."""
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=out)
        wait_for(lambda: self.accepting(port, what), timeout, f"{what} on port {port}")

    def accepting(self, port: int, what: str) -> bool:
        """Whether `port` accepts a connection; raises with the log if the server exited."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {self.log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return False
        return True

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


@dataclass
class Mosquitto(ServerProcess):
    """A real mosquitto process on a free loopback port."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    persistence: bool = False

    def start(self) -> None:
        conf = self.workdir / f"mosquitto-{self.port}.conf"
        # As root, mosquitto would drop to its own user and lose access to the test's files.
        user = "user root\n" if os.geteuid() == 0 else ""
        persist = (
            f"persistence true\npersistence_location {self.workdir}/\n"
            f"persistence_file mosquitto-{self.port}.db\n"
            if self.persistence
            else "persistence false\n"
        )
        conf.write_text(
            f"{user}per_listener_settings false\nallow_anonymous true\n{persist}"
            f"listener {self.port} 127.0.0.1\n{getattr(self, '_extra', '')}"
        )
        self.start_with(conf)

    def start_with(self, conf: Path, what: str = "mosquitto") -> None:
        """Start mosquitto on `conf` (which must listen on `self.port`)."""
        log = self.workdir / f"{conf.stem}.log"
        self.launch([MOSQUITTO, "-c", str(conf)], log, self.port, what, 10)


@dataclass
class Received:
    topic: str
    payload: dict[str, Any]
    retain: bool


class Collector:
    """Subscribes to a topic filter and keeps every JSON message that arrives."""

    def __init__(self, port: int, topic_filter: str, *, persistent: bool = False) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        # persistent: a durable session (clean_session false), as a cloud consumer has, so a
        # broker restart does not lose what was queued for it.
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"collector-{port}-{time.monotonic_ns()}",
            clean_session=not persistent,
        )
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic_filter, qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise AssertionError("collector did not subscribe")

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, json.loads(msg.payload), bool(msg.retain)))

    def of(self, kind: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic.endswith("/" + kind)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def collector(port: int, topic_filter: str, *, persistent: bool = False) -> Iterator[Collector]:
    c = Collector(port, topic_filter, persistent=persistent)
    try:
        yield c
    finally:
        c.close()
