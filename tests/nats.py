"""A private nats-server with JetStream and its MQTT listener (it speaks MQTT 3.1.1 only)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.broker import ServerProcess, free_port


@dataclass
class Nats(ServerProcess):
    """A real nats-server on free loopback ports: `port` (NATS) and `mqtt_port` (MQTT)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        conf = self.workdir / f"nats-{self.port}.conf"
        # MQTT keeps its sessions and retained messages in JetStream, which needs a name.
        conf.write_text(
            f"server_name: test-{self.port}\nlisten: 127.0.0.1:{self.port}\n"
            f'jetstream {{ store_dir: "{self.workdir}/js-{self.port}" }}\n'
            f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port} }}\n"
        )
        log = self.workdir / f"nats-{self.port}.log"
        self.launch([binary, "-c", str(conf)], log, self.mqtt_port, "nats-server MQTT", 15)
