"""A device emulator on a pseudo-terminal, read through the serial link like real hardware."""

from __future__ import annotations

from typing import Any, ClassVar

from firmware_bridge.emulator import Capture, CsvRecording, DeviceEmulator, SyntheticMotion
from firmware_bridge.links.base import LinkSink
from firmware_bridge.links.serial import SerialLink
from firmware_bridge.profiles import open_profile, profile_config


class EmulatedLink(SerialLink):
    """Starts a `DeviceEmulator` on a pty and reads it with pyserial.

    The emulator's bytes cross a real tty, so everything downstream (pyserial,
    the decoder, reopen logic) runs exactly as with a USB-serial adapter. The config says
    what to play: ``capture``, ``synthetic``, or ``recording_path`` (a CSV recording the
    gateway's config resolves, default included, so this package needs nothing of it).
    """

    kind: ClassVar[str] = "emulated"

    def __init__(self, config: Any, sink: LinkSink) -> None:
        super().__init__(config, sink)
        profile = getattr(config, "profile", None)
        wire = "v1" if profile is None else profile.protocol
        if getattr(config, "capture", None):
            # Replay raw bytes recorded in the field, decoded as the recorded device was.
            source: Any = Capture(config.capture)
            if "profile" not in config.model_fields_set:
                recorded = dict(source.header.get("profile") or {"protocol": source.protocol})
                self.decoder = open_profile(
                    profile_config(str(recorded.pop("protocol", "v1")), **recorded),
                    device_id=self.name,
                )
        elif config.synthetic:
            source = SyntheticMotion(rate_hz=config.rate_hz or 50.0, seed=hash(self.name) & 0xFFFF)
        else:
            source = CsvRecording(config.recording_path)
            if config.start_offset_s:
                source.skip(int(config.start_offset_s * source.rate_hz))
        self._playing = False
        self.emulator = DeviceEmulator(
            source,
            device_id=config.device_id or self.name,
            rate_hz=config.rate_hz,
            wire=wire,
            layout=profile if wire in ("struct", "struct-ble") else None,
        )

    @property
    def port_path(self) -> str:
        """The emulator's tty."""
        return self.emulator.tty_path

    def start(self) -> None:
        """Start the emulator held, then the reader; the emulator plays once the port is open.

        pyserial's open discards whatever is waiting on the tty, so an emulator that started
        streaming first would lose its HELLO and the samples until the next one.
        """
        self.emulator.start(held=True)
        super().start()

    def _opened(self) -> None:
        super()._opened()
        # First open: start playing (HELLO, then the recording from its start). A reopen:
        # announce the layout again at once, as our firmware does when its port is opened.
        if self._playing:
            self.emulator.announce()
        else:
            self._playing = True
            self.emulator.release()

    def _release(self) -> None:
        self.emulator.close()
