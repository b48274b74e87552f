"""The config guard on real files: last known good copy, start-up fallback, crash counter,
and the confirmation deadline that reverts a broker change that never connects."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config_guard import (
    ConfigGuard,
    GuardFiles,
    GuardState,
    Startup,
    choose_startup_config,
    read_config,
)
from edge_agent.errors import ConfigError
from edge_agent.events import Event, EventBus
from edge_agent.health import HealthBoard

GOOD = "# the plant broker\n[mqtt]\nport = 1883\n\n[service]\nconfig_confirm_s = 0.2\n"
OTHER = GOOD.replace("1883", "1884")


def _files(tmp_path: Path, text: str = GOOD) -> GuardFiles:
    path = tmp_path / "edge-agent.toml"
    path.write_text(text)
    path.chmod(0o640)
    return GuardFiles.for_config(path, environ={})


def test_files_live_beside_the_config_or_in_the_service_state_directory(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "edge-agent.toml"
    assert GuardFiles.for_config(path, environ={}).good == path.with_name("edge-agent.toml.good")
    state = GuardFiles.for_config(path, environ={"STATE_DIRECTORY": "/var/lib/edge-agent:/x"})
    assert state.good == Path("/var/lib/edge-agent/edge-agent.toml.good")
    assert state.state == Path("/var/lib/edge-agent/edge-agent.toml.guard.json")


def test_a_valid_file_starts_and_counts_the_start(tmp_path: Path) -> None:
    files = _files(tmp_path)
    for n in (1, 2):
        startup = choose_startup_config(files.config, environ={}, files=files)
        assert startup.fallback is None
        assert startup.raw == GOOD.encode()
        assert GuardState.read(files.state).unclean_starts == n


@pytest.mark.parametrize(
    "broken",
    [
        "[mqtt\nport = 1883\n",  # not TOML
        "[mqtt]\nport = 0\n",  # not valid
        b"[mqtt]\nhost = '\xff'\n",  # not UTF-8
    ],
    ids=["syntax", "value", "encoding"],
)
def test_a_broken_file_starts_on_the_good_copy_and_is_kept_aside(
    tmp_path: Path, broken: str | bytes
) -> None:
    files = _files(tmp_path)
    files.good.write_text(GOOD)
    raw = broken.encode() if isinstance(broken, str) else broken
    files.config.write_bytes(raw)
    startup = choose_startup_config(files.config, environ={}, files=files, wall=lambda: 1.5e9)
    assert startup.raw == GOOD.encode()
    assert startup.config.mqtt.port == 1883
    fallback = startup.fallback
    assert fallback is not None
    assert fallback["when"] == "start"
    assert fallback["restored"] is True
    assert Path(fallback["refused"]).read_bytes() == raw
    assert Path(fallback["refused"]).name == "edge-agent.toml.refused-20170714T024000Z"
    assert files.config.read_text() == GOOD  # the file holds what runs again
    assert stat.S_IMODE(files.config.stat().st_mode) == 0o640
    assert GuardState.read(files.state).fallback == fallback  # for `doctor`


def test_a_broken_file_without_a_good_copy_is_a_precise_error(tmp_path: Path) -> None:
    files = _files(tmp_path, "[mqtt]\nport = 0\n")
    with pytest.raises(ConfigError) as err:
        choose_startup_config(files.config, environ={}, files=files)
    assert "mqtt.port" in str(err.value)
    assert files.config.read_text() == "[mqtt]\nport = 0\n"  # untouched


def test_the_crash_limit_falls_back_to_the_good_copy(tmp_path: Path) -> None:
    """Three starts of one file without a clean run: the fourth runs the good copy. A file
    that cannot be put back (read-only) is remembered, so later starts skip it too."""
    files = _files(tmp_path, OTHER)
    files.good.write_text(GOOD)
    for _ in range(3):
        assert choose_startup_config(files.config, environ={}, files=files).fallback is None
    startup = choose_startup_config(files.config, environ={}, files=files)
    assert startup.fallback is not None
    assert "3 times in a row" in startup.fallback["reason"]
    assert startup.config.mqtt.port == 1883
    assert files.config.read_text() == GOOD


def test_crashes_on_the_good_copy_itself_are_not_the_configs_doing(tmp_path: Path) -> None:
    files = _files(tmp_path)
    files.good.write_text(GOOD)
    for _ in range(5):
        assert choose_startup_config(files.config, environ={}, files=files).fallback is None


def test_a_damaged_state_file_is_a_fresh_start(tmp_path: Path) -> None:
    files = _files(tmp_path)
    for junk in ("{not json", '{"unclean_starts": "many"}', "[]", ""):
        files.state.write_text(junk)
        assert choose_startup_config(files.config, environ={}, files=files).fallback is None


# -- the running guard, on a real event loop and a real event bus --------------------------


class Reverter:
    """The daemon's reload as the guard sees it: re-reads the file it is given."""

    def __init__(self) -> None:
        self.paths: list[Path] = []

    async def __call__(self, path: Path) -> Mapping[str, Any]:
        self.paths.append(path)
        return {"ok": True}


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_a_broker_change_that_never_connects_is_reverted(tmp_path: Path) -> None:
    files = _files(tmp_path)

    async def scenario() -> tuple[list[Event], Reverter, HealthBoard]:
        bus, board, revert = EventBus(), HealthBoard(), Reverter()
        bus.bind(asyncio.get_running_loop())
        seen: list[Event] = []
        bus.subscribe(seen.append)
        guard = ConfigGuard(files, emit=bus.emit, revert=revert, health=board, environ={})
        bus.subscribe(guard.on_event)
        config, raw = read_config(files.config, environ={})
        guard.start(Startup(config, raw))
        bus.emit("mqtt.connected", host="127.0.0.1", port=1883, protocol="5")
        await _until(files.good.exists)
        assert files.good.read_bytes() == raw
        # A change of the broker settings, applied, and no CONNACK follows.
        files.config.write_text(OTHER)
        bus.emit("mqtt.disconnected", reason="reload")
        new, new_raw = read_config(files.config, environ={})
        guard.reloaded(new, new_raw, broker_changed=True)
        assert guard.pending is not None
        await _until(lambda: revert.paths)
        assert board.snapshot()["state"] == "degraded"
        # The good copy runs again and connects: still reported until a new file proves itself.
        guard.reloaded(config, raw, broker_changed=True)
        bus.emit("mqtt.connected", host="127.0.0.1", port=1883, protocol="5")
        await asyncio.sleep(0.3)
        assert guard.reverted is not None
        await guard.close()
        return seen, revert, board

    seen, revert, board = asyncio.run(scenario())
    assert revert.paths == [files.config]
    assert files.config.read_text() == GOOD
    reverted = [e for e in seen if e.kind == "config.reverted"]
    assert len(reverted) == 1
    body = reverted[0].body
    assert body["restored"] is True
    assert "no broker connection within 0.2 s" in body["reason"]
    assert Path(body["refused"]).read_text() == OTHER
    assert board.snapshot()["degraded"] == [f"config reverted: {body['reason']}"]
    assert json.loads(files.state.read_text())["fallback"]["when"] == "reload"


def test_a_change_that_connects_becomes_the_good_copy(tmp_path: Path) -> None:
    files = _files(tmp_path)

    async def scenario() -> ConfigGuard:
        revert = Reverter()
        guard = ConfigGuard(files, emit=lambda *a, **k: None, revert=revert, environ={})
        config, raw = read_config(files.config, environ={})
        guard.start(Startup(config, raw))
        guard.broker_state(True)
        await _until(files.good.exists)
        files.config.write_text(OTHER)
        new, new_raw = read_config(files.config, environ={})
        guard.broker_state(False)
        guard.reloaded(new, new_raw, broker_changed=True)
        guard.broker_state(True)
        await _until(lambda: files.good.read_text() == OTHER)
        await asyncio.sleep(0.3)  # past the deadline: nothing is reverted
        assert revert.paths == []
        await guard.close()
        return guard

    guard = asyncio.run(scenario())
    assert guard.pending is None
    assert files.config.read_text() == OTHER


def test_a_read_only_config_is_reverted_in_memory_and_refused_at_the_next_start(
    tmp_path: Path,
) -> None:
    """Under systemd /etc is read-only to the daemon: the good copy is reloaded from the
    state directory, and the refused file's hash keeps the next start off it.

    The tests run as root, which writes into read-only directories; the one write that
    must fail (the temporary file beside the config) is blocked by a directory of that
    name instead.
    """
    etc, state_dir = tmp_path / "etc", tmp_path / "state"
    etc.mkdir()
    state_dir.mkdir()
    config = etc / "edge-agent.toml"
    files = GuardFiles.for_config(config, environ={"STATE_DIRECTORY": str(state_dir)})
    files.good.write_text(GOOD)
    config.write_text(OTHER)
    blocker = etc / f".{config.name}.{os.getpid()}.tmp"

    async def scenario() -> Reverter:
        revert = Reverter()
        guard = ConfigGuard(files, emit=lambda *a, **k: None, revert=revert, environ={})
        new, raw = read_config(config, environ={})
        guard.start(Startup(new, raw))
        guard.reloaded(new, raw, broker_changed=True)
        await _until(lambda: revert.paths)
        await guard.close()
        return revert

    blocker.mkdir()
    try:
        revert = asyncio.run(scenario())
        assert revert.paths == [files.good]
        assert config.read_text() == OTHER  # could not be put back
        startup = choose_startup_config(config, environ={}, files=files)
    finally:
        blocker.rmdir()
    assert startup.fallback is not None
    assert "refused before" in startup.fallback["reason"]
    assert startup.config.mqtt.port == 1883
    assert startup.fallback["restored"] is False


def test_a_failing_revert_is_reported_and_contained(tmp_path: Path) -> None:
    """A reload that raises while going back: `component.failed`, and the guard's owner
    carries on (its loop, its other tasks)."""
    files = _files(tmp_path)
    files.good.write_text(GOOD)
    files.config.write_text(OTHER)
    seen: list[tuple[str, dict[str, Any]]] = []

    async def broken_reload(path: Path) -> Mapping[str, Any]:
        raise RuntimeError("reload exploded")

    async def scenario() -> None:
        guard = ConfigGuard(
            files,
            emit=lambda kind, severity="info", sensor=None, **body: seen.append((kind, body)),
            revert=broken_reload,
            environ={},
        )
        config, raw = read_config(files.config, environ={})
        guard.start(Startup(config, raw))  # broker settings differ from the good copy's
        await _until(lambda: any(kind == "component.failed" for kind, _ in seen))
        await guard.close()

    asyncio.run(scenario())
    kinds = [kind for kind, _ in seen]
    assert kinds == ["config.reverted", "component.failed"]
    assert seen[1][1] == {"component": "config-guard", "error": "RuntimeError('reload exploded')"}
