"""Profile `v1`: the project's own firmware protocol, over serial or a BLE UART service.

The bytes already are protocol-v1 frames, so this profile is the reference decoder with
nothing added. Over BLE the frames travel through a Nordic-UART-style service and are split
across notifications of at most MTU - 3 bytes; the SLIP framing makes reassembly free, as
the decoder keeps a partial frame until the notification carrying its END byte arrives.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from firmware_bridge.profiles.base import Profile, ProfileConfigBase
from firmware_bridge.protocol.v1 import Decoder, DecoderStats, Frame

NUS_SERVICE = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"
"""Nordic UART Service."""
NUS_TX = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"
"""Nordic UART TX characteristic: notifications from the device to the gateway."""


class V1Config(ProfileConfigBase):
    """Protocol v1 (the default): HELLO, IMU_BATCH and STATUS frames from our firmware."""

    protocol: Literal["v1"] = Field(default="v1", description="Device profile.")

    ble_service_uuid: ClassVar[str | None] = NUS_SERVICE
    ble_notify_uuids: ClassVar[tuple[str, ...]] = (NUS_TX,)


class V1Profile(Profile):
    """The v1 :class:`Decoder` behind the profile interface; device timestamps are used as is."""

    protocol: ClassVar[str] = "v1"
    stats: DecoderStats

    def __init__(self, config: Any, *, device_id: str) -> None:
        super().__init__(config, device_id=device_id)
        self.decoder = Decoder()
        self.stats = self.decoder.stats

    def feed(self, data: bytes, recv_mono: float) -> list[Frame]:
        """Decode one read; the receive time is not needed, frames carry the device clock."""
        return self.decoder.feed(data)

    def reset(self) -> None:
        """Drop a partial frame; sequence tracking stays so gaps across the outage show."""
        self.decoder.reset()
