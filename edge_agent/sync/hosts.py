"""The broker nodes of `mqtt.hosts`, which one to try next, and what is known about each.

A gateway handed a list of cluster nodes keeps one session, on one node at a time. When it
fails or is lost, the uplink asks `Failover` which node to try next: the nodes are tried in
rounds, the last good node first, then the others in list order after the current one,
skipping a node that failed recently unless every node did. A lost session moves on after a
short random pause (so a fleet whose node died does not land on the next one in the same
instant); a round in which no node answered ends with the uplink's capped, jittered backoff.

Nothing here does I/O or imports the rest of the agent: the config validates `mqtt.hosts`
with `parse_node`, and the tests drive `Failover` with their own clock.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_HOSTS", "Failover", "Node", "NodeHealth", "parse_node"]

MAX_HOSTS = 16
"""Most entries in `mqtt.hosts`: a cluster's nodes, not a fleet's address book."""

_PORT = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True)
class Node:
    """One broker node: where a session is opened."""

    host: str
    port: int

    def __str__(self) -> str:
        # An IPv6 address needs brackets, or its last group would read as the port.
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _check_host(host: str, text: str) -> str:
    if not host:
        raise ValueError(f"{text!r}: the host is empty")
    if len(host) > 253:
        raise ValueError(f"{text!r}: the host is longer than 253 characters")
    if any(c.isspace() or not c.isprintable() for c in host):
        raise ValueError(f"{text!r}: the host holds a space or a control character")
    if any(c in host for c in "/[]@"):
        raise ValueError(
            f"{text!r}: not a host name or address (no '/', '@' or stray brackets; "
            "an IPv6 address with a port is written [addr]:port)"
        )
    return host


def _check_port(port: str, text: str) -> int:
    if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number in 1..65535, not {port!r}")
    return int(port)


def parse_node(text: str, default_port: int) -> Node:
    """A node from `"host"`, `"host:port"`, `"[v6addr]"` or `"[v6addr]:port"`.

    A bare host uses `default_port` (`mqtt.port`); an IPv6 address without a port may be
    written bare (`::1`), since more than one colon cannot be `host:port`.

    Raises:
        ValueError: a message naming the entry and what is wrong with it.
    """
    if not isinstance(text, str):
        raise ValueError(f"{text!r}: not a string")  # pragma: no cover - pydantic checks
    if "://" in text:
        raise ValueError(f"{text!r}: no URL scheme; write host or host:port (TLS: mqtt.tls)")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: '[' without ']' (write [v6addr]:port)")
        host, rest = text[1:end], text[end + 1 :]
        if ":" not in host:
            raise ValueError(f"{text!r}: brackets are for IPv6 addresses only")
        if not rest:
            return Node(_check_host(host, text), default_port)
        if not rest.startswith(":"):
            raise ValueError(f"{text!r}: only ':port' may follow ']'")
        return Node(_check_host(host, text), _check_port(rest[1:], text))
    if text.count(":") == 1:
        host, port = text.split(":")
        return Node(_check_host(host, text), _check_port(port, text))
    return Node(_check_host(text, text), default_port)


@dataclass
class NodeHealth:
    """What the uplink remembers about one node (for its choice and for `status`)."""

    failures: int = 0
    """Failed connects (and sessions lost) in a row; back to 0 when a CONNACK accepts one."""
    connects: int = 0
    last_failure: float | None = None  # Unix seconds
    last_success: float | None = None  # Unix seconds of the last accepted CONNACK
    last_error: str | None = None
    failed_at: float | None = None  # monotonic, for the choice

    def report(self) -> dict[str, Any]:
        """The JSON-ready figures shown in `status` and the heartbeat."""
        return {
            "failures": self.failures,
            "connects": self.connects,
            "last_failure": _rounded(self.last_failure),
            "last_success": _rounded(self.last_success),
            "last_error": self.last_error,
        }


def _rounded(ts: float | None) -> float | None:
    return None if ts is None else round(ts, 3)


class Failover:
    """Chooses the node of the next connection attempt and keeps each node's health.

    The uplink calls `next()` before each attempt, then `connected()` when a CONNACK
    accepted it, and `failed()` or `lost()` when the attempt or the session ended. Those
    two return the pause before the next attempt, or None when a round ended without a
    session: then the uplink waits out its own backoff.

    Args:
        nodes: The configured nodes, in the configured order (at least one).
        rest_min_s: How long a node that failed once is skipped (`mqtt.reconnect_min_s`);
            doubles with each failure in a row, up to `rest_max_s`.
        rest_max_s: The longest a failing node is skipped (`mqtt.reconnect_max_s`).
        rng: Jitter of the pause after a lost session.
        clock: Monotonic seconds (for the choice); `wall`: Unix seconds (for reports).
    """

    def __init__(
        self,
        nodes: Sequence[Node],
        *,
        rest_min_s: float,
        rest_max_s: float,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not nodes:
            raise ValueError("at least one broker node is needed")
        self.nodes = list(dict.fromkeys(nodes))
        self.health = {node: NodeHealth() for node in self.nodes}
        self.rest_min_s = rest_min_s
        self.rest_max_s = max(rest_max_s, rest_min_s)
        self.current = self.nodes[0]
        self.preferred: Node | None = None  # the node of the last accepted session
        self._rng = rng or random.Random()
        self._clock = clock
        self._wall = wall
        self._tried: set[Node] = set()  # nodes tried in this round
        self._every = False  # this round tries resting nodes too (all of them had failed)
        self._round_over = False

    # -- the choice ----------------------------------------------------------------------

    def resting(self, node: Node, now: float | None = None) -> bool:
        """Whether `node` failed recently: skipped while another node may answer."""
        health = self.health[node]
        if not health.failures or health.failed_at is None:
            return False
        now = self._clock() if now is None else now
        rest = min(self.rest_max_s, self.rest_min_s * 2.0 ** (min(health.failures, 32) - 1))
        return now < health.failed_at + rest

    def next(self) -> Node:
        """The node to try now (after a round ended: the first node of a new round)."""
        if self._round_over:
            self._round_over = False
            self._start_round()
        return self.current

    def _rotation(self) -> list[Node]:
        """Every node in list order, starting after the current one."""
        i = self.nodes.index(self.current)
        return self.nodes[i + 1 :] + self.nodes[: i + 1]

    def _start_round(self) -> None:
        now = self._clock()
        left = [n for n in self._rotation() if n not in self._tried]
        awake = [n for n in left if not self.resting(n, now)]
        self._every = not awake  # every node failed recently: try them all anyway
        if self.preferred in (awake or left):
            self.current = self.preferred
        else:
            self.current = (awake or left)[0]

    def _move(self) -> bool:
        """Go to the next untried node of this round; False when the round is over."""
        now = self._clock()
        for node in self._rotation():
            if node in self._tried or (not self._every and self.resting(node, now)):
                continue
            self.current = node
            return True
        self._tried.clear()
        self._round_over = True
        return False

    # -- what happened ---------------------------------------------------------------------

    def connected(self, node: Node) -> None:
        """A CONNACK accepted a session on `node`: it becomes the preferred node."""
        health = self.health[node]
        health.failures = 0
        health.connects += 1
        health.last_success = self._wall()
        health.last_error = None
        self.preferred = node

    def _failure(self, node: Node, why: str) -> None:
        health = self.health[node]
        health.failures += 1
        health.last_failure = self._wall()
        health.failed_at = self._clock()
        health.last_error = why
        self._tried.add(node)

    def failed(self, node: Node, why: str) -> float | None:
        """A connection attempt on `node` failed: go on to the next node at once, or None
        when every node of this round has failed (wait out the backoff)."""
        self._failure(node, why)
        return 0.0 if self._move() else None

    def lost(self, node: Node, why: str) -> float | None:
        """An accepted session on `node` ended: a new round starts with the other nodes,
        after a pause uniform in [0, rest_min_s]; None with a single node (back off)."""
        self._failure(node, why)
        self._tried = {node}
        self._every = False
        left = [n for n in self.nodes if n != node]
        if left and not any(not self.resting(n) for n in left):
            self._every = True  # the others all failed recently: still try them
        if not self._move():
            return None
        return self._rng.uniform(0.0, self.rest_min_s)

    def report(self) -> dict[str, dict[str, Any]]:
        """Per node (`host:port`): failures in a row, connects, last failure and success."""
        return {str(node): health.report() for node, health in self.health.items()}
