"""A lean start for `edge-agent ui --socket PATH ...` (the service unit's form).

With the socket given there is no config to read, so neither the CLI framework nor the
config models (pydantic, numpy) are loaded: the page's process stays small (see
docs/monitoring.md). Anything else (no `--socket`, `passwd`, `--help`) goes through the
full CLI, which this returns None for.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent ui", add_help=False, allow_abbrev=False)
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8088)
    parser.add_argument("--cert", type=Path)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--insecure-lan", action="store_true")
    parser.add_argument("--password-file", type=Path)
    return parser


def lean_main(argv: list[str]) -> int | None:
    """Serve the page for `argv` (after `ui`); None when the full CLI must handle it."""
    if "--socket" not in argv or any(a in ("-h", "--help", "passwd") for a in argv):
        return None
    try:
        args, rest = _parser().parse_known_args(argv)
    except SystemExit:
        return None
    if rest or args.password_file is None or not 0 <= args.port <= 65535:
        return None  # the full CLI explains, and finds the default password file
    from edge_agent.ui.auth import PasswordError, read_password_file
    from edge_agent.ui.server import UiConfigError, UiOptions, serve

    try:
        options = UiOptions(
            control_socket=args.socket,
            host=args.host,
            port=args.port,
            password_hash=read_password_file(args.password_file),
            cert=args.cert,
            key=args.key,
            insecure_lan=args.insecure_lan,
        )
        asyncio.run(serve(options))
    except (UiConfigError, PasswordError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: cannot serve on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
