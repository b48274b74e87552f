"""The BLE link through bleak's real BlueZ backend, against a BlueZ double on a private bus.

There is no Bluetooth radio here, so bluetoothd cannot run; but bleak talks to BlueZ only
over D-Bus. This test starts a private ``dbus-daemon``, points ``DBUS_SYSTEM_BUS_ADDRESS``
at it, and serves ``org.bluez`` from a small double: an adapter (``Adapter1`` with
discovery), one peripheral (``Device1`` with Connect / Disconnect, ``Connected`` and
``ServicesResolved``), its GATT service and notify characteristic (``GattService1``,
``GattCharacteristic1`` with StartNotify / StopNotify, notifications as ``Value``
PropertiesChanged signals, as BlueZ sends them). Everything from ``BleakScanner`` and
``BleakClient`` up, D-Bus messages included, is the production code path. What the double
cannot show is radio behaviour and BlueZ's own bugs; ``test_ble_link.py`` reproduces those
at the client seam.
"""

import asyncio
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pytest
from dbus_fast import BusType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import (
    DBusBool,
    DBusBytes,
    DBusInt16,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt16,
)
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_method, dbus_property

from edge_agent.config import BleSensorConfig
from firmware_bridge.emulator import SyntheticMotion, encode_stream
from firmware_bridge.links.ble import BleLink
from firmware_bridge.profiles.v1 import NUS_SERVICE, NUS_TX
from firmware_bridge.protocol.v1 import Decoder, FrameType
from tests.broker import wait_for
from tests.test_ble_link import Sink

DBusStrList = Annotated[list[str], DBusSignature("as")]
DBusVariantDict = Annotated[dict[str, Variant], DBusSignature("a{sv}")]
DBusManufacturerData = Annotated[dict[int, Variant], DBusSignature("a{qv}")]
DBusPathList = Annotated[list[str], DBusSignature("ao")]

ADDRESS = "C0:FF:EE:00:00:02"
ADAPTER = "/org/bluez/hci0"
DEVICE = f"{ADAPTER}/dev_{ADDRESS.replace(':', '_')}"
SERVICE = f"{DEVICE}/service000a"
CHAR = f"{SERVICE}/char000b"

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""


class Adapter(ServiceInterface):
    """org.bluez.Adapter1: discovery makes the peripheral appear."""

    def __init__(self, double: "BlueZDouble") -> None:
        super().__init__("org.bluez.Adapter1")
        self.double = double
        self.discovering = False
        self.task: asyncio.Task[None] | None = None

    @dbus_method()
    def SetDiscoveryFilter(self, properties: DBusVariantDict) -> None:
        self.double.calls.append("SetDiscoveryFilter")

    @dbus_method()
    def StartDiscovery(self) -> None:
        self.double.calls.append("StartDiscovery")
        self.discovering = True
        self.emit_properties_changed({"Discovering": True})
        self.task = asyncio.get_running_loop().create_task(self.advertise())

    async def advertise(self) -> None:
        """The peripheral advertises every 100 ms while we listen, like a real one."""
        while self.discovering:
            self.double.advertise()
            await asyncio.sleep(0.1)

    @dbus_method()
    def StopDiscovery(self) -> None:
        self.double.calls.append("StopDiscovery")
        self.discovering = False
        self.emit_properties_changed({"Discovering": False})

    @dbus_method()
    def RemoveDevice(self, device: DBusObjectPath) -> None:
        self.double.calls.append("RemoveDevice")

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> DBusStr:
        return "00:1A:7D:DA:71:13"

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> DBusStr:
        return "gateway"

    @dbus_property(access=PropertyAccess.READ)
    def Alias(self) -> DBusStr:
        return "gateway"

    @dbus_property(access=PropertyAccess.READ)
    def Powered(self) -> DBusBool:
        return True

    @dbus_property(access=PropertyAccess.READ)
    def Discovering(self) -> DBusBool:
        return self.discovering

    @dbus_property(access=PropertyAccess.READ)
    def Roles(self) -> DBusStrList:
        return ["central", "peripheral"]


class Device(ServiceInterface):
    """org.bluez.Device1 of the peripheral."""

    def __init__(self, double: "BlueZDouble") -> None:
        super().__init__("org.bluez.Device1")
        self.double = double
        self.connected = False
        self.resolved = False
        self.rssi = -60

    @dbus_method()
    async def Connect(self) -> None:
        self.double.calls.append("Connect")
        self.connected = True
        self.emit_properties_changed({"Connected": True})
        self.double.export_gatt()
        self.resolved = True
        self.emit_properties_changed({"ServicesResolved": True})

    @dbus_method()
    def Disconnect(self) -> None:
        self.double.calls.append("Disconnect")
        self.double.drop()

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> DBusStr:
        return ADDRESS

    @dbus_property(access=PropertyAccess.READ)
    def AddressType(self) -> DBusStr:
        return "random"

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> DBusStr:
        return self.double.name

    @dbus_property(access=PropertyAccess.READ)
    def Alias(self) -> DBusStr:
        return self.double.name

    @dbus_property(access=PropertyAccess.READ)
    def Adapter(self) -> DBusObjectPath:
        return ADAPTER

    @dbus_property(access=PropertyAccess.READ)
    def Connected(self) -> DBusBool:
        return self.connected

    @dbus_property(access=PropertyAccess.READ)
    def ServicesResolved(self) -> DBusBool:
        return self.resolved

    @dbus_property(access=PropertyAccess.READ)
    def Paired(self) -> DBusBool:
        return False

    @dbus_property(access=PropertyAccess.READ)
    def Bonded(self) -> DBusBool:
        return False

    @dbus_property(access=PropertyAccess.READ)
    def Trusted(self) -> DBusBool:
        return False

    @dbus_property(access=PropertyAccess.READ)
    def Blocked(self) -> DBusBool:
        return False

    @dbus_property(access=PropertyAccess.READ)
    def LegacyPairing(self) -> DBusBool:
        return False

    @dbus_property(access=PropertyAccess.READ)
    def RSSI(self) -> DBusInt16:
        return self.rssi

    @dbus_property(access=PropertyAccess.READ)
    def UUIDs(self) -> DBusStrList:
        return self.double.advertised_uuids or [self.double.service_uuid]

    @dbus_property(access=PropertyAccess.READ)
    def ManufacturerData(self) -> DBusManufacturerData:
        return {0xFFFF: Variant("ay", b"\x01\x02")}

    @dbus_property(access=PropertyAccess.READ)
    def ServiceData(self) -> DBusVariantDict:
        return {}


class GattService(ServiceInterface):
    """org.bluez.GattService1: the Nordic UART Service (or the service the test sets)."""

    def __init__(self, double: "BlueZDouble") -> None:
        super().__init__("org.bluez.GattService1")
        self.double = double

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self.double.service_uuid

    @dbus_property(access=PropertyAccess.READ)
    def Device(self) -> DBusObjectPath:
        return DEVICE

    @dbus_property(access=PropertyAccess.READ)
    def Primary(self) -> DBusBool:
        return True

    @dbus_property(access=PropertyAccess.READ)
    def Includes(self) -> DBusPathList:
        return []


class GattCharacteristic(ServiceInterface):
    """org.bluez.GattCharacteristic1: NUS TX, notify only."""

    def __init__(self, double: "BlueZDouble") -> None:
        super().__init__("org.bluez.GattCharacteristic1")
        self.double = double
        self.value = b""
        self.notifying = False

    @dbus_method()
    def StartNotify(self) -> None:
        self.double.calls.append("StartNotify")
        self.notifying = True
        self.emit_properties_changed({"Notifying": True})

    @dbus_method()
    def StopNotify(self) -> None:
        self.double.calls.append("StopNotify")
        self.notifying = False
        self.emit_properties_changed({"Notifying": False})

    @dbus_method()
    def ReadValue(self, options: DBusVariantDict) -> DBusBytes:
        return self.value

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self.double.char_uuid

    @dbus_property(access=PropertyAccess.READ)
    def Service(self) -> DBusObjectPath:
        return SERVICE

    @dbus_property(access=PropertyAccess.READ)
    def Value(self) -> DBusBytes:
        return self.value

    @dbus_property(access=PropertyAccess.READ)
    def Notifying(self) -> DBusBool:
        return self.notifying

    @dbus_property(access=PropertyAccess.READ)
    def Flags(self) -> DBusStrList:
        return ["notify"]

    @dbus_property(access=PropertyAccess.READ)
    def MTU(self) -> DBusUInt16:
        return 23


class BlueZDouble:
    """``org.bluez`` on a private bus, served from its own thread and event loop.

    The peripheral is a Nordic UART Service device named "IMU-belt" unless a test sets
    :attr:`name`, :attr:`service_uuid`, :attr:`char_uuid` (and :attr:`advertised_uuids`, if
    the device advertises another service than the one it notifies on) before anything scans.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.name = "IMU-belt"
        self.service_uuid = NUS_SERVICE
        self.char_uuid = NUS_TX
        self.advertised_uuids: list[str] | None = None  # None: the GATT service's
        self.calls: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bluez-double")
        self.bus: MessageBus | None = None
        self.adapter = Adapter(self)
        self.device = Device(self)
        self.service = GattService(self)
        self.char = GattCharacteristic(self)
        self.gatt_exported = False
        self.device_exported = False

    def start(self) -> None:
        self.thread.start()
        self.call(self._start())

    async def _start(self) -> None:
        self.bus = await MessageBus(bus_address=self.address, bus_type=BusType.SYSTEM).connect()
        self.bus.export(ADAPTER, self.adapter)
        await self.bus.request_name("org.bluez")

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def stop(self) -> None:
        bus = self.bus
        if bus is not None:

            async def close() -> None:
                self.adapter.discovering = False
                bus.disconnect()
                await bus.wait_for_disconnect()

            self.call(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    # -- called on the double's loop ---------------------------------------------------------

    def advertise(self) -> None:
        assert self.bus is not None
        if not self.device_exported:
            self.bus.export(DEVICE, self.device)
            self.device_exported = True
        else:
            self.device.rssi -= 1
            self.device.emit_properties_changed({"RSSI": self.device.rssi})

    def export_gatt(self) -> None:
        assert self.bus is not None
        if not self.gatt_exported:
            self.bus.export(SERVICE, self.service)
            self.bus.export(CHAR, self.char)
            self.gatt_exported = True

    def drop(self) -> None:
        """The connection ends (asked for, or the peripheral went away)."""
        assert self.bus is not None
        if self.char.notifying:
            self.char.notifying = False
            self.char.emit_properties_changed({"Notifying": False})
        self.device.resolved = False
        self.device.emit_properties_changed({"ServicesResolved": False})
        self.device.connected = False
        self.device.emit_properties_changed({"Connected": False})
        if self.gatt_exported:
            self.bus.unexport(CHAR)
            self.bus.unexport(SERVICE)
            self.gatt_exported = False

    # -- driven from the test ----------------------------------------------------------------

    def notify(self, data: bytes, mtu: int = 23) -> None:
        """Send ``data`` as notifications of at most MTU - 3 bytes, as BlueZ signals them."""

        async def send() -> None:
            for i in range(0, len(data), mtu - 3):
                self.char.value = data[i : i + mtu - 3]
                self.char.emit_properties_changed({"Value": self.char.value})

        self.call(send())

    def notify_each(self, values: list[bytes]) -> None:
        """Send each value as one notification (a device notifying a struct per sample)."""

        async def send() -> None:
            for value in values:
                self.char.value = value
                self.char.emit_properties_changed({"Value": value})

        self.call(send())

    def disconnect_from_peripheral(self) -> None:
        async def go() -> None:
            self.drop()

        self.call(go())


@pytest.fixture
def bluez(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BlueZDouble]:
    binary = shutil.which("dbus-daemon")
    assert binary, "dbus-daemon is needed (Debian package dbus-daemon)"
    socket = tmp_path / "system_bus_socket"
    config = tmp_path / "bus.conf"
    config.write_text(BUS_CONFIG.format(socket=socket))
    daemon = subprocess.Popen([binary, f"--config-file={config}", "--nofork", "--nopidfile"])
    try:
        wait_for(socket.exists, 10, "private dbus-daemon socket")
        address = f"unix:path={socket}"
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        double = BlueZDouble(address)
        double.start()
        try:
            yield double
        finally:
            double.stop()
    finally:
        daemon.terminate()
        daemon.wait(10)


def config(**overrides: Any) -> BleSensorConfig:
    values: dict[str, Any] = {
        "name": "belt",
        "link": "ble",
        "name_pattern": "^IMU-",
        "service_uuid": NUS_SERVICE,
        "scan_timeout_s": 5.0,
        "connect_timeout_s": 10.0,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2,
        "models": [],
    }
    values.update(overrides)
    return BleSensorConfig(**values)


def test_bleak_bluez_backend_end_to_end(bluez: BlueZDouble) -> None:
    """Scan (filtered by name and advertised service), connect, subscribe, receive v1 frames
    split over 20-byte notifications, lose the peripheral, reconnect on our own, and close
    with StopNotify + Disconnect — all as D-Bus calls bleak makes to BlueZ."""
    sink = Sink()
    data = encode_stream(SyntheticMotion(50.0, seed=8), 100, 5)
    expected = np.concatenate(
        [f.samples() for f in Decoder().feed(data) if f.frame_type == FrameType.IMU_BATCH]
    )
    cut = data.rfind(b"\xc0\xc0", 0, len(data) // 2) + 1
    link = BleLink(config(), sink)
    link.start()
    try:
        wait_for(lambda: sink.count("connected") == 1, 20, "connected through BlueZ")
        assert link.address == ADDRESS
        assert {"SetDiscoveryFilter", "StartDiscovery", "Connect", "StartNotify"} <= set(
            bluez.calls
        )
        bluez.notify(data[:cut])
        wait_for(lambda: len(sink.samples()) > 0, 10, "first samples")

        bluez.disconnect_from_peripheral()
        wait_for(lambda: sink.count("lost") == 1, 10, "lost")
        wait_for(lambda: sink.count("connected") == 2, 20, "reconnected")
        assert bluez.calls.count("StartNotify") == 2
        bluez.notify(data[cut:])
        wait_for(lambda: len(sink.samples()) >= len(expected), 10, "all samples")
        np.testing.assert_array_equal(sink.samples(), expected)
        assert link.decoder.stats.crc_errors == 0
    finally:
        link.close()
    assert bluez.calls[-2:] == ["StopNotify", "Disconnect"]
    assert not bluez.device.connected


def test_sensors_scan_lists_the_advertisement(bluez: BlueZDouble) -> None:
    """`edge-agent sensors scan` through bleak and the BlueZ double: name, address, RSSI and
    advertised services of the peripheral."""
    import json

    from typer.testing import CliRunner

    from edge_agent.cli import app

    result = CliRunner().invoke(app, ["sensors", "scan", "--json", "--seconds", "0.5"])
    assert result.exit_code == 0, result.output
    ble = json.loads(result.output)["ble"]
    assert ble["available"] is True
    (device,) = [d for d in ble["devices"] if d["address"] == ADDRESS]
    assert device["name"] == "IMU-belt"
    assert device["services"] == [NUS_SERVICE]
    assert device["rssi"] < 0
