"""A software stand-in for IMU firmware: real frames on a real pseudo-terminal.

The emulator lets the whole gateway run, be tested and be benchmarked without hardware. It
behaves like a microcontroller behind a USB serial adapter: it samples a motion source at a
fixed rate, sends HELLO, IMU_BATCH and STATUS frames, drops whole frames (and counts them)
when nobody drains its output, and can be unplugged and plugged back in while the stream
goes on.

One module per concern:

- :mod:`~firmware_bridge.emulator.motion`: the :class:`MotionSource` protocol;
- :mod:`~firmware_bridge.emulator.recording`: :class:`CsvRecording`, real data from CSV;
- :mod:`~firmware_bridge.emulator.synthetic`: :class:`SyntheticMotion`, a small physical
  model of a waist-worn IMU;
- :mod:`~firmware_bridge.emulator.v1`: protocol v1 frames (:func:`encode_stream`);
- :mod:`~firmware_bridge.emulator.witmotion`: WitMotion vendor packets;
- :mod:`~firmware_bridge.emulator.text`: a sketch printing one line of numbers per sample;
- :mod:`~firmware_bridge.emulator.packets`: a board sending a fixed binary struct;
- :mod:`~firmware_bridge.emulator.capture`: raw captures recorded on a gateway;
- :mod:`~firmware_bridge.emulator.pty`: the pseudo-terminal and its symlink;
- :mod:`~firmware_bridge.emulator.device`: :class:`DeviceEmulator`, the paced writer;
- :mod:`~firmware_bridge.emulator.simulator`: ``edge-agent simulate``.
"""

from __future__ import annotations

from firmware_bridge.emulator.capture import CAPTURE_MAGIC, Capture, CaptureError, CaptureWriter
from firmware_bridge.emulator.device import WIRES, DeviceEmulator
from firmware_bridge.emulator.motion import GRAVITY, MotionSource, default_scales
from firmware_bridge.emulator.packets import StructEncoder, encode_struct
from firmware_bridge.emulator.recording import CsvRecording, RecordingError
from firmware_bridge.emulator.simulator import run_simulator
from firmware_bridge.emulator.synthetic import ACTIVITIES, SyntheticMotion
from firmware_bridge.emulator.text import GARBAGE_LINES, TextEncoder, encode_text
from firmware_bridge.emulator.v1 import encode_stream
from firmware_bridge.emulator.witmotion import encode_witmotion, witmotion_packets

__all__ = [
    "ACTIVITIES",
    "CAPTURE_MAGIC",
    "GARBAGE_LINES",
    "GRAVITY",
    "WIRES",
    "Capture",
    "CaptureError",
    "CaptureWriter",
    "CsvRecording",
    "DeviceEmulator",
    "MotionSource",
    "RecordingError",
    "StructEncoder",
    "SyntheticMotion",
    "TextEncoder",
    "default_scales",
    "encode_stream",
    "encode_struct",
    "encode_text",
    "encode_witmotion",
    "run_simulator",
    "witmotion_packets",
]
