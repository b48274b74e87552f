"""`mqtt.hosts`: the node parser, its validation at load, and the choice of the next node."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.config import parse_config
from edge_agent.errors import ConfigError
from edge_agent.sync.hosts import MAX_HOSTS, Failover, Node, parse_node

# -- the parser ------------------------------------------------------------------------------

NAMES = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True)
PORTS = st.integers(1, 65535)
V6 = st.ip_addresses(v=6).map(str)


@given(NAMES, PORTS, PORTS)
def test_host_and_host_port_round_trip(name: str, port: int, default: int) -> None:
    assert parse_node(name, default) == Node(name, default)
    assert parse_node(f"{name}:{port}", default) == Node(name, port)
    assert parse_node(str(Node(name, port)), default) == Node(name, port)


@given(V6, PORTS, PORTS)
def test_ipv6_with_and_without_brackets(addr: str, port: int, default: int) -> None:
    assert parse_node(f"[{addr}]:{port}", default) == Node(addr, port)
    assert parse_node(f"[{addr}]", default) == Node(addr, default)
    assert parse_node(str(Node(addr, port)), default) == Node(addr, port)
    if addr.count(":") > 1:
        assert parse_node(addr, default) == Node(addr, default)


@given(st.text(max_size=40), PORTS)
def test_any_text_parses_to_a_sane_node_or_a_value_error_naming_it(text: str, default: int) -> None:
    try:
        node = parse_node(text, default)
    except ValueError as err:
        message = str(err)
    else:
        message = ""
    if message:
        assert repr(text) in message
        return
    assert node.host
    assert 1 <= node.port <= 65535
    assert not any(c.isspace() or not c.isprintable() for c in node.host)
    assert parse_node(str(node), default) == node


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        (":1883", "empty"),
        ("broker:0", "1..65535"),
        ("broker:65536", "1..65535"),
        ("broker:+5", "1..65535"),
        ("broker: 5", "1..65535"),
        ("broker:", "1..65535"),
        ("bro ker", "space"),
        ("broker\n", "control"),
        ("mqtt://broker", "no URL scheme"),
        ("user@broker", "'@'"),
        ("[::1", "without ']'"),
        ("[broker]:1883", "IPv6"),
        ("[::1]1883", "':port'"),
        ("x" * 254, "253"),
    ],
)
def test_bad_entries_are_refused_with_the_reason(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=r".*") as info:
        parse_node(text, 1883)
    assert says in str(info.value)


# -- validation at load ----------------------------------------------------------------------


def _mqtt(**mqtt: object) -> list[Node]:
    return parse_config({"mqtt": mqtt}, source="t", environ={}).mqtt.nodes()


def _refused(**mqtt: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config({"mqtt": mqtt}, source="t", environ={})
    return str(info.value)


def test_hosts_default_to_host_and_port() -> None:
    assert _mqtt() == [Node("127.0.0.1", 1883)]
    assert _mqtt(host="broker.lan", port=8883) == [Node("broker.lan", 8883)]


def test_a_bare_host_uses_mqtt_port() -> None:
    nodes = _mqtt(port=1884, hosts=["a", "b:1999", "[fd00::1]:2000", "fd00::2"])
    assert nodes == [Node("a", 1884), Node("b", 1999), Node("fd00::1", 2000), Node("fd00::2", 1884)]


def test_bad_lists_name_the_entry() -> None:
    assert "mqtt.hosts" in _refused(hosts=["a", "b:99999"])
    assert "entry 1: 'b:99999'" in _refused(hosts=["a", "b:99999"])
    assert "entry 1 ('A:1883') is the same node as entry 0 ('a')" in _refused(hosts=["a", "A:1883"])
    assert f"at most {MAX_HOSTS}" in _refused(hosts=[f"n{i}" for i in range(MAX_HOSTS + 1)])
    assert "mqtt.hosts.0" in _refused(hosts=[5])
    assert "host 'elsewhere' is not in hosts" in _refused(host="elsewhere", hosts=["a", "b"])
    assert _mqtt(host="a", hosts=["a", "b"]) == [Node("a", 1883), Node("b", 1883)]


def test_environment_gives_a_list_as_json_or_with_commas() -> None:
    for value in ('["a", "b:2"]', "a, b:2"):
        cfg = parse_config({}, source="t", environ={"EDGE_AGENT_MQTT__HOSTS": value})
        assert cfg.mqtt.nodes() == [Node("a", 1883), Node("b", 2)]
    with pytest.raises(ConfigError, match="EDGE_AGENT_MQTT__HOSTS"):
        parse_config({}, source="t", environ={"EDGE_AGENT_MQTT__HOSTS": "a, b:x"})


# -- the choice of the next node -------------------------------------------------------------

A, B, C = Node("a", 1), Node("b", 1), Node("c", 1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _failover(*nodes: Node, clock: Clock | None = None) -> Failover:
    clock = clock or Clock()
    return Failover(
        nodes or (A, B, C),
        rest_min_s=1.0,
        rest_max_s=8.0,
        rng=random.Random(3),
        clock=clock,
        wall=clock,
    )


def _round(f: Failover) -> list[Node]:
    """Fail every node of one round; the nodes tried, in order."""
    tried = []
    while True:
        node = f.next()
        tried.append(node)
        if f.failed(node, "refused") is None:
            return tried


def test_all_nodes_down_every_round_tries_each_once_in_order() -> None:
    f = _failover()
    assert _round(f) == [A, B, C]
    # Every node failed recently: the next round still tries them all, from the next one.
    assert _round(f) == [A, B, C]
    assert {str(n): h["failures"] for n, h in f.report().items()} == {"a:1": 2, "b:1": 2, "c:1": 2}


def test_a_lost_session_moves_to_the_next_node_after_a_short_jittered_pause() -> None:
    clock = Clock()
    f = _failover(clock=clock)
    assert f.next() == A
    f.connected(A)
    clock.now += 60
    pauses = []
    pause = f.lost(A, "connection lost")
    assert pause is not None
    pauses.append(pause)
    assert 0.0 <= pause <= 1.0
    assert f.next() == B
    assert f.health[A].failures == 1
    assert f.health[A].last_error == "connection lost"
    f.connected(B)
    clock.now += 60
    pause = f.lost(B, "connection lost")
    assert pause is not None
    pauses.append(pause)
    assert f.next() == C
    assert pauses[0] != pauses[1]  # jittered, not lockstep


def test_the_last_good_node_comes_first_in_a_new_round() -> None:
    clock = Clock()
    f = _failover(clock=clock)
    assert _round(f) == [A, B, C]
    clock.now += 2
    # Round 2: B answers.
    assert f.next() == A
    assert f.failed(A, "refused") == 0.0
    assert f.next() == B
    f.connected(B)
    clock.now += 60
    assert f.lost(B, "lost") is not None
    assert f.next() == C  # the others first
    assert f.failed(C, "refused") == 0.0
    assert f.next() == A
    assert f.failed(A, "refused") is None  # round over: back off
    clock.now += 30
    assert f.next() == B  # the last good node leads the new round
    assert f.health[B].connects == 1
    assert f.health[B].last_success is not None


def test_a_node_that_failed_recently_is_skipped_unless_all_did() -> None:
    clock = Clock()
    f = _failover(clock=clock)
    assert (f.next(), f.failed(A, "refused")) == (A, 0.0)  # A rests 1 s
    assert (f.next(), f.failed(B, "refused")) == (B, 0.0)  # B rests 1 s
    assert f.next() == C
    f.connected(C)
    clock.now += 0.5
    assert f.lost(C, "lost") is not None
    assert f.next() == A  # A and B both rest: tried all the same
    assert f.failed(A, "refused") == 0.0  # A's second failure: it rests 2 s
    assert f.next() == B
    f.connected(B)
    clock.now += 0.5
    assert f.lost(B, "lost") is not None
    assert f.next() == C
    f.connected(C)
    clock.now += 1.1
    assert f.resting(A)
    assert not f.resting(B)
    assert f.lost(C, "lost") is not None
    assert f.next() == B  # A rests, B does not: A is skipped


def test_a_single_node_backs_off_after_a_loss_and_a_failure() -> None:
    f = _failover(A)
    assert f.next() == A
    f.connected(A)
    assert f.lost(A, "lost") is None
    assert f.next() == A
    assert f.failed(A, "refused") is None
    assert f.next() == A


def test_connect_failures_move_on_at_once_within_a_round() -> None:
    f = _failover()
    assert f.next() == A
    assert f.failed(A, "refused") == 0.0
    assert f.next() == B
    f.connected(B)
    assert f.health[B].failures == 0
    assert f.preferred == B
