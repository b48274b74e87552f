"""The `edge-agent` command line: what a field technician types."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from edge_agent import __version__
from edge_agent.config import AgentConfig, load_config, render_config
from edge_agent.errors import ConfigError
from edge_agent.runner import EXIT_CONFIG

app = typer.Typer(
    name="edge-agent",
    help="Edge inference daemon: sensors in, windowed inference, SQLite, MQTT out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Check and show configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML config file (default: the embedded default; EDGE_AGENT_CONFIG also works).",
        envvar="EDGE_AGENT_CONFIG",
    ),
]


def _load(path: Path | None) -> AgentConfig:
    try:
        return load_config(path)
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        typer.echo("fix the keys above, then run `edge-agent config validate PATH`", err=True)
        raise typer.Exit(EXIT_CONFIG) from err


@app.command()
def run(config: ConfigOption = None) -> None:
    """Run the daemon in the foreground until Ctrl-C or SIGTERM."""
    from edge_agent.runner import run_with_config

    raise typer.Exit(run_with_config(config))


@config_app.command("validate")
def config_validate(path: Annotated[Path, typer.Argument(help="Config file to check.")]) -> None:
    """Check a config file; print every error with its key path (exit 2 when invalid)."""
    try:
        cfg = load_config(path)
    except ConfigError as err:
        typer.echo(f"{err.source}: {len(err.issues)} error(s)", err=True)
        for issue in err.issues:
            typer.echo(f"  {issue}", err=True)
        raise typer.Exit(EXIT_CONFIG) from err
    typer.echo(f"{path}: ok ({len(cfg.sensors)} sensor(s), topics under {cfg.topic_root}/)")


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the effective config (file + environment overrides), secrets masked."""
    typer.echo(render_config(_load(config)))


@app.command()
def simulate(
    devices: Annotated[int, typer.Option(min=1, max=64, help="Emulated devices.")] = 1,
    recording: Annotated[
        Path | None, typer.Option(help="CSV recording (timestamp, channels..., optional label).")
    ] = None,
    synthetic: Annotated[bool, typer.Option(help="Use the synthetic motion generator.")] = False,
    rate: Annotated[float | None, typer.Option(help="Sample rate in Hz.")] = None,
    max_rate: Annotated[bool, typer.Option("--max-rate", help="Stream as fast as read.")] = False,
    seconds: Annotated[float | None, typer.Option(help="Stop after this long.")] = None,
    link_dir: Annotated[
        Path | None, typer.Option(help="Also create stable symlinks here (like /dev/serial/by-id).")
    ] = None,
) -> None:
    """Emulate IMU devices on pseudo-terminals; prints the tty to point a `serial` sensor at."""
    from edge_agent.inference.bundle import shipped_recording
    from firmware_bridge.emulator import run_simulator

    if synthetic and recording:
        typer.echo("error: choose --recording or --synthetic, not both", err=True)
        raise typer.Exit(EXIT_CONFIG)
    source = None if synthetic else (recording or shipped_recording())
    try:
        run_simulator(devices, source, rate, max_rate, seconds, link_dir, sys.stdout)
    except (OSError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def _register_commands() -> None:
    # Each area's commands live in edge_agent/commands/<area>.py and import what they use lazily.
    from edge_agent.commands import (
        bench,
        control,
        doctor,
        faces,
        init,
        models,
        ota,
        sensors,
        service,
    )

    for module in (bench, control, doctor, faces, init, models, ota, sensors, service):
        module.register(app)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    app()
