"""`edge-agent models train` and `models evaluate`: bundles from labelled data, and reports."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from edge_agent.inference.training import TrainReport

models_app = typer.Typer(help="Train and manage model bundles.", no_args_is_help=True)


def _progress(step: str, done: int, total: int) -> None:
    """A progress bar on stderr (a line per update when stderr is not a terminal)."""
    width = 24
    filled = width * done // max(total, 1)
    bar = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {step}"
    if sys.stderr.isatty():
        sys.stderr.write("\r" + bar + ("\n" if done >= total else ""))
        sys.stderr.flush()
    else:
        sys.stderr.write(bar + "\n")


def _show(report: TrainReport, as_json: bool, report_dir: Path | None) -> None:
    from edge_agent.inference.training import report_text, summary_json, write_report

    typer.echo(report_text(report), err=True)
    if report_dir is not None:
        write_report(report, report_dir)
        typer.echo(f"report written to {report_dir}", err=True)
    if as_json:
        typer.echo(summary_json(report))


@models_app.command("train")
def train(
    out: Annotated[
        Path,
        typer.Option(help="Bundle directory <models dir>/<name>; its last part names the model."),
    ],
    version: Annotated[str, typer.Option(help="Version directory to create, e.g. 1.0.0.")],
    data: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Labelled data: CSV files or directories of them (timestamp, one column per "
            "channel, label, optional subject/session column; one file per session or per "
            "case), or one UEA/UCR .ts file.",
            show_default=False,
        ),
    ] = None,
    csv: Annotated[
        list[Path] | None,
        typer.Option("--csv", help="Same as DATA (kept for older scripts); repeatable."),
    ] = None,
    test: Annotated[
        list[Path] | None,
        typer.Option(
            "--test", help="Separate test data (e.g. a .ts TEST file): judged on it alone."
        ),
    ] = None,
    window_s: Annotated[float, typer.Option(min=0.05, help="Window length in seconds.")] = 2.0,
    hop_s: Annotated[float, typer.Option(min=0.01, help="Seconds between windows.")] = 1.0,
    folds: Annotated[
        int,
        typer.Option(min=0, help="Cross-validation folds over groups; 0: leave one group out."),
    ] = 5,
    family: Annotated[
        str, typer.Option(help="features, rocket, or auto (pick by cross-validated macro-F1).")
    ] = "auto",
    runtime: Annotated[str, typer.Option(help="onnx or litert.")] = "onnx",
    rate_hz: Annotated[
        float | None, typer.Option(min=0.001, help="Sample rate of .ts data (it has none).")
    ] = None,
    min_heldout: Annotated[
        int, typer.Option(min=1, help="Refuse held-out folds with fewer windows than this.")
    ] = 10,
    seed: Annotated[int, typer.Option(help="Seed of folds, kernels and initialisation.")] = 0,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write report.md/json and a PNG here.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Train a classifier judged on groups it never saw, and write a bundle (`train` extra).

    Point a sensor at it with `models = ["<name>"]` and `models.dirs = ["<models dir>"]`.
    """
    from edge_agent.errors import BundleError
    from edge_agent.inference.training import TrainingError, train_bundle

    paths = [*(data or []), *(csv or [])]
    if not paths:
        typer.echo("error: give the labelled data (DATA or --csv)", err=True)
        raise typer.Exit(2)
    try:
        result = train_bundle(
            paths,
            out,
            version,
            window_s=window_s,
            hop_s=hop_s,
            folds=folds,
            family=family,
            runtime=runtime,
            seed=seed,
            rate_hz=rate_hz,
            test_paths=test or [],
            min_heldout=min_heldout,
            progress=_progress,
        )
    except (TrainingError, BundleError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    _show(result, as_json, report)


@models_app.command("evaluate")
def evaluate(
    bundle: Annotated[Path, typer.Argument(help="Bundle version directory.")],
    data: Annotated[list[Path], typer.Argument(help="Labelled data, as for `models train`.")],
    rate_hz: Annotated[
        float | None, typer.Option(min=0.001, help="Sample rate of .ts data (it has none).")
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write report.md/json and a PNG here.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Run a bundle on new labelled recordings and report as `models train` does."""
    from edge_agent.inference.training import TrainingError, evaluate_bundle

    try:
        result = evaluate_bundle(bundle, data, rate_hz=rate_hz)
    except TrainingError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    _show(result, as_json, report)


def register(app: typer.Typer) -> None:
    """Add the `models` group to the CLI."""
    app.add_typer(models_app, name="models")
