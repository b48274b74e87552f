"""Links: one module per transport, looked up by the sensor's `link` kind and imported on demand."""

from __future__ import annotations

import importlib
from typing import Any

from firmware_bridge.links.base import Link, LinkSink

__all__ = ["Link", "LinkSink", "available_links", "open_link"]

_LINKS: dict[str, str] = {
    "serial": "firmware_bridge.links.serial:SerialLink",
    "emulated": "firmware_bridge.links.emulated:EmulatedLink",
    "ble": "firmware_bridge.links.ble:BleLink",
}


def available_links() -> list[str]:
    """Link kinds a sensor may use."""
    return sorted(_LINKS)


def open_link(kind: str, config: Any, sink: LinkSink) -> Link:
    """Build (not start) the link of `kind` for one sensor's config.

    Raises:
        KeyError: unknown kind.
    """
    module_name, _, class_name = _LINKS[kind].partition(":")
    module = importlib.import_module(module_name)
    cls: type[Link] = getattr(module, class_name)
    return cls(config, sink)
