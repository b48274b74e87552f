"""BLE link on bleak: scan, connect, subscribe once per connection, reconnect on its own.

bleak gives a client and a scanner, not a supervised connection; this link owns the rest:

* **Finding the device** by address, advertised name (regular expression) and/or advertised
  service UUID, with a scan timeout.
* **One subscription per connection.** Every connection gets a fresh client and a fresh
  notification handler bound to that connection's generation; a handler of an earlier
  connection that a stack keeps calling (the "doubled callbacks after reconnect" bug) is
  ignored and counted. Before disconnecting, the link unsubscribes.
* **Reconnecting** after a disconnect, a failed scan or a failed connect, with a delay that
  doubles per failure up to ``reconnect_max_s`` and is randomised (jitter), so a fleet of
  sensors does not reconnect in lockstep.
* **A timeout on every await** (scan, connect, subscribe, unsubscribe, disconnect): a stuck
  BlueZ call cannot wedge the link.
* **A limit on simultaneous connections** per adapter, shared by all BLE links of the
  process; connect attempts on one adapter are serialised (BlueZ answers "InProgress" to a
  second concurrent connect).

Bytes from notifications go through the sensor's profile like serial reads do; protocol-v1
frames split across notifications (Nordic UART Service) are reassembled by the v1 decoder.

The link runs its own asyncio loop in its reader thread. bleak is reached only through
:class:`BleBackend` (scanner and client factory), the narrowest seam where tests can stand
in for a radio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from firmware_bridge.links.base import Link, LinkSink

log = logging.getLogger(__name__)

NotifyCallback = Callable[[Any, bytearray], Awaitable[None] | None]
Matcher = Callable[[Any, Any], bool]


class BleClient(Protocol):
    """The part of :class:`bleak.BleakClient` the link uses."""

    @property
    def is_connected(self) -> bool:
        """Whether the connection is up."""
        ...

    async def connect(self) -> None:
        """Connect and discover services."""
        ...

    async def disconnect(self) -> None:
        """Disconnect."""
        ...

    async def start_notify(self, char_specifier: str, callback: NotifyCallback) -> None:
        """Subscribe to a characteristic's notifications."""
        ...

    async def stop_notify(self, char_specifier: str) -> None:
        """Unsubscribe."""
        ...


class BleBackend(Protocol):
    """Scanner and client factory: bleak in production, a stand-in in tests."""

    async def find(
        self,
        match: Matcher,
        *,
        service_uuids: list[str] | None,
        adapter: str | None,
        timeout: float,
    ) -> Any | None:
        """Return the first advertising device ``match(device, advertisement)`` accepts."""
        ...

    def client(
        self,
        device: Any,
        *,
        disconnected_callback: Callable[[Any], None],
        timeout: float,
        adapter: str | None,
    ) -> BleClient:
        """Return an unconnected client for ``device``."""
        ...


class BleakBackend:
    """The real thing: :class:`bleak.BleakScanner` and :class:`bleak.BleakClient`."""

    def __init__(self) -> None:
        self._used = False

    async def aclose(self) -> None:
        """Close the D-Bus connection bleak keeps for this event loop.

        bleak's BlueZ backend holds one manager (and one system-bus connection) per event
        loop for the life of the process. Each link runs its own loop, so when the link ends
        that connection would leak until garbage collection; this closes it. It reaches into
        bleak's manager because bleak offers no public way to do so.
        """
        if not self._used:
            return
        try:
            from bleak.backends.bluezdbus.manager import get_global_bluez_manager

            async with asyncio.timeout(2.0):
                manager = await get_global_bluez_manager()
                bus = getattr(manager, "_bus", None)
                if bus is not None:
                    bus.disconnect()
                    await bus.wait_for_disconnect()
        except Exception as err:  # no BlueZ at all, or already gone: nothing to close
            log.debug("closing bleak's D-Bus connection: %r", err)

    async def find(
        self,
        match: Matcher,
        *,
        service_uuids: list[str] | None,
        adapter: str | None,
        timeout: float,
    ) -> Any | None:
        """Scan with ``BleakScanner.find_device_by_filter`` (it stops at the first match)."""
        from bleak import BleakScanner

        self._used = True
        kwargs: dict[str, Any] = {}
        if service_uuids:
            kwargs["service_uuids"] = service_uuids
        if adapter:
            kwargs["bluez"] = {"adapter": adapter}
        return await BleakScanner.find_device_by_filter(match, timeout=timeout, **kwargs)

    def client(
        self,
        device: Any,
        *,
        disconnected_callback: Callable[[Any], None],
        timeout: float,
        adapter: str | None,
    ) -> BleClient:
        """A new ``BleakClient`` (one per connection, so no state survives a reconnect)."""
        from bleak import BleakClient

        self._used = True
        client: BleClient = BleakClient(
            device,
            disconnected_callback=disconnected_callback,
            timeout=timeout,
            bluez={"adapter": adapter} if adapter else {},
        )
        return client


def normalize_uuid(uuid: str) -> str:
    """Full lowercase 128-bit form of a UUID; 16- and 32-bit forms use the Bluetooth base."""
    text = uuid.strip().lower()
    if re.fullmatch(r"[0-9a-f]{4}", text):
        text = "0000" + text
    if re.fullmatch(r"[0-9a-f]{8}", text):
        return f"{text}-0000-1000-8000-00805f9b34fb"
    return text


def advertisement_matcher(
    address: str | None, name_pattern: str | None, service_uuid: str | None
) -> Matcher:
    """A filter for ``find``: every given criterion must hold.

    Raises:
        re.error: ``name_pattern`` is not a valid regular expression.
    """
    wanted_address = address.lower() if address else None
    regex = re.compile(name_pattern) if name_pattern else None
    wanted_service = normalize_uuid(service_uuid) if service_uuid else None

    def match(device: Any, advertisement: Any) -> bool:
        if wanted_address and str(device.address).lower() != wanted_address:
            return False
        if regex is not None:
            name = getattr(advertisement, "local_name", None) or getattr(device, "name", None)
            if not name or not regex.search(name):
                return False
        if wanted_service:
            advertised = getattr(advertisement, "service_uuids", None) or []
            if wanted_service not in {normalize_uuid(u) for u in advertised}:
                return False
        return True

    return match


class Backoff:
    """Capped exponential backoff with jitter: ``min(cap, first * 2**failures) * U(0.5, 1)``."""

    def __init__(
        self, first_s: float, cap_s: float, rng: Callable[[], float] = random.random
    ) -> None:
        self.first_s = first_s
        self.cap_s = max(cap_s, first_s)
        self.failures = 0
        self._rng = rng

    def next(self) -> float:
        """Delay before the next attempt; each call counts one more failure."""
        delay = min(self.cap_s, self.first_s * 2.0 ** min(self.failures, 30))
        self.failures += 1
        return delay * (0.5 + 0.5 * self._rng())

    def reset(self) -> None:
        """After a good connection: the next retry comes quickly again."""
        self.failures = 0


class ConnectionSlots:
    """Simultaneous BLE connections per adapter, shared by every BLE link of the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._connecting: dict[str, threading.Lock] = {}

    def try_acquire(self, adapter: str, limit: int) -> bool:
        """Take a slot if fewer than ``limit`` are held on ``adapter``."""
        with self._lock:
            held = self._held.get(adapter, 0)
            if held >= limit:
                return False
            self._held[adapter] = held + 1
            return True

    def release(self, adapter: str) -> None:
        """Give a slot back."""
        with self._lock:
            self._held[adapter] = max(0, self._held.get(adapter, 0) - 1)

    def held(self, adapter: str) -> int:
        """Slots in use on ``adapter``."""
        with self._lock:
            return self._held.get(adapter, 0)

    def connect_lock(self, adapter: str) -> threading.Lock:
        """The lock that serialises connect attempts on ``adapter``."""
        with self._lock:
            return self._connecting.setdefault(adapter, threading.Lock())


SLOTS = ConnectionSlots()
"""The process-wide connection limiter."""


@dataclass
class BleStats:
    """What the BLE link did, beside the common link counters.

    Attributes:
        scans: Scans started.
        not_found: Scans that ended without a matching advertisement.
        connect_failures: Connects or subscriptions that failed or timed out.
        timeouts: Awaits that hit their timeout (any kind).
        disconnects: Established connections that dropped.
        notifications: Notifications delivered to the decoder.
        stale_notifications: Notifications from an earlier connection's subscription, dropped.
        waiting_for_slot: Times the link waited because ``max_connections`` were in use.
    """

    scans: int = 0
    not_found: int = 0
    connect_failures: int = 0
    timeouts: int = 0
    disconnects: int = 0
    notifications: int = 0
    stale_notifications: int = 0
    waiting_for_slot: int = 0


class _AttemptFailedError(Exception):
    """One connection attempt failed; the message is the detail reported."""


class BleLink(Link):
    """A sensor reached over BLE GATT notifications; see the module docstring."""

    kind: ClassVar[str] = "ble"
    SLOT_POLL_S: ClassVar[float] = 0.2
    #: Cap of the cleanup awaits while the link is closing, so close() stays quick.
    CLOSING_TIMEOUT_S: ClassVar[float] = 1.0

    def __init__(self, config: Any, sink: LinkSink, *, backend: BleBackend | None = None) -> None:
        super().__init__(config, sink)
        self.backend: BleBackend = backend or BleakBackend()
        self.ble = BleStats()
        profile = getattr(config, "profile", None)
        notify = getattr(config, "notify_uuid", None)
        defaults = getattr(profile, "ble_notify_uuids", ())
        uuids = (notify,) if notify else tuple(defaults)
        if not uuids:
            raise ValueError(
                f"sensor {self.name}: set notify_uuid (profile "
                f"{getattr(profile, 'protocol', 'v1')!r} has no default characteristic)"
            )
        self.notify_uuids = tuple(normalize_uuid(u) for u in uuids)
        self.adapter: str | None = getattr(config, "adapter", None)
        self._match = advertisement_matcher(
            getattr(config, "address", None),
            getattr(config, "name_pattern", None),
            getattr(config, "service_uuid", None),
        )
        service = getattr(config, "service_uuid", None)
        self._scan_services = [normalize_uuid(service)] if service else None
        self._backoff = Backoff(
            float(getattr(config, "reconnect_min_s", 1.0)),
            float(getattr(config, "reconnect_max_s", 30.0)),
        )
        self._generation = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self.address: str | None = None

    # -- thread and loop ---------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        try:
            await self._supervise()
        finally:
            close = getattr(self.backend, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()

    def _interrupt(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(wake.set)

    async def _supervise(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        reported = False
        while not self._stop.is_set():
            try:
                await self._session()
            except _AttemptFailedError as err:
                detail = str(err)
                if not reported and not self.connected:
                    self.stats.last_error = detail
                    self.sink.on_link_state(self.name, "lost", detail)
                self._set_state(False, detail)
            except Exception as err:  # a bug or an unexpected bleak error: keep the link alive
                log.exception("BLE link %s: unexpected error", self.name)
                self._set_state(False, f"unexpected error: {err!r}")
            reported = True
            if self._stop.is_set():
                break
            await self._sleep(self._backoff.next())

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds`` or until the link is closed."""
        wake = self._wake
        assert wake is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await wake.wait()

    def _timeout(self, seconds: float) -> asyncio.Timeout:
        closing = self._stop.is_set()
        return asyncio.timeout(min(seconds, self.CLOSING_TIMEOUT_S) if closing else seconds)

    # -- one connection ----------------------------------------------------------------------

    async def _session(self) -> None:
        """Find, connect, subscribe, stream until disconnected (raises on failure)."""
        config = self.config
        adapter_key = self.adapter or "default"
        limit = int(getattr(config, "max_connections", 5))
        waited = False
        while not SLOTS.try_acquire(adapter_key, limit):
            if not waited:
                self.ble.waiting_for_slot += 1
                waited = True
            if self._stop.is_set():
                return
            await self._sleep(self.SLOT_POLL_S)
        try:
            device = await self._find()
            await self._connect_and_stream(device)
        finally:
            SLOTS.release(adapter_key)

    async def _find(self) -> Any:
        timeout = float(getattr(self.config, "scan_timeout_s", 10.0))
        self.ble.scans += 1
        try:
            # The backend has its own scan timeout; ours is the backstop if it hangs.
            async with asyncio.timeout(timeout + 5.0):
                device = await self.backend.find(
                    self._match,
                    service_uuids=self._scan_services,
                    adapter=self.adapter,
                    timeout=timeout,
                )
        except TimeoutError:
            self.ble.timeouts += 1
            device = None
        except Exception as err:
            raise _AttemptFailedError(f"scan failed: {_describe(err)}") from err
        if device is None:
            self.ble.not_found += 1
            raise _AttemptFailedError(
                f"no advertisement matching {self._criteria()} within {timeout:g} s"
            )
        self.address = str(getattr(device, "address", device))
        return device

    def _criteria(self) -> str:
        parts = [
            f"{key}={value}"
            for key in ("address", "name_pattern", "service_uuid")
            if (value := getattr(self.config, key, None))
        ]
        return ", ".join(parts) or "(no filter)"

    async def _connect_and_stream(self, device: Any) -> None:
        config = self.config
        connect_timeout = float(getattr(config, "connect_timeout_s", 20.0))
        op_timeout = float(getattr(config, "op_timeout_s", 5.0))
        self._generation += 1
        generation = self._generation
        disconnected = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_disconnect(_client: Any) -> None:
            # bleak calls this on the loop; a stand-in or a future bleak might not.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(disconnected.set)

        def on_notify(_sender: Any, data: bytearray) -> None:
            if generation != self._generation:
                self.ble.stale_notifications += 1
                return
            self.ble.notifications += 1
            self._deliver(bytes(data))

        client = self.backend.client(
            device,
            disconnected_callback=on_disconnect,
            timeout=connect_timeout,
            adapter=self.adapter,
        )
        subscribed: list[str] = []
        established = False
        try:
            lock = SLOTS.connect_lock(self.adapter or "default")
            while not lock.acquire(blocking=False):
                if self._stop.is_set():
                    return
                await self._sleep(self.SLOT_POLL_S)
            try:
                await self._await(client.connect(), connect_timeout, "connect")
                for uuid in self.notify_uuids:
                    await self._await(
                        client.start_notify(uuid, on_notify), op_timeout, f"subscribe to {uuid}"
                    )
                    subscribed.append(uuid)
            finally:
                lock.release()
            established = True
            self._backoff.reset()
            self._set_state(True, f"connected to {self.address}, notifications from {subscribed}")
            wake = self._wake
            assert wake is not None
            waits = {
                asyncio.ensure_future(disconnected.wait()),
                asyncio.ensure_future(wake.wait()),
            }
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()
            if disconnected.is_set() and not self._stop.is_set():
                self.ble.disconnects += 1
                raise _AttemptFailedError(f"{self.address} disconnected")
        except _AttemptFailedError:
            if not established:
                self.ble.connect_failures += 1
            raise
        finally:
            # Late notifications of this connection are stale from here on.
            self._generation += 1
            await self._teardown(client, subscribed, op_timeout)

    async def _await(self, operation: Awaitable[Any], timeout: float, what: str) -> Any:
        """Await a bleak call with a timeout; failures become :class:`_AttemptFailedError`."""
        try:
            async with self._timeout(timeout):
                return await operation
        except TimeoutError as err:
            self.ble.timeouts += 1
            raise _AttemptFailedError(f"{what} timed out after {timeout:g} s") from err
        except Exception as err:
            raise _AttemptFailedError(f"{what} failed: {_describe(err, self.address)}") from err

    async def _teardown(self, client: BleClient, subscribed: list[str], timeout: float) -> None:
        """Unsubscribe and disconnect, each bounded; errors here change nothing."""
        connected = False
        with contextlib.suppress(Exception):
            connected = bool(client.is_connected)
        for uuid in subscribed if connected else []:
            with contextlib.suppress(Exception):
                await self._await(client.stop_notify(uuid), timeout, f"unsubscribe {uuid}")
        with contextlib.suppress(Exception):
            await self._await(client.disconnect(), timeout, "disconnect")


def _describe(err: BaseException, address: str | None = None) -> str:
    """An error in words, with what to do for the ones a technician can fix."""
    name = type(err).__name__
    text = f"{name}: {err}" if str(err) else name
    if name == "BleakCharacteristicNotFoundError":
        target = address or "ADDRESS"
        text += (
            "; check notify_uuid and the profile. If the device's firmware changed, BlueZ may "
            f"hold stale services: run `bluetoothctl remove {target}` and let it reconnect"
        )
    elif isinstance(err, FileNotFoundError) or name == "BleakBluetoothNotAvailableError":
        text += "; no usable Bluetooth adapter (is bluetoothd running and the adapter powered?)"
    return text
