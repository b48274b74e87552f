"""A private RabbitMQ node with its MQTT plugin (it speaks MQTT 3.1.1 only; 3.10 closes an
MQTT 5 CONNECT without answering it).

The node has its own name, ports, data, logs, config and Erlang cookie (its HOME is the
node's directory), so it never meets a system node on the default ports. epmd, the Erlang
port mapper on 4369, is shared with any other node on the machine (the first node to start
leaves it running, as Erlang always does); it only maps names to ports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.broker import ServerProcess, free_port, wait_for

# The Debian package's /usr/sbin wrapper switches to the `rabbitmq` user (and its HOME, and
# the system node's cookie); the script it wraps runs a node as whoever starts it.
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


def rabbitmq_version() -> str:
    """The installed RabbitMQ's version, from the package (no node needed)."""
    for entry in sorted(Path("/usr/lib/rabbitmq/lib").glob("rabbitmq_server-*")):
        return entry.name.removeprefix("rabbitmq_server-")
    return "unknown"


@dataclass
class RabbitMQ(ServerProcess):
    """A real RabbitMQ node with `rabbitmq_mqtt` on free loopback ports.

    `port` is AMQP, `mqtt_port` the MQTT listener. Runs in the foreground under this process
    (SIGTERM stops it); `restart()` keeps its name, ports and data, as a broker restart does.
    """

    workdir: Path
    port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    start_seconds: float = 0.0  # of the last start, until the MQTT port accepted
    extra_conf: str = ""  # more rabbitmq.conf lines

    @property
    def node(self) -> str:
        return f"rabbit-{self.port}@localhost"

    @property
    def home(self) -> Path:
        return self.workdir / f"rabbitmq-{self.port}"

    def env(self) -> dict[str, str]:
        """The environment of the node (and of `rabbitmqctl` talking to it)."""
        home = self.home
        return {
            **os.environ,
            "HOME": str(home),  # the Erlang cookie: $HOME/.erlang.cookie, made on first start
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(home / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def start(self) -> None:
        home = self.home
        home.mkdir(parents=True, exist_ok=True)
        # Not the system's /etc/rabbitmq/rabbitmq-env.conf (it names the system node).
        (home / "rabbitmq-env.conf").write_text("")
        (home / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (home / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_port}\n"
            "mqtt.allow_anonymous = true\n"
            "mqtt.default_user = guest\n"
            "mqtt.default_pass = guest\n"
            "loopback_users = none\n"
            f"{self.extra_conf}"
        )
        self.log = home / "console.log"
        began = time.monotonic()
        with self.log.open("ab") as out:
            # Its own process group: a stop that has to kill takes the Erlang VM with it.
            self.proc = subprocess.Popen(
                [RABBITMQ_SERVER],
                stdout=out,
                stderr=out,
                env=self.env(),
                cwd=home,
                start_new_session=True,
            )
        # A first start waits 3-6 s for Raft peers of the MQTT plugin's client-id tracker.
        try:
            wait_for(
                lambda: self.accepting(self.mqtt_port, "rabbitmq-server MQTT"),
                60,
                f"rabbitmq-server MQTT on port {self.mqtt_port}",
                interval=0.1,
            )
        except BaseException:
            self.stop()  # never leave a half-started node behind
            raise
        self.start_seconds = time.monotonic() - began

    def _vms(self) -> list[psutil.Process]:
        """The node's processes (the script, the Erlang VM and its port programs)."""
        assert self.proc is not None
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        """SIGTERM (a clean node shutdown, ~2 s); kills the group if it takes over 30 s.

        Fails if any process of the node is still there afterwards.
        """
        if self.proc is None:
            return
        procs = self._vms()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        _gone, alive = psutil.wait_procs(procs, timeout=10)
        if alive:
            for p in alive:
                p.kill()
            raise AssertionError(f"rabbitmq node {self.node} left processes: {alive}")

    def restart(self) -> None:
        self.stop()
        self.start()
