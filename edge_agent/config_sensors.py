"""The `[[sensors]]` entries of the config: one model per link kind, joined by `link`.

Each sensor also names its device profile (`firmware_bridge.profiles`), chosen by
`protocol`; both unions report a wrong tag with the valid choices.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from edge_agent.config_types import DeviceText, FilePath, Section
from firmware_bridge.profiles import ProfileConfig, default_profile

__all__ = [
    "BleSensorConfig",
    "EmulatedSensorConfig",
    "SensorBase",
    "SensorConfig",
    "SerialSensorConfig",
    "default_sensors",
]


class SensorBase(Section):
    """Keys every sensor has, whatever its link."""

    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Unique sensor name (1..128 characters).",
    )
    models: list[str] = Field(
        default_factory=lambda: ["imu-activity"],
        description="Model bundles run on this sensor's windows: 'name' or 'name@version' "
        "(unset: imu-activity, so configs written before imu-posture keep their model; the "
        "embedded default's sensors name imu-posture).",
    )
    gap_policy: Literal["drop", "ignore"] = Field(
        default="drop",
        description="On a sequence gap: drop windows spanning it, or ignore the gap.",
    )
    enabled: bool = Field(
        default=True, description="Set false to keep a sensor configured but off."
    )
    profile: ProfileConfig = Field(
        default_factory=default_profile,
        description="What the device speaks: a table chosen by `protocol` ('v1' (default), "
        "'witmotion', 'witmotion-ble', 'text', 'struct', 'struct-ble'), e.g. "
        '{ protocol = "witmotion", rate_hz = 10 }; a bare protocol name also works.',
    )
    silence_limit_s: float = Field(
        default=2.0,
        gt=0,
        le=3600,
        description="No data for this long (or 3 sample periods of a slower device) raises "
        "`sensor.silent`; `sensor.recovered` follows when data returns.",
    )


class SerialSensorConfig(SensorBase):
    """An IMU on a serial port (UART or USB-CDC) speaking protocol v1."""

    link: Literal["serial"] = Field(description="Link kind.")
    port: DeviceText = Field(
        min_length=1,
        description="Serial device; prefer a stable /dev/serial/by-id/... path.",
    )
    baudrate: int | None = Field(
        default=None,
        gt=0,
        le=20_000_000,
        description="Baud rate (ignored by USB-CDC); default: the profile's usual rate "
        "(9600 for witmotion, 115200 for text), else 921600.",
    )
    reopen_interval_s: float = Field(
        default=0.5, gt=0, le=60, description="How often to retry opening a missing port."
    )


class BleSensorConfig(SensorBase):
    """An IMU reached over Bluetooth Low Energy GATT notifications."""

    link: Literal["ble"] = Field(description="Link kind.")
    address: str | None = Field(default=None, description="Device address to connect to.")
    name_pattern: str | None = Field(
        default=None, description="Regular expression matched against the advertised name."
    )
    service_uuid: str | None = Field(
        default=None, description="Advertised service UUID to filter on."
    )
    notify_uuid: str | None = Field(
        default=None,
        description="Characteristic whose notifications carry the data (default: the "
        "profile's: Nordic UART TX for v1, FFE4 for witmotion-ble).",
    )
    adapter: str | None = Field(
        default=None, description="Bluetooth adapter to use, e.g. 'hci0' (default: the first)."
    )
    scan_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="Longest scan for the device per attempt."
    )
    connect_timeout_s: float = Field(
        default=20.0, gt=0, le=300, description="Longest connect (incl. service discovery)."
    )
    op_timeout_s: float = Field(
        default=5.0, gt=0, le=60, description="Longest subscribe, unsubscribe or disconnect."
    )
    reconnect_min_s: float = Field(
        default=1.0, gt=0, le=3600, description="First reconnect delay; doubles per failure."
    )
    reconnect_max_s: float = Field(
        default=30.0, gt=0, le=3600, description="Cap of the (jittered) reconnect delay."
    )
    max_connections: int = Field(
        default=5,
        ge=1,
        le=32,
        description="BLE connections this gateway holds at once per adapter (the smallest value "
        "over all BLE sensors applies); further sensors wait for a free slot.",
    )

    @field_validator("name_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"not a regular expression: {err}") from err
        return value

    @model_validator(mode="after")
    def _findable(self) -> BleSensorConfig:
        if not (self.address or self.name_pattern or self.service_uuid):
            raise ValueError("set at least one of address, name_pattern, service_uuid")
        if not self.notify_uuid and not self.profile.ble_notify_uuids:
            raise ValueError(
                f"set notify_uuid: profile {self.profile.protocol!r} has no default "
                "characteristic (the device's datasheet names the one that notifies the data)"
            )
        return self


class EmulatedSensorConfig(SensorBase):
    """A device emulator on a pseudo-terminal, read through pyserial like real hardware."""

    link: Literal["emulated"] = Field(description="Link kind.")
    recording: FilePath | None = Field(
        default=None,
        description="CSV recording to play (default: the shipped posture model's recording of a "
        "person it never saw).",
    )
    synthetic: bool = Field(
        default=False, description="Play the synthetic motion generator instead of a recording."
    )
    rate_hz: float | None = Field(
        default=None,
        ge=0.1,
        le=20_000,
        description="Sample rate, 0.1..20000 Hz (default: the recording's own rate).",
    )
    device_id: str | None = Field(
        default=None, description="Device id the emulator announces (default: the sensor name)."
    )
    start_offset_s: float = Field(
        default=0.0,
        ge=0,
        le=10_000_000,
        description="Seconds into the recording to start playing from.",
    )
    capture: FilePath | None = Field(
        default=None,
        description="Replay a raw capture made by `edge-agent record` instead (its profile is "
        "used unless `profile` is set).",
    )

    @property
    def recording_path(self) -> Path:
        """The recording the emulator plays: `recording`, else the shipped held-out one.

        Resolved here, on the gateway's side, so the link in `firmware_bridge` is handed a path
        and never needs to know where edge-agent keeps its models.
        """
        if self.recording is not None:
            return self.recording
        from edge_agent.inference.bundle import shipped_recording

        return shipped_recording()


SensorConfig = Annotated[
    SerialSensorConfig | BleSensorConfig | EmulatedSensorConfig,
    Field(discriminator="link"),
]


def default_sensors() -> list[SerialSensorConfig | BleSensorConfig | EmulatedSensorConfig]:
    return [
        EmulatedSensorConfig(name="imu-0", link="emulated", models=["imu-posture"]),
        EmulatedSensorConfig(
            name="imu-1", link="emulated", models=["imu-posture"], start_offset_s=100.0
        ),
    ]
