"""Profile `text`: one sample per line of text, as any microcontroller sketch prints it.

The format every Arduino tutorial and Edge Impulse's data forwarder use::

    ax,ay,az,gx,gy,gz                       <- optional header line (channel names)
    -0.12,0.03,9.81,0.5,-1.25,0.0           <- one sample per line
    -0.11,0.02,9.79,0.4,-1.30,0.1

Values are separated by commas, tabs, semicolons or spaces (any mix, ``Serial.print(ax);
Serial.print('\\t')`` included); lines end in ``\\n`` or ``\\r\\n``. An optional first column
is a timestamp (named ``timestamp``, ``time``, ``t``, ``ms`` … in a header, or
``timestamp_column = true``): it is checked and dropped, samples are stamped by the host clock
at the configured or learned rate like every device without a clock of ours.

Channel names, units and scales come from config; without them from the header line;
without one from the field count, with the usual layouts: 3 fields ``ax ay az`` (m/s²),
6 adds ``gx gy gz`` (°/s), 9 adds ``mx my mz`` (µT) — the units Edge Impulse's sketches
print. Other counts get ``ch0`` … without a unit. The layout is taken once three
consecutive lines agree, so a garbled first line cannot set it.

Every line is a door: a wrong field count, a field that is not a number, NaN or infinity,
a value beyond its channel's ``full_scale``, non-ASCII bytes, or a line longer than
``max_line_bytes`` is counted and skipped, and the next line is read as if nothing happened.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, field_validator

from firmware_bridge.profiles.base import HostTimedConfig, HostTimedProfile, HostTimedStats
from firmware_bridge.profiles.channels import ChannelSpec, Quantizer, distinct_names
from firmware_bridge.protocol.v1 import MAX_CHANNELS, MAX_SAMPLE_RATE_HZ, MIN_SAMPLE_RATE_HZ

__all__ = ["USUAL_RATES_HZ", "TextConfig", "TextProfile", "TextStats", "default_channels"]

USUAL_RATES_HZ = (
    1.0, 2.0, 5.0, 10.0, 12.5, 20.0, 25.0, 26.0, 50.0, 52.0, 100.0, 104.0, 119.0, 200.0,
    208.0, 238.0, 250.0, 400.0, 416.0, 476.0, 500.0, 833.0, 952.0, 1000.0,
)  # fmt: skip
"""Rates a sketch's loop is usually timed to, and the output data rates of common IMUs
(ST LSM6DS*: 12.5/26/52/104/208/416/833 Hz, LSM9DS1: 119/238/476/952 Hz); a learned rate
within 5 % snaps to the nearest."""

TIMESTAMP_NAMES = frozenset(
    {"timestamp", "time", "t", "ts", "ms", "millis", "us", "micros", "time_ms", "time_us"}
)
"""Header names of a leading timestamp column (compared in lower case)."""

_SPLIT = re.compile(rb"\s*[,;\t]\s*|\s+")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,31}(\[[^\[\]]{0,16}\])?$")
_REASONS = {
    "bad_field_count": "text line with more or fewer fields than the layout",
    "bad_numbers": "text line with a field that is not a finite number",
    "out_of_range": "text line with a value beyond its channel's full_scale",
    "oversize_lines": "text line longer than max_line_bytes",
}
_BLANKS = b" \t\r\v\f,;"  # a trailing separator after the last value is common
_AGREE = 3  # consecutive lines with one field count before it becomes the layout

_LAYOUTS = {
    3: ("ax", "ay", "az"),
    6: ("ax", "ay", "az", "gx", "gy", "gz"),
    9: ("ax", "ay", "az", "gx", "gy", "gz", "mx", "my", "mz"),
}


def default_channels(count: int) -> list[ChannelSpec]:
    """The usual 3/6/9-axis layouts by field count, else ``ch0`` … without a unit."""
    names = _LAYOUTS.get(count) or tuple(f"ch{i}" for i in range(count))
    return [ChannelSpec(name=n) for n in names]


class TextConfig(HostTimedConfig):
    """Numbers printed one sample per line (Arduino ``Serial.println``, Edge Impulse forwarder)."""

    protocol: Literal["text"] = Field(description="Device profile.")
    channels: list[ChannelSpec] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_CHANNELS,
        description="The value columns in order: names (['ax', 'ay', 'az']) or tables "
        "{ name, unit, scale, offset, full_scale } (default: the header line, else the usual "
        "3/6/9-axis layout by field count).",
    )
    timestamp_column: bool | None = Field(
        default=None,
        description="The first column is a timestamp, checked and dropped (default: when a "
        "header names it 'timestamp', 'time', 't', 'ms', 'millis', …).",
    )
    rates: list[float] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Rates the device may run at; a learned rate within 5 % snaps to the "
        "nearest (default: rates sketches are timed to, 1..1000 Hz, and common IMU output "
        "rates such as 104, 119 and 208 Hz).",
    )
    max_line_bytes: int = Field(
        default=1024,
        ge=16,
        le=65_536,
        description="Longer lines are refused (a device printing without newlines, or noise).",
    )

    default_baudrate: ClassVar[int | None] = 115_200  # what Edge Impulse's forwarder expects

    @field_validator("channels")
    @classmethod
    def _distinct(cls, value: list[ChannelSpec] | None) -> list[ChannelSpec] | None:
        if value is not None:
            distinct_names(value)
        return value

    @field_validator("rates")
    @classmethod
    def _sane_rates(cls, value: list[float] | None) -> list[float] | None:
        for rate in value or ():
            if not MIN_SAMPLE_RATE_HZ <= rate <= MAX_SAMPLE_RATE_HZ:
                raise ValueError(
                    f"rate {rate:g} Hz is outside {MIN_SAMPLE_RATE_HZ:g}..{MAX_SAMPLE_RATE_HZ:g}"
                )
        return value


@dataclass
class TextStats(HostTimedStats):
    """Counters of the text profile; ``packets_ok`` counts the sample lines accepted.

    Attributes:
        header_lines: Header lines read (the first names the channels when config does not).
        bad_lines: Lines refused, whatever the reason (the sum of the four below).
        bad_field_count: Lines with more or fewer fields than the layout.
        bad_numbers: Lines with a field that is not a finite number, or not ASCII.
        out_of_range: Lines with a value beyond its channel's full scale.
        oversize_lines: Lines longer than ``max_line_bytes``.
    """

    header_lines: int = 0
    bad_lines: int = 0
    bad_field_count: int = 0
    bad_numbers: int = 0
    out_of_range: int = 0
    oversize_lines: int = 0


class TextProfile(HostTimedProfile):
    """Decoder of one-sample-per-line text; see the module docstring for the format."""

    protocol: ClassVar[str] = "text"
    supported_rates: ClassVar[tuple[float, ...]] = USUAL_RATES_HZ
    snap_tolerance: ClassVar[float] = 0.05  # the list is dense: snap only crystal error
    firmware: ClassVar[str] = "text"
    stats: TextStats

    def __init__(self, config: Any, *, device_id: str) -> None:
        super().__init__(config, device_id=device_id)
        self.stats = TextStats(rate_hz=self.stats.rate_hz)
        self.max_line = int(getattr(config, "max_line_bytes", 1024))
        rates = getattr(config, "rates", None)
        if rates:
            self.rates = tuple(float(r) for r in rates)
        self._timestamp: bool | None = getattr(config, "timestamp_column", None)
        configured: list[ChannelSpec] | None = getattr(config, "channels", None)
        self.channels = ()
        self._width = 0  # fields per line (timestamp included) once the layout is known
        self._quantizer: Quantizer | None = None
        self._header: list[ChannelSpec] | None = None
        self._candidates: list[list[float]] = []
        if configured is not None:
            self._fix_layout(configured, self._timestamp or False)
        self._tail = b""
        self._synced = False
        self._discarding = False

    def reset(self) -> None:
        """After a reconnect: the first, probably partial, line is skipped again."""
        super().reset()
        self._tail = b""
        self._synced = False
        self._discarding = False
        self._candidates.clear()

    # -- layout ----------------------------------------------------------------------------

    def _fix_layout(self, channels: list[ChannelSpec], timestamp: bool) -> None:
        self._timestamp = timestamp
        self._width = len(channels) + (1 if timestamp else 0)
        self._quantizer = Quantizer(channels)
        self.channels = self._quantizer.info

    def _take_header(self, names: list[str]) -> bool:
        """A line of names: the layout when none is fixed yet; returns whether it fits."""
        if self._quantizer is not None:
            return len(names) == self._width
        timestamp = self._timestamp
        if timestamp is None:
            timestamp = len(names) > 1 and names[0].split("[")[0].lower() in TIMESTAMP_NAMES
        columns = names[1:] if timestamp else names
        specs: list[ChannelSpec] = []
        try:
            for cell in columns:
                name, _, unit = cell.partition("[")
                specs.append(ChannelSpec(name=name, unit=unit.rstrip("]") if unit else None))
            distinct_names(specs)
        except ValueError:  # pydantic's ValidationError included
            return False
        self._header = specs
        self._timestamp = timestamp
        self._candidates.clear()
        return True

    def _learn_layout(self, row: list[float]) -> list[list[float]]:
        """Hold lines until ``_AGREE`` in a row have one width; then fix the layout from them."""
        if self._candidates and len(self._candidates[0]) != len(row):
            self._bad(len(self._candidates), "bad_field_count")
            self._candidates.clear()
        self._candidates.append(row)
        if len(self._candidates) < _AGREE:
            return []
        width = len(row)
        header = self._header
        timestamp = bool(self._timestamp)
        if header is not None and len(header) + (1 if timestamp else 0) == width:
            specs = header
        else:
            if header is not None:  # a header that does not match the data: not the layout
                self._header = None
            value_count = width - 1 if timestamp else width
            if not 1 <= value_count <= MAX_CHANNELS:
                self._bad(len(self._candidates), "bad_field_count")
                self._candidates.clear()
                return []
            specs = default_channels(value_count)
        self._fix_layout(specs, timestamp)
        rows, self._candidates = self._candidates, []
        return rows

    # -- bytes → samples -------------------------------------------------------------------

    def _bad(self, n: int, reason: str) -> None:
        stats = self.stats
        stats.bad_lines += n
        setattr(stats, reason, getattr(stats, reason) + n)
        self._refused(_REASONS[reason])

    def rejected(self) -> int:
        """Lines refused."""
        return self.stats.bad_lines

    def _lines(self, data: bytes) -> list[bytes]:
        """Complete lines of this read; a partial one waits, an endless one is refused."""
        buf = self._tail + data if self._tail else data
        pieces = buf.split(b"\n")
        self._tail = pieces.pop()
        if self._discarding:
            if not pieces:
                self._tail = b""  # still inside the oversized line
                return []
            pieces.pop(0)  # its end
            self._discarding = False
        if not self._synced and pieces:
            # The port was opened mid-line: the first piece is the end of a line, not an error.
            self.stats.garbage_bytes += len(pieces.pop(0)) + 1
            self._synced = True
        if len(self._tail) > self.max_line:
            self._bad(1, "oversize_lines")
            self._tail = b""
            self._discarding = True
            self._synced = True
        long = [p for p in pieces if len(p) > self.max_line]
        if long:
            self._bad(len(long), "oversize_lines")
            pieces = [p for p in pieces if len(p) <= self.max_line]
        return pieces

    def _decode(self, data: bytes) -> npt.NDArray[np.int16]:
        rows: list[list[float]] = []
        width = self._width
        for raw in self._lines(data):
            line = raw.strip(_BLANKS)
            if not line or line.startswith(b"#"):
                continue
            fields = _SPLIT.split(line)
            try:
                row = [float(f) for f in fields]
            except ValueError:
                self._not_numbers(line, fields)
                continue
            if not all(math.isfinite(v) for v in row):
                self._bad(1, "bad_numbers")
                continue
            if self._quantizer is None:
                rows.extend(self._learn_layout(row))
                width = self._width
            elif len(row) != width:
                self._bad(1, "bad_field_count")
            else:
                rows.append(row)
        quantizer = self._quantizer
        if not rows or quantizer is None:
            return np.empty((0, len(self.channels)), dtype=np.int16)
        values = np.array(rows, dtype=np.float64)
        if self._timestamp:
            values = values[:, 1:]
        samples, _ = quantizer.quantize(quantizer.physical(values))
        refused = len(rows) - len(samples)
        if refused:
            self._bad(refused, "out_of_range")
        self.stats.packets_ok += len(samples)
        return samples

    def _not_numbers(self, line: bytes, fields: list[bytes]) -> None:
        """A line with words in it: a header when it lists names, else a bad line.

        A header separates at least two names with commas, tabs or semicolons; words
        separated by spaces only ("IMU not found", "Started") are a sketch talking.
        """
        if len(fields) < 2 or not any(sep in line for sep in (b",", b";", b"\t")):
            self._bad(1, "bad_numbers")
            return
        try:
            cells = [f.decode("ascii") for f in fields]
        except UnicodeDecodeError:
            self._bad(1, "bad_numbers")
            return
        if all(_NAME.match(c) for c in cells) and self._take_header(cells):
            self.stats.header_lines += 1
            return
        self._bad(1, "bad_numbers")
