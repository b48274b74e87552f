"""Finding sensors: serial ports and what they speak, BLE advertisements and whom they name.

Shared by `edge-agent sensors scan` (which shows it) and `edge-agent init --scan` (which
writes a sensor entry for each device it recognised). A serial port is probed by reading
about a second of its bytes and asking the decoders that need no configuration (v1,
WitMotion, text) which one makes sense of them; a BLE device by the service it advertises.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

# USB bridges WitMotion and similar IMU makers put on their cables, and BLE names they
# advertise: only hints for the technician, the profile is always configured explicitly.
_USB_HINTS = {
    (0x1A86, 0x7523): "CH340 USB-serial (WitMotion cables): try --profile witmotion",
    (0x1A86, 0x55D4): "CH9102 USB-serial (WitMotion cables): try --profile witmotion",
    (0x10C4, 0xEA60): "CP210x USB-serial",
    (0x0403, 0x6001): "FTDI USB-serial",
}
_BLE_HINTS = ((re.compile(r"^WT\d"), "WitMotion: try --profile witmotion-ble"),)


def serial_ports() -> list[dict[str, Any]]:
    """Serial ports the system lists, with USB ids, stable by-id paths and a hint."""
    from serial.tools import list_ports

    by_id: dict[str, list[str]] = {}
    by_id_dir = Path("/dev/serial/by-id")
    if by_id_dir.is_dir():
        for link in sorted(by_id_dir.iterdir()):
            try:
                by_id.setdefault(os.path.realpath(link), []).append(str(link))
            except OSError:
                continue
    ports = []
    for port in sorted(list_ports.comports(), key=lambda p: p.device):
        vid, pid = port.vid, port.pid
        entry: dict[str, Any] = {
            "device": port.device,
            "by_id": by_id.get(os.path.realpath(port.device), []),
            "vid": f"{vid:04x}" if vid is not None else None,
            "pid": f"{pid:04x}" if pid is not None else None,
            "serial_number": port.serial_number,
            "manufacturer": port.manufacturer,
            "product": port.product,
            "description": port.description if port.description != "n/a" else None,
        }
        hint = _USB_HINTS.get((vid, pid)) if vid is not None and pid is not None else None
        if hint:
            entry["hint"] = hint
        ports.append(entry)
    return ports


def ble_scan(seconds: float, adapter: str | None) -> dict[str, Any]:
    """BLE advertisements heard in ``seconds``, each with the profile it names, if any.

    Never raises: without a Bluetooth stack the result says why (``available`` false).
    """
    import asyncio

    async def discover() -> dict[str, Any]:
        from bleak import BleakScanner

        kwargs: dict[str, Any] = {"bluez": {"adapter": adapter}} if adapter else {}
        async with asyncio.timeout(seconds + 10.0):
            found = await BleakScanner.discover(timeout=seconds, return_adv=True, **kwargs)
        devices = []
        for device, adv in sorted(found.values(), key=lambda da: -(da[1].rssi or -999)):
            name = adv.local_name or device.name
            entry: dict[str, Any] = {
                "address": device.address,
                "name": name,
                "rssi": adv.rssi,
                "services": sorted(adv.service_uuids),
            }
            for pattern, hint in _BLE_HINTS:
                if name and pattern.search(name):
                    entry["hint"] = hint
            recognised = recognise_advertisement(entry["services"])
            if recognised is not None:
                entry["recognised"] = {
                    "profile": recognised.protocol,
                    "evidence": recognised.evidence,
                }
            devices.append(entry)
        return {"available": True, "devices": devices}

    from firmware_bridge.links.ble import _describe
    from firmware_bridge.profiles.recognise import recognise_advertisement

    try:
        return asyncio.run(discover())
    except TimeoutError:
        return {"available": False, "reason": f"the scan did not end within {seconds + 10:g} s"}
    except Exception as err:
        reason = _describe(err)
        if isinstance(err, FileNotFoundError | ConnectionRefusedError):
            reason = (
                "no Bluetooth stack: the D-Bus system bus is not reachable "
                f"({type(err).__name__}); install and start bluez, or skip with --no-ble"
            )
        elif "ServiceUnknown" in str(err) or "org.bluez" in str(err):
            reason = (
                f"bluetoothd is not running ({_describe(err)}); start it: systemctl start bluetooth"
            )
        return {"available": False, "reason": reason}


def probe_port(device: str, seconds: float, baudrate: int) -> dict[str, Any]:
    """Read ``device`` for ``seconds`` and say which profile makes sense of its bytes.

    Returns:
        ``{"profile": name, "evidence": ...}`` when one does, else ``{"profile": None,
        "reason": ...}`` (no bytes, nothing recognised, or the port could not be opened,
        e.g. because the daemon holds it).
    """
    import serial

    from firmware_bridge.profiles.recognise import recognise_bytes

    data = bytearray()
    try:
        port = serial.Serial()
        port.port = device
        port.baudrate = baudrate
        port.timeout = 0.1
        port.exclusive = True
        port.open()
    except (serial.SerialException, OSError, ValueError) as err:
        return {"profile": None, "reason": f"cannot open at {baudrate} Bd: {err}"}
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and len(data) < 1 << 20:
            data += port.read(4096)
    except (serial.SerialException, OSError) as err:
        return {"profile": None, "reason": f"read failed: {err}"}
    finally:
        port.close()
    if not data:
        return {"profile": None, "reason": f"no bytes in {seconds:g} s at {baudrate} Bd"}
    recognised = recognise_bytes(bytes(data))
    if recognised is None:
        return {
            "profile": None,
            "reason": f"{len(data)} bytes at {baudrate} Bd that no profile makes sense of "
            "(another baud rate, or a binary layout: profile struct)",
        }
    return {"profile": recognised.protocol, "evidence": recognised.evidence}


def discover(
    *,
    extra_ports: list[str],
    probe_seconds: float | None,
    baudrate: int,
    ble_seconds: float | None,
    adapter: str | None,
) -> dict[str, Any]:
    """Serial ports (probed unless ``probe_seconds`` is None) and BLE advertisements
    (unless ``ble_seconds`` is None)."""
    ports = serial_ports()
    listed = {p["device"] for p in ports}
    for device in extra_ports:
        if device not in listed:
            ports.append({"device": device, "by_id": [], "vid": None, "pid": None,
                          "serial_number": None, "manufacturer": None, "product": None,
                          "description": None})  # fmt: skip
    if probe_seconds is not None:
        for port in ports:
            port["recognised"] = probe_port(port["device"], probe_seconds, baudrate)
    result: dict[str, Any] = {"serial": ports}
    if ble_seconds is not None:
        result["ble"] = ble_scan(ble_seconds, adapter)
    return result


def sensor_entries(found: dict[str, Any]) -> list[dict[str, Any]]:
    """A `[[sensors]]` table for each recognised device, named ``<profile>-<n>``.

    Serial ports are written by their stable by-id path when there is one.
    """
    entries: list[dict[str, Any]] = []
    counts: dict[str, int] = {}

    def name_for(profile: str) -> str:
        n = counts.get(profile, 0)
        counts[profile] = n + 1
        return f"{profile}-{n}"

    for port in found.get("serial", []):
        profile = (port.get("recognised") or {}).get("profile")
        if profile:
            path = (port.get("by_id") or [port["device"]])[0]
            entries.append({"name": name_for(profile), "link": "serial", "port": path,
                            "profile": profile})  # fmt: skip
    ble = found.get("ble") or {}
    for device in ble.get("devices", []):
        profile = (device.get("recognised") or {}).get("profile")
        if profile:
            entries.append({"name": name_for(profile), "link": "ble",
                            "address": device["address"], "profile": profile})  # fmt: skip
    return entries
