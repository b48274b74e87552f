"""`edge-agent models train`: a bundle for a new sensor from labelled CSV recordings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

models_app = typer.Typer(help="Train and manage model bundles.", no_args_is_help=True)


@models_app.command("train")
def train(
    csv: Annotated[
        list[Path],
        typer.Option(
            "--csv",
            help="Labelled recordings: CSV files or directories of them (timestamp, one "
            "column per channel, label), as `edge-agent simulate --recording` plays them. "
            "Repeat for several.",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(help="Bundle directory <models dir>/<name>; its last part names the model."),
    ],
    version: Annotated[str, typer.Option(help="Version directory to create, e.g. 1.0.0.")],
    window_s: Annotated[float, typer.Option(min=0.05, help="Window length in seconds.")] = 2.0,
    hop_s: Annotated[float, typer.Option(min=0.01, help="Seconds between windows.")] = 1.0,
    heldout: Annotated[
        float, typer.Option(min=0.05, max=0.5, help="Share of each labelled stretch held out.")
    ] = 0.25,
    seed: Annotated[int, typer.Option(help="Seed of the MLP's initialisation.")] = 0,
) -> None:
    """Train a classifier and write a bundle the daemon loads (needs the `train` extra).

    Point a sensor at it with `models = ["<name>"]` and `models.dirs = ["<models dir>"]`.
    """
    from edge_agent.errors import BundleError
    from edge_agent.inference.training import TrainingError, summary_json, train_bundle

    try:
        report = train_bundle(
            csv, out, version, window_s=window_s, hop_s=hop_s, heldout=heldout, seed=seed
        )
    except (TrainingError, BundleError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    typer.echo(
        f"{report.bundle}: {len(report.labels)} labels, {report.train_windows} training / "
        f"{report.heldout_windows} held-out windows, held-out accuracy "
        f"{100 * report.heldout_accuracy:.1f} % (int8 {100 * report.heldout_accuracy_int8:.1f} %)",
        err=True,
    )
    typer.echo(summary_json(report))


def register(app: typer.Typer) -> None:
    """Add the `models` group to the CLI."""
    app.add_typer(models_app, name="models")
