"""The BLE link against a stand-in for bleak's scanner and client.

Why a stand-in: this machine has no Bluetooth radio and no virtual HCI device, so nothing
below BlueZ can exist here. The fake sits at the narrowest seam the link has, the
:class:`~firmware_bridge.links.ble.BleBackend` (``find`` and a ``BleakClient``-compatible
client): everything above it (scan filters, the connection limit, subscription per
connection, backoff, timeouts, the decoders) is the production code. It reproduces what
real stacks do wrong: devices that disconnect, callbacks that keep firing after a reconnect
(the doubled-notification bug), duplicated notifications, and calls that never return.
Callbacks are delivered on the link's own event loop, as bleak does. The BlueZ backend of
bleak itself is exercised against a D-Bus double in ``test_ble_bluez.py``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from edge_agent.config import BleSensorConfig
from firmware_bridge.emulator import SyntheticMotion, encode_stream
from firmware_bridge.links.ble import SLOTS, Backoff, BleLink, advertisement_matcher
from firmware_bridge.profiles.v1 import NUS_SERVICE, NUS_TX
from firmware_bridge.profiles.witmotion_ble import NOTIFY_UUID, SERVICE_UUID
from firmware_bridge.protocol.v1 import Decoder, Frame, FrameType
from tests.broker import wait_for

ADDRESS = "C0:FF:EE:00:00:01"


@dataclass
class Advert:
    """What bleak's AdvertisementData carries that the matcher reads."""

    local_name: str | None
    service_uuids: list[str]


@dataclass
class Device:
    """What bleak's BLEDevice carries that the link reads."""

    address: str
    name: str | None


class FakeStack:
    """A BLE stack with one peripheral, driven from the test thread.

    Attributes:
        advertising: Whether the peripheral can be found by a scan.
        hang: Operations that never return while in this set ("connect", "start_notify",
            "disconnect", "find").
        keep_stale_callbacks: Keep subscriptions of dropped connections alive, as BlueZ
            setups with the doubled-callback bug do.
        duplicate: Deliver every notification twice.
    """

    def __init__(self, name: str = "IMU-7", services: tuple[str, ...] = (NUS_SERVICE,)) -> None:
        self.device = Device(ADDRESS, name)
        self.advert = Advert(name, list(services))
        self.advertising = True
        self.hang: set[str] = set()
        self.keep_stale_callbacks = True
        self.duplicate = False
        self.mtu = 23
        self.clients: list[FakeClient] = []
        self.subscriptions: list[tuple[FakeClient, str, Callable[[Any, bytearray], None]]] = []
        self.calls: list[str] = []
        self.lock = threading.Lock()

    # -- BleBackend -------------------------------------------------------------------------

    async def find(
        self,
        match: Callable[[Any, Any], bool],
        *,
        service_uuids: list[str] | None,
        adapter: str | None,
        timeout: float,
    ) -> Any:
        self.calls.append("find")
        if "find" in self.hang:
            await asyncio.Event().wait()
        if self.advertising and match(self.device, self.advert):
            return self.device
        await asyncio.sleep(min(timeout, 0.05))
        return None

    def client(
        self,
        device: Any,
        *,
        disconnected_callback: Callable[[Any], None],
        timeout: float,
        adapter: str | None,
    ) -> FakeClient:
        client = FakeClient(self, disconnected_callback)
        with self.lock:
            self.clients.append(client)
        return client

    # -- the peripheral ---------------------------------------------------------------------

    @property
    def current(self) -> FakeClient | None:
        with self.lock:
            live = [c for c in self.clients if c.connected]
        return live[-1] if live else None

    def notify(self, data: bytes, uuid: str = NUS_TX) -> None:
        """Send ``data`` as notifications of at most MTU - 3 bytes."""
        step = self.mtu - 3
        for i in range(0, len(data), step):
            piece = bytearray(data[i : i + step])
            with self.lock:
                targets = [
                    (c, cb)
                    for c, u, cb in self.subscriptions
                    if u == uuid and (c.connected or self.keep_stale_callbacks)
                ]
            for client, callback in targets:
                for _ in range(2 if self.duplicate else 1):
                    client.deliver(callback, piece)

    def drop_connection(self) -> None:
        """The peripheral walks out of range."""
        client = self.current
        assert client is not None
        client.lost()


class FakeClient:
    """A ``BleakClient`` look-alike bound to :class:`FakeStack`."""

    def __init__(self, stack: FakeStack, on_disconnect: Callable[[Any], None]) -> None:
        self.stack = stack
        self.on_disconnect = on_disconnect
        self.connected = False
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def is_connected(self) -> bool:
        return self.connected

    async def _maybe_hang(self, what: str) -> None:
        self.stack.calls.append(what)
        if what in self.stack.hang:
            await asyncio.Event().wait()

    async def connect(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self._maybe_hang("connect")
        self.connected = True

    async def disconnect(self) -> None:
        await self._maybe_hang("disconnect")
        self.connected = False

    async def start_notify(self, char_specifier: str, callback: Any) -> None:
        await self._maybe_hang("start_notify")
        with self.stack.lock:
            self.stack.subscriptions.append((self, char_specifier, callback))

    async def stop_notify(self, char_specifier: str) -> None:
        await self._maybe_hang("stop_notify")
        with self.stack.lock:
            self.stack.subscriptions = [
                s for s in self.stack.subscriptions if not (s[0] is self and s[1] == char_specifier)
            ]

    def deliver(self, callback: Callable[[Any, bytearray], None], data: bytearray) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(callback, "char", data)

    def lost(self) -> None:
        self.connected = False
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.on_disconnect, self)


@dataclass
class Sink:
    """Collects what the link hands on (from its thread)."""

    frames: list[Frame] = field(default_factory=list)
    states: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_frames(
        self, sensor: str, frames: list[Frame], recv_mono: float, recv_wall: float
    ) -> None:
        with self.lock:
            self.frames.extend(frames)

    def on_link_state(self, sensor: str, state: str, detail: str) -> None:
        with self.lock:
            self.states.append((state, detail))

    def samples(self) -> np.ndarray[Any, Any]:
        with self.lock:
            parts = [f.samples() for f in self.frames if f.frame_type == FrameType.IMU_BATCH]
        return np.concatenate(parts) if parts else np.empty((0, 6), dtype=np.int16)

    def count(self, state: str) -> int:
        with self.lock:
            return sum(1 for s, _ in self.states if s == state)


def ble_config(**overrides: Any) -> BleSensorConfig:
    """Timing shrunk so reconnects and timeouts happen in milliseconds."""
    values: dict[str, Any] = {
        "name": "ble-imu",
        "link": "ble",
        "address": ADDRESS,
        "scan_timeout_s": 0.2,
        "connect_timeout_s": 0.3,
        "op_timeout_s": 0.2,
        "reconnect_min_s": 0.02,
        "reconnect_max_s": 0.1,
        "models": [],
    }
    values.update(overrides)
    return BleSensorConfig(**values)


@pytest.fixture
def open_links() -> Iterator[Callable[..., BleLink]]:
    links: list[BleLink] = []

    def make(config: BleSensorConfig, sink: Sink, stack: FakeStack) -> BleLink:
        link = BleLink(config, sink, backend=stack)
        links.append(link)
        link.start()
        return link

    yield make
    for link in links:
        link.close()
    assert all(SLOTS.held(a) == 0 for a in ("default", "hci1")), "connection slots leaked"


def v1_stream(n_samples: int, batch: int = 5) -> tuple[bytes, np.ndarray[Any, Any]]:
    """Protocol-v1 bytes of synthetic motion and the int16 samples they carry."""
    data = encode_stream(SyntheticMotion(50.0, seed=4), n_samples, batch)
    frames = Decoder().feed(data)
    samples = np.concatenate([f.samples() for f in frames if f.frame_type == FrameType.IMU_BATCH])
    return data, samples


def test_v1_frames_split_across_notifications_are_reassembled(open_links: Any) -> None:
    """Frames of ~80 bytes travel in 20-byte notifications and come out whole and exact."""
    stack, sink = FakeStack(), Sink()
    link = open_links(ble_config(), sink, stack)
    wait_for(lambda: stack.current is not None and sink.count("connected"), 5, "connection")
    data, expected = v1_stream(200)
    stack.notify(data)
    wait_for(lambda: len(sink.samples()) >= len(expected), 5, "all samples")
    np.testing.assert_array_equal(sink.samples(), expected)
    assert link.decoder.stats.crc_errors == 0
    assert link.ble.notifications == -(-len(data) // 20)
    assert stack.calls.count("start_notify") == 1


def test_reconnect_after_disconnect_subscribes_once_and_drops_stale_callbacks(
    open_links: Any,
) -> None:
    """After the device drops out, the link reconnects by itself; the stack keeps calling
    the old connection's callback (the doubled-notification bug) but every sample arrives
    exactly once, and each connection subscribed exactly once."""
    stack, sink = FakeStack(), Sink()
    link = open_links(ble_config(), sink, stack)
    wait_for(lambda: sink.count("connected") == 1, 5, "first connection")
    data, expected = v1_stream(300)
    half = len(data) // 2
    cut = data.rfind(b"\xc0\xc0", 0, half) + 1  # a frame boundary
    stack.notify(data[:cut])
    first = sum(
        len(f.samples()) for f in Decoder().feed(data[:cut]) if f.frame_type == FrameType.IMU_BATCH
    )
    wait_for(lambda: len(sink.samples()) == first, 5, "part one")

    stack.drop_connection()
    wait_for(lambda: sink.count("lost") == 1, 5, "lost event")
    wait_for(lambda: sink.count("connected") == 2, 5, "reconnected")
    assert sum(1 for s in stack.subscriptions if s[0].connected) == 1
    assert len(stack.subscriptions) == 2  # the stale one is still registered in the stack

    stack.notify(data[cut:])
    wait_for(lambda: len(sink.samples()) >= len(expected), 5, "part two")
    np.testing.assert_array_equal(sink.samples(), expected)
    assert link.ble.stale_notifications > 0
    assert link.ble.disconnects == 1
    assert stack.calls.count("start_notify") == 2  # once per connection
    assert link.decoder.stats.duplicates == 0


def test_duplicate_notifications_do_not_duplicate_samples(open_links: Any) -> None:
    """A stack that delivers every notification twice: whole v1 frames per notification
    (large MTU) are recognised by their sequence numbers and dropped."""
    stack, sink = FakeStack(), Sink()
    stack.mtu = 247
    stack.duplicate = True
    link = open_links(ble_config(), sink, stack)
    wait_for(lambda: sink.count("connected"), 5, "connection")
    data, expected = v1_stream(100, batch=5)
    decoder = Decoder()
    for frame_bytes in [b"\xc0" + f + b"\xc0" for f in data.split(b"\xc0") if f]:
        assert decoder.feed(frame_bytes)  # each piece is one whole frame
        stack.notify(frame_bytes)
    wait_for(lambda: link.decoder.stats.duplicates >= 20, 5, "duplicates seen")
    wait_for(lambda: len(sink.samples()) >= len(expected), 5, "samples")
    np.testing.assert_array_equal(sink.samples(), expected)


@pytest.mark.parametrize("stuck", ["connect", "start_notify"])
def test_a_call_that_never_returns_times_out_and_is_retried(open_links: Any, stuck: str) -> None:
    """connect / start_notify hang forever: the timeout fires, the attempt is torn down
    (disconnect called), the link backs off and succeeds once the stack recovers."""
    stack, sink = FakeStack(), Sink()
    stack.hang.add(stuck)
    link = open_links(ble_config(), sink, stack)
    wait_for(lambda: link.ble.timeouts >= 2, 5, "timeouts")
    assert sink.count("connected") == 0
    assert link.ble.connect_failures >= 2
    assert "timed out" in (link.stats.last_error or "")
    stack.hang.clear()
    wait_for(lambda: sink.count("connected") == 1, 5, "connection after recovery")
    assert stack.calls.count("disconnect") >= 2  # every failed attempt was torn down


def test_close_is_bounded_even_when_disconnect_hangs(open_links: Any) -> None:
    """Closing a connected link unsubscribes and disconnects; a hanging disconnect cannot
    keep close() waiting longer than the closing timeout."""
    stack, sink = FakeStack(), Sink()
    link = open_links(ble_config(op_timeout_s=30.0), sink, stack)
    wait_for(lambda: sink.count("connected"), 5, "connection")
    stack.hang.add("disconnect")
    thread = link._thread
    link.close()
    assert thread is not None
    assert not thread.is_alive()
    assert stack.calls.count("stop_notify") == 1
    assert stack.subscriptions == []


def test_not_advertising_is_reported_then_found(open_links: Any) -> None:
    """A device that is off: the first failed scan is reported once (with the filters that
    did not match); when it starts advertising the link connects."""
    stack, sink = FakeStack(), Sink()
    stack.advertising = False
    link = open_links(ble_config(), sink, stack)
    wait_for(lambda: link.ble.not_found >= 3, 5, "failed scans")
    assert sink.count("lost") == 1
    assert "no advertisement matching address=" + ADDRESS in sink.states[0][1]
    stack.advertising = True
    wait_for(lambda: sink.count("connected") == 1, 5, "connection")


def test_connection_limit_is_shared_by_links(open_links: Any) -> None:
    """Three sensors, max_connections = 2: two connect, the third waits for a free slot."""
    stacks = [FakeStack() for _ in range(3)]
    sinks = [Sink() for _ in range(3)]
    links = [
        open_links(ble_config(name=f"imu-{i}", max_connections=2, adapter="hci1"), sink, stack)
        for i, (stack, sink) in enumerate(zip(stacks, sinks, strict=True))
    ]
    wait_for(lambda: sum(s.count("connected") for s in sinks) == 2, 5, "two connections")
    waiting = next(i for i, s in enumerate(sinks) if not s.count("connected"))
    wait_for(lambda: links[waiting].ble.waiting_for_slot >= 1, 5, "third waiting")
    assert SLOTS.held("hci1") == 2
    links[(waiting + 1) % 3].close()
    wait_for(lambda: sinks[waiting].count("connected") == 1, 5, "third connects")


def test_witmotion_ble_values_in_physical_units(open_links: Any) -> None:
    """A WT901BLE found by its advertised name: one 0x55 0x61 packet per notification,
    decoded with the datasheet formulas (16 g, 2000 °/s, 180° over 32768)."""
    stack, sink = FakeStack(name="WT901BLE68", services=(SERVICE_UUID,)), Sink()
    stack.mtu = 23
    config = ble_config(
        address=None, name_pattern=r"^WT901", profile={"protocol": "witmotion-ble", "rate_hz": 50}
    )
    link = open_links(config, sink, stack)
    assert link.notify_uuids == (NOTIFY_UUID,)
    wait_for(lambda: sink.count("connected"), 5, "connection")
    raw = [4096, -2048, 16384, 1638, -1638, 0, 8192, -4096, 32767]  # 2 g, -1 g, 8 g, ...
    packet = bytes([0x55, 0x61]) + np.array(raw, dtype="<i2").tobytes()
    for _ in range(10):
        stack.notify(packet, uuid=NOTIFY_UUID)
    wait_for(lambda: len(sink.samples()) >= 10, 5, "samples")
    hello = next(f.hello() for f in sink.frames if f.frame_type == FrameType.HELLO)
    physical = sink.samples()[-1] * np.array([c.scale for c in hello.channels])
    expected = [2.0, -1.0, 8.0, 1638 / 32768 * 2000, -1638 / 32768 * 2000, 0.0, 45.0, -22.5]
    np.testing.assert_allclose(physical[:8], expected, rtol=1e-9)
    assert physical[8] == pytest.approx(32767 / 32768 * 180)
    assert [c.unit for c in hello.channels] == ["g"] * 3 + ["deg/s"] * 3 + ["deg"] * 3


def test_scan_filters() -> None:
    """Address (case-insensitive), name regex and advertised service must all match."""
    device = Device("AA:BB:CC:DD:EE:FF", None)
    # WitMotion's UUIDs are not on the Bluetooth base (…805f9a34fb, not …805f9b34fb).
    advert = Advert(
        "WT901BLE68",
        ["0000FFE5-0000-1000-8000-00805F9A34FB", "0000180f-0000-1000-8000-00805f9b34fb"],
    )
    assert advertisement_matcher("aa:bb:cc:dd:ee:ff", None, None)(device, advert)
    assert not advertisement_matcher("AA:BB:CC:DD:EE:00", None, None)(device, advert)
    assert advertisement_matcher(None, r"^WT9", SERVICE_UUID)(device, advert)
    assert advertisement_matcher(None, None, "180F")(device, advert)  # 16-bit short form
    assert not advertisement_matcher(None, None, "ffe5")(device, advert)
    assert not advertisement_matcher(None, r"^HC-", None)(device, advert)
    assert not advertisement_matcher(None, None, NUS_SERVICE)(device, advert)


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    """Delays grow 1, 2, 4 … up to the cap, each scaled by a random factor in [0.5, 1]."""
    high = Backoff(1.0, 10.0, rng=lambda: 1.0)
    assert [high.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    low = Backoff(1.0, 10.0, rng=lambda: 0.0)
    assert [low.next() for _ in range(3)] == [0.5, 1.0, 2.0]
    high.reset()
    assert high.next() == 1.0


def test_ble_config_needs_a_way_to_find_the_device() -> None:
    """No address, name pattern or service: a config error that says what to set."""
    with pytest.raises(ValueError, match="address, name_pattern, service_uuid"):
        BleSensorConfig(name="x", link="ble")
    with pytest.raises(ValueError, match="has no default characteristic"):
        BleLink(ble_config(profile={"protocol": "witmotion"}), Sink(), backend=FakeStack())
