"""`edge-agent-cloud`: the reference consumer's command line.

    edge-agent-cloud run --dsn postgresql://cloud@db/telemetry --host broker --port 1883
    edge-agent-cloud run --dsn ... --share cloud          # one member of a group (MQTT 5)
    edge-agent-cloud report --dsn ...                     # JSON; exit 0 clean, 1 violations

Exit status: 0 clean (`report`) or a clean stop (`run`); 1 the report lists violations;
2 a usage, broker or database error (`--share` where the broker has no shared
subscriptions says what to use instead).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading

import psycopg

from edge_agent.cloud.args import add_broker_arguments, broker_arguments_error, password
from edge_agent.cloud.consumer import CloudConsumer, ConsumerOptions, UsageError
from edge_agent.cloud.report import SILENT_AFTER_S, report
from edge_agent.cloud.store import CloudStore, RepairTiming

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-agent-cloud",
        description="Reference cloud consumer: a fleet's MQTT telemetry into PostgreSQL, "
        "with gap repair (sync.resend) and a gateway status table.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    dsn_help = (
        "PostgreSQL connection string (default: $EDGE_AGENT_CLOUD_DSN, else libpq's PG* variables)"
    )

    run = sub.add_parser("run", help="consume until SIGINT/SIGTERM, then print the report")
    run.add_argument("--dsn", default=os.environ.get("EDGE_AGENT_CLOUD_DSN", ""), help=dsn_help)
    add_broker_arguments(run, protocols=("auto", "5", "3.1.1"))
    run.add_argument(
        "--grace",
        type=float,
        default=2.0,
        metavar="S",
        help="ask for a gap only after it stayed open S seconds (default 2)",
    )
    run.add_argument(
        "--retry",
        type=float,
        default=5.0,
        metavar="S",
        help="first retry of an unanswered or unfilled request after S seconds, doubling "
        "(default 5)",
    )
    run.add_argument(
        "--retry-max", type=float, default=120.0, metavar="S", help="cap of the retry delay"
    )
    run.add_argument(
        "--tail-probe",
        type=float,
        default=300.0,
        metavar="S",
        help="ask an online gateway once what follows a topic that went quiet S seconds ago "
        "(a loss at the end of a burst has no later seq to reveal it); 0: never (default 300)",
    )
    run.add_argument("--no-repair", action="store_true", help="account gaps, never ask")
    run.add_argument(
        "--from-first",
        action="store_true",
        help="a topic first seen above seq 1 misses its beginning (the database predates "
        "the gateways); default: nothing before the first seq received is a gap",
    )
    run.add_argument("--duration", type=float, default=0, metavar="S", help="stop after S seconds")
    run.add_argument(
        "--idle-exit", type=float, default=0, metavar="S", help="stop after S quiet seconds"
    )
    run.add_argument("-v", "--verbose", action="store_true", help="log connections and requests")

    rep = sub.add_parser("report", help="print the JSON report of what the database holds")
    rep.add_argument("--dsn", default=os.environ.get("EDGE_AGENT_CLOUD_DSN", ""), help=dsn_help)
    rep.add_argument("--prefix", default="edge", help="topic prefix of the fleet (default edge)")
    for command in (run, rep):
        command.add_argument(
            "--silent-after",
            type=float,
            default=SILENT_AFTER_S,
            metavar="S",
            help="report an online gateway with no message for S seconds as silent (default "
            f"{SILENT_AFTER_S:g}: three default heartbeats; its last will may never come)",
        )
    return p


def _options(args: argparse.Namespace) -> ConsumerOptions:
    return ConsumerOptions(
        host=args.host,
        port=args.port,
        prefix=args.prefix,
        protocol=args.protocol,
        share=args.share,
        client_id=args.client_id,
        session_expiry=args.session_expiry,
        username=args.username,
        password=password(args),
        tls=args.tls,
        cafile=args.cafile,
        certfile=args.certfile,
        keyfile=args.keyfile,
        repair=not args.no_repair,
        duration_s=args.duration,
        idle_exit_s=args.idle_exit,
    )


def _run(args: argparse.Namespace) -> int:
    if problem := broker_arguments_error(args):
        print(problem, file=sys.stderr)
        return 2
    timings = (args.grace, args.retry, args.retry_max, args.tail_probe)
    if not (
        all(math.isfinite(t) for t in timings)
        and args.grace >= 0
        and args.retry > 0
        and args.retry_max >= args.retry
        and args.tail_probe >= 0
    ):
        print(
            "--grace >= 0, --retry > 0, --retry-max >= --retry and --tail-probe >= 0, all finite",
            file=sys.stderr,
        )
        return 2
    timing = RepairTiming(
        grace_s=args.grace,
        retry_s=args.retry,
        retry_max_s=args.retry_max,
        tail_probe_s=args.tail_probe,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with CloudStore(
        args.dsn, prefix=args.prefix, timing=timing, from_first=args.from_first
    ) as store:
        consumer = CloudConsumer(_options(args), store, stop)

        def ready(topic_filter: str) -> None:
            # Scripts and tests wait for this line before they start publishing.
            print(
                f"subscribed {topic_filter} (MQTT {consumer.version})", file=sys.stderr, flush=True
            )

        try:
            code = consumer.run(ready)
        except UsageError as err:
            print(f"edge-agent-cloud: {err}", file=sys.stderr)
            return 2
        if code:
            print(f"edge-agent-cloud: {consumer.fatal}", file=sys.stderr)
            return code
        result = report(store.conn, silent_after_s=args.silent_after)
        store.conn.rollback()
    result["session"] = {
        "outcomes": consumer.counts,
        "filter": consumer.filter,
        "protocol": consumer.version,
        "connections": consumer.connections,
        "announces": consumer.announces,
    }
    print(json.dumps(result, indent=2), flush=True)
    return 0 if result["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.silent_after > 0:
        print("--silent-after must be > 0", file=sys.stderr)
        return 2
    try:
        if args.command == "run":
            return _run(args)
        with CloudStore(args.dsn, prefix=args.prefix) as store:
            store.ensure_schema()
            result = report(store.conn, silent_after_s=args.silent_after)
            store.conn.rollback()
    except psycopg.OperationalError as err:
        print(f"edge-agent-cloud: PostgreSQL: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
