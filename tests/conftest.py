"""Suite-wide hygiene (a test that leaves a daemon process or a thread running fails), the
session's private RabbitMQ node and PostgreSQL, started by the first test that asks for them,
and the IMU emulators the cloud consumers' end-to-end tests share."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psutil
import pytest
from hypothesis import settings

from edge_agent.inference.bundle import shipped_models_dir
from firmware_bridge.emulator import CsvRecording, DeviceEmulator
from tests.postgres import Postgres
from tests.rabbitmq import RabbitMQ

# No per-example time limit for property tests: an example slowed by a loaded CI machine is
# not a failure (the suite runs beside brokers and daemons). Explicit settings still apply.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")


def _daemons() -> list[psutil.Process]:
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        if "edge_agent" in cmdline or "edge-agent" in cmdline:
            out.append(child)
    return out


@pytest.fixture(autouse=True)
def no_leaked_daemons() -> Iterator[None]:
    """Every `edge-agent` process a test starts must be gone when it ends.

    A daemon left behind keeps reopening serial ports and would steal the ptys of later
    tests. Leftovers are killed, and the test that left them fails.
    """
    # Daemons of module- or session-scoped fixtures are already running here; they are
    # their fixture's to stop.
    before = {p.pid for p in _daemons()}
    yield
    deadline = time.monotonic() + 5.0
    leftovers = [p for p in _daemons() if p.pid not in before]
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.05)
        leftovers = [p for p in leftovers if p.is_running() and p.status() != "zombie"]
    if leftovers:
        names = [" ".join(p.cmdline()[:6]) for p in leftovers]
        for p in leftovers:
            p.kill()
        pytest.fail(f"test left edge-agent processes running: {names}")


@pytest.fixture(autouse=True)
def no_leaked_link_threads() -> Iterator[None]:
    """Link reader and store writer threads started by a test must be stopped by it."""
    before = {t.ident for t in threading.enumerate()}
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked = [
            t.name
            for t in threading.enumerate()
            if t.ident not in before
            and t.is_alive()
            and (t.name.startswith("link-") or t.name == "store-writer")
        ]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if leaked:
        pytest.fail(f"test left threads running: {leaked}")


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQ]:
    """One private RabbitMQ node with its MQTT plugin for the session (a start takes ~10 s)."""
    with RabbitMQ(tmp_path_factory.mktemp("rabbitmq")) as node:
        yield node


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One private PostgreSQL for the session (tests take a fresh database each)."""
    with Postgres() as server:
        yield server


@pytest.fixture
def emulators() -> Iterator[list[DeviceEmulator]]:
    """Two IMU emulators (`imu-0`, `imu-1`) replaying the held-out recording at full speed on
    real pseudo-terminals (the cloud consumers' end-to-end tests read them through a daemon)."""
    recording = shipped_models_dir() / "imu-activity" / "recordings" / "heldout.csv"
    emus = [
        DeviceEmulator(CsvRecording(recording), device_id=f"imu-{i}", max_rate=True)
        for i in range(2)
    ]
    for e in emus:
        e.start()
    yield emus
    for e in emus:
        e.close()
