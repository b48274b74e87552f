"""Configuration: defaults that run, precise errors, environment overrides, the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import AgentConfig, load_config, parse_config, render_config
from edge_agent.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_embedded_default_is_valid_and_runs_two_emulated_sensors() -> None:
    cfg = load_config(None, environ={})
    assert [s.link for s in cfg.sensors] == ["emulated", "emulated"]
    assert cfg.mqtt.topic_prefix == "edge"
    assert cfg.topic_root == f"edge/default/default/{cfg.device.id}"


def test_emulated_sensors_are_handed_the_recording_to_play(tmp_path: Path) -> None:
    """The gateway's config resolves what an emulated sensor plays (the shipped held-out
    recording unless `recording` is set), so the link itself knows nothing of edge-agent."""
    from edge_agent.inference.bundle import shipped_recording
    from firmware_bridge.emulator import CsvRecording
    from firmware_bridge.links.emulated import EmulatedLink

    cfg = load_config(None, environ={})
    default = cfg.sensors[0]
    assert default.recording is None
    assert default.recording_path == shipped_recording()
    assert len(CsvRecording(default.recording_path)) > 0
    own = tmp_path / "own.csv"
    own.write_text("timestamp,ax\n0.0,1.0\n0.01,2.0\n0.02,3.0\n")
    cfg = parse_config(
        {"sensors": [{"name": "s", "link": "emulated", "recording": str(own)}]}, source="test"
    )
    link = EmulatedLink(cfg.sensors[0], sink=None)
    try:
        assert link.emulator.hello.channels[0].name == "ax"
        assert link.emulator.rate_hz == pytest.approx(100.0)
    finally:
        link.emulator.close()


def test_shipped_default_toml_matches_the_embedded_default() -> None:
    from_file = load_config(REPO / "config" / "default.toml", environ={})
    embedded = load_config(None, environ={})
    assert from_file.model_dump(exclude={"device"}) == embedded.model_dump(exclude={"device"})


def test_every_field_has_a_description() -> None:
    def walk(model: type) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            if not field.description:
                missing.append(f"{model.__name__}.{name}")
        return missing

    from edge_agent import config as c

    models = [
        c.DeviceConfig,
        c.MqttConfig,
        c.SyncConfig,
        c.StorageConfig,
        c.ModelsConfig,
        c.SerialSensorConfig,
        c.BleSensorConfig,
        c.EmulatedSensorConfig,
        c.LoggingConfig,
        AgentConfig,
    ]
    assert [m for model in models for m in walk(model)] == []


def test_errors_name_every_key_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "mqtt": {"port": 70000, "hots": "x"},
                "sensors": [
                    {"name": "a", "link": "serial"},
                    {"name": "b", "link": "usb"},
                    {"name": "c"},
                ],
            },
            source="t.toml",
            environ={},
        )
    paths = {issue.path: issue.message for issue in info.value.issues}
    assert "less than or equal to 65535" in paths["mqtt.port"]
    assert "unknown key" in paths["mqtt.hots"]
    assert "required" in paths["sensors.0.port"].lower()
    assert "'serial', 'ble', 'emulated'" in paths["sensors.1"]
    assert "missing `link`" in paths["sensors.2"]


def test_duplicate_sensor_names_are_rejected() -> None:
    with pytest.raises(ConfigError, match="repeated: a"):
        parse_config({"sensors": [{"name": "a", "link": "emulated"}] * 2}, source="x", environ={})


def test_environment_overrides_any_key() -> None:
    cfg = parse_config(
        {"sensors": [{"name": "s", "link": "serial", "port": "/dev/ttyUSB0"}]},
        source="x",
        environ={
            "EDGE_AGENT_MQTT__PORT": "1884",
            "EDGE_AGENT_DEVICE__ID": "gw-7",
            "EDGE_AGENT_SENSORS__0__BAUDRATE": "115200",
            "EDGE_AGENT_MODELS__DIRS": '["/opt/models"]',
            "UNRELATED": "1",
        },
    )
    assert cfg.mqtt.port == 1884
    assert cfg.device.id == "gw-7"
    assert cfg.sensors[0].baudrate == 115200  # type: ignore[union-attr]
    assert [str(p) for p in cfg.models.dirs] == ["/opt/models"]


def test_bad_environment_value_is_reported_with_its_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({}, source="x", environ={"EDGE_AGENT_MQTT__PORT": "eighteen"})
    assert info.value.issues[0].path == "mqtt.port"


def test_render_masks_secrets() -> None:
    cfg = parse_config({"mqtt": {"username": "u", "password": "hunter2"}}, source="x", environ={})
    text = render_config(cfg)
    assert "hunter2" not in text
    assert 'password = "********"' in text


def test_broken_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt\nport = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, environ={})
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml", environ={})


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_validate_exits_2_and_lists_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[mqtt]\nport = "x"\n[[sensors]]\nname = "a"\nlink = "serial"\n')
    result = _cli("config", "validate", str(path))
    assert result.returncode == 2
    assert "mqtt.port" in result.stderr
    assert "sensors.0.port" in result.stderr


def test_cli_validate_accepts_the_examples() -> None:
    for path in sorted((REPO / "config").glob("*.toml")):
        result = _cli("config", "validate", str(path))
        assert result.returncode == 0, result.stderr


def test_cli_show_prints_effective_config() -> None:
    result = _cli("config", "show")
    assert result.returncode == 0, result.stderr
    assert "[mqtt]" in result.stdout
    assert 'topic_prefix = "edge"' in result.stdout
