"""Telemetry topics taken apart."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TopicName", "parse_topic"]


@dataclass(frozen=True)
class TopicName:
    """A telemetry topic `<prefix>/<tenant>/<site>/<device>/<kind>`, taken apart."""

    tenant: str
    site: str
    device: str
    kind: str

    @property
    def gateway(self) -> str:
        """`tenant/site/device`: one gateway, unique across the fleet."""
        return f"{self.tenant}/{self.site}/{self.device}"


def parse_topic(topic: str, prefix: str) -> TopicName | None:
    """Take a telemetry topic apart; None for anything else under the subscription.

    Topics with more levels than telemetry (remote commands `<root>/cmd/<name>` and their
    replies) and topics outside `prefix` are not gateway telemetry and are ignored by the
    consumer, not counted as violations.
    """
    head = prefix.rstrip("/") + "/"
    if not topic.startswith(head):
        return None
    parts = topic[len(head) :].split("/")
    if len(parts) != 4 or not all(parts):
        return None
    return TopicName(*parts)
