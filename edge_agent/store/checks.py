"""Sense checks of rows read back from the store, before they are packed or sent.

SQLite keeps whatever a column is given (a type is only an affinity), and a file can be
damaged, edited by hand or written by another version. Every row the daemon reads back to
pack or publish passes one of these checks; a row that fails is quarantined by the caller
(`Txn.quarantine`) with the reason returned here, and the rest flows on. The checks are
pure functions of the row so they can be fuzzed directly.
"""

from __future__ import annotations

import json
import math
import zlib
from typing import Any

ENCODINGS = (None, "zlib")
"""Payload encodings of the outbox (None: plain JSON)."""

# MQTT's limit on a topic name (UTF-8 bytes) and on a payload (bytes).
MAX_TOPIC_BYTES = 65_535
MAX_PAYLOAD_BYTES = 268_435_455


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _kind(value: object) -> str:
    return "NULL" if value is None else type(value).__name__


def finite_number(value: object) -> bool:
    """An int or a finite float (not a bool, not text that looks like a number)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def name_problem(value: object, what: str) -> str | None:
    """Why `value` is not a usable name (non-empty text), or None."""
    if not isinstance(value, str) or not value:
        return f"{what} is {_kind(value)!s}, not a non-empty text"
    return None


def result_problem(row: tuple[Any, ...]) -> str | None:
    """Why a `results` row cannot be packed, or None.

    `row` is `(id, sensor, model, model_version, t_start, t_end, label, confidence)`.
    """
    _, sensor, model, version, t_start, t_end, label, confidence = row
    for value, what in ((sensor, "sensor"), (model, "model"), (version, "model_version")):
        problem = name_problem(value, what)
        if problem:
            return problem
    for value, what in ((t_start, "t_start"), (t_end, "t_end"), (confidence, "confidence")):
        if not finite_number(value):
            return f"{what} is {value!r} ({_kind(value)}), not a finite number"
    if label is not None and not isinstance(label, str):
        return f"label is {_kind(label)}, not text"
    return None


def decode_payload(payload: object, encoding: object) -> dict[str, Any]:
    """The JSON object a stored payload carries.

    Raises:
        ValueError: it is not bytes, cannot be decompressed, is not JSON (NaN and infinity
            included) or not an object.
    """
    if not isinstance(payload, bytes):
        raise ValueError(f"payload is {_kind(payload)}, not bytes")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {len(payload)} bytes is more than MQTT carries")
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}")
    raw = payload
    if encoding == "zlib":
        try:
            raw = zlib.decompress(payload)
        except zlib.error as err:
            raise ValueError(f"zlib payload does not decompress: {err}") from err
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError as err:
        raise ValueError("payload nests too deeply") from err
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"payload is not JSON: {err}") from err
    if not isinstance(body, dict):
        raise ValueError(f"payload is a JSON {type(body).__name__}, not an object")
    return body


def outbox_problem(row: tuple[Any, ...], crc: object = None) -> str | None:
    """Why an `outbox` row cannot be published, or None.

    `row` is `(id, topic, kind, seq, payload, retain, encoding)`; `crc` the CRC-32 the store
    recorded when it encoded the payload. A payload that still matches it is not parsed
    again (it was encoded with `allow_nan=False` by the store itself); any other is.
    """
    _, topic, kind, seq, payload, retain, encoding = row
    problem = name_problem(topic, "topic") or name_problem(kind, "kind")
    if problem:
        return problem
    if len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        return "topic is longer than MQTT allows"
    if any(c in topic for c in "+#\0"):
        return f"topic {topic!r} holds a wildcard or NUL"
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        return f"seq is {seq!r} ({_kind(seq)}), not a count"
    if retain not in (0, 1) or isinstance(retain, float):
        return f"retain is {retain!r}, not 0 or 1"
    if (
        isinstance(crc, int)
        and isinstance(payload, bytes)
        and encoding in ENCODINGS
        and zlib.crc32(payload) == crc
    ):
        return None
    try:
        decode_payload(payload, encoding)
    except ValueError as err:
        return str(err)
    return None


def parse_count(value: object) -> int:
    """A stored counter or id: a non-negative integer (text of digits accepted).

    Raises:
        ValueError: anything else.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().isdecimal() and len(value) <= 19:
        number = int(value)
    else:
        raise ValueError(f"{value!r} ({_kind(value)}) is not an integer")
    if number < 0:
        raise ValueError(f"{number} is negative")
    return number
