"""Profiles `struct` and `struct-ble`: a fixed binary packet described in config, not code.

Many custom boards send a C struct as it sits in memory: on a UART after a few sync bytes,
or as the value of a GATT notification. The layout is written down the way Python's
:mod:`struct` module reads it::

    [sync] [length] [fields ...] [checksum]

* ``sync``: bytes that start every packet, in hex (``"aa55"``); required on a serial port,
  where packets must be found in a byte stream, optional over BLE (one notification carries
  whole packets).
* ``length``: optional length field right after the sync bytes, a :mod:`struct` format of
  one integer (``"B"``, ``"<H"``); its value must be the size of the fields plus
  ``length_offset``.
* ``format`` and ``fields``: the fields, as a :mod:`struct` format with an explicit byte
  order (``"<6hI"``: little-endian, six int16 and a uint32) and one name per value.
* ``channels``: which fields are samples, each with its unit, scale and offset (device
  number × scale + offset = physical value); by default every field except the counter.
* ``counter``: an integer field the device increments per packet; a jump is a gap of that
  many lost samples (the timestamps skip them too), as a sequence gap is for our firmware.
* ``checksum``: ``sum8``, ``xor8``, ``crc8``, ``crc16-ccitt``, ``crc16-xmodem`` or
  ``crc32`` (:mod:`~firmware_bridge.profiles.checksums`) over the bytes from
  ``checksum_start`` (0: the first sync byte) up to the checksum, stored after the fields in
  the format's byte order.

Every packet is a door: a wrong length field, a bad checksum, a value that is not finite or
beyond its channel's full scale is counted and skipped; on a serial port the decoder then
looks for the next sync bytes. Nothing a device sends can raise.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, field_validator, model_validator

from firmware_bridge.profiles.base import HostTimedConfig, HostTimedProfile, HostTimedStats
from firmware_bridge.profiles.channels import (
    INT16_MAX,
    ChannelSpec,
    Quantizer,
    default_full_scale,
    distinct_names,
)
from firmware_bridge.profiles.checksums import ChecksumName, checksum_size, compute
from firmware_bridge.protocol.v1 import MAX_CHANNELS

__all__ = [
    "MAX_PACKET",
    "Layout",
    "StructBleConfig",
    "StructBleProfile",
    "StructConfig",
    "StructLayoutConfig",
    "StructProfile",
    "StructStats",
]

MAX_PACKET = 1024
"""Largest packet a layout may describe, sync and checksum included."""

_ORDERS = {"<": "<", ">": ">", "!": ">"}
_CODES = {
    "b": "i1", "B": "u1", "h": "i2", "H": "u2", "i": "i4", "I": "u4", "l": "i4", "L": "u4",
    "q": "i8", "Q": "u8", "e": "f2", "f": "f4", "d": "f8",
}  # fmt: skip
_ITEM = re.compile(r"\s*(\d*)\s*([xbBhHiIlLqQefd])")
_INTEGER = frozenset("bBhHiIlLqQ")


def _parse_format(fmt: str) -> tuple[str, list[str]]:
    """``"<6hI"`` → byte order and one type code per value (pads as ``x``).

    Raises:
        ValueError: no explicit byte order, or a code this profile does not read.
    """
    if not fmt or fmt[0] not in _ORDERS:
        raise ValueError(
            f"format {fmt!r} must start with its byte order: '<' (little-endian, most "
            "microcontrollers) or '>' / '!' (big-endian)"
        )
    codes: list[str] = []
    pos = 1
    while pos < len(fmt):
        match = _ITEM.match(fmt, pos)
        if match is None:
            if not fmt[pos:].strip():
                break
            raise ValueError(
                f"format {fmt!r}: cannot read {fmt[pos:]!r}; use the struct codes "
                "x b B h H i I l L q Q e f d with optional repeat counts"
            )
        count = int(match.group(1) or 1)
        if count > MAX_PACKET:
            raise ValueError(f"format {fmt!r}: repeat count {count} is too large")
        codes.extend(match.group(2) * count)
        pos = match.end()
    if not any(c != "x" for c in codes):
        raise ValueError(f"format {fmt!r} has no fields")
    return _ORDERS[fmt[0]], codes


class StructLayoutConfig(HostTimedConfig):
    """Keys of a fixed binary packet layout, shared by the serial and the BLE profile."""

    sync: str | None = Field(
        default=None,
        pattern=r"^([0-9A-Fa-f]{2}){1,8}$",
        description="Bytes that start every packet, in hex, e.g. 'aa55' (1..8 bytes; "
        "required on a serial port).",
    )
    length: str | None = Field(
        default=None,
        pattern=r"^[<>!]?[BHI]$",
        description="Format of a length field right after the sync bytes: 'B', '<H', '>H', "
        "'<I' (none by default); its value must be the fields' size plus length_offset.",
    )
    length_offset: int = Field(
        default=0, ge=-64, le=64, description="What the length field counts beyond the fields."
    )
    format: str = Field(
        max_length=256,
        description="The fields as a Python struct format with an explicit byte order, e.g. "
        "'<6hH' (little-endian: six int16, one uint16). Codes: x b B h H i I l L q Q e f d.",
    )
    fields: list[str] = Field(
        min_length=1,
        max_length=256,
        description="One name per value of `format`, in order (pad bytes 'x' get none).",
    )
    channels: list[ChannelSpec] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_CHANNELS,
        description="Fields that are samples, as names or tables { name, unit, scale, offset, "
        "full_scale } (default: every field except the counter).",
    )
    counter: str | None = Field(
        default=None,
        description="Integer field the device increments per packet (wrapping at its size); "
        "a jump is counted as lost samples.",
    )
    checksum: ChecksumName = Field(
        default="none",
        description="Checksum after the fields: none, sum8, xor8, crc8 (SMBus), crc16-ccitt "
        "(CCITT-FALSE), crc16-xmodem, crc32 (zlib).",
    )
    checksum_start: int = Field(
        default=0,
        ge=0,
        le=MAX_PACKET,
        description="First byte the checksum covers, counted from the first sync byte.",
    )

    default_baudrate: ClassVar[int | None] = 115_200
    needs_sync: ClassVar[bool] = True

    @field_validator("format")
    @classmethod
    def _readable(cls, value: str) -> str:
        _parse_format(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> StructLayoutConfig:
        Layout(self)  # raises ValueError naming the problem
        return self


class StructConfig(StructLayoutConfig):
    """A fixed binary packet on a serial port, found in the byte stream by its sync bytes."""

    protocol: Literal["struct"] = Field(description="Device profile.")


class StructBleConfig(StructLayoutConfig):
    """The same layout, one or more whole packets per GATT notification.

    Set the sensor's ``notify_uuid`` (and ``service_uuid`` to find the device by it).
    """

    protocol: Literal["struct-ble"] = Field(description="Device profile.")

    needs_sync: ClassVar[bool] = False


class Layout:
    """A config's packet layout, checked and compiled for decoding.

    Raises:
        ValueError: the layout makes no sense (naming the key).
    """

    def __init__(self, config: StructLayoutConfig) -> None:
        order, codes = _parse_format(config.format)
        values = [c for c in codes if c != "x"]
        if len(config.fields) != len(values):
            raise ValueError(
                f"fields has {len(config.fields)} names but format {config.format!r} has "
                f"{len(values)} values"
            )
        names = list(config.fields)
        if len(set(names)) != len(names):
            raise ValueError(f"field names must not repeat, got {names}")
        if config.needs_sync and not config.sync:
            raise ValueError("sync is required on a serial port: packets are found by it")
        self.sync = bytes.fromhex(config.sync) if config.sync else b""
        self.length = struct.Struct(
            config.length if config.length and config.length[0] in "<>!" else f"<{config.length}"
        ) if config.length else None  # fmt: skip
        self.length_offset = config.length_offset
        dtype_fields: list[tuple[str, str]] = []
        types: dict[str, str] = {}
        pad = 0
        value_names = iter(names)
        for code in codes:
            if code == "x":
                dtype_fields.append((f"_pad{pad}", "V1"))
                pad += 1
                continue
            name = next(value_names)
            dtype_fields.append((name, order + _CODES[code]))
            types[name] = code
        self.dtype = np.dtype(dtype_fields)
        self.fields_size = self.dtype.itemsize
        self.head = len(self.sync) + (self.length.size if self.length else 0)
        self.checksum = config.checksum
        self.checksum_size = checksum_size(config.checksum)
        self.checksum_format = {1: "B", 2: order + "H", 4: order + "I"}.get(self.checksum_size)
        self.size = self.head + self.fields_size + self.checksum_size
        if self.size > MAX_PACKET:
            raise ValueError(f"the packet is {self.size} bytes; at most {MAX_PACKET}")
        if self.checksum_size and config.checksum_start >= self.head + self.fields_size:
            raise ValueError("checksum_start is past the fields: the checksum would cover nothing")
        self.checksum_start = config.checksum_start
        if self.length is not None:
            expected = self.fields_size + self.length_offset
            if not 0 <= expected < 1 << (8 * self.length.size):
                raise ValueError(f"length_offset makes the length {expected}, which cannot be")
        self.counter = config.counter
        if self.counter is not None:
            if self.counter not in types:
                raise ValueError(f"counter {self.counter!r} is not one of the fields {names}")
            if types[self.counter] not in _INTEGER:
                raise ValueError(f"counter {self.counter!r} must be an integer field")
            self.counter_modulus = 1 << (8 * struct.calcsize(types[self.counter]))
        channels = config.channels
        if channels is None:
            channels = [ChannelSpec(name=n) for n in names if n != self.counter]
            if not channels:
                raise ValueError("no field is left for channels besides the counter")
        distinct_names(channels)
        for channel in channels:
            if channel.name not in types:
                raise ValueError(f"channel {channel.name!r} is not one of the fields {names}")
        self.channel_specs = tuple(channels)
        self.channel_names = [c.name for c in channels]
        exact = [
            types[c.name] in "bBh" and c.offset == 0 and c.full_scale is None for c in channels
        ]
        self.quantizer = Quantizer(
            channels, [_full_scale(c, types[c.name]) for c in channels], exact
        )
        # Integers of at most 16 bits at their own scale pass as they are: no float round
        # trip, nothing to refuse. The common case (an IMU's int16 registers) is one slice.
        self.direct = all(exact)
        self.sign = np.array([-1 if c.scale < 0 else 1 for c in channels], dtype=np.int16)
        self.block: tuple[int, str] | None = None
        offsets = [self.dtype.fields[c.name][1] for c in channels]  # type: ignore[index]
        if (
            self.direct
            and all(types[c.name] == "h" for c in channels)
            and offsets == list(range(offsets[0], offsets[0] + 2 * len(channels), 2))
        ):
            self.block = (self.head + offsets[0], order + "i2")

    def check(self, packet: bytes | memoryview) -> str | None:
        """Why one packet of exactly :attr:`size` bytes is not valid, or None."""
        if self.sync and packet[: len(self.sync)] != self.sync:
            return "sync"
        if self.length is not None:
            (value,) = self.length.unpack_from(packet, len(self.sync))
            if value != self.fields_size + self.length_offset:
                return "length"
        if self.checksum_format is not None:
            end = self.head + self.fields_size
            (stored,) = struct.unpack_from(self.checksum_format, packet, end)
            if compute(self.checksum, bytes(packet[self.checksum_start : end])) != stored:
                return "checksum"
        return None

    def values(self, packets: bytes) -> npt.NDArray[Any]:
        """Structured array of the fields of whole, valid packets laid end to end."""
        n = len(packets) // self.size
        raw = np.frombuffer(packets, np.uint8, count=n * self.size).reshape(n, self.size)
        body = np.ascontiguousarray(raw[:, self.head : self.head + self.fields_size])
        return body.view(self.dtype).reshape(n)

    def direct_samples(self, packets: bytes, fields: npt.NDArray[Any]) -> npt.NDArray[np.int16]:
        """The int16 samples of a :attr:`direct` layout, without a float round trip."""
        if self.block is not None:
            start, kind = self.block
            n = len(fields)
            raw = np.frombuffer(packets, np.uint8).reshape(n, self.size)
            width = 2 * len(self.channel_names)
            block = np.ascontiguousarray(raw[:, start : start + width]).view(kind)
            samples: npt.NDArray[np.int16] = block.astype(np.int16, copy=False)
        else:
            samples = np.stack([fields[n].astype(np.int16) for n in self.channel_names], axis=1)
        if (self.sign < 0).any():
            samples = samples * self.sign
        return samples

    def physical(self, fields: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """The channels of decoded packets in physical units, ``(n, channels)``."""
        raw = np.stack([fields[n].astype(np.float64) for n in self.channel_names], axis=1)
        return self.quantizer.physical(raw)


def _full_scale(channel: ChannelSpec, code: str) -> float:
    """Default full scale: the field's own range for integers up to 16 bits (so every
    reading fits, at the field's resolution), else the unit's usual range."""
    if code in "bBhH":
        top = float(1 << (8 * struct.calcsize(code) - (0 if code.isupper() else 1)))
        return top * abs(channel.scale) + abs(channel.offset) or float(INT16_MAX)
    return default_full_scale(channel.resolved_unit)


@dataclass
class StructStats(HostTimedStats):
    """Counters of the struct profiles; ``packets_ok`` counts packets accepted.

    Attributes:
        length_errors: Packets whose length field disagrees with the layout.
        out_of_range: Packets with a value not finite or beyond its channel's full scale.
        bad_notifications: BLE notifications that are not whole packets.
        counter_gaps: Jumps of the packet counter (``samples_missed`` has their size).
    """

    length_errors: int = 0
    out_of_range: int = 0
    bad_notifications: int = 0
    counter_gaps: int = 0


class StructProfile(HostTimedProfile):
    """Decoder of a configured binary layout in a serial byte stream."""

    protocol: ClassVar[str] = "struct"
    firmware: ClassVar[str] = "struct"
    stats: StructStats

    def __init__(self, config: Any, *, device_id: str) -> None:
        super().__init__(config, device_id=device_id)
        self.stats = StructStats(rate_hz=self.stats.rate_hz)
        self.layout = Layout(self.layout_config(config))
        self.channels = self.layout.quantizer.info
        self._tail = b""
        self._synced = False
        self._last_counter: int | None = None
        self._last: Any = None

    @classmethod
    def layout_config(cls, config: Any) -> StructLayoutConfig:
        """The layout to decode: the config itself here; a fixed one for a device family."""
        layout: StructLayoutConfig = config
        return layout

    def reset(self) -> None:
        """After a reconnect: drop a partial packet; the counter restarts its reference."""
        super().reset()
        self._tail = b""
        self._synced = False
        self._last_counter = None

    def _reject(self, why: str) -> None:
        stats = self.stats
        if why == "checksum":
            stats.crc_errors += 1
        elif why == "length":
            stats.length_errors += 1
            self._refused("packet whose length field disagrees with the layout")

    def rejected(self) -> int:
        """Packets or notifications refused for their length or values (checksums aside)."""
        stats = self.stats
        return stats.length_errors + stats.out_of_range + stats.bad_notifications

    def _decode(self, data: bytes) -> npt.NDArray[np.int16]:
        layout = self.layout
        buf = self._tail + data if self._tail else data
        size, sync = layout.size, layout.sync
        good: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= size:
            packet = buf[pos : pos + size]
            why = layout.check(packet)
            if why is None and not self._synced and layout.checksum_size == 0:
                # Without a checksum a sync pattern inside the data could pass: believe
                # the first packet only when the next one starts right after it.
                after = buf[pos + size : pos + size + len(sync)]
                if len(after) < len(sync):
                    break  # wait for more bytes
                if after != sync:
                    why = "sync"
            if why is None:
                self._synced = True
                good.append(packet)
                pos += size
                continue
            if self._synced:
                self.stats.resyncs += 1
                self._reject(why)
            self._synced = False
            at = buf.find(sync, pos + 1)
            skip_to = end - len(sync) + 1 if at < 0 else at
            skip_to = max(skip_to, pos + 1)
            self.stats.garbage_bytes += skip_to - pos
            pos = skip_to
        self._tail = buf[pos:]
        if len(self._tail) > 4 * MAX_PACKET:  # cannot happen with a valid layout; bounded anyway
            self.stats.garbage_bytes += len(self._tail)
            self._tail = b""
        return self._samples(b"".join(good))

    def _samples(self, packets: bytes) -> npt.NDArray[np.int16]:
        """Valid packets laid end to end → int16 samples; counter gaps and ranges checked."""
        layout = self.layout
        if not packets:
            return np.empty((0, len(self.channels)), dtype=np.int16)
        fields = layout.values(packets)
        n = len(fields)
        self.stats.packets_ok += n
        if layout.direct:
            samples = layout.direct_samples(packets, fields)
            ok = np.ones(n, dtype=np.bool_)
        else:
            samples, ok = layout.quantizer.quantize(layout.physical(fields))
        if layout.counter is not None:
            self._count_gaps(fields[layout.counter].astype(np.int64), ok)
        refused = n - len(samples)
        if refused:
            self.stats.out_of_range += refused
            self._refused("packet with a value not finite or beyond its channel's full scale")
        self._last = fields[-1]
        return samples

    @property
    def last_fields(self) -> dict[str, float]:
        """The latest packet's fields by name, as the device sent them (for `sensors test`)."""
        last = self._last
        if last is None:
            return {}
        names = last.dtype.names or ()
        return {name: float(last[name]) for name in names if not name.startswith("_")}

    def _count_gaps(self, counters: npt.NDArray[np.int64], kept: npt.NDArray[np.bool_]) -> None:
        """Note where the counter jumped, as positions among the samples kept."""
        modulus = self.layout.counter_modulus
        previous = self._last_counter
        self._last_counter = int(counters[-1])
        if previous is None:
            steps = (np.diff(counters) - 1) % modulus
            offset = 1
        else:
            steps = (np.diff(np.concatenate([[previous], counters])) - 1) % modulus
            offset = 0
        # A step back by a little is a repeat or a restart, not a near-full wrap.
        jumps = np.flatnonzero((steps > 0) & (steps < modulus // 2))
        if not len(jumps):
            return
        before = np.concatenate([[0], np.cumsum(kept)])  # kept samples before packet i
        self.stats.counter_gaps += len(jumps)
        for j in jumps:
            self._read_gaps.append((int(before[j + offset]), int(steps[j])))


class StructBleProfile(StructProfile):
    """The same layout over BLE: each notification holds whole packets, nothing is carried."""

    protocol: ClassVar[str] = "struct-ble"
    firmware: ClassVar[str] = "struct-ble"

    def _decode(self, data: bytes) -> npt.NDArray[np.int16]:
        layout = self.layout
        size = layout.size
        if not data or len(data) % size:
            self.stats.bad_notifications += 1
            self._refused(f"notification that is not whole {size}-byte packets")
            self.stats.garbage_bytes += len(data)
            return np.empty((0, len(self.channels)), dtype=np.int16)
        good: list[bytes] = []
        for pos in range(0, len(data), size):
            packet = data[pos : pos + size]
            why = layout.check(packet)
            if why is None:
                good.append(packet)
                continue
            if why == "sync":
                self.stats.bad_notifications += 1
                self._refused("notification whose packet does not start with the sync bytes")
            else:
                self._reject(why)
            self.stats.garbage_bytes += size
        return self._samples(b"".join(good))
