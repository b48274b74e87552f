"""The config is checked for sense, not only type: hosts, paths, ports, intervals and every
number are refused when they would end or flood the daemon, a file that is not UTF-8 or not
readable is one line naming it (never a traceback), and an error set by an environment
variable names the variable.

Hypothesis writes arbitrary bytes and TOML-ish text as config files, arbitrary values at
every key path and arbitrary environment overrides; the SIGHUP test runs a real daemon
process and breaks its file with a byte that is not UTF-8.
"""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from edge_agent import config as c
from edge_agent.config import AgentConfig, load_config, parse_config
from edge_agent.config_sources import MAX_CONFIG_BYTES
from edge_agent.errors import ConfigError
from tests.broker import wait_for
from tests.daemon_proc import daemon_env, events, start_daemon, stop_daemon, write_config

SERIAL = {"name": "s", "link": "serial", "port": "/dev/ttyUSB0"}


def _refused(data: dict[str, Any], path: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="gw.toml", environ=environ or {})
    messages = {issue.path: issue.message for issue in info.value.issues}
    assert path in messages, messages
    return messages[path]


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"mqtt": {"host": ""}}, "mqtt.host"),
        ({"mqtt": {"host": " "}}, "mqtt.host"),
        ({"mqtt": {"host": "broker lan"}}, "mqtt.host"),
        ({"mqtt": {"host": "x" * 254}}, "mqtt.host"),
        ({"mqtt": {"topic_prefix": "edge\x00"}}, "mqtt.topic_prefix"),
        ({"device": {"id": "g" * 129}}, "device.id"),
        ({"mqtt": {"port": 0}}, "mqtt.port"),
        ({"mqtt": {"port": 65536}}, "mqtt.port"),
        ({"mqtt": {"max_messages_per_s": 1e-9}}, "mqtt.max_messages_per_s"),
        ({"mqtt": {"reconnect_min_s": 0}}, "mqtt.reconnect_min_s"),
        ({"storage": {"path": ""}}, "storage.path"),
        ({"storage": {"path": "   "}}, "storage.path"),
        ({"storage": {"path": "a\x00b"}}, "storage.path"),
        ({"storage": {"max_bytes": 10**30}}, "storage.max_bytes"),
        ({"storage": {"max_age_days": 1e-9}}, "storage.max_age_days"),
        ({"sync": {"summary_interval_s": 1e-9}}, "sync.summary_interval_s"),
        ({"sync": {"summary_interval_s": 0.5}}, "sync.summary_interval_s"),
        ({"sync": {"heartbeat_interval_s": 1e-9}}, "sync.heartbeat_interval_s"),
        ({"sync": {"results_interval_s": 0.0}}, "sync.results_interval_s"),
        ({"models": {"dirs": [""]}}, "models.dirs.0"),
        ({"service": {"control_socket": ""}}, "service.control_socket"),
        ({"commands": {"max_request_bytes": 10}}, "commands.max_request_bytes"),
        ({"commands": {"rate_per_s": 0}}, "commands.rate_per_s"),
        ({"sensors": [{**SERIAL, "port": " "}]}, "sensors.0.port"),
        ({"sensors": [{**SERIAL, "baudrate": 10**12}]}, "sensors.0.baudrate"),
        ({"sensors": [{"name": "e", "link": "emulated", "rate_hz": 1e9}]}, "sensors.0.rate_hz"),
        (
            {"sensors": [{**SERIAL, "profile": {"protocol": "witmotion", "rate_hz": 0.01}}]},
            "sensors.0.profile.rate_hz",
        ),
        (
            {"sensors": [{"name": "b", "link": "ble", "name_pattern": "(unclosed"}]},
            "sensors.0.name_pattern",
        ),
    ],
)
def test_values_that_would_end_or_flood_the_daemon_are_refused(
    data: dict[str, Any], path: str
) -> None:
    _refused(data, path)


def test_a_host_error_says_what_a_host_is() -> None:
    message = _refused({"mqtt": {"host": " "}}, "mqtt.host")
    assert "not empty" in message
    assert "no spaces" in message


def _float_paths(model: type[BaseModel], prefix: str) -> list[str]:
    """Dotted paths of every float field (nested sections, not lists)."""
    out = []
    for name, field in model.model_fields.items():
        annotation = str(field.annotation)
        if "float" in annotation:
            out.append(f"{prefix}{name}")
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out += _float_paths(field.annotation, f"{prefix}{name}.")
    return out


FLOAT_PATHS = _float_paths(AgentConfig, "")
SENSOR_FLOATS = {
    "serial": _float_paths(c.SerialSensorConfig, ""),
    "ble": _float_paths(c.BleSensorConfig, ""),
    "emulated": _float_paths(c.EmulatedSensorConfig, ""),
}


def _nested(path: str, value: Any) -> dict[str, Any]:
    data: dict[str, Any] = {}
    node = data
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return data


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_no_number_anywhere_may_be_nan_or_infinite(bad: float) -> None:
    assert len(FLOAT_PATHS) > 15  # the walk found the sections' numbers
    for path in FLOAT_PATHS:
        _refused(_nested(path, bad), path)
    ble = {"name": "b", "link": "ble", "address": "AA:BB:CC:DD:EE:FF"}
    bases = {"serial": SERIAL, "ble": ble, "emulated": {"name": "e", "link": "emulated"}}
    for link, paths in SENSOR_FLOATS.items():
        for path in paths:
            _refused({"sensors": [{**bases[link], path: bad}]}, f"sensors.0.{path}")


# -- files that cannot be read ----------------------------------------------------------------


def test_a_file_that_is_not_utf8_is_one_line_naming_the_file_and_the_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gw.toml"
    path.write_bytes(b'[mqtt]\nhost = "broker"\n# caf\xe9\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    text = str(info.value)
    assert "\n" not in text
    assert str(path) in text
    assert "not UTF-8" in text
    assert "line 3" in text


def test_the_cli_reports_unreadable_files_in_one_line_without_a_traceback(tmp_path: Path) -> None:
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b"# \xff\n")
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # opening it would block: refused before that
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    cases = [
        (latin, "not UTF-8"),
        (fifo, "not a regular file"),
        (big, "not a config file"),
        (deep, "not valid TOML"),
        (tmp_path, "not a regular file"),
    ]
    runs = [(["config", "validate", str(path)], path, needle) for path, needle in cases]
    runs += [(["run", "--config", str(path)], path, needle) for path, needle in cases[:2]]
    # Started together: each is a whole interpreter start, the checks are what matters.
    procs = [
        (subprocess.Popen([sys.executable, "-m", "edge_agent", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=daemon_env()), args, path, needle)
        for args, path, needle in runs
    ]  # fmt: skip
    for proc, args, path, needle in procs:
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 2, (args, stderr)
        assert "Traceback" not in stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert str(path) in lines[0]
        assert needle in lines[0]


# -- environment overrides ----------------------------------------------------------------------


def test_an_error_set_by_the_environment_names_the_variable_not_the_file() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({}, source="/etc/edge-agent/gw.toml", environ={"EDGE_AGENT_MQTT__PORT": "0"})
    assert "EDGE_AGENT_MQTT__PORT" in info.value.source
    assert "gw.toml" not in str(info.value)
    assert info.value.issues[0].path == "mqtt.port"


def test_mixed_errors_keep_the_file_and_mark_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {"sync": {"summary_interval_s": 1e-9}},
            source="gw.toml",
            environ={"EDGE_AGENT_MQTT__HOST": " "},
        )
    assert info.value.source == "gw.toml"
    messages = {i.path: i.message for i in info.value.issues}
    assert "EDGE_AGENT_MQTT__HOST" in messages["mqtt.host"]
    assert "EDGE_AGENT" not in messages["sync.summary_interval_s"]


def test_a_list_index_far_past_the_end_is_refused_not_built() -> None:
    """A variable must not make the loader build a billion sensors."""
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        parse_config(
            {"sensors": [SERIAL]},
            source="gw.toml",
            environ={"EDGE_AGENT_SENSORS__999999999__PORT": "/dev/ttyUSB1"},
        )
    assert time.monotonic() - started < 5  # generous: it fails at once, it does not build
    assert "EDGE_AGENT_SENSORS__999999999__PORT" in str(info.value)


# -- fuzzing --------------------------------------------------------------------------------


def _key_paths() -> list[str]:
    out: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name}.")
            elif name != "sensors":
                out.append(f"{prefix}{name}")

    walk(AgentConfig, "")
    for model in (c.SerialSensorConfig, c.BleSensorConfig, c.EmulatedSensorConfig):
        out += [f"sensors.0.{name}" for name in model.model_fields]
    return sorted(set(out))


KEY_PATHS = _key_paths()

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["", " ", "nan", "inf", "-1", "0", "1e-9", "\x00", "a b", "/dev/null"])
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _sensor_data(path: str, value: Any) -> dict[str, Any]:
    if path.startswith("sensors.0."):
        return {"sensors": [{**SERIAL, path.removeprefix("sensors.0."): value}]}
    return _nested(path, value)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(KEY_PATHS), value=_VALUES)
def test_any_value_at_any_key_path_is_a_config_or_a_config_error(path: str, value: Any) -> None:
    """Whatever value lands at whatever key, validation either accepts it or raises a
    ConfigError naming a key path; what it accepts has only finite numbers."""
    outcome = _outcome(lambda: parse_config(_sensor_data(path, value), source="f", environ={}))
    if isinstance(outcome, ConfigError):
        assert outcome.issues
    else:
        _assert_finite(outcome.model_dump(mode="python"))


def _outcome(load: Callable[[], AgentConfig]) -> AgentConfig | ConfigError:
    try:
        return load()
    except ConfigError as err:
        return err


def _assert_finite(value: Any) -> None:
    if isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, dict):
        for item in value.values():
            _assert_finite(item)
    elif isinstance(value, list):
        for item in value:
            _assert_finite(item)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(KEY_PATHS), raw=st.text(max_size=30) | st.sampled_from(
    ["nan", "inf", "", " ", "[]", "{}", "[[[[", '{"a": 1}', "1e999", "-0", "99999999999999999999"]
))  # fmt: skip
def test_any_environment_override_is_a_config_or_names_its_variable(path: str, raw: str) -> None:
    variable = "EDGE_AGENT_" + path.upper().replace(".", "__")
    outcome = _outcome(
        lambda: parse_config({"sensors": [SERIAL]}, source="fuzz.toml", environ={variable: raw})
    )
    if isinstance(outcome, ConfigError):
        assert variable in str(outcome), str(outcome)
    else:
        _assert_finite(outcome.model_dump(mode="python"))


_TOMLISH = st.text(
    alphabet=st.sampled_from(list("[]{}=.\"'#,\n -+_01234569eEinfatrulsxmqhpo\\\x00\xe9")),
    max_size=120,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_TOMLISH.map(str.encode) | st.binary(max_size=200))
def test_any_file_content_loads_or_is_one_config_error(tmp_path_factory: Any, body: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "gw.toml"
    path.write_bytes(b"[[sensors]]\nname='s'\nlink='emulated'\n" + body)
    outcome = _outcome(lambda: load_config(path, environ={}))
    if isinstance(outcome, ConfigError):
        assert outcome.issues
        assert str(path) in str(outcome)
    else:
        _assert_finite(outcome.model_dump(mode="python"))


# -- a real daemon: a broken byte and SIGHUP ------------------------------------------------


def _stored(db: Path, kind: str) -> list[tuple[float, str, str | None, dict[str, Any]]]:
    """Events of `kind` in the daemon's database (none while it is still being created)."""
    try:
        return events(db, kind) if db.exists() else []
    except sqlite3.OperationalError:
        return []


def test_sighup_with_a_file_that_is_not_utf8_is_reload_failed_and_the_daemon_lives(
    tmp_path: Path,
) -> None:
    """The running daemon's file gets a byte that is not UTF-8, then SIGHUP: the reload is
    refused with `agent.reload_failed` naming the file, the daemon keeps running, and a
    fixed file reloads."""
    db = tmp_path / "agent.db"
    config = tmp_path / "agent.toml"
    write_config(config, db=db, sensors=[{"name": "e", "link": "emulated", "models": []}])
    good = config.read_bytes()
    log = tmp_path / "daemon.log"
    proc = start_daemon(config, log)
    try:
        wait_for(lambda: _stored(db, "agent.started"), 30, "daemon up")
        config.write_bytes(good + b"# \xff\xfe\n")
        os.kill(proc.pid, signal.SIGHUP)
        failed = wait_for(lambda: _stored(db, "agent.reload_failed"), 20, "reload_failed")
        reason = str(failed[0][3]["reason"])
        assert "not UTF-8" in reason
        assert str(config) in reason
        assert proc.poll() is None, log.read_text()
        config.write_bytes(good)
        os.kill(proc.pid, signal.SIGHUP)
        wait_for(lambda: _stored(db, "agent.reloaded"), 20, "agent.reloaded")
    finally:
        code = stop_daemon(proc, log)
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()
