"""The `edge-agent` console script: lean paths for `run` and `ui`, typer for everything else."""

from __future__ import annotations

import sys


def main() -> None:
    """Dispatch `run` and `ui --socket ...` without loading the CLI framework."""
    argv = sys.argv[1:]
    if argv[:1] == ["run"]:
        from edge_agent.runner import parse_run_args, run_with_config

        parsed = parse_run_args(argv[1:])
        if parsed is not False:
            sys.exit(run_with_config(parsed))
    if argv[:1] == ["ui"]:
        from edge_agent.ui.main import lean_main

        code = lean_main(argv[1:])
        if code is not None:
            sys.exit(code)
    from edge_agent.cli import main as cli_main

    cli_main()
