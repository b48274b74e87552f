"""Soak: SIGKILL the daemon at random moments, many times, then prove nothing was lost.

Against a private mosquitto on a free loopback port, with two device emulators streaming
protocol v1 at full speed over real pseudo-terminals, the script starts `edge-agent run`,
kills it with SIGKILL after a random delay, and repeats. Most delays are counted from the
moment the daemon reports its MQTT connection (kills mid-drain); the rest from the spawn
(kills during start-up, before or during the connect). The reference consumer
(`scripts/cloud_consumer.py`, its own process) records everything the broker delivers.
After the last cycle one clean run drains the outbox and stops with SIGTERM; then:

- every committed result reached the consumer: the sum of `count` over the unique
  `results` messages equals the rows of the daemon's `results` table;
- no topic has a seq gap (from 1 to the last seq the daemon allocated), and `status` never
  went back;
- duplicates come only from the in-flight window: no re-send reaches further back than
  `mqtt.max_inflight` messages;
- order is kept per topic: no new message arrives after a higher seq of its topic;
- the outbox is empty and nothing was dropped by the disk policy.

It prints a JSON summary and exits 0 when every check holds, 1 otherwise. With `--record
FILE` it also writes a short Markdown account of the run into FILE, between the markers
`<!-- soak:start -->` and `<!-- soak:end -->` (appended when missing), and nowhere else.

    python scripts/soak_kill.py --cycles 200 --max-seconds 600
    python scripts/soak_kill.py --cycles 400 --max-seconds 600 --record docs/reliability.md
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the private broker helper lives with the tests

from edge_agent.inference.bundle import shipped_models_dir  # noqa: E402
from firmware_bridge.emulator import CsvRecording, DeviceEmulator  # noqa: E402
from tests.broker import Mosquitto, wait_for  # noqa: E402

DEVICE = "gw-soak"
GATEWAY = f"t/s/{DEVICE}"
RECORDING = shipped_models_dir() / "imu-activity" / "recordings" / "heldout.csv"


def write_config(path: Path, port: int, db: Path, ttys: list[str], inflight: int) -> Path:
    """Daemon config: fast cadences so every kind is in flight when the kill lands."""
    lines = [
        f'[device]\nid = "{DEVICE}"\ntenant = "t"\nsite = "s"',
        f"[mqtt]\nport = {port}\nreconnect_min_s = 0.1\nreconnect_max_s = 0.5\n"
        f"max_inflight = {inflight}",
        "[sync]\nheartbeat_interval_s = 1.0\nsummary_interval_s = 1.0\nresults_interval_s = 0.1\n"
        "upload_results = true",
        # Large caps: the soak checks loss, so nothing may be dropped by policy.
        f'[storage]\npath = "{db}"\nmax_bytes = {4 << 30}',
        f'[service]\ncontrol_socket = "{db.with_suffix(".sock")}"',
        "[logging]\nshow_results = false",
    ]
    for i, tty in enumerate(ttys):
        lines.append(f'[[sensors]]\nname = "imu-{i}"\nlink = "serial"\nport = "{tty}"')
    path.write_text("\n\n".join(lines) + "\n")
    return path


def spawn_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("EDGE_AGENT_", "NOTIFY_SOCKET", "WATCHDOG_"))
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def connects(log: Path) -> int:
    """MQTT connections the daemon's log reports so far."""
    return log.read_bytes().count(b"mqtt: connected") if log.exists() else 0


def wait_connected(log: Path, before: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Until the daemon logs one more MQTT connection than `before` (or exits)."""
    wait_for(
        lambda: connects(log) > before or proc.poll() is not None,
        timeout,
        "the daemon to connect",
    )


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read-only query that tolerates a file or table not created yet."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def daemon_state(db: Path) -> dict[str, Any]:
    """What the daemon committed: result rows, allocated seqs, outbox, policy drops."""
    results = query(db, "SELECT count(*), COALESCE(max(id), 0) FROM results")[0]
    cursor = query(db, "SELECT value FROM meta WHERE key = 'results_cursor'")
    return {
        "results_rows": int(results[0]),
        "results_packed": int(cursor[0][0]) == int(results[1]) if cursor else results[1] == 0,
        "topic_seq": dict(query(db, "SELECT topic, seq FROM topic_seq ORDER BY topic")),
        "outbox_left": int(query(db, "SELECT count(*) FROM outbox")[0][0]),
        "dropped": dict(query(db, "SELECT class, count FROM dropped")),
    }


def consumer_seqs(db: Path) -> dict[str, int]:
    rows = query(db, "SELECT kind, max(seq) FROM messages WHERE gateway = ? GROUP BY kind", GATEWAY)
    return {k: int(s) for k, s in rows}


def consumer_windows(db: Path) -> int:
    rows = query(
        db,
        "SELECT COALESCE(sum(json_extract(payload, '$.count')), 0) FROM messages "
        "WHERE gateway = ? AND kind = 'results'",
        GATEWAY,
    )
    return int(rows[0][0]) if rows else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=200, help="kill cycles (default 200)")
    parser.add_argument(
        "--max-seconds", type=float, default=600, help="stop killing after this long"
    )
    parser.add_argument("--min-delay", type=float, default=0.0, help="earliest kill, s")
    parser.add_argument("--max-delay", type=float, default=2.5, help="latest kill, s")
    parser.add_argument(
        "--after-connect",
        type=float,
        default=0.75,
        help="share of kills timed from the MQTT connect rather than from the spawn (0.75)",
    )
    parser.add_argument("--inflight", type=int, default=64, help="mqtt.max_inflight")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument(
        "--record", type=Path, help="write the result into this Markdown file's soak section"
    )
    args = parser.parse_args(argv)
    if args.cycles < 1 or not 0 <= args.min_delay <= args.max_delay:
        parser.error("need --cycles >= 1 and 0 <= --min-delay <= --max-delay")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    rng = random.Random(seed)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return run(args, rng, seed, args.workdir)
    with tempfile.TemporaryDirectory(prefix="soak-kill-") as tmp:
        return run(args, rng, seed, Path(tmp))


def run(args: argparse.Namespace, rng: random.Random, seed: int, work: Path) -> int:
    started = time.monotonic()
    db, cdb = work / "daemon.db", work / "consumer.db"
    log, clog, report_path = work / "daemon.log", work / "consumer.err", work / "consumer.json"
    emus = [
        DeviceEmulator(CsvRecording(RECORDING), device_id=f"imu-{i}", max_rate=True)
        for i in range(2)
    ]
    for e in emus:
        e.start()
    consumer: subprocess.Popen[bytes] | None = None
    daemon: subprocess.Popen[bytes] | None = None
    delays: list[float] = []
    kills_connected = 0
    anchored = 0
    early_exits: list[int] = []
    spawn_times: list[float] = []
    try:
        with Mosquitto(work) as broker:
            with report_path.open("wb") as out, clog.open("wb") as err:
                consumer = subprocess.Popen(
                    [
                        sys.executable,
                        str(ROOT / "scripts" / "cloud_consumer.py"),
                        "--port",
                        str(broker.port),
                        "--db",
                        str(cdb),
                        "--expect-from-first",
                        "--inflight-window",
                        str(args.inflight),
                        "--check-order",
                    ],
                    stdout=out,
                    stderr=err,
                )
            wait_for(lambda: b"subscribed" in clog.read_bytes(), 20, "the consumer")
            config = write_config(
                work / "soak.toml", broker.port, db, [e.tty_path for e in emus], args.inflight
            )
            for cycle in range(args.cycles):
                if time.monotonic() - started > args.max_seconds:
                    break
                connects_before = connects(log)
                delay = rng.uniform(args.min_delay, args.max_delay)
                after_connect = rng.random() < args.after_connect
                spawn_times.append(time.time())
                proc = spawn_daemon(config, log)
                daemon = proc
                try:
                    if after_connect:
                        # Most kills land mid-stream: timed from the MQTT connect.
                        wait_connected(log, connects_before, proc, 60)
                    proc.wait(delay)
                    early_exits.append(cycle)  # it ended by itself: a crash to report
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(30)
                delays.append(delay)
                anchored += after_connect
                if connects(log) > connects_before:
                    kills_connected += 1
                if not args.quiet and (cycle + 1) % 10 == 0:
                    print(
                        f"cycle {cycle + 1}: {consumer_windows(cdb)} windows at the consumer",
                        file=sys.stderr,
                        flush=True,
                    )
            # One clean run: drain whatever the kills left, then stop with SIGTERM.
            connects_before = connects(log)
            spawn_times.append(time.time())
            daemon = spawn_daemon(config, log)
            wait_for(
                lambda: connects(log) > connects_before,
                60,
                "the final run to connect",
            )
            # The emulators keep streaming, so the outbox is never empty for long: wait until
            # the backlog is down to less than one in-flight window, then stop cleanly.
            wait_for(lambda: daemon_state(db)["outbox_left"] < args.inflight, 120, "the drain")
            daemon.send_signal(signal.SIGTERM)
            final_code = daemon.wait(60)
            state = daemon_state(db)
            want = {k: v for k, v in state["topic_seq"].items() if k != "status"}

            def arrived() -> bool:
                seqs = consumer_seqs(cdb)
                return all(seqs.get(k, 0) >= v for k, v in want.items()) and (
                    consumer_windows(cdb) >= state["results_rows"]
                )

            try:
                wait_for(arrived, 60, "everything the daemon committed at the consumer")
            except AssertionError as err:
                print(f"{err}; reporting what arrived", file=sys.stderr)
            consumer.send_signal(signal.SIGTERM)
            consumer.wait(120)
            report = json.loads(report_path.read_text())
    finally:
        for left in (daemon, consumer):
            if left is not None and left.poll() is None:
                left.kill()
                left.wait()
        for e in emus:
            e.close()
    summary = summarise(
        args, seed, started, delays, kills_connected, early_exits, final_code, state, report
    )
    summary["kills_timed_from_connect"] = anchored
    summary["dup_per_restart_max"] = max_duplicates_per_restart(cdb, spawn_times)
    summary["workdir"] = str(work) if args.workdir else None
    print(json.dumps(summary, indent=2))
    if args.record:
        record(args.record, summary)
    return 0 if summary["ok"] else 1


START, END = "<!-- soak:start -->", "<!-- soak:end -->"


def markdown(summary: dict[str, Any]) -> str:
    """A short account of one soak run, for docs/reliability.md."""
    c, d = summary["consumer"], summary["daemon"]
    lines = [
        f"`scripts/soak_kill.py`, {time.strftime('%Y-%m-%d', time.gmtime())}: "
        f"**{summary['cycles']} SIGKILL cycles** in {summary['wall_s']:.0f} s "
        f"(seed {summary['seed']}), {summary['kills_after_mqtt_connect']} of them after the "
        f"daemon had connected to the broker; kill delays {summary['kill_delay_s']['min']}-"
        f"{summary['kill_delay_s']['max']} s (median {summary['kill_delay_s']['median']}).",
        "",
        "| Check | Result |",
        "|---|---|",
    ]
    for check, passed in summary["checks"].items():
        lines.append(f"| {check.replace('_', ' ')} | {'pass' if passed else '**FAIL**'} |")
    lines += [
        "",
        f"Results committed on the gateway: {d['results_rows']}; windows received by the "
        f"consumer in unique `results` messages: {c['results_windows']}. Last seq per topic: "
        + ", ".join(f"`{k}` {v}" for k, v in c["last_seq"].items())
        + ". Duplicates per topic: "
        + ", ".join(f"`{k}` {v}" for k, v in c["duplicates"].items())
        + f"; the furthest a re-send reached back: {max(c['max_duplicate_lag'].values())} "
        f"messages; most re-sends after one restart: {summary['dup_per_restart_max']}. "
        "Messages that arrived after a higher seq: "
        + ", ".join(f"`{k}` {v}" for k, v in c["out_of_order"].items())
        + ".",
    ]
    return "\n".join(lines)


def record(path: Path, summary: dict[str, Any]) -> None:
    """Replace the soak section of a Markdown file (markers appended when missing)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    section = f"{START}\n{markdown(summary)}\n{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


def max_duplicates_per_restart(cdb: Path, spawn_times: list[float]) -> int:
    """The most re-sent messages attributable to one restart (duplicates between spawns)."""
    received = sorted(r[0] for r in query(cdb, "SELECT received FROM duplicates"))
    counts = [0] * len(spawn_times)
    i = 0
    for t in received:
        while i + 1 < len(spawn_times) and spawn_times[i + 1] <= t:
            i += 1
        counts[i] += 1
    return max(counts, default=0)


def summarise(
    args: argparse.Namespace,
    seed: int,
    started: float,
    delays: list[float],
    kills_connected: int,
    early_exits: list[int],
    final_code: int,
    state: dict[str, Any],
    report: dict[str, Any],
) -> dict[str, Any]:
    topics = report["gateways"].get(GATEWAY, {}).get("topics", {})
    windows = topics.get("results", {}).get("windows", 0)
    gaps = {k: t["gaps"] for k, t in topics.items() if t["gaps"]}
    lags = {k: t["max_duplicate_lag"] for k, t in topics.items()}
    last = {k: t["last_seq"] for k, t in topics.items()}
    checks = {
        "no_committed_result_missing": windows == state["results_rows"]
        and state["results_rows"] > 0,
        "no_seq_gap": not gaps
        and all(last.get(k, 0) == v for k, v in state["topic_seq"].items() if k != "status"),
        "status_never_went_back": topics.get("status", {}).get("out_of_order", 1) == 0,
        "order_kept_per_topic": all(t["out_of_order"] == 0 for t in topics.values()),
        "duplicates_within_inflight_window": all(lag < args.inflight for lag in lags.values()),
        "no_conflict_or_rejected": report["totals"]["conflicts"] == 0
        and report["totals"]["rejected"] == 0,
        "outbox_drained": state["outbox_left"] == 0 and state["results_packed"],
        "nothing_dropped_by_policy": not state["dropped"],
        "no_daemon_crash": not early_exits and final_code == 0,
    }
    return {
        "ok": all(checks.values()),
        "checks": checks,
        "cycles": len(delays),
        "kills_after_mqtt_connect": kills_connected,
        "kill_delay_s": {
            "min": round(min(delays), 3) if delays else None,
            "median": round(statistics.median(delays), 3) if delays else None,
            "max": round(max(delays), 3) if delays else None,
        },
        "seed": seed,
        "wall_s": round(time.monotonic() - started, 1),
        "daemon": state,
        "consumer": {
            "results_windows": windows,
            "last_seq": last,
            "gaps": gaps,
            "duplicates": {k: t["duplicates"] for k, t in topics.items()},
            "max_duplicate_lag": lags,
            "out_of_order": {k: t["out_of_order"] for k, t in topics.items()},
            "totals": report["totals"],
            "violations": report["violations"][:20],
        },
        "early_exits": early_exits,
    }


if __name__ == "__main__":
    sys.exit(main())
