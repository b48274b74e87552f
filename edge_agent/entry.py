"""The `edge-agent` console script: a lean path for `run`, typer for everything else."""

from __future__ import annotations

import sys


def main() -> None:
    """Dispatch `edge-agent run [--config PATH]` without loading the CLI framework."""
    argv = sys.argv[1:]
    if argv[:1] == ["run"]:
        from edge_agent.runner import parse_run_args, run_with_config

        parsed = parse_run_args(argv[1:])
        if parsed is not False:
            sys.exit(run_with_config(parsed))
    from edge_agent.cli import main as cli_main

    cli_main()
