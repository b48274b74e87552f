"""Entry point of the bench's helper processes: `python -m edge_agent.bench MODE ARGS...`.

Each mode imports only what its process needs, so a worker's memory is the daemon's and
not the orchestrator's.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    """Run one helper process (feeder, emulators, or a daemon worker) of `edge-agent bench`."""
    parser = argparse.ArgumentParser(prog="python -m edge_agent.bench")
    parser.add_argument(
        "mode", choices=["feed", "emulate", "raw-read", "ingest", "realtime", "uplink-bytes"]
    )
    parser.add_argument("args", nargs="*")
    ns = parser.parse_args(argv)
    a = ns.args
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if ns.mode == "feed":
        from edge_agent.bench.ingest import feeder_main

        feeder_main(int(a[0]), int(a[1]), int(a[2]))
    elif ns.mode == "emulate":
        from edge_agent.bench.realtime import emulator_main

        emulator_main(int(a[0]))
    elif ns.mode == "raw-read":
        from edge_agent.bench.ingest import raw_read_worker_main

        raw_read_worker_main(json.loads(a[0]), int(a[1]))
    elif ns.mode == "ingest":
        from edge_agent.bench.ingest import ingest_worker_main

        ingest_worker_main(json.loads(a[0]), int(a[1]), int(a[2]), Path(a[3]))
    elif ns.mode == "uplink-bytes":
        from edge_agent.bench.uplink import uplink_bytes_worker_main

        uplink_bytes_worker_main(json.loads(a[0]), float(a[1]), int(a[2]), Path(a[3]))
    else:
        from edge_agent.bench.realtime import realtime_worker_main

        realtime_worker_main(json.loads(a[0]), float(a[1]), float(a[2]), int(a[3]), Path(a[4]))


if __name__ == "__main__":
    main()
