"""Telemetry topics taken apart, and the sequence arithmetic both consumers share."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TopicName", "parse_topic", "subtract_ranges"]


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


def subtract_ranges(gap: tuple[int, int], covered: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Parts of the inclusive range `gap` not inside any of `covered`."""
    left = [gap]
    for a, b in covered:
        nxt: list[tuple[int, int]] = []
        for lo, hi in left:
            if b < lo or a > hi:
                nxt.append((lo, hi))
                continue
            if lo < a:
                nxt.append((lo, a - 1))
            if b < hi:
                nxt.append((b + 1, hi))
        left = nxt
    return left
