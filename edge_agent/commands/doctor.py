"""`edge-agent doctor`: the technician's checklist, each item with its fix."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from edge_agent.commands.control import JsonOption, SocketOption, ToolConfigOption, resolve_config

MARK = {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}


def doctor(
    config: ToolConfigOption = None,
    socket: SocketOption = None,
    user: Annotated[
        str | None,
        typer.Option(
            help="Check serial access for this user (e.g. the service user edge-agent) "
            "instead of the one running doctor."
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.5, help="Network timeout, seconds.")] = 5.0,
    as_json: JsonOption = False,
) -> None:
    """Check serial access, Bluetooth, broker and TLS, clock, disk, database and models.

    Exit code: 0 all passed, 1 warnings, 2 failures.
    """
    from edge_agent.service.doctor import Account, exit_code, run_checks, worst

    cfg, source = resolve_config(config)
    try:
        account = Account.named(user) if user else Account.current()
    except KeyError as err:
        typer.echo(f"error: no user {user!r} on this machine", err=True)
        raise typer.Exit(2) from err
    checks = run_checks(
        cfg, account=account, socket_path=socket, timeout=timeout, config_path=source
    )
    overall = worst(checks)
    if as_json:
        body = {
            "config": str(source) if source else "embedded default",
            "result": overall,
            "checks": [c.as_dict() for c in checks],
        }
        typer.echo(json.dumps(body, indent=2))
    else:
        typer.echo(f"edge-agent doctor (config: {source or 'embedded default'})")
        for check in checks:
            typer.echo(f"{MARK[check.status]}  {check.name:<10} {check.summary}")
            if check.fix:
                typer.echo(f"      {'':<10} fix: {check.fix}")
        counts = {s: sum(1 for c in checks if c.status == s) for s in ("pass", "warn", "fail")}
        typer.echo(
            f"\n{counts['pass']} passed, {counts['warn']} warning(s), {counts['fail']} failed"
        )
    raise typer.Exit(exit_code(overall))


def register(app: typer.Typer) -> None:
    """Add `doctor` to the CLI."""
    app.command()(doctor)
