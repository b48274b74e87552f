"""Private nats-server processes with JetStream and the MQTT listener (MQTT 3.1.1 only):
one server (`Nats`), or a real three-node cluster with routes on loopback (`NatsCluster`)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.broker import ServerProcess, free_port, wait_for

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


@dataclass
class Nats(ServerProcess):
    """A real nats-server on free loopback ports: `port` (NATS) and `mqtt_port` (MQTT).

    With `cluster_port` and `routes` it is one node of a cluster (see `NatsCluster`).
    """

    workdir: Path
    port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    cluster_port: int | None = None
    routes: list[int] = field(default_factory=list)

    def start(self) -> None:
        self.spawn()
        wait_for(
            lambda: self.accepting(self.mqtt_port, "nats-server MQTT"),
            15,
            f"nats-server MQTT on port {self.mqtt_port}",
        )

    def spawn(self) -> None:
        """Start the process (not waiting for it)."""
        conf = self.workdir / f"nats-{self.port}.conf"
        cluster = ""
        mqtt_extra = ""
        if self.cluster_port is not None:
            # Replicated on every node, so losing one keeps a quorum (NATS would choose the
            # number of nodes it saw when the streams were created, maybe 2 of 3).
            mqtt_extra = ", stream_replicas: 3, consumer_replicas: 3"
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            cluster = (
                f"cluster {{ name: edge-test, listen: 127.0.0.1:{self.cluster_port}, "
                f"routes: [{routes}] }}\n"
            )
        # MQTT keeps its sessions and retained messages in JetStream, which needs a name.
        conf.write_text(
            f"server_name: test-{self.port}\nlisten: 127.0.0.1:{self.port}\n"
            f'jetstream {{ store_dir: "{self.workdir}/js-{self.port}" }}\n'
            f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port}{mqtt_extra} }}\n{cluster}"
        )
        self.log = self.workdir / f"nats-{self.port}.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([NATS_SERVER, "-c", str(conf)], stdout=out, stderr=out)

    def kill(self) -> None:
        """SIGKILL: the node vanishes without a goodbye, as a crashed machine would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def mqtt_accepts(port: int, timeout: float = 2.0) -> bool:
    """Whether an MQTT 3.1.1 CONNECT to 127.0.0.1:`port` gets an accepting CONNACK."""
    answered = threading.Event()
    accepted: list[bool] = []

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        accepted.append(not reason.is_failure)
        answered.set()

    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"probe-{port}-{time.monotonic_ns()}",
        protocol=MQTTProtocolVersion.MQTTv311,
    )
    client.on_connect = on_connect
    client.on_disconnect = lambda *a: answered.set()
    try:
        client.connect("127.0.0.1", port, keepalive=10)
    except OSError:
        return False
    client.loop_start()
    try:
        answered.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return accepted == [True]


class NatsCluster:
    """Three nats-server nodes routed to each other on loopback, each with JetStream (its
    own store and server name) and an MQTT listener. Started once the cluster has elected
    its JetStream meta leader, which the MQTT listeners need: every node accepts an MQTT
    CONNECT."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        cluster_ports = [free_port() for _ in range(size)]
        self.nodes = [
            Nats(
                workdir,
                cluster_port=cluster_ports[i],
                routes=[p for j, p in enumerate(cluster_ports) if j != i],
            )
            for i in range(size)
        ]

    @property
    def mqtt_ports(self) -> list[int]:
        return [node.mqtt_port for node in self.nodes]

    def by_mqtt_port(self, port: int) -> Nats:
        return next(node for node in self.nodes if node.mqtt_port == port)

    def start(self) -> None:
        for node in self.nodes:
            node.spawn()
        for node in self.nodes:
            wait_for(
                lambda n=node: n.accepting(n.mqtt_port, "nats-server MQTT"),  # type: ignore[misc]
                20,
                f"nats-server MQTT on port {node.mqtt_port}",
            )
        for node in self.nodes:
            wait_for(
                lambda n=node: mqtt_accepts(n.mqtt_port),  # type: ignore[misc]
                60,
                f"an MQTT CONNACK from the cluster node on port {node.mqtt_port} "
                "(JetStream meta leader elected)",
                interval=0.2,
            )

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
