"""Device profiles: one module per device family, looked up by the sensor's `protocol`.

A profile turns its vendor's bytes into the protocol-v1 frames the pipeline understands, so
adding a device family is adding one module with a config model and a :class:`Profile`
subclass, plus one line in each table below. Profiles are imported when first used.

========================  ==================================================================
protocol                  devices
========================  ==================================================================
``v1`` (default)          our firmware, over serial or a BLE UART service
``witmotion``             WitMotion WT901 family, 11-byte 0x55 packets on a serial port
``witmotion-ble``         WitMotion WT901BLE family, 20-byte 0x55 0x61 BLE notifications
``text``                  numbers printed one sample per line (Arduino sketches, Edge Impulse
                          data forwarder)
``struct``                a fixed binary packet described in config, on a serial port
``struct-ble``            the same layout, whole packets per GATT notification
``thingy52``              Nordic Thingy:52, raw motion data (Motion Service, characteristic 0406)
========================  ==================================================================
"""

from __future__ import annotations

import importlib
import io
import time
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from firmware_bridge.profiles.base import Profile, ProfileConfigBase
from firmware_bridge.profiles.struct_layout import StructBleConfig, StructConfig
from firmware_bridge.profiles.text import TextConfig
from firmware_bridge.profiles.thingy52 import Thingy52Config
from firmware_bridge.profiles.v1 import V1Config
from firmware_bridge.profiles.witmotion import WitMotionConfig
from firmware_bridge.profiles.witmotion_ble import WitMotionBleConfig

__all__ = [
    "Profile",
    "ProfileConfig",
    "ProfileConfigBase",
    "StructBleConfig",
    "StructConfig",
    "TextConfig",
    "Thingy52Config",
    "V1Config",
    "WitMotionBleConfig",
    "WitMotionConfig",
    "available_profiles",
    "bench_decoders",
    "default_profile",
    "open_profile",
    "profile_config",
    "profile_config_class",
]

_PROFILES: dict[str, str] = {
    "v1": "firmware_bridge.profiles.v1:V1Profile",
    "witmotion": "firmware_bridge.profiles.witmotion:WitMotionProfile",
    "witmotion-ble": "firmware_bridge.profiles.witmotion_ble:WitMotionBleProfile",
    "text": "firmware_bridge.profiles.text:TextProfile",
    "struct": "firmware_bridge.profiles.struct_layout:StructProfile",
    "struct-ble": "firmware_bridge.profiles.struct_layout:StructBleProfile",
    "thingy52": "firmware_bridge.profiles.thingy52:Thingy52Profile",
}


def _shorthand(value: Any) -> Any:
    """Accept ``profile = "witmotion"`` for ``profile = { protocol = "witmotion" }``."""
    if isinstance(value, str):
        return {"protocol": value}
    if isinstance(value, dict) and "protocol" not in value:
        return {"protocol": "v1", **value}
    return value


ProfileConfig = Annotated[
    V1Config
    | WitMotionConfig
    | WitMotionBleConfig
    | TextConfig
    | StructConfig
    | StructBleConfig
    | Thingy52Config,
    Field(discriminator="protocol"),
    BeforeValidator(_shorthand),
]
"""A sensor's `profile` table, chosen by its `protocol` key (a bare string also works)."""


_CONFIG_CLASSES: dict[str, type[ProfileConfigBase]] = {
    "v1": V1Config,
    "witmotion": WitMotionConfig,
    "witmotion-ble": WitMotionBleConfig,
    "text": TextConfig,
    "struct": StructConfig,
    "struct-ble": StructBleConfig,
    "thingy52": Thingy52Config,
}


def profile_config_class(protocol: str) -> type[ProfileConfigBase]:
    """The config model of ``protocol`` (its class-level facts: BLE UUIDs, baud rate).

    Raises:
        KeyError: unknown protocol.
    """
    return _CONFIG_CLASSES[protocol]


def default_profile() -> V1Config:
    """The profile of a sensor that names none: protocol v1."""
    return V1Config()


def available_profiles() -> list[str]:
    """Protocols a sensor may use."""
    return sorted(_PROFILES)


def profile_config(protocol: str, **options: Any) -> ProfileConfigBase:
    """Build and validate the config of ``protocol`` (e.g. from a CLI `--profile`).

    Raises:
        ValueError: unknown protocol or invalid options (a pydantic ValidationError).
    """
    from pydantic import TypeAdapter

    adapter: TypeAdapter[ProfileConfigBase] = TypeAdapter(ProfileConfig)
    return adapter.validate_python({"protocol": protocol, **options})


def open_profile(config: Any, *, device_id: str) -> Profile:
    """Build the decoder for a profile config (None: protocol v1).

    Raises:
        KeyError: the config names an unknown protocol.
    """
    config = default_profile() if config is None else config
    module_name, _, class_name = _PROFILES[config.protocol].partition(":")
    cls: type[Profile] = getattr(importlib.import_module(module_name), class_name)
    return cls(config, device_id=device_id)


def bench_decoders(seconds: float) -> dict[str, float]:
    """Decoder throughput of every profile, in samples per second, for `edge-agent bench`.

    Each protocol decodes the bytes of synthetic motion in the pieces it arrives in on a
    gateway (4 KiB serial reads; one notification per read for ``witmotion-ble`` (20 bytes)
    and ``thingy52`` (18 bytes); ``struct`` with a 17-byte CRC-16 layout, ``text`` with six
    values per line).
    ``raw_read_samples_per_s`` reads the v1 bytes in the same 4 KiB pieces and does nothing
    with them: the ceiling any decoder is measured against.

    Args:
        seconds: Rough total time budget, shared by the measurements.

    Returns:
        ``decode_<protocol>_samples_per_s`` per protocol (``-`` becomes ``_``) and
        ``raw_read_samples_per_s``.
    """
    from firmware_bridge.emulator import (
        SyntheticMotion,
        encode_stream,
        encode_struct,
        encode_text,
        encode_witmotion,
    )
    from firmware_bridge.profiles.thingy52 import Thingy52Profile

    n_samples = 20_000
    rate = 100.0
    layout: dict[str, Any] = {
        "sync": "aa55",
        "format": "<B6h",
        "fields": ["n", "ax", "ay", "az", "gx", "gy", "gz"],
        "counter": "n",
        "checksum": "crc16-ccitt",
        "channels": [{"name": n, "scale": 1 / 4096} for n in ("ax", "ay", "az")]
        + [{"name": n, "scale": 1 / 16.4} for n in ("gx", "gy", "gz")],
    }
    thingy = encode_struct(SyntheticMotion(rate, seed=1), Thingy52Profile.layout_config(None),
                           n_samples)  # fmt: skip
    streams: dict[str, tuple[bytes, int, dict[str, Any]]] = {
        "v1": (encode_stream(SyntheticMotion(rate, seed=1), n_samples, batch=10), 4096, {}),
        "witmotion": (encode_witmotion(SyntheticMotion(rate, seed=1), n_samples), 4096, {}),
        "witmotion-ble": (
            encode_witmotion(SyntheticMotion(rate, seed=1), n_samples, wire="witmotion-ble"),
            20,
            {},
        ),
        "text": (b"\n" + encode_text(SyntheticMotion(rate, seed=1), n_samples), 4096, {}),
        "struct": (
            encode_struct(
                SyntheticMotion(rate, seed=1), StructConfig(protocol="struct", **layout), n_samples
            ),
            4096,
            layout,
        ),
        "thingy52": (thingy, 18, {}),
    }
    budget = max(0.05, seconds / (len(streams) + 1))
    results: dict[str, float] = {}
    for protocol, (data, chunk, extra) in streams.items():
        options = {} if protocol == "v1" else {"rate_hz": rate, **extra}
        pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
        step = n_samples / rate / len(pieces)
        done = 0
        start = time.perf_counter()
        while True:
            profile = open_profile(profile_config(protocol, **options), device_id="bench")
            for index, piece in enumerate(pieces):
                profile.feed(piece, index * step)
            done += n_samples
            elapsed = time.perf_counter() - start
            if elapsed >= budget:
                break
        results[f"decode_{protocol.replace('-', '_')}_samples_per_s"] = done / elapsed
    raw = streams["v1"][0]
    done = 0
    start = time.perf_counter()
    while True:
        reader = io.BytesIO(raw)
        while reader.read(4096):
            pass
        done += n_samples
        elapsed = time.perf_counter() - start
        if elapsed >= budget:
            break
    results["raw_read_samples_per_s"] = done / elapsed
    return results
