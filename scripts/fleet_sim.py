"""Fleet simulation: N gateway agents against one broker; messages/s and end-to-end latency.

Each agent is a real `edge-agent run` process with its own config, SQLite file and
emulated IMU sensors (`link = "emulated"`: device emulators on pseudo-terminals inside
the agent, streaming protocol v1 at the real sample rate and read through pyserial).
A process per agent is the product's own deployment shape, and on a 2-core machine it
scales to a few dozen agents: once started, an idle-rate agent costs about 1 % of a core
(start-up costs about a core-second each, hence the staggered start). All of them talk to
one private mosquitto on a free loopback port; a probe subscriber (MQTT 5, persistent
session) timestamps every arrival.

Phases:

1. start the broker and the probe, then the agents (staggered), until every agent's
   `online` status has arrived;
2. warm up, then measure a steady window: messages/s and bytes/s per topic kind at the
   probe, latency from the envelope's `ts` (creation in the agent's outbox) to arrival,
   CPU and memory of the agents and of the broker;
3. optionally (`--outage S`) stop the broker for S seconds and start it again with its
   persisted sessions: how long until every message the agents created before the
   restart has arrived, how fast the backlog came in (peak msgs/s over 1 s bins), and how
   the agents' reconnects spread out;
4. stop the agents cleanly and check every topic of every agent for seq gaps.

Bounded: at most 200 agents, 600 s of measurement, 600 s of outage; loopback only.

With `--tls` the broker's only listener is TLS, with a private CA and server certificate
made in the work directory at run time; the agents (`mqtt.tls`, `mqtt.ca_file`), the probe
and the imitated gateways verify it. `--mutual-tls` also makes client certificates and has
the broker require them (`require_certificate true`).

The agents run the product's default cadence and mode (heartbeat 30 s, summaries 60 s,
window results kept on the gateway) unless flags say otherwise.

    python scripts/fleet_sim.py --agents 10
    python scripts/fleet_sim.py --agents 10 --imitate 10000       # the broker's cost per gateway
    python scripts/fleet_sim.py --agents 50 --upload-results --results-interval 1 --outage 20
    python scripts/fleet_sim.py --agents 4 --imitate 10000 --tls   # the same over TLS
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the broker and certificate helpers live with the tests

from edge_agent.config import MqttConfig, SyncConfig  # noqa: E402
from edge_agent.contract.payloads import decode_payload  # noqa: E402
from tests.broker import free_port, wait_for  # noqa: E402
from tests.pki import make_cert, new_key, write_pem  # noqa: E402

MAX_AGENTS = 200
PREFIX = "edge/fleet/sim"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- a private CA (--tls) -----------------------------------------------------------------------


@dataclass
class Pki:
    """PEM files of a CA made at run time, the broker's certificate and a client's."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path | None = None
    client_key: Path | None = None


def make_pki(work: Path, *, client: bool) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and, with `client`, a client certificate.

    ECDSA P-256 keys, SHA-256 signatures: what a small private fleet CA would issue.
    """
    d = work / "pki"
    d.mkdir(exist_ok=True)
    ca_key, server_key = new_key(), new_key()
    write_pem(d / "ca", ca_key, make_cert("fleet-ca", ca_key, ca_key, "fleet-ca", ca=True))
    write_pem(
        d / "server", server_key, make_cert("localhost", server_key, ca_key, "fleet-ca", san=True)
    )
    pki = Pki(d / "ca.crt", d / "server.crt", d / "server.key")
    if client:
        client_key = new_key()
        cert = make_cert("fleet-gateway", client_key, ca_key, "fleet-ca")
        write_pem(d / "client", client_key, cert)
        pki.client_cert, pki.client_key = d / "client.crt", d / "client.key"
    return pki


# -- the broker ---------------------------------------------------------------------------------


@dataclass
class Broker:
    """A private mosquitto on loopback that keeps sessions across a restart."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    pki: Pki | None = None  # set: the listener is TLS only

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        conf = self.workdir / "mosquitto.conf"
        user = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(
            f"{user}per_listener_settings false\nallow_anonymous true\n"
            f"persistence true\npersistence_location {self.workdir}/\n"
            # The probe's queue must hold a whole outage's backlog.
            "max_queued_messages 10000000\n"
            f"listener {self.port} 127.0.0.1\n" + self._tls_lines()
        )
        log = (self.workdir / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log)
        log.close()
        wait_for(self._accepting, 10, f"mosquitto on port {self.port}")

    def _tls_lines(self) -> str:
        if self.pki is None:
            return ""
        return (
            f"cafile {self.pki.ca}\ncertfile {self.pki.server_cert}\n"
            f"keyfile {self.pki.server_key}\n"
            f"require_certificate {'true' if self.pki.client_cert else 'false'}\n"
        )

    def _accepting(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {(self.workdir / 'mosquitto.log').read_text()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its persistence file
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# -- the probe ----------------------------------------------------------------------------------


@dataclass
class Arrival:
    at: float
    device: str
    kind: str
    seq: int
    ts: float
    size: int
    state: str | None
    retained: bool


class Probe:
    """Subscribes to the fleet with a persistent MQTT 5 session and timestamps arrivals."""

    def __init__(self, port: int, pki: Pki | None = None) -> None:
        self.arrivals: list[Arrival] = []
        self.tls: dict[str, Any] | None = None  # version and cipher of the probe's connection
        self.undecodable = 0
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id="fleet-probe",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        if pki is not None:
            self.client.tls_set(
                ca_certs=str(pki.ca),
                certfile=str(pki.client_cert) if pki.client_cert else None,
                keyfile=str(pki.client_key) if pki.client_key else None,
            )
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("the probe did not subscribe")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        sock = client.socket()
        if self.tls is None and hasattr(sock, "cipher"):
            self.tls = {"version": sock.version(), "cipher": sock.cipher()}
        client.subscribe(f"{PREFIX}/+/+", qos=1)

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        at = time.time()
        try:
            body = decode_payload(bytes(msg.payload))
            device, kind = msg.topic.rsplit("/", 2)[-2:]
            self.arrivals.append(
                Arrival(
                    at,
                    device,
                    kind,
                    int(body["seq"]),
                    float(body["ts"]),
                    len(msg.payload),
                    body.get("state"),
                    bool(msg.retain),
                )
            )
        except (ValueError, KeyError, TypeError):
            self.undecodable += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- the agents ---------------------------------------------------------------------------------


def _line(key: str, value: float | None) -> str:
    """A config line for a flag that was given; nothing (the product default) otherwise."""
    return "" if value is None else f"\n{key} = {value}"


def cadence(args: argparse.Namespace) -> dict[str, Any]:
    """The effective cadence and mode: flags where given, the product's defaults elsewhere."""
    fields = SyncConfig.model_fields
    mqtt_fields = MqttConfig.model_fields

    def pick(flag: float | None, name: str) -> float:
        return float(flag if flag is not None else fields[name].default)

    return {
        "results_interval_s": pick(args.results_interval, "results_interval_s"),
        "heartbeat_interval_s": pick(args.heartbeat_interval, "heartbeat_interval_s"),
        "summary_interval_s": pick(args.summary_interval, "summary_interval_s"),
        "upload_results": bool(args.upload_results),
        "reconnect_max_s": float(
            args.reconnect_max
            if args.reconnect_max is not None
            else mqtt_fields["reconnect_max_s"].default
        ),
        "product_default": all(
            v is None
            for v in (
                args.results_interval,
                args.heartbeat_interval,
                args.summary_interval,
                args.reconnect_max,
            )
        )
        and not args.upload_results,
    }


def _tls_config(pki: Pki | None) -> str:
    """The agent's `[mqtt]` TLS lines: verify the broker with the run's CA."""
    if pki is None:
        return ""
    lines = f'\ntls = true\nca_file = "{pki.ca}"'
    if pki.client_cert and pki.client_key:
        lines += f'\ncert_file = "{pki.client_cert}"\nkey_file = "{pki.client_key}"'
    return lines


def agent_config(
    work: Path, i: int, port: int, args: argparse.Namespace, pki: Pki | None = None
) -> Path:
    name = f"agent-{i:03d}"
    db = work / f"{name}.db"
    lines = [
        f'[device]\nid = "{name}"\ntenant = "fleet"\nsite = "sim"',
        f"[mqtt]\nport = {port}" + _line("reconnect_max_s", args.reconnect_max) + _tls_config(pki),
        "[sync]"
        + _line("heartbeat_interval_s", args.heartbeat_interval)
        + _line("summary_interval_s", args.summary_interval)
        + _line("results_interval_s", args.results_interval)
        + ("\nupload_results = true" if args.upload_results else ""),
        f'[storage]\npath = "{db}"',
        f'[service]\ncontrol_socket = "{db.with_suffix(".sock")}"',
        '[logging]\nlevel = "WARNING"\nshow_results = false',
    ]
    for s in range(args.sensors):
        sensor = f'[[sensors]]\nname = "imu-{s}"\nlink = "emulated"\nstart_offset_s = {s * 7.0}'
        if args.rate_hz:
            sensor += f"\nrate_hz = {args.rate_hz}"
        lines.append(sensor)
    path = work / f"{name}.toml"
    path.write_text("\n\n".join(lines) + "\n")
    return path


def spawn(config: Path) -> subprocess.Popen[bytes]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("EDGE_AGENT_", "NOTIFY_SOCKET", "WATCHDOG_"))
    }
    with config.with_suffix(".log").open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


class CpuSampler:
    """A process's CPU seconds sampled every `interval` s in a thread, to read them afterwards
    at moments reported later (e.g. the imitated fleet's connect ramp)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), cpu_seconds(self.pid)))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, when: float) -> float:
        """CPU seconds at `when`, interpolated between the samples either side."""
        before = [s for s in self.samples if s[0] <= when]
        after = [s for s in self.samples if s[0] >= when]
        if not before or not after:
            return (before or after)[-1 if before else 0][1]
        (t0, c0), (t1, c1) = before[-1], after[0]
        return c0 if t1 == t0 else c0 + (c1 - c0) * (when - t0) / (t1 - t0)


def topic_seqs(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        return {k: int(v) for k, v in conn.execute("SELECT topic, seq FROM topic_seq")}
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()


# -- measuring ----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))], 2)


def latency(arrivals: list[Arrival]) -> dict[str, float | None]:
    ms = [(a.at - a.ts) * 1000.0 for a in arrivals]
    return {
        "p50": pct(ms, 50),
        "p90": pct(ms, 90),
        "p99": pct(ms, 99),
        "max": round(max(ms), 2) if ms else None,
    }


def window(arrivals: list[Arrival], t0: float, t1: float, seconds: float) -> dict[str, Any]:
    inside = [a for a in arrivals if t0 <= a.at < t1 and not a.retained]
    kinds: dict[str, int] = {}
    for a in inside:
        kinds[a.kind] = kinds.get(a.kind, 0) + 1
    return {
        "window_s": round(seconds, 1),
        "messages": len(inside),
        "msgs_per_s": round(len(inside) / seconds, 1),
        "bytes_per_s": round(sum(a.size for a in inside) / seconds, 1),
        "msgs_per_s_by_kind": {k: round(n / seconds, 2) for k, n in sorted(kinds.items())},
        "mean_bytes_by_kind": {
            k: round(statistics.mean(a.size for a in inside if a.kind == k)) for k in sorted(kinds)
        },
        "latency_ms": latency([a for a in inside if a.kind != "status"]),
        "latency_ms_by_kind": {
            k: latency([a for a in inside if a.kind == k]) for k in sorted(kinds) if k != "status"
        },
    }


def integrity(arrivals: list[Arrival]) -> dict[str, int]:
    seen: dict[tuple[str, str], set[int]] = {}
    duplicates = 0
    for a in arrivals:
        if a.kind == "status" or a.retained:
            continue
        seqs = seen.setdefault((a.device, a.kind), set())
        if a.seq in seqs:
            duplicates += 1
        seqs.add(a.seq)
    missing = sum(max(s) - min(s) + 1 - len(s) for s in seen.values())
    not_from_1 = sum(1 for s in seen.values() if min(s) != 1)
    return {"missing_seqs": missing, "duplicates": duplicates, "streams_not_from_seq_1": not_from_1}


# -- the run ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=10, help=f"agents (1..{MAX_AGENTS})")
    p.add_argument("--sensors", type=int, default=2, help="emulated sensors per agent (2)")
    p.add_argument("--rate-hz", type=float, help="sensor sample rate (default: recording's)")
    p.add_argument(
        "--duration",
        type=float,
        help="steady window, s (default: two of the longest of the heartbeat and summary "
        "intervals, so every kind is in it: 120 s at the product's default)",
    )
    p.add_argument("--warmup", type=float, default=5, help="seconds before measuring (5)")
    p.add_argument("--outage", type=float, default=0, help="broker outage, s (0: none)")
    p.add_argument("--start-spread", type=float, help="spread agent starts over S s")
    # Cadence and mode: the product's defaults unless a flag says otherwise.
    p.add_argument("--results-interval", type=float, help="sync.results_interval_s (default's)")
    p.add_argument("--heartbeat-interval", type=float, help="heartbeat_interval_s (default's)")
    p.add_argument("--summary-interval", type=float, help="summary_interval_s (default's)")
    p.add_argument(
        "--upload-results",
        action="store_true",
        help="sync.upload_results = true: every window result goes up (default: off)",
    )
    p.add_argument("--reconnect-max", type=float, help="mqtt.reconnect_max_s (default's)")
    p.add_argument(
        "--imitate",
        type=int,
        default=0,
        help="after the real agents, N imitated gateways (scripts/fleet_imitate.py) with the "
        "real agents' message sizes and cadence: the broker's cost per gateway",
    )
    p.add_argument("--imitate-duration", type=float, default=120, help="their window, s (120)")
    p.add_argument(
        "--imitate-connect-rate",
        type=float,
        default=500,
        help="new imitated connections offered per s (500)",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="a private CA made in the work dir; the broker listens with TLS only and the "
        "agents, the probe and the imitated gateways verify it",
    )
    p.add_argument(
        "--mutual-tls",
        action="store_true",
        help="--tls, and the broker requires a client certificate (one, shared by every client)",
    )
    p.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    args = p.parse_args(argv)
    if not 1 <= args.agents <= MAX_AGENTS:
        p.error(f"--agents must be 1..{MAX_AGENTS}")
    if not 0 <= args.imitate <= 50_000 or not 10 <= args.imitate_duration <= 3600:
        p.error("--imitate must be 0..50000, --imitate-duration 10..3600 s")
    if args.imitate_connect_rate <= 0:
        p.error("--imitate-connect-rate must be > 0")
    args.tls = args.tls or args.mutual_tls
    if args.duration is None:
        effective = cadence(args)
        args.duration = 2 * max(effective["heartbeat_interval_s"], effective["summary_interval_s"])
    if not 1 <= args.duration <= 600 or not 0 <= args.outage <= 600 or args.sensors < 1:
        p.error("--duration must be 1..600 s, --outage 0..600 s, --sensors >= 1")
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return run(args, args.workdir)
    with tempfile.TemporaryDirectory(prefix="fleet-sim-") as tmp:
        return run(args, Path(tmp))


def run(args: argparse.Namespace, work: Path) -> int:
    pki = make_pki(work, client=args.mutual_tls) if args.tls else None
    broker = Broker(work, pki=pki)
    broker.start()
    probe = Probe(broker.port, pki)
    agents: list[subprocess.Popen[bytes]] = []
    configs = [agent_config(work, i, broker.port, args, pki) for i in range(args.agents)]
    out: dict[str, Any] = {
        "agents": args.agents,
        "sensors_per_agent": args.sensors,
        "method": "one `edge-agent run` process per agent, emulated sensors at the real rate, "
        "one mosquitto on loopback, one MQTT 5 probe subscriber; latency = arrival at the "
        "probe - envelope ts (message created in the agent's outbox)",
        "cadence": cadence(args),
        "cpu_cores": os.cpu_count(),
    }
    if pki is not None:
        out["tls"] = {
            "listener": "TLS only, server certificate ECDSA P-256 from a private CA",
            "client_certificates": pki.client_cert is not None,
            "probe_connection": probe.tls,
        }
    try:
        spread = args.start_spread if args.start_spread is not None else 0.25 * args.agents
        t_start = time.time()
        for i, config in enumerate(configs):
            agents.append(spawn(config))
            time.sleep(spread / args.agents if i < args.agents - 1 else 0)

        def online() -> set[str]:
            return {a.device for a in list(probe.arrivals) if a.state == "online"}

        wait_for(lambda: len(online()) == args.agents, 60 + 2 * args.agents, "every agent online")
        out["start"] = {"spread_s": spread, "all_online_s": round(time.time() - t_start, 1)}
        time.sleep(args.warmup)
        pids = [a.pid for a in agents]
        cpu0 = {pid: cpu_seconds(pid) for pid in pids}
        bcpu0 = cpu_seconds(broker.proc.pid) if broker.proc else 0.0
        t0 = time.time()
        time.sleep(args.duration)
        t1 = time.time()
        cpu = [(cpu_seconds(pid) - cpu0[pid]) / (t1 - t0) * 100 for pid in pids]
        bcpu = (cpu_seconds(broker.proc.pid) if broker.proc else 0.0) - bcpu0
        rss = [rss_mb(pid) for pid in pids]
        steady = window(list(probe.arrivals), t0, t1, t1 - t0)
        steady["agent_cpu_pct_of_core"] = {
            "mean": round(statistics.mean(cpu), 2),
            "max": round(max(cpu), 2),
            "total": round(sum(cpu), 1),
        }
        steady["agent_rss_mb"] = {"mean": round(statistics.mean(rss), 1), "max": round(max(rss), 1)}
        steady["broker_cpu_pct_of_core"] = round(bcpu / (t1 - t0) * 100, 2)
        steady["msgs_per_s_per_agent"] = round(steady["msgs_per_s"] / args.agents, 2)
        out["steady"] = steady
        if args.outage > 0:
            out["outage"] = outage(args, broker, probe, work, configs)
        if args.imitate > 0:
            stop_agents(agents)
            out["imitated"] = imitate(args, broker, probe, steady, pki)
    finally:
        codes = stop_agents(agents)
        time.sleep(1.0)  # the last offline statuses and final summaries
        probe.close()
        broker.stop()
    out["clean_stops"] = sum(1 for c in codes if c == 0)
    out["integrity"] = integrity(probe.arrivals)
    out["integrity"]["undecodable"] = probe.undecodable
    out["workdir"] = str(work) if args.workdir else None
    print(json.dumps(out, indent=2))
    return 0


def stop_agents(agents: list[subprocess.Popen[bytes]]) -> list[int]:
    """SIGTERM every agent still running; their exit codes."""
    for a in agents:
        if a.poll() is None:
            a.send_signal(signal.SIGTERM)
    codes = []
    for a in agents:
        try:
            codes.append(a.wait(30))
        except subprocess.TimeoutExpired:
            a.kill()
            codes.append(a.wait())
    return codes


def imitate(
    args: argparse.Namespace,
    broker: Broker,
    probe: Probe,
    steady: dict[str, Any],
    pki: Pki | None = None,
) -> dict[str, Any]:
    """N imitated gateways with the real agents' sizes and cadence: the broker's cost."""
    assert broker.proc is not None
    effective = cadence(args)
    sizes = steady["mean_bytes_by_kind"]
    per_agent = steady["msgs_per_s_by_kind"].get("summary", 0.0) / args.agents
    summaries = max(1, round(per_agent * effective["summary_interval_s"]))
    argv = [
        sys.executable,
        str(ROOT / "scripts" / "fleet_imitate.py"),
        f"--port={broker.port}",
        "--prefix=edge",
        "--tenant=fleet",
        "--site=sim",
        f"--gateways={args.imitate}",
        f"--duration={args.imitate_duration}",
        f"--heartbeat-interval={effective['heartbeat_interval_s']}",
        f"--summary-interval={effective['summary_interval_s']}",
        f"--summaries={summaries}",
        f"--hb-bytes={sizes.get('heartbeat', 1100)}",
        f"--summary-bytes={sizes.get('summary', 600)}",
        f"--connect-rate={args.imitate_connect_rate}",
    ]
    if pki is not None:
        argv += ["--tls", f"--cafile={pki.ca}"]
        if pki.client_cert and pki.client_key:
            argv += [f"--certfile={pki.client_cert}", f"--keyfile={pki.client_key}"]
    sampler = CpuSampler(broker.proc.pid)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    imitator = CpuSampler(proc.pid)
    assert proc.stdout is not None
    ramp = json.loads(proc.stdout.readline())
    # Let every gateway's first heartbeat and summary phase settle into the steady cadence.
    settle = min(10.0, args.imitate_duration / 4)
    time.sleep(settle)
    bcpu0 = cpu_seconds(broker.proc.pid)
    icpu0 = cpu_seconds(proc.pid)
    t0 = time.time()
    time.sleep(max(1.0, args.imitate_duration - settle - 5))
    t1 = time.time()
    bcpu = cpu_seconds(broker.proc.pid) - bcpu0
    icpu = cpu_seconds(proc.pid) - icpu0
    rss = rss_mb(broker.proc.pid)
    imitated = [a for a in list(probe.arrivals) if a.device.startswith("imit-")]
    steady_window = window(imitated, t0, t1, t1 - t0)
    proc.send_signal(signal.SIGTERM)
    final = json.loads(proc.stdout.read().strip().splitlines()[-1])
    proc.wait(30)
    sampler.stop()
    imitator.stop()
    cpu_pct = bcpu / (t1 - t0) * 100
    connect = final.get("ramp", {})
    if connect.get("all_up_s"):
        spent = sampler.at(connect["all_up_at"]) - sampler.at(connect["started_at"])
        connect["broker_cpu_s"] = round(spent, 2)
        connect["broker_cpu_pct_of_core"] = round(spent / connect["all_up_s"] * 100, 1)
        connect["broker_cpu_ms_per_connect"] = round(spent / max(1, final["up"]) * 1000, 3)
        # The imitator does the client side of every handshake: near a core, it set the pace.
        own = imitator.at(connect["all_up_at"]) - imitator.at(connect["started_at"])
        connect["imitator_cpu_pct_of_core"] = round(own / connect["all_up_s"] * 100, 1)
    return {
        "method": "scripts/fleet_imitate.py: one asyncio process, one MQTT 3.1.1 connection per "
        "gateway with the real agents' will, birth, subscriptions, cadence and message sizes; "
        "broker CPU over the window after the ramp; the probe subscribes to everything",
        "gateways": args.imitate,
        "connected": final["up"],
        "connected_when_all_started": ramp["up"],
        "summaries_per_interval": summaries,
        "sizes_bytes": {"heartbeat": sizes.get("heartbeat"), "summary": sizes.get("summary")},
        "window_s": round(t1 - t0, 1),
        "msgs_per_s_at_probe": steady_window["msgs_per_s"],
        "bytes_per_s_at_probe": steady_window["bytes_per_s"],
        "latency_ms": steady_window["latency_ms"],
        "broker_cpu_pct_of_core": round(cpu_pct, 2),
        "broker_rss_mb": round(rss, 1),
        "broker_cpu_pct_per_1000_gateways": round(cpu_pct / args.imitate * 1000, 3),
        "imitator_cpu_pct_of_core": round(icpu / (t1 - t0) * 100, 1),
        "connect_ramp": connect,
        "tls": final.get("tls"),
        "imitator": final,
    }


def outage(
    args: argparse.Namespace, broker: Broker, probe: Probe, work: Path, configs: list[Path]
) -> dict[str, Any]:
    """Stop the broker, keep it down, start it again; measure how the backlog comes back."""
    broker.stop()
    down_at = time.time()
    time.sleep(args.outage)
    # What the agents created while the broker was away, and before: all of it must arrive.
    targets = {
        c.stem: {k: v for k, v in topic_seqs(c.with_suffix(".db")).items() if k != "status"}
        for c in configs
    }
    broker.start()
    up_at = time.time()

    def delivered() -> bool:
        best: dict[tuple[str, str], int] = {}
        for a in list(probe.arrivals):
            key = (a.device, a.kind)
            best[key] = max(best.get(key, 0), a.seq)
        return all(
            best.get((device, kind), 0) >= seq
            for device, kinds in targets.items()
            for kind, seq in kinds.items()
        )

    reconnect_max = cadence(args)["reconnect_max_s"]
    wait_for(delivered, 120 + reconnect_max * 2, "the backlog after the outage")
    done_at = time.time()
    after = [a for a in list(probe.arrivals) if up_at <= a.at <= done_at]
    bins: dict[int, int] = {}
    for a in after:
        bins[int(a.at - up_at)] = bins.get(int(a.at - up_at), 0) + 1
    # Retained statuses re-sent on the probe's re-subscribe are not part of the backlog.
    backlog = [a for a in after if a.ts < up_at and not a.retained and a.kind != "status"]
    reconnects = sorted(a.at - up_at for a in after if a.kind == "status" and a.state == "online")
    return {
        "down_s": round(up_at - down_at, 1),
        "backlog_messages": len(backlog),
        "recovery_s": round(done_at - up_at, 1),
        "peak_msgs_per_s_1s_bins": max(bins.values(), default=0),
        "mean_msgs_per_s_during_recovery": round(len(after) / max(done_at - up_at, 1e-6), 1),
        "backlog_note": "messages created before the broker came back (status excluded)",
        "reconnect_after_broker_up_s": {
            "first": round(reconnects[0], 2) if reconnects else None,
            "median": round(statistics.median(reconnects), 2) if reconnects else None,
            "last": round(reconnects[-1], 2) if reconnects else None,
        },
        "backlog_latency_ms": latency(backlog),
    }


if __name__ == "__main__":
    sys.exit(main())
