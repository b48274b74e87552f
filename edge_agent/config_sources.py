"""Where raw config data comes from: the TOML file, and environment overrides on top.

Both are outside input. A file that cannot be read, is not UTF-8, is not TOML or is far too
big is one :class:`~edge_agent.errors.ConfigError` line naming it; an override variable
that cannot be applied is reported by its name, and `variable_for` lets the validator name
the variable behind an invalid value instead of the file.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError, ConfigIssue

__all__ = [
    "ENV_PREFIX",
    "ENV_SEPARATOR",
    "MAX_CONFIG_BYTES",
    "apply_env",
    "parse_env_value",
    "read_config_file",
    "set_path",
    "variable_for",
]

ENV_PREFIX = "EDGE_AGENT_"
ENV_SEPARATOR = "__"

MAX_CONFIG_BYTES = 1 << 20
"""Largest config file read (1 MiB): anything bigger is not a config file."""


def read_config_file(path: Path) -> dict[str, Any]:
    """The TOML table of a config file.

    Raises:
        ConfigError: one line naming the file: missing, not a regular file, unreadable,
            too big, not UTF-8 (with the line of the first bad byte) or not TOML.
    """
    return decode_config(read_config_bytes(path), str(path))


def read_config_bytes(path: Path) -> bytes:
    """The bytes of a config file (the config guard keeps copies of exactly these).

    Raises:
        ConfigError: one line naming the file: missing, not a regular file, unreadable or
            too big.
    """
    source = str(path)

    def fail(message: str) -> ConfigError:
        return ConfigError(source, [ConfigIssue("", message)])

    try:
        mode = path.stat().st_mode
        # /dev/null is the usual way to say "no file, defaults and environment only".
        if not stat.S_ISREG(mode) and path != Path(os.devnull):
            raise fail("not a regular file")
        with path.open("rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as err:
        raise fail("file not found") from err
    except OSError as err:
        raise fail(f"cannot read: {err.strerror or err}") from err
    if len(raw) > MAX_CONFIG_BYTES:
        raise fail(f"larger than {MAX_CONFIG_BYTES // 1024} KiB; not a config file")
    return raw


def decode_config(raw: bytes, source: str) -> dict[str, Any]:
    """The TOML table of config file bytes read from `source`.

    Raises:
        ConfigError: one line naming `source`: not UTF-8 (with the line of the first bad
            byte) or not TOML.
    """

    def fail(message: str) -> ConfigError:
        return ConfigError(source, [ConfigIssue("", message)])

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise fail(
            f"not UTF-8 text: byte 0x{raw[err.start]:02x} on line {line} (save it as UTF-8)"
        ) from err
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise fail(f"not valid TOML: {err}") from err
    except RecursionError as err:
        raise fail("not valid TOML: arrays or tables nested too deeply") from err


def set_path(data: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set `value` at a nested key path, creating tables and indexing lists by number.

    A list index may name an entry or the next one (appending it), never further: a
    variable like `EDGE_AGENT_SENSORS__999999999__PORT` must not build a billion entries.

    Raises:
        KeyError: a list index that is not a number or lies past the end.
        TypeError: the path crosses a value that is not a table or a list.
    """
    node: Any = data
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) > len(node):
                raise KeyError(key)
            index = int(key)
            if index == len(node):
                node.append({})
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if last:
            node[key] = value
        else:
            if key not in node or not isinstance(node[key], dict | list):
                node[key] = [] if keys[i + 1].isdigit() else {}
            node = node[key]


def parse_env_value(raw: str) -> Any:
    """Environment values are strings; JSON lists and tables are accepted for structured keys."""
    stripped = raw.strip()
    if stripped.startswith(("[", "{")):
        try:
            return json.loads(stripped)
        except (json.JSONDecodeError, RecursionError):
            return raw
    return raw


def apply_env(
    data: dict[str, Any],
    environ: Mapping[str, str],
    default_sensors: Callable[[], list[dict[str, Any]]],
) -> tuple[dict[str, str], list[str]]:
    """Merge the override variables into `data`.

    `default_sensors` gives the embedded default's sensor tables: overriding one sensor of
    a config that lists none starts from them.

    Returns:
        Dotted key path → the variable that set it, and the variables that could not be
        applied (a list index past the end, a path through a value).
    """
    applied: dict[str, str] = {}
    refused: list[str] = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or ENV_SEPARATOR not in name:
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX) :].split(ENV_SEPARATOR)]
        if any(not key for key in keys):
            continue
        if keys[0] == "sensors" and "sensors" not in data:
            # Overriding one sensor of the embedded default starts from that default.
            data["sensors"] = default_sensors()
        try:
            set_path(data, keys, parse_env_value(raw))
        except (KeyError, TypeError):
            refused.append(name)
            continue
        applied[".".join(keys)] = name
    return applied, refused


def variable_for(path: str, applied: Mapping[str, str]) -> str | None:
    """The variable behind an issue at `path`, if an override set it (or a part of it)."""
    for key, variable in applied.items():
        if path == key or path.startswith(key + ".") or (path and key.startswith(path + ".")):
            return variable
    return None
