"""sd_notify and the pipeline watchdog, against real unix datagram sockets.

Both senders are exercised: the built-in one in-process, and systemd-python
(Debian's python3-systemd) in a child interpreter whenever the C extension exists on
this machine; otherwise the test checks that asking for it fails with the install hint.
A real daemon process is started under a test notify socket to check READY, STATUS,
WATCHDOG and STOPPING, and a store stalled on purpose (the test holds SQLite's write
lock) must stop the watchdog pings until it moves again.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.service.notify import Notifier, notify_address, watchdog_timeout
from edge_agent.service.startup import NotifyListener, measure_lifecycle
from edge_agent.service.watchdog import PipelineWatchdog, Probe
from tests.broker import wait_for
from tests.daemon_proc import daemon_env, start_daemon, stop_daemon, write_config

DEBIAN_SYSTEMD = Path("/usr/lib/python3/dist-packages/systemd")


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    with NotifyListener(tmp_path) as lst:
        yield lst


def _drain(sock: socket.socket) -> list[str]:
    out = []
    sock.setblocking(False)
    while True:
        try:
            out.append(sock.recv(65536).decode())
        except BlockingIOError:
            return out


def test_builtin_sender_speaks_the_protocol_to_a_path_socket(listener: NotifyListener) -> None:
    n = Notifier(backend="socket", environ={"NOTIFY_SOCKET": str(listener.path)})
    assert n.enabled
    assert n.backend == "socket"
    assert n.ready("running: 2/2 sensors\nstreaming")
    assert n.watchdog()
    assert n.reloading()
    assert n.stopping()
    got = [listener.receive(5) for _ in range(4)]
    n.close()
    n.close()
    assert got[0] == "READY=1\nSTATUS=running: 2/2 sensors streaming\n"
    assert got[1] == "WATCHDOG=1\n"
    assert got[2] is not None
    fields = dict(line.split("=", 1) for line in got[2].splitlines())
    assert fields["RELOADING"] == "1"
    assert int(fields["MONOTONIC_USEC"]) > 0
    assert got[3] is not None
    assert got[3].startswith("STOPPING=1\nSTATUS=")
    assert n.sent == 4


def test_builtin_sender_reaches_an_abstract_socket() -> None:
    name = f"edge-agent-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        n = Notifier(backend="socket", environ={"NOTIFY_SOCKET": "@" + name})
        assert n.status("hello")
        assert sock.recv(4096) == b"STATUS=hello\n"
        n.close()


def test_outside_systemd_every_call_is_a_no_op() -> None:
    n = Notifier(environ={})
    assert not n.enabled
    assert n.backend == "none"
    assert not n.ready()
    assert not n.watchdog()


def test_bad_address_and_missing_listener_are_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValueError, match="absolute socket path"):
        notify_address("relative/notify.sock")
    caplog.set_level(logging.WARNING, "edge_agent.service.notify")
    bad = Notifier(backend="socket", environ={"NOTIFY_SOCKET": "relative.sock"})
    assert not bad.enabled
    gone = Notifier(backend="socket", environ={"NOTIFY_SOCKET": str(tmp_path / "nobody.sock")})
    assert [gone.watchdog() for _ in range(3)] == [False, False, False]
    failures = [r for r in caplog.records if "sd_notify to" in r.getMessage()]
    assert len(failures) == 1, "a missing listener is logged once, not per ping"
    gone.close()


def test_watchdog_timeout_comes_from_the_environment() -> None:
    assert watchdog_timeout({"WATCHDOG_USEC": "20000000"}) == 20.0
    assert watchdog_timeout({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}) == 0.5
    assert watchdog_timeout({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_timeout({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_timeout({}) is None


def _systemd_python_path(tmp_path: Path) -> str | None:
    """A PYTHONPATH entry under which `import systemd.daemon` works, if this machine has it."""
    if importlib.util.find_spec("systemd") is not None:
        return ""
    if any(DEBIAN_SYSTEMD.glob("_daemon.cpython-3*.so")):
        link_dir = tmp_path / "syspkgs"
        link_dir.mkdir()
        (link_dir / "systemd").symlink_to(DEBIAN_SYSTEMD)
        return str(link_dir)
    return None


def test_systemd_python_sender_when_installed(listener: NotifyListener, tmp_path: Path) -> None:
    """With python3-systemd present the library path sends the same datagrams; without it,
    asking for the library says how to install it (the built-in sender covers that case)."""
    path = _systemd_python_path(tmp_path)
    if path is None:
        with pytest.raises(ImportError, match="python3-systemd"):
            Notifier(backend="systemd-python")
        return
    code = (
        "from edge_agent.service.notify import Notifier\n"
        "n = Notifier()\n"
        "assert n.backend == 'systemd-python', n.backend\n"
        "assert n.ready('up')\n"
        "assert n.watchdog()\n"
    )
    env = {**daemon_env(), "NOTIFY_SOCKET": str(listener.path)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (path, str(Path.cwd())) if p)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert listener.receive(5) == "READY=1\nSTATUS=up\n"
    assert listener.receive(5) == "WATCHDOG=1\n"


# -- the watchdog, as a component ----------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_watchdog_pings_only_while_the_pipeline_moves(listener: NotifyListener) -> None:
    """Idle is healthy; work waiting without progress stops the pings; progress resumes them."""
    counter, waiting = [0], [0]
    clock = _Clock()
    changes: list[str | None] = []
    notifier = Notifier(backend="socket", environ={"NOTIFY_SOCKET": str(listener.path)})
    wd = PipelineWatchdog(
        notifier,
        [Probe("pipeline", lambda: (counter[0], waiting[0]), "batches")],
        stall_timeout_s=2.0,
        watchdog_s=3.0,
        on_change=changes.append,
        clock=clock,
    )
    assert wd.interval_s == pytest.approx(0.5)
    # Idle: nothing waiting, counter frozen, for far longer than the stall timeout.
    for _ in range(10):
        clock.now += 1.0
        assert wd.tick()
    assert _drain(listener.sock) == ["WATCHDOG=1\n"] * 10
    # Busy and moving.
    waiting[0] = 3
    for _ in range(5):
        counter[0] += 1
        clock.now += 1.0
        assert wd.tick()
    # Stuck: work waits, the counter does not move.
    clock.now += 1.0
    assert wd.tick()  # 1 s without progress: not yet a stall
    clock.now += 1.5
    assert not wd.tick()
    assert wd.stall is not None
    assert "pipeline stalled: 3 batches waiting" in wd.stall
    clock.now += 5.0
    assert not wd.tick()
    assert _drain(listener.sock) == ["WATCHDOG=1\n"] * 6
    # It moves again.
    counter[0] += 1
    clock.now += 0.5
    assert wd.tick()
    assert wd.stall is None
    assert _drain(listener.sock) == ["WATCHDOG=1\n"]
    assert len(changes) == 2
    assert changes[0] is not None
    assert "stalled" in changes[0]
    assert changes[1] is None
    notifier.close()


def test_watchdog_exempts_a_reload(listener: NotifyListener) -> None:
    clock = _Clock()
    reloading = [True]
    notifier = Notifier(backend="socket", environ={"NOTIFY_SOCKET": str(listener.path)})
    wd = PipelineWatchdog(
        notifier,
        [Probe("store", lambda: (7, 40), "writes")],
        stall_timeout_s=1.0,
        watchdog_s=None,
        exempt=lambda: reloading[0],
        clock=clock,
    )
    for _ in range(5):
        clock.now += 1.0
        assert wd.check() is None
    reloading[0] = False
    clock.now += 1.5
    stall = wd.check()
    assert stall is not None
    assert stall.startswith("store stalled: 40 writes waiting")
    assert not wd.tick(), "no watchdog configured: never pings"
    assert _drain(listener.sock) == []
    notifier.close()


# -- a real daemon under a test notify socket ----------------------------------------------------


def _config(tmp_path: Path, **service: object) -> Path:
    return write_config(
        tmp_path / "agent.toml",
        db=tmp_path / "agent.db",
        sensors=[{"name": "imu-0", "link": "emulated", "synthetic": True, "rate_hz": 50.0}],
        sections={"service": {"status_interval_s": 0.5, **service}},
    )


def test_daemon_sends_ready_status_watchdog_and_stopping(tmp_path: Path) -> None:
    """Process start → READY=1 (the figure is printed), STATUS lines, WATCHDOG=1 at the pace
    WATCHDOG_USEC asks for, STOPPING=1 on SIGTERM and exit 0."""
    config = _config(tmp_path)
    log = tmp_path / "daemon.log"
    env = daemon_env({"WATCHDOG_USEC": "900000"})
    figures = measure_lifecycle(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
        env,
        log=log,
        timeout=30,
    )
    text = [m for _, m in figures.messages]
    assert figures.exit_code == 0, log.read_text()
    print(
        f"\nprocess start -> READY=1: {figures.ready_s:.3f} s; SIGTERM -> exit: "
        f"{figures.stop_s:.3f} s"
    )
    ready = next(i for i, m in enumerate(text) if m.startswith("READY=1"))
    assert "STATUS=running: " in text[ready]
    stopping = next(i for i, m in enumerate(text) if m.startswith("STOPPING=1"))
    assert stopping > ready


def test_watchdog_pings_then_stop_while_the_store_is_stalled(tmp_path: Path) -> None:
    """The daemon pings while healthy. The test then takes SQLite's write lock, so every
    write queues and nothing commits: pings stop and STATUS says why. When the lock is
    released, commits resume and so do the pings. Nothing queued is lost."""
    config = _config(tmp_path, stall_timeout_s=1.0)
    db = tmp_path / "agent.db"
    log = tmp_path / "daemon.log"
    with NotifyListener(tmp_path) as lst:
        proc = start_daemon(
            config,
            log,
            {"NOTIFY_SOCKET": str(lst.path), "WATCHDOG_USEC": "600000"},
        )
        try:
            assert lst.wait_for("READY=1", 30) is not None, log.read_text()
            assert lst.wait_for("WATCHDOG=1", 5) is not None
            assert lst.wait_for("WATCHDOG=1", 5) is not None
            blocker = sqlite3.connect(db, timeout=10, isolation_level=None)
            blocker.execute("BEGIN EXCLUSIVE")
            try:
                stalled = wait_for(
                    lambda: next(
                        (m for m in (lst.receive(0.2) or "").splitlines() if "STALLED" in m),
                        None,
                    ),
                    20,
                    "STATUS=STALLED after the store stopped committing",
                )
                assert "store stalled" in stalled
                # Watch for three watchdog periods: no ping may arrive while stalled.
                quiet_until = time.monotonic() + 3 * 0.6
                while (left := quiet_until - time.monotonic()) > 0:
                    msg = lst.receive(left)
                    assert msg is None or "WATCHDOG=1" not in msg.splitlines(), msg
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            assert lst.wait_for("WATCHDOG=1", 15) is not None, "pings resume after the stall"
        finally:
            code = stop_daemon(proc, log)
        assert code == 0, log.read_text()
    assert "progress resumed" in log.read_text()
    conn = sqlite3.connect(db)
    try:
        stopped = conn.execute("SELECT count(*) FROM events WHERE kind='agent.stopped'").fetchone()
        assert stopped[0] == 1, "the writes queued during the stall were all committed"
    finally:
        conn.close()
