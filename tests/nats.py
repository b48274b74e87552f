"""A private nats-server with JetStream and its MQTT listener (it speaks MQTT 3.1.1 only)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.broker import free_port, wait_for


@dataclass
class Nats:
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
        self.log = self.workdir / f"nats-{self.port}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=out)
        wait_for(self._accepting, 15, f"nats-server MQTT on port {self.mqtt_port}")

    def _accepting(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"nats-server exited: {self.log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", self.mqtt_port), timeout=0.2).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> Nats:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
