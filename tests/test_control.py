"""The control socket: permissions, the JSON-lines protocol, and the technician's commands.

The server runs on a real event loop over a real unix socket; the clients are the same
functions `edge-agent status/tail/reload` use. The last tests drive a real daemon
process (emulated sensor on a pty, real mosquitto) through the CLI.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.service.control import (
    SOCKET_MODE,
    ControlAccessDeniedError,
    ControlError,
    ControlServer,
    DaemonNotRunningError,
    TailFanout,
    bind_control_socket,
    request,
    stream,
)
from tests.broker import Mosquitto, wait_for
from tests.daemon_proc import cli, daemon_env, start_daemon, stop_daemon, write_config


async def _echo(req: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "echo": req}


async def _boom(req: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("broken handler")


def _serve(path: Path, client: Any, tail: TailFanout | None = None) -> Any:
    """Run a ControlServer on a loop, call `client(server)` in a thread, return its result."""

    async def main() -> Any:
        server = ControlServer(path, {"ping": _echo, "boom": _boom}, tail or TailFanout())
        await server.start()
        try:
            return await asyncio.to_thread(client, server)
        finally:
            await server.close()
            await server.close()

    return asyncio.run(main())


def test_socket_is_0660_and_removed_on_close(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"

    def check(server: ControlServer) -> None:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == SOCKET_MODE == 0o660
        assert not list(tmp_path.glob(".ctl.sock.*")), "the temporary name is gone"

    _serve(path, check)
    assert not path.exists()


def test_stale_socket_is_replaced_live_or_foreign_refused(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a crashed daemon's leftover: bound, nobody listening
    assert _serve(path, lambda s: request(path, "ping")["ok"])
    live = bind_control_socket(path)
    try:
        with pytest.raises(ControlError, match="another edge-agent already answers"):
            bind_control_socket(path)
    finally:
        live.close()
        path.unlink()
    path.write_text("not a socket")
    with pytest.raises(ControlError, match="exists and is not a socket"):
        bind_control_socket(path)


def test_requests_errors_and_the_connection_survives_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"

    def talk(server: ControlServer) -> list[dict[str, Any]]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(path))
            s.sendall(
                b'{"cmd": "ping", "x": 1}\n'
                b"not json\n"
                b'["cmd"]\n'
                b'{"cmd": "launch"}\n'
                b'{"cmd": "boom"}\n'
                b'{"cmd": "ping"}\n'
            )
            buf = b""
            while buf.count(b"\n") < 6:
                buf += s.recv(65536)
        return [json.loads(line) for line in buf.splitlines()]

    replies = _serve(path, talk)
    assert replies[0] == {"ok": True, "echo": {"cmd": "ping", "x": 1}}
    assert replies[1]["ok"] is False
    assert "bad request" in replies[1]["error"]
    assert replies[2]["ok"] is False
    assert "'cmd'" in replies[2]["error"]
    assert replies[3] == {"ok": False, "error": "unknown command 'launch'; valid: boom, ping, tail"}
    assert replies[4] == {"ok": False, "error": "boom failed: broken handler"}
    assert replies[5]["ok"] is True


def test_tail_streams_filtered_records_and_counts_what_a_slow_client_missed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ctl.sock"
    fanout = TailFanout(maxsize=3)

    async def main() -> list[dict[str, Any]]:
        server = ControlServer(path, {}, fanout)
        await server.start()
        try:
            lines = stream(path, "tail", sensor="imu-1", events=False)
            first = await asyncio.to_thread(next, lines)
            assert first == {"ok": True, "tail": ["result"], "sensor": "imu-1"}
            await asyncio.to_thread(wait_for, lambda: fanout.active, 5, "subscriber")
            # Eight records for a queue of three: five are dropped, and that is reported.
            for i in range(5):
                fanout.publish({"type": "result", "sensor": "imu-1", "n": i})
            fanout.publish({"type": "event", "sensor": "imu-1"})
            fanout.publish({"type": "result", "sensor": "imu-2"})
            fanout.publish({"type": "result", "sensor": "imu-1", "n": 99})
            got = [await asyncio.to_thread(next, lines) for _ in range(4)]
            lines.close()
            await asyncio.to_thread(wait_for, lambda: not fanout.active, 5, "unsubscribe")
            return got
        finally:
            await server.close()

    got = asyncio.run(main())
    # All eight were published before the server took the first: three fit in the queue.
    assert got[0] == {"type": "dropped", "count": 5}
    assert got[1:] == [{"type": "result", "sensor": "imu-1", "n": i} for i in range(3)]


def _as_nobody(path: Path, gid: int) -> str:
    """`request(path, 'ping')` from a child that dropped to uid 65534 (imports first)."""
    code = (
        "import os\n"
        "from pathlib import Path\n"
        "from edge_agent.service.control import request, ControlAccessDeniedError\n"
        f"os.setgroups([]); os.setgid({gid}); os.setuid(65534)\n"
        "try:\n"
        f"    print('answer', request(Path({str(path)!r}), 'ping')['ok'])\n"
        "except ControlAccessDeniedError as err:\n"
        "    print(err)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**daemon_env(), "PYTHONPATH": str(Path.cwd())},
        check=False,
    )
    return done.stdout + done.stderr


def test_only_owner_and_group_may_connect(tmp_path: Path) -> None:
    """Mode 0660 at work: a user outside the socket's group is refused with the fix, a
    member gets in. As root (who passes every check) the clients drop to uid 65534; as
    an ordinary user the socket's mode is cleared to deny the owner instead."""
    with pytest.raises(DaemonNotRunningError, match="is not running"):
        request(tmp_path / "none.sock", "status")
    if os.geteuid() == 0:
        # A directory others may traverse, so the socket's own mode decides.
        base = Path(tempfile.mkdtemp(prefix="ctl-", dir="/tmp"))
        base.chmod(0o755)
        path = base / "ctl.sock"

        def both(server: ControlServer) -> tuple[str, str]:
            outsider = _as_nobody(path, 65533)
            os.chown(path, -1, 65534)
            member = _as_nobody(path, 65534)
            return outsider, member

        try:
            outsider, member = _serve(path, both)
        finally:
            shutil.rmtree(base)
        assert "answer True" in member, member
    else:
        path = tmp_path / "ctl.sock"

        def owner_denied(server: ControlServer) -> str:
            path.chmod(0)
            try:
                request(path, "ping")
            except ControlAccessDeniedError as err:
                return str(err)
            finally:
                path.chmod(SOCKET_MODE)
            return "connected"

        outsider = _serve(path, owner_denied)
    assert "permission denied" in outsider, outsider
    assert "usermod -aG edge-agent" in outsider, outsider


# -- a real daemon through the CLI ---------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path_factory.mktemp("broker")) as b:
        yield b


def test_status_tail_and_reload_against_a_running_daemon(broker: Mosquitto, tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    config = write_config(
        tmp_path / "agent.toml",
        db=db,
        mqtt_port=broker.port,
        sensors=[
            {"name": "imu-0", "link": "emulated", "synthetic": True, "rate_hz": 100.0},
            {"name": "spare", "link": "serial", "port": str(tmp_path / "missing-tty")},
        ],
    )
    log = tmp_path / "daemon.log"
    env = {"EDGE_AGENT_CONFIG": str(config)}
    proc = start_daemon(config, log)
    try:
        wait_for(lambda: db.with_suffix(".sock").exists(), 30, "control socket")

        def streaming() -> bool:
            st = request(db.with_suffix(".sock"), "status")["status"]
            imu = st["sensors"]["imu-0"]
            ok = imu["rate_hz"] and imu["rate_hz"] > 0 and st["mqtt"]["connected"]
            return bool(ok and st["windows_committed"] > 0)

        wait_for(streaming, 30, "imu-0 streaming with a rate, broker connected", 0.2)
        done = cli("status", "--json", env=env)
        assert done.returncode == 0, done.stderr
        st = json.loads(done.stdout)
        assert st["state"] == "running"
        assert st["config"] == str(config)
        assert st["sensors"]["spare"]["state"] == "disconnected"
        assert [m["ref"] for m in st["models"]] == ["imu-activity@1.0.0"]
        assert st["models"][0]["sensors"] == ["imu-0", "spare"]
        assert isinstance(st["outbox_depth"], int)
        assert any(e["event"] == "sensor.lost" for e in st["last_errors"])
        assert st["ready_after_s"] > 0

        text = cli("status", env=env)
        assert text.returncode == 0
        for needle in ("imu-0", "spare", "disconnected", "imu-activity@1.0.0", "LAST ERRORS"):
            assert needle in text.stdout, text.stdout

        tail = cli("tail", "--count", "2", "--results", "--json", env=env)
        assert tail.returncode == 0, tail.stderr
        records = [json.loads(line) for line in tail.stdout.splitlines()]
        assert len(records) == 2
        assert all(r["type"] == "result" and r["sensor"] == "imu-0" for r in records)
        assert all(r["model"] == "imu-activity@1.0.0" and r["label"] for r in records)

        service = cli("service", "status", env=env)
        assert service.returncode == 0, service.stdout + service.stderr
        assert "edge-agent.service:" in service.stdout  # systemd's view (none here)
        assert "SENSOR" in service.stdout  # then the daemon's own

        reloaded = cli("reload", env=env)
        assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
        assert "unchanged: imu-0, spare" in reloaded.stdout
    finally:
        code = stop_daemon(proc, log)
    assert code == 0, log.read_text()
    assert not db.with_suffix(".sock").exists()
    stopped = cli("status", env=env)
    assert stopped.returncode == 3, "not running: exit 3, like systemctl status"
    assert "is not running" in stopped.stderr
