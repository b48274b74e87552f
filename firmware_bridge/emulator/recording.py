"""Recorded motion: a labelled CSV recording replayed in a loop."""

from __future__ import annotations

import copy
import csv
import io
import math
import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from firmware_bridge.emulator.motion import GRAVITY

__all__ = ["CsvRecording", "RecordingError"]

# Full-scale ranges of a typical MEMS IMU configuration (e.g. ±16 g, ±2000 °/s, and a
# magnetometer's ±4900 µT), used to pick an int16 scale when the unit is known.
_UNIT_FULL_SCALE = {
    "m/s^2": 16 * GRAVITY,
    "m/s2": 16 * GRAVITY,
    "g": 16.0,
    "rad/s": math.radians(2000.0),
    "deg/s": 2000.0,
    "dps": 2000.0,
    "°/s": 2000.0,
    "ut": 4900.0,
    "µt": 4900.0,
}

# Units assumed for conventional channel names when a CSV header gives none.
_NAME_UNITS = {
    **dict.fromkeys(("ax", "ay", "az", "acc_x", "acc_y", "acc_z"), "m/s^2"),
    **dict.fromkeys(("gx", "gy", "gz", "gyr_x", "gyr_y", "gyr_z"), "rad/s"),
    **dict.fromkeys(("mx", "my", "mz"), "uT"),
}


class RecordingError(ValueError):
    """A recording file cannot be used; says which file, which line and what is wrong.

    Attributes:
        path: The file.
        line: 1-based line number of the problem, or None if it concerns the whole file.
        reason: What is wrong, in words.
    """

    def __init__(self, path: Path, line: int | None, reason: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


_HEADER_CELL = re.compile(r"^(?P<name>[^\[\]]+?)\s*(?:\[(?P<unit>[^\[\]]*)\])?$")


class _CsvHeader(NamedTuple):
    cells: list[str]
    channels: tuple[str, ...]
    units: tuple[str, ...]
    value_columns: tuple[int, ...]
    label_index: int | None


class CsvRecording:
    """Motion recorded to CSV, replayed in a loop.

    The format (documented in ``docs/protocol.md``): a header row ``timestamp`` (seconds),
    then one column per channel named after it, optionally with a unit as ``ax[m/s^2]``,
    and an optional ``label`` column; blank lines and lines starting with ``#`` are ignored.

    Attributes:
        path: The file the recording was read from.
        channels: Channel names, in column order.
        units: Unit per channel: from the header, else by convention (``ax`` is m/s^2,
            ``gx`` is rad/s), else empty.
        full_scale: Per channel, the unit's usual IMU range or twice the recorded peak,
            whichever is larger.
        rate_hz: 1 / median interval between timestamps.
        timestamps: Timestamp of each sample, seconds.
        data: ``(n_samples, n_channels)`` float32 values.
        labels: Label of each sample, None where the label cell is empty or absent.
        has_labels: Whether the file has a ``label`` column.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Load and validate a recording.

        Raises:
            RecordingError: The file is not a valid recording.
            OSError: The file cannot be read.
        """
        self.path = Path(path)
        self._position = 0
        header, timestamps, values, labels = self._parse()
        self.channels = header.channels
        self.units = header.units
        self.has_labels = header.label_index is not None
        self.timestamps = np.array(timestamps, dtype=np.float64)
        self.data = np.array(values, dtype=np.float32).reshape(len(labels), len(self.channels))
        self.labels = labels
        self.rate_hz = float(1.0 / np.median(np.diff(self.timestamps)))
        peaks = np.abs(self.data).max(axis=0)
        self.full_scale = tuple(
            max(_UNIT_FULL_SCALE.get(unit.lower(), 0.0), 2.0 * float(peak)) or 1.0
            for unit, peak in zip(self.units, peaks, strict=True)
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"CsvRecording({str(self.path)!r}, {len(self)} samples × {len(self.channels)} "
            f"channels at {self.rate_hz:.6g} Hz)"
        )

    def with_offset(self, samples: int) -> CsvRecording:
        """Return a reader of the same data that starts ``samples`` into the loop.

        The arrays are shared, so several emulated devices can replay one recording cheaply
        without streaming identical data.
        """
        other = copy.copy(self)
        other._position = samples % len(self)
        return other

    def skip(self, samples: int) -> None:
        """Move the replay position ``samples`` forward (wrapping), e.g. to start mid-recording."""
        self._position = (self._position + samples) % len(self)

    def read(self, n: int) -> tuple[npt.NDArray[np.float32], list[str | None]]:
        """Return the next ``n`` samples and labels, wrapping to the start at the end."""
        total = len(self)
        pieces = []
        labels: list[str | None] = []
        remaining = n
        while remaining > 0:
            start = self._position
            stop = min(total, start + remaining)
            pieces.append(self.data[start:stop])
            labels.extend(self.labels[start:stop])
            remaining -= stop - start
            self._position = stop % total
        if not pieces:
            return np.empty((0, len(self.channels)), dtype=np.float32), labels
        return np.concatenate(pieces) if len(pieces) > 1 else pieces[0].copy(), labels

    def _fail(self, line: int | None, reason: str) -> RecordingError:
        return RecordingError(self.path, line, reason)

    def _parse(self) -> tuple[_CsvHeader, list[float], list[list[float]], list[str | None]]:
        raw = self.path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            line = raw.count(b"\n", 0, err.start) + 1
            raise self._fail(line, f"not UTF-8 text (byte 0x{raw[err.start]:02x})") from None
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        header: _CsvHeader | None = None
        timestamps: list[float] = []
        values: list[list[float]] = []
        labels: list[str | None] = []
        previous_line = 0
        try:
            for row in reader:
                line = reader.line_num
                if not "".join(row).strip() or row[0].lstrip().startswith("#"):
                    continue
                cells = [cell.strip() for cell in row]
                if header is None:
                    header = self._parse_header(cells, line)
                    continue
                if len(cells) != len(header.cells):
                    raise self._fail(
                        line,
                        f"expected {len(header.cells)} fields like the header, found {len(cells)}",
                    )
                timestamp = self._number(cells[0], "timestamp", line)
                if timestamps and timestamp <= timestamps[-1]:
                    raise self._fail(
                        line,
                        f"timestamp {cells[0]} is not after the previous one "
                        f"({timestamps[-1]:g} on line {previous_line}); timestamps must increase",
                    )
                timestamps.append(timestamp)
                previous_line = line
                values.append(
                    [
                        self._number(cells[i], f"column {header.cells[i]!r}", line)
                        for i in header.value_columns
                    ]
                )
                label = cells[header.label_index] if header.label_index is not None else ""
                labels.append(label or None)
        except csv.Error as err:
            raise self._fail(reader.line_num, f"CSV syntax error: {err}") from err
        if header is None:
            raise self._fail(None, "no header row; expected one starting with 'timestamp'")
        if len(labels) < 2:
            raise self._fail(
                None,
                f"has {len(labels)} data rows; at least 2 are needed to derive the sample rate",
            )
        return header, timestamps, values, labels

    def _parse_header(self, cells: list[str], line: int) -> _CsvHeader:
        if cells[0].lower() != "timestamp":
            raise self._fail(
                line, f"first column must be 'timestamp' (seconds), found {cells[0]!r}"
            )
        names: list[str] = []
        units: list[str] = []
        value_columns: list[int] = []
        label_index: int | None = None
        for index, cell in enumerate(cells[1:], start=1):
            if cell.lower() == "label":
                if label_index is not None:
                    raise self._fail(line, f"column {index + 1}: a second 'label' column")
                label_index = index
                continue
            match = _HEADER_CELL.match(cell)
            if match is None:
                raise self._fail(
                    line, f"column {index + 1}: {cell!r} is not a channel name or 'name[unit]'"
                )
            name = match["name"]
            if name in names:
                raise self._fail(line, f"column {index + 1}: channel {name!r} appears twice")
            unit = match["unit"]
            unit = _NAME_UNITS.get(name.lower(), "") if unit is None else unit.strip()
            for text, what in ((name, "name"), (unit, "unit")):
                if len(text.encode("utf-8")) > 0xFF:
                    raise self._fail(line, f"column {index + 1}: channel {what} over 255 bytes")
            names.append(name)
            units.append(unit)
            value_columns.append(index)
        if not names:
            raise self._fail(line, "no channel columns after 'timestamp'")
        if len(names) > 0xFF:
            raise self._fail(line, f"{len(names)} channels; the protocol carries at most 255")
        return _CsvHeader(cells, tuple(names), tuple(units), tuple(value_columns), label_index)

    def _number(self, cell: str, what: str, line: int) -> float:
        try:
            value = float(cell)
        except ValueError:
            raise self._fail(line, f"{what}: {cell!r} is not a number") from None
        if not math.isfinite(value):
            raise self._fail(line, f"{what}: {cell!r} is not a finite number")
        return value
