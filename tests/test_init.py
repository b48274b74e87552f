"""`edge-agent init`: a technician's first config, validated, never silently overwritten."""

from __future__ import annotations

import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import load_config


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True, timeout=60
    )


def test_init_writes_a_valid_config_with_the_answers(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "edge-agent.toml"
    result = _cli(
        "init", "--path", str(path), "--device-id", "gw-9", "--tenant", "acme",
        "--site", "plant-3", "--broker", "mqtt.example:8883", "--tls",
        "--serial", "wrist=/dev/serial/by-id/usb-imu-if00", "--ble", "belt=C0:FF:EE:00:00:01",
        "--state-dir", str(tmp_path / "state"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    config = load_config(path, environ={})
    assert config.topic_root == "edge/acme/plant-3/gw-9"
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.tls) == ("mqtt.example", 8883, True)
    assert [(s.name, s.link) for s in config.sensors] == [("wrist", "serial"), ("belt", "ble")]
    assert config.storage.path == tmp_path / "state" / "edge-agent.db"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # it may name a password file
    assert _cli("config", "validate", str(path)).returncode == 0


def test_init_refuses_to_overwrite_and_rejects_bad_answers(tmp_path: Path) -> None:
    path = tmp_path / "edge-agent.toml"
    assert _cli("init", "--path", str(path)).returncode == 0
    before = path.read_text()
    again = _cli("init", "--path", str(path), "--tenant", "other")
    assert again.returncode == 1
    assert "--force" in again.stderr
    assert path.read_text() == before
    bad = _cli("init", "--path", str(tmp_path / "x.toml"), "--broker", "host:notaport")
    assert bad.returncode == 2
    assert "mqtt.port" in bad.stderr
    assert not (tmp_path / "x.toml").exists()
    pair = _cli("init", "--path", str(tmp_path / "y.toml"), "--serial", "no-equals-sign")
    assert pair.returncode == 2
    assert "NAME=VALUE" in pair.stderr


def test_init_takes_a_dotted_host_name_with_dashes_and_warns_of_broker_quirks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new gateway named after a dotted host name would be refused by NATS and split by
    RabbitMQ: `init` writes the id with '-' for '.' and says so. The host name is the one
    thing set here (a test cannot rename the machine); the rest is the real command."""
    from typer.testing import CliRunner

    from edge_agent.cli import app

    monkeypatch.setattr(socket, "gethostname", lambda: "gw01.plant.example")
    path = tmp_path / "edge-agent.toml"
    result = CliRunner().invoke(app, ["init", "--path", str(path)])
    assert result.exit_code == 0, result.output
    assert "'gw01-plant-example'" in result.output
    assert load_config(path, environ={}).device.id == "gw01-plant-example"
    # An id given on the command line is kept as given, with the brokers' warnings.
    dotted = tmp_path / "dotted.toml"
    result = CliRunner().invoke(app, ["init", "--path", str(dotted), "--device-id", "gw.02"])
    assert result.exit_code == 0, result.output
    assert load_config(dotted, environ={}).device.id == "gw.02"
    assert "warning:" in result.output
    assert 'use device.id = "gw-02"' in result.output
