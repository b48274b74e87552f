"""Editing the config file in place: `config set`, `config get` and the remote `config.set`.

The file is edited with a round-trip TOML library, so a technician's comments, the order
of keys and tables, and the file's owner, group and mode survive an edit. The whole result
is validated (with the environment overrides applied, as the daemon applies them) before
anything is written; the file it replaces is kept beside it as `<name>.prev`, and the new
one appears atomically (temporary file, fsync, rename, fsync of the directory).

Key paths are dotted: `mqtt.port`, `sync.heartbeat_interval_s`, and a number indexes a
list of tables, `sensors.0.port`. Values typed on the command line are read as TOML values
when they are one (`1884`, `true`, `2.5`, `"text"`, `["a", "b"]`, `{ protocol = "v1" }`);
anything that is not a TOML value is taken as a bare string, so `broker.lan` and
`/dev/ttyUSB0` need no quotes, while `"true"` or `"1884"` must be quoted to stay strings.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions
from tomlkit.items import AoT, Item, Table

from edge_agent.config import AgentConfig, parse_config
from edge_agent.durable import write_atomically
from edge_agent.errors import ConfigEditError, ConfigError

_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")
PREV_SUFFIX = ".prev"

KeyPath = tuple[str | int, ...]


def parse_key(text: str) -> KeyPath:
    """A dotted key path: names, and numbers that index lists (`sensors.0.port`).

    Raises:
        ConfigEditError: `bad_key` when a segment is empty or holds other characters than
            letters, digits, `_` and `-`, or the path starts with a number.
    """
    parts = text.split(".")
    out: list[str | int] = []
    for part in parts:
        if not _SEGMENT.match(part):
            raise ConfigEditError(
                "bad_key",
                f"bad key path {text!r}: each part is a name of letters, digits, _ and -, "
                "or a list index (sensors.0.port)",
            )
        out.append(int(part) if part.isdigit() else part)
    if isinstance(out[0], int):
        raise ConfigEditError("bad_key", f"bad key path {text!r}: it starts with a section name")
    return tuple(out)


def parse_value(text: str) -> Any:
    """A value typed on the command line: a TOML value if it is one, else the text itself.

    `1884` is an integer, `true` a boolean, `"1884"` the string 1884, `broker.lan` (not a
    TOML value) the string broker.lan. Text holding a line break is always a plain string,
    so a value can never add keys of its own.
    """
    if "\n" in text or "\r" in text:
        return text
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text
    return parsed["v"] if set(parsed) == {"v"} else text


@dataclass
class Edit:
    """What `edit_config` did.

    Attributes:
        path: The config file.
        previous: Where the file as it was before is kept (None when nothing changed).
        changed: The key paths whose values differ from before.
        config: The validated config the file now holds (environment overrides applied).
    """

    path: Path
    previous: Path | None
    changed: list[str] = field(default_factory=list)
    config: AgentConfig | None = None


def previous_path(path: Path) -> Path:
    """Where `edit_config` keeps the file it replaced: `<name>.prev` beside it."""
    return path.with_name(path.name + PREV_SUFFIX)


def read_document(path: Path) -> tuple[bytes, tomlkit.TOMLDocument]:
    """The file's bytes and its round-trip TOML document.

    Raises:
        ConfigEditError: `config_unreadable`, naming the file and what is wrong.
    """
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigEditError("config_unreadable", f"{path}: cannot read: {err.strerror}") from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigEditError(
            "config_unreadable", f"{path}: not UTF-8 text (byte {err.start})"
        ) from err
    try:
        return raw, tomlkit.parse(text)
    except tomlkit.exceptions.TOMLKitError as err:
        raise ConfigEditError("config_unreadable", f"{path}: not valid TOML: {err}") from err


def _child(node: Any, key: str | int, dotted: str, *, create: bool) -> Any:
    """The table or list at `key` under `node`, made (as a table) when `create` and missing."""
    if isinstance(key, int):
        if not isinstance(node, list | AoT) or key >= len(node):
            size = len(node) if isinstance(node, list | AoT) else 0
            raise ConfigEditError(
                "bad_key", f"{dotted}: no list entry {key} here ({size} entr(y/ies))"
            )
        return node[key]
    if not isinstance(node, Mapping):
        raise ConfigEditError("bad_key", f"{dotted}: {key!r} is inside a value, not a table")
    if key not in node:
        if not create:
            raise ConfigEditError("bad_key", f"{dotted}: not set")
        node[key] = tomlkit.table()  # type: ignore[index]
    return node[key]


def _check_finite(value: Any, dotted: str) -> None:
    """Refuse NaN and infinities: no config key means them, and TOML spells them oddly."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigEditError("invalid_config", f"{dotted}: must be a finite number")
    if isinstance(value, list):
        for item in value:
            _check_finite(item, dotted)
    if isinstance(value, Mapping):
        for item in value.values():
            _check_finite(item, dotted)


def set_value(doc: tomlkit.TOMLDocument, key: KeyPath, value: Any) -> None:
    """Set (or, with None, remove: back to the default) one key path in `doc`.

    Tables on the way are created; list entries must already exist.

    Raises:
        ConfigEditError: `bad_key` when the path crosses a value or a missing list entry,
            `invalid_config` for a value TOML cannot hold (NaN, infinity, a nested None).
    """
    dotted = ".".join(str(k) for k in key)
    _check_finite(value, dotted)
    node: Any = doc
    for part in key[:-1]:
        node = _child(node, part, dotted, create=value is not None)
    last = key[-1]
    if isinstance(last, int):
        if not isinstance(node, list | AoT) or last >= len(node):
            raise ConfigEditError("bad_key", f"{dotted}: no list entry {last} here")
        if value is None:
            del node[last]
        else:
            node[last] = value
        return
    if not isinstance(node, Mapping):
        raise ConfigEditError("bad_key", f"{dotted}: {last!r} is inside a value, not a table")
    if value is None:
        if last in node:
            del node[last]  # type: ignore[attr-defined]
        return
    try:
        item = tomlkit.item(value)
    except (TypeError, ValueError) as err:
        raise ConfigEditError("invalid_config", f"{dotted}: TOML cannot hold {value!r}") from err
    if isinstance(node.get(last), Table | AoT) and not isinstance(item, Table | AoT):
        raise ConfigEditError("bad_key", f"{dotted}: is a table; set its keys one by one")
    node[last] = item  # type: ignore[index]


def _plain(value: Any) -> Any:
    return value.unwrap() if isinstance(value, Item | tomlkit.TOMLDocument) else value


def _lookup(data: Any, key: KeyPath) -> Any:
    node = data
    for part in key:
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return _MISSING
            node = node[part]
        elif isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return _MISSING
    return node


_MISSING = object()


def edit_config(
    path: Path,
    values: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
) -> Edit:
    """Set `values` (dotted key path → value; None removes a key) in the file at `path`.

    Nothing is written unless the whole result validates. When something changed, the old
    file is kept as `<name>.prev` (same owner, group and mode) and the new one replaces it
    atomically with the owner, group and mode the file had.

    Args:
        path: The config file.
        values: What to set, applied in order.
        environ: Environment overrides to validate with (default: this process's).

    Raises:
        ConfigEditError: the file cannot be read (`config_unreadable`), a key path is wrong
            (`bad_key`), the result does not validate (`invalid_config`, one detail per
            problem with its key path), or it cannot be written (`not_persistable`).
    """
    raw, doc = read_document(path)
    before = _plain(doc)
    keys = [(name, parse_key(str(name))) for name in values]
    for name, key in keys:
        set_value(doc, key, values[name])
    text = tomlkit.dumps(doc)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:  # a value tomlkit wrote that TOML cannot read back
        raise ConfigEditError("invalid_config", f"the result is not valid TOML: {err}") from err
    changed = [name for name, key in keys if _lookup(before, key) != _lookup(data, key)]
    try:
        config = parse_config(data, source=f"{path} with the change", environ=environ)
    except ConfigError as err:
        raise ConfigEditError(
            "invalid_config",
            "the change does not validate; nothing was written",
            [str(issue) for issue in err.issues],
        ) from err
    if text.encode("utf-8") == raw:
        return Edit(path, None, [], config)
    prev = previous_path(path)
    st = path.stat()
    owner = _owner_to_keep(st.st_uid, st.st_gid)
    try:
        write_atomically(prev, raw, mode=st.st_mode & 0o7777, owner=owner)
        write_atomically(path, text, mode=st.st_mode & 0o7777, owner=owner)
    except OSError as err:
        raise ConfigEditError(
            "not_persistable",
            f"{path}: cannot write beside it ({err.strerror or err}); nothing was changed",
        ) from err
    return Edit(path, prev, changed, config)


def _owner_to_keep(uid: int, gid: int) -> tuple[int | None, int | None] | None:
    """The (uid, gid) a rewritten file may keep: all of it as root, else what we may set.

    An unprivileged user may give a file it owns any of its groups; a root-owned file
    edited by root keeps root and its group (e.g. root:edge-agent 0640 of the service).
    """
    if os.geteuid() == 0:
        return uid, gid
    if uid == os.geteuid() and (gid == os.getegid() or gid in os.getgroups()):
        return None, gid
    return None


def get_value(config: AgentConfig, key: KeyPath) -> Any:
    """The effective value at `key` (defaults and overrides included; secrets masked).

    Raises:
        ConfigEditError: `bad_key` when there is no such key.
    """
    data = config.model_dump(mode="json")
    if config.mqtt.password is not None:
        data["mqtt"]["password"] = "********"  # noqa: S105 - the mask, not a password
    found = _lookup(data, key)
    if found is _MISSING:
        dotted = ".".join(str(k) for k in key)
        raise ConfigEditError("bad_key", f"no key {dotted} (`edge-agent config show` lists them)")
    return found


def render_value(value: Any) -> str:
    """A value as TOML text: what `config set` accepts back (a table as `key = value` lines)."""
    if isinstance(value, Mapping):
        return tomlkit.dumps({k: v for k, v in value.items() if v is not None}).rstrip("\n")
    if value is None:
        return "(unset)"
    return str(tomlkit.item(value).as_string())
