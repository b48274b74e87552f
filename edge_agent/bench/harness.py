"""What every bench process shares: the plan's constants, JSON lines between processes,
a private broker, and the CPU and memory readings of this process and machine."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import IO, Any

__all__ = [
    "DECIMATION",
    "HOP",
    "MODEL",
    "PROFILE_ENV",
    "RATE_HZ",
    "READ_CHUNK",
    "WINDOW",
    "Proc",
    "accepting",
    "cpu_seconds",
    "emit",
    "free_port",
    "machine",
    "open_pty",
    "private_broker",
    "rss_mb",
    "thread_cpu",
    "wait",
]

RATE_HZ = 100.0
MODEL = "imu-activity"
WINDOW, HOP, DECIMATION = 20, 10, 10  # the shipped model at 10 Hz on 100 Hz sensors
READ_CHUNK = 1 << 16
PROFILE_ENV = "EDGE_AGENT_BENCH_PROFILE"
"""If set, a worker profiles its event loop thread with cProfile and writes the stats there."""


def emit(obj: dict[str, Any], out: IO[str] | None = None) -> None:
    """One JSON line on stdout: how workers talk to the orchestrator."""
    stream = out or sys.stdout
    stream.write(json.dumps(obj) + "\n")
    stream.flush()


def open_pty() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(slave)
    return master, slave, os.ttyname(slave)


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def thread_cpu() -> dict[str, float]:
    """CPU seconds per kind of thread of this process (from /proc, ns resolution)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            on_cpu_ns = int((task / "schedstat").read_text().split()[0])
            name = names.get(int(task.name), "native (runtime pools)")
            # Threads of one kind (link-imu-0..9) are summed under their common prefix.
            key = name.rstrip("0123456789").rstrip("-_") or name
            out[key] = out.get(key, 0.0) + on_cpu_ns / 1e9
    return out


def rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def wait(predicate: Any, timeout: float, what: str, interval: float = 0.001) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class Proc:
    """A bench subprocess speaking JSON lines on stdout."""

    def __init__(self, *args: str, profile: Path | None = None) -> None:
        self.args = args
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
        if profile is not None:
            env[PROFILE_ENV] = str(profile)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.bench", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"bench {self.args[0]} exited early:\n{err[-4000:]}")
        result: dict[str, Any] = json.loads(line)
        return result

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self, timeout: float = 30.0) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


_HANDED_OUT: set[int] = set()
_PICK = random.SystemRandom()


def _ephemeral_low() -> int:
    """The first port of the kernel's range for the local end of outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free loopback TCP port, below the kernel's ephemeral range and never handed out
    twice in this process.

    A port from `bind(0)` comes from the ephemeral range, from which the kernel also takes
    the local port of every outgoing connection: a server started a moment later on it can
    find it taken (seen with a NATS cluster, whose nodes dial each other's route ports while
    the later nodes are still starting). Below that range only a listener takes a port, and
    the bind below sees a listener.
    """
    low = _ephemeral_low()
    if low > 11_000:
        for _ in range(200):
            port = _PICK.randrange(10_000, low)
            if port in _HANDED_OUT:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def private_broker(workdir: Path) -> Iterator[tuple[int, str]]:
    """A private mosquitto when one is installed, else a port nobody listens on."""
    port = free_port()
    binary = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if binary is None:
        yield port, "none (mosquitto not installed; the uplink keeps retrying)"
        return
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait(lambda: accepting(port), 10, "mosquitto", 0.02)
        yield port, "mosquitto on loopback"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def accepting(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str | None] = {}
    for name in ("numpy", "onnxruntime", "pyserial", "paho-mqtt"):
        try:
            versions[name] = package_version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        **versions,
    }
