"""Labelled data for training and evaluation, in the shapes customers have it.

Training side only (numpy and the standard library). Three inputs, all turned into
`Windows`: windows of one label each, with the *group* each came from, so splits can keep a
person or a session wholly on one side.

- CSV recordings (`load_csv`): `timestamp` (seconds) then one column per channel
  (`name` or `name[unit]`), a `label` column, and optionally a `subject`, `session` or
  `group` column. One file per session, or one file per labelled case: the same reader.
  Windows are cut inside runs of one label (and one group); the group is the group column's
  value, else the file.
- The UEA/UCR `.ts` format (`load_ts`): one case per line, dimensions separated by `:`,
  the class label last. Every case is one window (equal-length cases only) and its own group.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edge_agent.errors import EdgeAgentError

F32 = NDArray[np.float32]

GROUP_COLUMNS = ("subject", "session", "group")
_HEADER = re.compile(r"^\s*(?P<name>[^\[\]]+?)\s*(?:\[(?P<unit>[^\[\]]*)\])?\s*$")
_NAME_UNITS = {
    **dict.fromkeys(("ax", "ay", "az"), "m/s^2"),
    **dict.fromkeys(("gx", "gy", "gz"), "rad/s"),
}
MAX_CELLS = 50_000_000


class DataError(EdgeAgentError, ValueError):
    """The labelled data cannot be read; the message names the file and what to fix."""


@dataclass
class Windows:
    """Labelled windows [N, window, channels] and where each came from."""

    x: F32
    labels: list[str]
    groups: list[str]
    channels: tuple[str, ...]
    units: tuple[str, ...]
    rate_hz: float
    window: int
    hop: int
    group_kind: str
    """What a group is: `file`, `case`, or the name of the group column."""
    sources: list[str]
    skipped_short: int = 0
    """Labelled runs shorter than one window (no window could be cut from them)."""

    def __len__(self) -> int:
        return len(self.labels)


def _files(paths: Sequence[Path], suffix: str) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() == suffix)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or directory")
    if not files:
        raise DataError(f"no {suffix} files in {', '.join(map(str, paths))}")
    return files


@dataclass
class _Table:
    channels: tuple[str, ...]
    units: tuple[str, ...]
    times: NDArray[np.float64]
    values: F32
    labels: list[str]
    groups: list[str] | None
    group_column: str | None


def _read_csv(path: Path) -> _Table:
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            rows = [r for r in csv.reader(fh) if r and not r[0].lstrip().startswith("#")]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read: {err}") from err
    if len(rows) < 2:
        raise DataError(f"{path}: a header and at least one row are needed")
    header = [c.strip() for c in rows[0]]
    lower = [c.lower() for c in header]
    if lower[0] != "timestamp":
        raise DataError(f"{path}: first column must be 'timestamp' (seconds), not {header[0]!r}")
    if "label" not in lower:
        raise DataError(f"{path}: no 'label' column; every sample needs its label")
    label_at = lower.index("label")
    group_at = next((lower.index(g) for g in GROUP_COLUMNS if g in lower), None)
    value_at: list[int] = []
    names: list[str] = []
    units: list[str] = []
    for i, cell in enumerate(header[1:], start=1):
        if i in (label_at, group_at):
            continue
        match = _HEADER.match(cell)
        if match is None or not match["name"]:
            raise DataError(f"{path}: column {i + 1}: {cell!r} is not 'name' or 'name[unit]'")
        names.append(match["name"])
        unit = match["unit"]
        units.append(_NAME_UNITS.get(match["name"].lower(), "") if unit is None else unit)
        value_at.append(i)
    if not names:
        raise DataError(f"{path}: no channel columns")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: a channel name appears twice in {names}")
    if len(rows) * len(header) > MAX_CELLS:
        raise DataError(f"{path}: over {MAX_CELLS} cells; split the recording")
    times: list[float] = []
    values: list[list[float]] = []
    labels: list[str] = []
    groups: list[str] = []
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{path}: line {n}: {len(row)} cells, the header has {len(header)}")
        try:
            t = float(row[0])
            v = [float(row[i]) for i in value_at]
        except ValueError as err:
            raise DataError(f"{path}: line {n}: {err}") from err
        if not all(math.isfinite(x) for x in (t, *v)):
            raise DataError(f"{path}: line {n}: a value is not a finite number")
        times.append(t)
        values.append(v)
        labels.append(row[label_at].strip())
        if group_at is not None:
            groups.append(row[group_at].strip())
    t_arr = np.array(times, dtype=np.float64)
    if len(t_arr) > 1 and not np.all(np.diff(t_arr) > 0):
        raise DataError(f"{path}: timestamps must increase")
    return _Table(
        channels=tuple(names),
        units=tuple(units),
        times=t_arr,
        values=np.array(values, dtype=np.float32).reshape(len(values), len(names)),
        labels=labels,
        groups=groups if group_at is not None else None,
        group_column=header[group_at].lower() if group_at is not None else None,
    )


def load_csv(
    paths: Sequence[Path],
    *,
    window_s: float | None = None,
    hop_s: float | None = None,
    window: int | None = None,
    hop: int | None = None,
    channels: Sequence[str] | None = None,
) -> Windows:
    """Windows of CSV recordings; give seconds (training) or samples (a bundle's contract).

    Raises:
        DataError: unreadable files, mixed channels or rates, or no usable rows.
    """
    tables: list[tuple[Path, _Table]] = [(f, _read_csv(f)) for f in _files(paths, ".csv")]
    first = tables[0][1]
    rates: list[float] = []
    for f, t in tables:
        if t.channels != first.channels:
            raise DataError(
                f"{f}: channels {list(t.channels)} differ from the first file's "
                f"{list(first.channels)}; all files must have the same columns"
            )
        if len(t.times) > 1:
            rates.append(float(1.0 / np.median(np.diff(t.times))))
    if not rates:
        raise DataError("every file has a single row: a sample rate cannot be told")
    rate = float(np.median(rates))
    for (f, _t), r in zip([ft for ft in tables if len(ft[1].times) > 1], rates, strict=True):
        if abs(r - rate) > 0.01 * rate:
            raise DataError(f"{f}: sampled at {r:g} Hz, the others at {rate:g} Hz")
    if window is None:
        window = max(2, round((window_s or 2.0) * rate))
    if hop is None:
        hop = max(1, round((hop_s or 1.0) * rate))
    order = list(first.channels)
    index = list(range(len(order)))
    if channels is not None:
        missing = [c for c in channels if c not in order]
        if missing:
            raise DataError(f"the data has no channels {missing} (it has {order})")
        index = [order.index(c) for c in channels]
    kind = first.group_column or "file"
    xs: list[F32] = []
    labels: list[str] = []
    groups: list[str] = []
    short = 0
    for f, t in tables:
        keys = [
            (lab, t.groups[i] if t.groups is not None else f.name) for i, lab in enumerate(t.labels)
        ]
        start = 0
        for i in range(1, len(keys) + 1):
            if i < len(keys) and keys[i] == keys[start]:
                continue
            label, group = keys[start]
            run = t.values[start:i, index]
            start = i
            if not label:
                continue
            if len(run) < window:
                short += 1
                continue
            starts = np.arange(0, len(run) - window + 1, hop)
            xs.append(run[starts[:, None] + np.arange(window)])
            labels += [label] * len(starts)
            groups += [group] * len(starts)
    c = len(index)
    return Windows(
        x=np.concatenate(xs) if xs else np.empty((0, window, c), dtype=np.float32),
        labels=labels,
        groups=groups,
        channels=tuple(order[i] for i in index),
        units=tuple(first.units[i] for i in index),
        rate_hz=rate,
        window=window,
        hop=hop,
        group_kind=kind,
        sources=[f.name for f, _ in tables],
        skipped_short=short,
    )


def load_ts(path: Path, *, rate_hz: float = 1.0, case_prefix: str = "") -> Windows:
    """Cases of a UEA/UCR `.ts` file, one window each (equal length, no missing values).

    Raises:
        DataError: not a `.ts` file this reader understands, or unequal lengths.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read: {err}") from err
    in_data = False
    cases: list[list[list[float]]] = []
    labels: list[str] = []
    class_labels: set[str] | None = None
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            low = line.lower()
            if low.startswith("@classlabel"):
                parts = line.split()
                if len(parts) < 2 or parts[1].lower() != "true":
                    raise DataError(f"{path}: line {n}: needs '@classLabel true <labels>'")
                class_labels = set(parts[2:])
            elif low.startswith("@timestamps") and "true" in low:
                raise DataError(f"{path}: line {n}: time-stamped .ts files are not supported")
            elif low.startswith("@data"):
                in_data = True
            elif not low.startswith("@"):
                raise DataError(f"{path}: line {n}: data before '@data'")
            continue
        dims = line.split(":")
        if len(dims) < 2:
            raise DataError(f"{path}: line {n}: a case needs dimensions and a label")
        label = dims[-1].strip()
        if class_labels is not None and label not in class_labels:
            raise DataError(f"{path}: line {n}: label {label!r} is not declared")
        try:
            series = [[float(v) for v in d.split(",")] for d in dims[:-1]]
        except ValueError as err:
            raise DataError(
                f"{path}: line {n}: {err} (missing values '?' are not supported)"
            ) from err
        if any(not math.isfinite(v) for d in series for v in d):
            raise DataError(f"{path}: line {n}: a value is not a finite number")
        cases.append(series)
        labels.append(label)
    if not cases:
        raise DataError(f"{path}: no cases after '@data'")
    shapes = {(len(c), len(d)) for c in cases for d in c}
    if len({len(c) for c in cases}) != 1 or len({s[1] for s in shapes}) != 1:
        raise DataError(f"{path}: cases differ in dimensions or length; equal lengths needed")
    x = np.array(cases, dtype=np.float32).transpose(0, 2, 1)  # [N, T, C]
    n_channels = x.shape[2]
    return Windows(
        x=np.ascontiguousarray(x),
        labels=labels,
        groups=[f"{case_prefix}{i}" for i in range(len(cases))],
        channels=tuple(f"dim_{i}" for i in range(n_channels)),
        units=("",) * n_channels,
        rate_hz=rate_hz,
        window=x.shape[1],
        hop=x.shape[1],
        group_kind="case",
        sources=[path.name],
    )


def load_any(
    paths: Sequence[Path],
    *,
    window_s: float | None = None,
    hop_s: float | None = None,
    rate_hz: float | None = None,
    window: int | None = None,
    hop: int | None = None,
    channels: Sequence[str] | None = None,
) -> Windows:
    """`.ts` when the (single) path ends so, else CSV recordings."""
    if len(paths) == 1 and paths[0].suffix.lower() == ".ts":
        data = load_ts(paths[0], rate_hz=rate_hz or 1.0)
        if channels is not None:
            if len(channels) != len(data.channels):
                raise DataError(
                    f"{paths[0]}: {len(data.channels)} dimensions, the model takes {len(channels)}"
                )
            data.channels = tuple(channels)
        return data
    return load_csv(
        paths, window_s=window_s, hop_s=hop_s, window=window, hop=hop, channels=channels
    )
