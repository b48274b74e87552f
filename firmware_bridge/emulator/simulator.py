"""``edge-agent simulate``: a number of emulated devices until a deadline or Ctrl-C."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, TextIO

from firmware_bridge.emulator.device import DeviceEmulator
from firmware_bridge.emulator.motion import MotionSource
from firmware_bridge.emulator.recording import CsvRecording
from firmware_bridge.emulator.synthetic import SyntheticMotion

__all__ = ["run_simulator"]

_log = logging.getLogger(__name__)


def run_simulator(
    devices: int,
    recording: Path | None,
    rate_hz: float | None,
    max_rate: bool,
    duration_s: float | None,
    link_dir: Path | None,
    out: TextIO,
    *,
    wire: str = "v1",
    garbage_every: int = 0,
    layout: Any = None,
) -> None:
    """Run emulated devices until ``duration_s`` passes or the user presses Ctrl-C.

    Devices are named ``emu-0`` .. ``emu-<N-1>``; each gets its own seed, or its own offset
    into the recording, so they do not stream identical data. One line per device is printed
    once all are up: ``<device id> <tty path>`` plus the symlink path when ``link_dir`` is
    given (the symlink is ``link_dir/<device id>``).

    Args:
        devices: Number of emulated devices.
        recording: CSV recording to replay; synthetic motion if None.
        rate_hz: Sample rate; the recording's own rate (or 100 Hz synthetic) if None.
        max_rate: Stream as fast as readers consume instead of in real time.
        duration_s: Stop after this long; run until interrupted if None.
        link_dir: Directory for per-device symlinks, created if missing.
        out: Where the device lines are printed.
        wire: What the devices speak (:data:`~firmware_bridge.emulator.device.WIRES`).
        garbage_every: A ``text`` device also prints a bad line every this many samples.
        layout: The profile config of a ``struct`` / ``struct-ble`` device.

    Raises:
        ValueError: ``devices`` is less than 1.
        RecordingError: The recording is not valid.
        RuntimeError: An emulated device failed while running.
    """
    if devices < 1:
        raise ValueError(f"need at least one device, got {devices}")
    base = CsvRecording(recording) if recording is not None else None
    with contextlib.ExitStack() as stack:
        emulators: list[DeviceEmulator] = []
        for index in range(devices):
            device_id = f"emu-{index}"
            source: MotionSource
            if base is not None:
                source = base.with_offset(index * len(base) // devices)
                play_rate = rate_hz
            else:
                source = SyntheticMotion(rate_hz or 100.0, seed=index)
                play_rate = None
            emulator = DeviceEmulator(
                source,
                device_id=device_id,
                rate_hz=play_rate,
                max_rate=max_rate,
                link_path=link_dir / device_id if link_dir is not None else None,
                wire=wire,
                garbage_every=garbage_every,
                layout=layout,
            )
            stack.enter_context(emulator)
            emulators.append(emulator)
        for emulator in emulators:
            line = f"{emulator.device_id} {emulator.tty_path}"
            if emulator.link_path is not None:
                line += f" {emulator.link_path}"
            print(line, file=out, flush=True)

        deadline = None if duration_s is None else time.monotonic() + duration_s
        try:
            while deadline is None or time.monotonic() < deadline:
                for emulator in emulators:
                    if emulator.error is not None:
                        raise RuntimeError(
                            f"{emulator.device_id} stopped: {emulator.error}"
                        ) from emulator.error
                remaining = 0.2 if deadline is None else deadline - time.monotonic()
                time.sleep(max(0.0, min(0.2, remaining)))
        except KeyboardInterrupt:
            _log.info("interrupted; stopping %d emulated devices", len(emulators))
