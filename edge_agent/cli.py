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
config_app = typer.Typer(help="Check, show and edit configuration.", no_args_is_help=True)
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
        if any(issue.path for issue in err.issues):
            typer.echo("fix the keys above, then run `edge-agent config validate PATH`", err=True)
        raise typer.Exit(EXIT_CONFIG) from err


@app.command()
def run(config: ConfigOption = None) -> None:
    """Run the daemon in the foreground until Ctrl-C or SIGTERM."""
    from edge_agent.runner import run_with_config

    raise typer.Exit(run_with_config(config))


@config_app.command("validate")
def config_validate(path: Annotated[Path, typer.Argument(help="Config file to check.")]) -> None:
    """Check a config file; print every error with its key path (exit 2 when invalid).

    Values a broker refuses (docs/brokers.md) are errors when `mqtt.broker` names it,
    warnings naming the broker otherwise.
    """
    try:
        cfg = load_config(path)
    except ConfigError as err:
        if len(err.issues) == 1 and not err.issues[0].path:
            typer.echo(f"error: {err}", err=True)  # the file itself: unreadable, not UTF-8, ...
            raise typer.Exit(EXIT_CONFIG) from err
        typer.echo(f"{err.source}: {len(err.issues)} error(s)", err=True)
        for issue in err.issues:
            typer.echo(f"  {issue}", err=True)
        raise typer.Exit(EXIT_CONFIG) from err
    from edge_agent.brokers import BROKER_NAMES, broker_quirks

    quirks = broker_quirks(cfg)
    broker = cfg.mqtt.broker
    if quirks and broker != "generic":
        typer.echo(
            f"{path}: {len(quirks)} value(s) {BROKER_NAMES[broker]} refuses or mangles "
            f'(mqtt.broker = "{broker}"; docs/brokers.md)',
            err=True,
        )
        for quirk in quirks:
            typer.echo(f"  {quirk.describe()}", err=True)
        raise typer.Exit(EXIT_CONFIG)
    for quirk in quirks:
        typer.echo(f"warning: {quirk.describe()}", err=True)
    typer.echo(f"{path}: ok ({len(cfg.sensors)} sensor(s), topics under {cfg.topic_root}/)")


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the effective config (file + environment overrides), secrets masked."""
    typer.echo(render_config(_load(config)))


def _file_to_edit(path: Path | None) -> Path:
    """`--config`, else EDGE_AGENT_CONFIG, else the installed service's file."""
    from edge_agent.commands.control import SYSTEM_CONFIG

    chosen = path if path is not None else SYSTEM_CONFIG
    if not chosen.is_file():
        typer.echo(f"error: no config file {chosen}; name one with --config", err=True)
        raise typer.Exit(EXIT_CONFIG)
    return chosen


@config_app.command("set")
def config_set(
    key: Annotated[str, typer.Argument(help="Dotted key path: mqtt.port, sensors.0.port.")],
    value: Annotated[
        str,
        typer.Argument(
            help='A TOML value (1884, true, 2.5, "text", ["a"]); anything else is taken '
            "as a plain string (broker.lan). Quote to keep a string: '\"true\"'."
        ),
    ],
    config: ConfigOption = None,
) -> None:
    """Change one key in the config file, keeping its comments, order, owner and mode.

    The whole result is validated first (nothing is written when it is invalid); the
    replaced file is kept as `<file>.prev`. Apply it with `edge-agent reload` or
    `systemctl reload edge-agent`: a change the broker does not accept within
    `service.config_confirm_s` is reverted by the daemon.
    """
    from edge_agent.config_edit import edit_config, parse_key, parse_value, render_value
    from edge_agent.errors import ConfigEditError

    path = _file_to_edit(config)
    try:
        parse_key(key)
        edit = edit_config(path, {key: parse_value(value)})
    except ConfigEditError as err:
        typer.echo(f"error: {err}", err=True)
        for detail in err.details:
            typer.echo(f"  {detail}", err=True)
        raise typer.Exit(EXIT_CONFIG) from err
    if edit.previous is None:
        typer.echo(f"{path}: {key} already is {value}; nothing written")
        return
    assert edit.config is not None
    from edge_agent.config_edit import get_value

    shown = render_value(get_value(edit.config, parse_key(key)))
    typer.echo(f"{path}: {key} = {shown} (previous file kept as {edit.previous})")
    typer.echo("apply it: edge-agent reload (or systemctl reload edge-agent)")


@config_app.command("get")
def config_get(
    key: Annotated[str, typer.Argument(help="Dotted key path: mqtt.port, sensors.0.port.")],
    config: ConfigOption = None,
) -> None:
    """Print one effective value (file, environment overrides and defaults) as TOML."""
    from edge_agent.config_edit import get_value, parse_key, render_value
    from edge_agent.errors import ConfigEditError

    cfg = _load(config)
    try:
        typer.echo(render_value(get_value(cfg, parse_key(key))))
    except ConfigEditError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_CONFIG) from err


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
    wire: Annotated[
        str,
        typer.Option(
            help="What the devices speak: v1 (our firmware), witmotion, witmotion-ble, text "
            "(a sketch printing lines of numbers), thingy52, struct (the layout of --sensor)."
        ),
    ] = "v1",
    garbage_every: Annotated[
        int,
        typer.Option(
            min=0, help="text: also print one bad line every N samples; struct: line noise."
        ),
    ] = 0,
    sensor: Annotated[
        str | None,
        typer.Option(
            help="Play the device of this configured sensor: its profile's wire and layout "
            "(how a `struct` board is emulated before it exists)."
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Config holding --sensor.")
    ] = None,
) -> None:
    """Emulate IMU devices on pseudo-terminals; prints the tty to point a `serial` sensor at."""
    from edge_agent.commands.control import resolve_config
    from edge_agent.inference.bundle import shipped_recording
    from firmware_bridge.emulator import run_simulator

    if synthetic and recording:
        typer.echo("error: choose --recording or --synthetic, not both", err=True)
        raise typer.Exit(EXIT_CONFIG)
    layout = None
    if sensor is not None:
        cfg, _ = resolve_config(config)
        chosen = next((s for s in cfg.sensors if s.name == sensor), None)
        if chosen is None:
            names = ", ".join(s.name for s in cfg.sensors) or "none"
            typer.echo(f"error: no sensor {sensor!r} in the config ({names})", err=True)
            raise typer.Exit(EXIT_CONFIG)
        wire, layout = chosen.profile.protocol, chosen.profile
    source = None if synthetic else (recording or shipped_recording())
    try:
        run_simulator(
            devices,
            source,
            rate,
            max_rate,
            seconds,
            link_dir,
            sys.stdout,
            wire=wire,
            garbage_every=garbage_every,
            layout=layout,
        )
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
        ui,
    )

    for module in (bench, control, doctor, faces, init, models, ota, sensors, service, ui):
        module.register(app)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    app()
