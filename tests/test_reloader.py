"""The `Reloader` on a daemon that is built but not running (real config files, real store
path; no sensors, so no link is opened): a reload refused while stopping, and a config file
that does not parse."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edge_agent.config import parse_config
from edge_agent.daemon import Daemon
from edge_agent.events import Event


def _daemon(tmp_path: Path, config_path: Path | None) -> Daemon:
    config = parse_config(
        {
            "device": {"id": "gw-reload", "tenant": "t1", "site": "s1"},
            "storage": {"path": str(tmp_path / "agent.db")},
            "service": {"control_socket": str(tmp_path / "agent.sock")},
            "sensors": [],
        },
        source="test",
        environ={},
    )
    return Daemon(config, handle_signals=False, config_path=config_path)


def test_reload_is_refused_once_a_stop_was_asked(tmp_path: Path) -> None:
    """After `request_stop()`, a reload changes nothing and says why."""
    daemon = _daemon(tmp_path, None)
    daemon.request_stop()
    outcome = asyncio.run(daemon.reloader.reload_now())
    assert outcome == {"ok": False, "error": "the daemon is stopping; reload not applied"}


def test_a_config_that_does_not_parse_is_reported_and_kept_out(tmp_path: Path) -> None:
    """A broken file: `agent.reload_failed`, the running config is kept, the state returns
    to `running`."""
    path = tmp_path / "agent.toml"
    path.write_text("this is [not toml\n")
    daemon = _daemon(tmp_path, path)
    before = daemon.config
    seen: list[Event] = []
    daemon.bus.subscribe(seen.append)

    async def reload() -> dict[str, object]:
        daemon.bus.bind(asyncio.get_running_loop())
        outcome = await daemon.reloader.reload_now()
        await asyncio.sleep(0)  # listeners run on the loop
        return outcome

    outcome = asyncio.run(reload())
    assert outcome["ok"] is False
    assert outcome["config"] == str(path)
    assert daemon.config is before
    assert daemon.state == "running"
    assert [e.kind for e in seen] == ["agent.reload_failed"]
