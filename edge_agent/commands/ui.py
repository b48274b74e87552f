"""`edge-agent ui` (the technician's live page) and `edge-agent ui passwd`.

The page is its own process: it talks to the running daemon over the control socket and
is imported by nothing the daemon runs (docs/monitoring.md).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from edge_agent.commands.control import SocketOption, ToolConfigOption, socket_for

DEFAULT_PASSWORD_FILE = Path("/etc/edge-agent/ui-password")
"""Where the service's password lives; a user's own default is under ~/.config."""

PasswordFileOption = Annotated[
    Path | None,
    typer.Option(
        "--password-file",
        help="The password hash file (default: EDGE_AGENT_UI_PASSWORD_FILE, else "
        "/etc/edge-agent/ui-password for root, else ~/.config/edge-agent/ui-password).",
        envvar="EDGE_AGENT_UI_PASSWORD_FILE",
    ),
]


def _password_file(given: Path | None) -> Path:
    if given is not None:
        return given
    if os.geteuid() == 0:
        return DEFAULT_PASSWORD_FILE
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config_home / "edge-agent" / "ui-password"


app = typer.Typer(
    help="The live page for technicians: signals, labels, health and actions.",
    no_args_is_help=False,
    invoke_without_command=True,
)


@app.callback()
def ui(
    ctx: typer.Context,
    config: ToolConfigOption = None,
    socket: SocketOption = None,
    host: Annotated[
        str, typer.Option(help="Address to serve on; not loopback needs TLS and a password.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free)")] = 8088,
    cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM).")] = None,
    key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    insecure_lan: Annotated[
        bool,
        typer.Option(
            "--insecure-lan",
            help="Allow plain HTTP on a non-loopback address (a password is still required).",
        ),
    ] = False,
    password_file: PasswordFileOption = None,
) -> None:
    """Serve the live page (until Ctrl-C). Open it through an SSH tunnel, or on the LAN."""
    if ctx.invoked_subcommand is not None:
        return
    from edge_agent.ui.auth import PasswordError, read_password_file
    from edge_agent.ui.server import UiConfigError, UiOptions, serve

    path = _password_file(password_file)
    try:
        stored = read_password_file(path)
        options = UiOptions(
            control_socket=socket_for(config, socket),
            host=host,
            port=port,
            password_hash=stored,
            cert=cert,
            key=key,
            insecure_lan=insecure_lan,
        )
        asyncio.run(serve(options))
    except (UiConfigError, PasswordError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    except OSError as err:
        typer.echo(f"error: cannot serve on {host}:{port}: {err}", err=True)
        raise typer.Exit(1) from err
    except KeyboardInterrupt:
        pass


@app.command()
def passwd(
    password_file: PasswordFileOption = None,
    stdin: Annotated[
        bool, typer.Option("--stdin", help="Read the password from standard input (scripts).")
    ] = False,
) -> None:
    """Set the page's password (stored as a scrypt hash, mode 0600)."""
    from edge_agent.ui.auth import PasswordError, hash_password, write_password_file

    path = _password_file(password_file)
    if stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    try:
        write_password_file(path, hash_password(password))
    except PasswordError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    except OSError as err:
        typer.echo(f"error: cannot write {path}: {err}", err=True)
        raise typer.Exit(1) from err
    typer.echo(f"password set in {path}")


def register(main: typer.Typer) -> None:
    """Add `ui` (and `ui passwd`) to the main CLI."""
    main.add_typer(app, name="ui")
