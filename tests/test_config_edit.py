"""`config set` / `config get` and the file edit behind `config.set`, on real files."""

from __future__ import annotations

import math
import os
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.config_edit import (
    edit_config,
    parse_key,
    parse_value,
    previous_path,
    render_value,
)
from edge_agent.errors import ConfigEditError
from tests.daemon_proc import cli

ORIGINAL = """\
# Gateway at the north gate: keep this comment.
[device]
id = "gw-north"  # asset tag 0042
tenant = "t1"

# The broker comes second on purpose.
[mqtt]
host = "127.0.0.1"
port = 1883  # the plant's broker

[[sensors]]
name = "imu-0"
link = "emulated"

[[sensors]]
name = "imu-1"
link = "emulated"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "edge-agent.toml"
    path.write_text(ORIGINAL)
    os.chmod(path, 0o640)
    return path


def test_cli_set_keeps_comments_order_owner_mode_and_the_previous_file(config: Path) -> None:
    """A real `edge-agent config set`: the one value changes, every comment and the order of
    tables stay, owner, group and mode stay, and the file as it was is kept as `.prev`."""
    if os.geteuid() == 0:
        os.chown(config, 4321, 8765)  # an owner the editing user is not: root keeps it
    before = config.stat()
    done = cli("config", "set", "mqtt.port", "1884", "--config", str(config))
    assert done.returncode == 0, done.stderr
    text = config.read_text()
    assert text == ORIGINAL.replace("port = 1883", "port = 1884")
    after = config.stat()
    assert stat.S_IMODE(after.st_mode) == 0o640
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    prev = previous_path(config)
    assert prev.read_text() == ORIGINAL
    assert stat.S_IMODE(prev.stat().st_mode) == 0o640

    # A bare word is a string; a list index reaches one sensor.
    assert cli("config", "set", "mqtt.host", "broker.lan", "-c", str(config)).returncode == 0
    assert cli("config", "set", "sensors.1.enabled", "false", "-c", str(config)).returncode == 0
    data = tomllib.loads(config.read_text())
    assert data["mqtt"]["host"] == "broker.lan"
    assert data["sensors"][1]["enabled"] is False
    assert "# asset tag 0042" in config.read_text()
    got = cli("config", "get", "mqtt.host", "-c", str(config))
    assert got.returncode == 0
    assert got.stdout.strip() == '"broker.lan"'
    assert cli("config", "get", "sensors.1.enabled", "-c", str(config)).stdout.strip() == "false"


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("mqtt.port", "0", "mqtt.port"),
        ("mqtt.port", "broker", "mqtt.port"),
        ("mqtt.prot", "1884", "mqtt.prot"),
        ("sensors.7.enabled", "false", "sensors.7"),
        ("mqtt.port.x", "1", "mqtt.port.x"),
        ("mqtt..port", "1", "mqtt..port"),
    ],
)
def test_cli_refuses_an_invalid_change_and_writes_nothing(
    config: Path, key: str, value: str, named: str
) -> None:
    """An invalid value, an unknown key or a wrong path: exit 2 naming the key, the file
    byte for byte as it was, no `.prev`."""
    before = config.read_bytes()
    done = cli("config", "set", key, value, "--config", str(config))
    assert done.returncode == 2
    assert named in done.stderr
    assert config.read_bytes() == before
    assert not previous_path(config).exists()
    assert sorted(p.name for p in config.parent.iterdir()) == [config.name]


def test_validation_applies_environment_overrides(config: Path) -> None:
    """The result is validated as the daemon would load it: with its overrides applied."""
    with pytest.raises(ConfigEditError) as err:
        edit_config(config, {"mqtt.port": 1884}, environ={"EDGE_AGENT_MQTT__KEEPALIVE_S": "1"})
    assert err.value.code == "invalid_config"
    assert any("mqtt.keepalive_s" in d for d in err.value.details)
    assert config.read_text() == ORIGINAL


def test_none_removes_a_key_and_unchanged_values_write_nothing(config: Path) -> None:
    edit = edit_config(config, {"mqtt.port": 1883}, environ={})
    assert edit.previous is None
    assert edit.changed == []
    assert not previous_path(config).exists()
    edit = edit_config(config, {"mqtt.port": None}, environ={})
    assert edit.changed == ["mqtt.port"]
    assert "port" not in tomllib.loads(config.read_text())["mqtt"]
    assert edit.config is not None
    assert edit.config.mqtt.port == 1883  # the default again


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'[mqtt]\nhost = "\xff"\n')
    with pytest.raises(ConfigEditError) as err:
        edit_config(bad, {"mqtt.port": 1884})
    assert err.value.code == "config_unreadable"
    assert str(bad) in str(err.value)
    bad.write_text("[mqtt\n")
    with pytest.raises(ConfigEditError) as err:
        edit_config(bad, {"mqtt.port": 1884})
    assert err.value.code == "config_unreadable"
    with pytest.raises(ConfigEditError) as err:
        edit_config(tmp_path / "missing.toml", {"mqtt.port": 1884})
    assert err.value.code == "config_unreadable"


# -- properties of the key path and value parser ------------------------------------------

_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,11}", fullmatch=True)
_segments = st.one_of(_names, st.integers(0, 99).map(str))


@given(first=_names, rest=st.lists(_segments, max_size=4))
def test_key_paths_parse_into_their_parts(first: str, rest: list[str]) -> None:
    key = parse_key(".".join([first, *rest]))
    assert key == (first, *(int(r) if r.isdigit() else r for r in rest))


@given(st.text(max_size=40))
def test_any_key_text_parses_or_is_refused_as_bad_key(text: str) -> None:
    try:
        key = parse_key(text)
    except ConfigEditError as err:
        code = err.code
        assert code == "bad_key"
        return
    assert ".".join(str(k) for k in key) == text


_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
_values = st.one_of(_scalars, st.lists(_scalars, max_size=4))


@given(_values)
def test_rendered_values_parse_back_to_themselves(value: Any) -> None:
    """What `config get` prints, `config set` reads back as the same value."""
    assert parse_value(render_value(value)) == value


@given(st.text(max_size=40))
def test_any_typed_value_is_a_toml_value_or_the_text_itself(text: str) -> None:
    value = parse_value(text)
    if isinstance(value, str) and value == text:
        return
    # Otherwise it was a TOML value: the text reads as exactly that value.
    assert "\n" not in text
    parsed = tomllib.loads(f"v = {text}")["v"]
    assert parsed == value or (
        isinstance(value, float) and math.isnan(value) and math.isnan(parsed)
    )


_keys = st.sampled_from(
    [
        "mqtt.port",
        "mqtt.keepalive_s",
        "mqtt.host",
        "sync.heartbeat_interval_s",
        "sensors.0.enabled",
        "sensors.1.silence_limit_s",
        "logging.level",
        "service.status_interval_s",
    ]
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(_keys, st.one_of(_scalars, st.none()), max_size=3))
def test_an_edit_writes_a_valid_file_with_its_comments_or_nothing(
    tmp_path: Path, changes: dict[str, Any]
) -> None:
    """Whatever is asked, the file afterwards is either unchanged or valid, with every
    comment of the original (but that of a line removed); `.prev` holds the file as it
    was."""
    path = tmp_path / "prop.toml"
    path.write_text(ORIGINAL)
    previous_path(path).unlink(missing_ok=True)
    try:
        edit = edit_config(path, changes, environ={})
    except ConfigEditError as err:
        code = err.code
        assert code in {"invalid_config", "bad_key"}
        assert path.read_text() == ORIGINAL
        assert not previous_path(path).exists()
        return
    text = path.read_text()
    removed = {str(parse_key(k)[-1]) for k, v in changes.items() if v is None}
    for line in ORIGINAL.splitlines():
        if "#" in line and line.split(" =")[0] not in removed:
            assert line.split("#", 1)[1] in text
    data = tomllib.loads(text)
    for key, value in changes.items():
        node: Any = data
        for part in parse_key(key)[:-1]:
            node = node[part]
        last = parse_key(key)[-1]
        if value is None:
            assert last not in node
        else:
            assert node[last] == value
    if edit.previous is not None:
        assert edit.previous.read_text() == ORIGINAL


def test_the_daemon_does_not_load_the_round_trip_toml_library() -> None:
    """tomlkit is loaded by `config set` and on the first `config.set`, not at start:
    it would cost the daemon about 10 MB and 0.1 s for a command that may never come."""
    import subprocess
    import sys

    code = "import sys, edge_agent.runner, edge_agent.daemon; print('tomlkit' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"


def test_a_file_that_cannot_be_written_is_not_persistable(config: Path) -> None:
    """The service cannot write its config directory: refused, nothing half-written.

    The tests run as root, which writes into read-only directories; the write that must
    fail (the temporary file of `.prev`) is blocked by a directory of that name instead.
    """
    prev = previous_path(config)
    blocker = config.parent / f".{prev.name}.{os.getpid()}.tmp"
    blocker.mkdir()
    try:
        with pytest.raises(ConfigEditError) as err:
            edit_config(config, {"mqtt.port": 1884}, environ={})
    finally:
        blocker.rmdir()
    assert err.value.code == "not_persistable"
    assert config.read_text() == ORIGINAL
    assert sorted(p.name for p in config.parent.iterdir()) == [config.name]
