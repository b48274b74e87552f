"""BLE link (GATT notifications through bleak)."""

from __future__ import annotations

from typing import Any, ClassVar

from firmware_bridge.links.base import Link, LinkSink


class BleLink(Link):
    """Placeholder until the BLE link lands: reports clearly instead of failing silently."""

    kind: ClassVar[str] = "ble"

    def __init__(self, config: Any, sink: LinkSink) -> None:
        super().__init__(config, sink)

    def _run(self) -> None:
        self._set_state(
            False,
            "the BLE link is not available in this version; use link = 'serial' "
            "(a USB-serial bridge) for this sensor",
        )
