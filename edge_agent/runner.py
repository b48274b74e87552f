"""`edge-agent run` without the CLI framework.

The daemon is the process that lives for months on a small gateway; typer and its
pretty-printing stack cost about 10 MB of resident memory it never uses after parsing one
option. `edge_agent.entry` sends a plain `edge-agent run [--config PATH]` here and every
other command line to the typer app.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Literal

from edge_agent import __version__
from edge_agent.config import load_config
from edge_agent.errors import ConfigError

EXIT_CONFIG = 2


def setup_logging(level: str) -> None:
    """Log lines with time, level and source to stderr (journald adds its own metadata)."""
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def run_with_config(path: Path | None) -> int:
    """Load the config (or the embedded default), then run the daemon until stopped."""
    from edge_agent.config_guard import Startup, choose_startup_config
    from edge_agent.daemon import run_daemon

    try:
        # A file that would brick the gateway is replaced by the last known good one.
        startup = choose_startup_config(path) if path is not None else None
        cfg = startup.config if startup is not None else load_config(None)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        if any(issue.path for issue in err.issues):
            print("fix the keys above, then run `edge-agent config validate PATH`", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(cfg.logging.level)
    logging.getLogger("edge_agent").info(
        "edge-agent %s starting (config: %s, database: %s, broker: %s, topics: %s/...)",
        __version__,
        path if path else "embedded default",
        cfg.storage.path,
        ", ".join(map(str, cfg.mqtt.nodes())),
        cfg.topic_root,
    )
    if startup is not None and startup.fallback is not None:
        logging.getLogger("edge_agent").error(
            "CONFIG FALLBACK: %s was refused (%s); running the last known good config %s",
            path,
            startup.fallback["reason"],
            startup.fallback["good"],
        )
    return run_daemon(cfg, config_path=path, startup=startup or Startup(cfg, b""))


def parse_run_args(argv: list[str]) -> Path | Literal[False] | None:
    """The config path of `run [--config PATH]`; False when argv needs the full CLI."""
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("--config", "-c", type=Path, default=None)
    try:
        ns, rest = parser.parse_known_args(argv)
    except argparse.ArgumentError:
        return False
    if rest:
        return False
    if ns.config is None and os.environ.get("EDGE_AGENT_CONFIG"):
        return Path(os.environ["EDGE_AGENT_CONFIG"])
    config: Path | None = ns.config
    return config
