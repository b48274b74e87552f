"""Which profile a device speaks, from a second of its bytes or from its advertisement.

``sensors scan`` and ``init --scan`` use this to propose a sensor entry. Serial bytes are
fed to the decoders that can stand on their own (no layout to configure): protocol v1 and
the WitMotion serial packets carry checksums, so one valid frame or a few valid packets
are proof; for ``text`` several accepted lines, and clearly more than refused ones, are.
Over BLE the advertised service UUIDs name the family (``ble_service_uuid`` of each
profile's config).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from firmware_bridge.profiles.text import TextConfig, TextProfile
from firmware_bridge.profiles.witmotion import WitMotionConfig, WitMotionProfile
from firmware_bridge.protocol.v1 import Decoder, FrameType

__all__ = ["Recognition", "recognise_advertisement", "recognise_bytes"]

#: Accepted lines (text) or packets (WitMotion) needed before a guess is made.
MIN_TEXT_LINES = 3
MIN_WITMOTION_PACKETS = 3


@dataclass(frozen=True)
class Recognition:
    """A profile that makes sense of a device, and why.

    Attributes:
        protocol: The profile's ``protocol``.
        evidence: What was seen, in words, for the technician.
    """

    protocol: str
    evidence: str


def recognise_bytes(data: bytes) -> Recognition | None:
    """The profile that makes sense of ``data`` (about a second of a serial port), or None.

    Never raises: the decoders are doors that count what they refuse.
    """
    decoder = Decoder()
    frames = decoder.feed(data)
    if frames:
        kinds = sorted({FrameType(f.frame_type).name for f in frames if f.frame_type in _KNOWN})
        return Recognition("v1", f"{len(frames)} frames with a valid CRC ({', '.join(kinds)})")
    witmotion = WitMotionProfile(WitMotionConfig(protocol="witmotion", rate_hz=10), device_id="x")
    witmotion.feed(data, 0.0)
    if witmotion.stats.packets_ok >= MIN_WITMOTION_PACKETS:
        return Recognition(
            "witmotion", f"{witmotion.stats.packets_ok} WT901 packets with a valid checksum"
        )
    text = TextProfile(TextConfig(protocol="text", rate_hz=10), device_id="x")
    text.feed(data, 0.0)
    stats = text.stats
    if stats.packets_ok >= MIN_TEXT_LINES and stats.packets_ok >= 2 * stats.bad_lines:
        names = [c.name for c in text.channels]
        return Recognition(
            "text",
            f"{stats.packets_ok} lines of {len(names)} numbers ({', '.join(names)}), "
            f"{stats.bad_lines} refused",
        )
    return None


_KNOWN = frozenset(int(t) for t in FrameType)


def recognise_advertisement(service_uuids: Iterable[str]) -> Recognition | None:
    """The profile whose device family advertises one of ``service_uuids``, or None."""
    from firmware_bridge.profiles import available_profiles, profile_config_class

    advertised = {u.lower() for u in service_uuids}
    for protocol in available_profiles():
        uuid = profile_config_class(protocol).ble_service_uuid
        if uuid is not None and uuid.lower() in advertised:
            return Recognition(protocol, f"advertises service {uuid}")
    return None
