"""`edge-agent bench`: measure the performance contract on this machine."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer


def bench(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object (the contract) and nothing else.")
    ] = False,
    quick: Annotated[
        bool, typer.Option("--quick", help="Smaller runs (~15 s): a first look, or CI.")
    ] = False,
    profile: Annotated[
        Path | None,
        typer.Option(
            help="Write cProfile stats of the daemon's event loop thread (ingest.pstats, "
            "realtime.pstats) to this directory; slows the run, for diagnosis only."
        ),
    ] = None,
) -> None:
    """Measure ingest, latency, CPU and memory with emulated sensors (about a minute).

    Emulators run in their own processes on pseudo-terminals and the daemon in a worker
    process per phase, so nothing else is counted in its CPU and memory. Targets are
    reported beside the figures, not enforced; docs/benchmarks.md explains each figure.
    """
    from edge_agent.bench.run import format_table, run_bench

    if profile is not None:
        try:
            profile.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a file of that name, or no permission: before a minute's run
            why = "a file, not a directory" if isinstance(err, FileExistsError) else err.strerror
            typer.echo(
                f"error: --profile {profile}: {why}; name a new or existing directory", err=True
            )
            raise typer.Exit(2) from err
    try:
        result = run_bench(
            quick=quick, progress=None if as_json else sys.stderr, profile_dir=profile
        )
    except (OSError, RuntimeError, TimeoutError) as err:
        typer.echo(f"error: bench failed: {err}", err=True)
        raise typer.Exit(1) from err
    typer.echo(
        json.dumps(result, indent=None if as_json else 2) if as_json else format_table(result)
    )


def register(app: typer.Typer) -> None:
    """Add `bench` to the CLI."""
    app.command()(bench)
