"""`edge-agent service install|uninstall|status`: the daemon as a systemd service."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from edge_agent.commands.control import EXIT_NOT_RUNNING, ToolConfigOption

service_app = typer.Typer(
    help="Install, remove and inspect the systemd service.", no_args_is_help=True
)

DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Print every step and change nothing.")
]
RootOption = Annotated[
    Path,
    typer.Option(
        "--root",
        help="Stage into this directory (an image) instead of the running system: "
        "nothing is started.",
    ),
]


@service_app.command("install")
def install(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Config to install as /etc/edge-agent/edge-agent.toml (validated first). "
            "Default: keep the one there, or write a starter config.",
        ),
    ] = None,
    no_start: Annotated[bool, typer.Option("--no-start", help="Enable but do not start.")] = False,
    dry_run: DryRunOption = False,
    root: RootOption = Path("/"),
) -> None:
    """Create the edge-agent user and directories, write the unit, enable and start it."""
    from edge_agent.service.install import (
        InstallError,
        install_steps,
        require_systemd_root,
        run_steps,
    )

    try:
        steps, notes = install_steps(root=root, config_source=config, start=not no_start)
        if not dry_run:
            require_systemd_root(root)
        run_steps(steps, dry_run=dry_run, out=sys.stdout)
    except InstallError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    for note in notes:
        typer.echo(f"note: {note}")
    if dry_run:
        typer.echo("dry run: nothing was changed")
    elif root == Path("/"):
        typer.echo(
            "installed. Check it with `edge-agent status` and `edge-agent doctor --user "
            "edge-agent`; technicians join the edge-agent group to use them without sudo."
        )
    else:
        typer.echo(f"staged into {root}")


@service_app.command("uninstall")
def uninstall(
    purge: Annotated[
        bool,
        typer.Option(
            "--purge",
            help="Also delete /var/lib/edge-agent (the database, including messages not yet "
            "sent), /etc/edge-agent and the user.",
        ),
    ] = False,
    dry_run: DryRunOption = False,
    root: RootOption = Path("/"),
) -> None:
    """Stop and disable the service and remove its unit (data and config kept unless --purge)."""
    from edge_agent.service.install import (
        CONFIG_DIR,
        STATE_DIR,
        InstallError,
        require_systemd_root,
        run_steps,
        uninstall_steps,
    )

    try:
        steps = uninstall_steps(root=root, purge=purge)
        if not dry_run:
            require_systemd_root(root)
        run_steps(steps, dry_run=dry_run, out=sys.stdout)
    except InstallError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    if dry_run:
        typer.echo("dry run: nothing was changed")
    elif not purge:
        typer.echo(f"kept {STATE_DIR} (database) and {CONFIG_DIR}; --purge removes them")


@service_app.command("status")
def status(config: ToolConfigOption = None) -> None:
    """systemd's view of the service (enabled, active, recent log), then the daemon's own."""
    from edge_agent.commands.control import render_status, resolve_config
    from edge_agent.service.control import ControlError, control_socket_path, request
    from edge_agent.service.install import UNIT_NAME

    def systemctl(*args: str) -> str:
        try:
            done = subprocess.run(
                ["systemctl", *args, UNIT_NAME], capture_output=True, text=True, check=False
            )
        except FileNotFoundError:
            return "systemctl not found"
        return (done.stdout or done.stderr).strip()

    enabled = systemctl("is-enabled")
    active = systemctl("is-active")
    typer.echo(f"{UNIT_NAME}: {enabled}, {active}")
    typer.echo(systemctl("status", "--no-pager", "--lines=5"))
    cfg, _ = resolve_config(config)
    try:
        reply = request(control_socket_path(cfg), "status", timeout=10.0)
    except ControlError as err:
        typer.echo(f"\n{err}")
        raise typer.Exit(EXIT_NOT_RUNNING) from err
    typer.echo("")
    typer.echo(render_status(reply["status"]))


def register(app: typer.Typer) -> None:
    """Add the `service` group to the CLI."""
    app.add_typer(service_app, name="service")
