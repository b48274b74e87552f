"""`edge-agent init`: write a first config for this gateway from a few answers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edge_agent.runner import EXIT_CONFIG

DEFAULT_PATH = Path("/etc/edge-agent/edge-agent.toml")


def _pairs(values: list[str], what: str) -> list[tuple[str, str]]:
    out = []
    for value in values:
        name, sep, target = value.partition("=")
        if not sep or not name or not target:
            raise typer.BadParameter(f"{what} must look like NAME=VALUE, got {value!r}")
        out.append((name, target))
    return out


def init(
    path: Annotated[Path, typer.Option("--path", help="Where to write the config.")] = DEFAULT_PATH,
    device_id: Annotated[
        str | None,
        typer.Option("--device-id", help="Gateway id (default: the host name, '-' for '.')."),
    ] = None,
    tenant: Annotated[str, typer.Option(help="Tenant id.")] = "default",
    site: Annotated[str, typer.Option(help="Site id.")] = "default",
    broker: Annotated[str, typer.Option(help="MQTT broker as HOST[:PORT].")] = "127.0.0.1:1883",
    tls: Annotated[bool, typer.Option("--tls", help="Connect with TLS (verify the server).")] = (
        False
    ),
    ca_file: Annotated[Path | None, typer.Option(help="CA bundle for TLS.")] = None,
    username: Annotated[str | None, typer.Option(help="Broker user name.")] = None,
    password_file: Annotated[
        Path | None, typer.Option(help="File with the broker password (never in the config).")
    ] = None,
    serial: Annotated[
        list[str] | None,
        typer.Option(help="A serial sensor as NAME=PORT (repeat for more).", show_default=False),
    ] = None,
    ble: Annotated[
        list[str] | None,
        typer.Option(help="A BLE sensor as NAME=ADDRESS (repeat for more).", show_default=False),
    ] = None,
    state_dir: Annotated[Path, typer.Option(help="Where the database lives.")] = Path(
        "/var/lib/edge-agent"
    ),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    scan: Annotated[
        bool,
        typer.Option(
            "--scan",
            help="Look for sensors (probe serial ports, listen for BLE advertisements) and "
            "write an entry for each one recognised, as `sensors scan` shows them.",
        ),
    ] = False,
    scan_port: Annotated[
        list[str] | None,
        typer.Option(help="With --scan: also probe this serial port.", show_default=False),
    ] = None,
    scan_ble: Annotated[
        bool, typer.Option("--scan-ble/--no-scan-ble", help="With --scan: listen for BLE too.")
    ] = True,
    scan_seconds: Annotated[
        float, typer.Option(min=0.5, max=120, help="With --scan: BLE listening time.")
    ] = 5.0,
) -> None:
    """Write a validated config for this gateway; edit it later, `config validate` it."""
    from edge_agent.config import load_config, parse_config, render_config
    from edge_agent.durable import write_atomically
    from edge_agent.errors import ConfigError

    if path.is_dir():
        typer.echo(
            f"error: --path {path} is a directory; name the file, e.g. {path / 'edge-agent.toml'}",
            err=True,
        )
        raise typer.Exit(EXIT_CONFIG)
    if path.exists() and not force:
        typer.echo(f"error: {path} exists; use --force to replace it", err=True)
        raise typer.Exit(1)
    host, _, port = broker.rpartition(":") if ":" in broker else (broker, "", "1883")
    sensors: list[dict[str, Any]] = [
        {"name": name, "link": "serial", "port": port_path}
        for name, port_path in _pairs(serial or [], "--serial")
    ]
    sensors += [
        {"name": name, "link": "ble", "address": address}
        for name, address in _pairs(ble or [], "--ble")
    ]
    found: list[dict[str, Any]] = []
    if scan:
        found = _scanned(sensors, list(scan_port or []), scan_seconds if scan_ble else None)
        sensors += found
    if not device_id:
        device_id = _id_from_host_name()
    data: dict[str, Any] = {
        "device": {"tenant": tenant, "site": site, "id": device_id},
        "mqtt": {"host": host, "port": port, "tls": tls}
        | ({"ca_file": str(ca_file)} if ca_file else {})
        | ({"username": username} if username else {})
        | ({"password_file": str(password_file)} if password_file else {}),
        "storage": {"path": str(state_dir / "edge-agent.db"), "synchronous": "FULL"},
        "logging": {"show_results": False},
    }
    if sensors:
        data["sensors"] = sensors
    try:
        config = parse_config(data, source="edge-agent init", environ={})
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_CONFIG) from err
    header = (
        "# edge-agent configuration, written by `edge-agent init`.\n"
        "# Check changes with `edge-agent config validate PATH`; apply with `edge-agent reload`.\n"
    )
    if found:
        header += (
            f"# {len(found)} sensor(s) found by --scan; `edge-agent sensors test NAME` shows "
            "what each says.\n"
        )
    if not sensors:
        header += (
            "# No sensors were given: the two emulated sensors below only prove the setup\n"
            '# works; replace them with `link = "serial"` or `link = "ble"` sensors.\n'
        )
    text = header + "\n" + render_config(config)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, text, mode=0o640)
    except OSError as err:  # a file where a directory should be, read-only, no permission
        in_the_way = isinstance(err, (FileExistsError, NotADirectoryError))
        why = "a file is in the way of its directory" if in_the_way else err.strerror
        typer.echo(f"error: --path {path}: cannot write it ({why}); name another file", err=True)
        raise typer.Exit(EXIT_CONFIG) from err
    load_config(path, environ={})  # what was written reads back as valid
    typer.echo(f"wrote {path} ({len(config.sensors)} sensor(s), topics under {config.topic_root}/)")
    from edge_agent.brokers import broker_quirks

    for quirk in broker_quirks(config):
        typer.echo(f"warning: {quirk.describe()}", err=True)
    typer.echo("next: edge-agent doctor -c PATH, then sudo edge-agent service install -c PATH")


def _id_from_host_name() -> str:
    """The gateway id for a new config: the host name, its dots written as dashes.

    A '.' in the id ends up in every topic: NATS refuses such topics and RabbitMQ turns the
    '.' into a topic level (docs/brokers.md). A new gateway gets an id every broker takes;
    an existing one keeps its id (the daemon's default stays the plain host name).
    """
    import socket

    host = socket.gethostname() or "gateway"
    if "." not in host:
        return host
    safe = host.replace(".", "-")
    typer.echo(
        f"device id {safe!r}: the host name {host!r} with '-' for '.', which NATS and "
        "RabbitMQ do not take in a topic (--device-id sets another)"
    )
    return safe


def _scanned(
    given: list[dict[str, Any]], ports: list[str], ble_seconds: float | None
) -> list[dict[str, Any]]:
    """Entries for the sensors a scan recognises, leaving out ports and addresses given."""
    from edge_agent.commands.discover import discover, sensor_entries

    result = discover(
        extra_ports=ports,
        probe_seconds=1.0,
        baudrate=115_200,
        ble_seconds=ble_seconds,
        adapter=None,
    )
    taken = {s.get("port") or s.get("address") for s in given}
    names = {s["name"] for s in given}
    out = []
    for entry in sensor_entries(result):
        if (entry.get("port") or entry.get("address")) in taken or entry["name"] in names:
            continue
        typer.echo(f"found {entry['name']}: {entry.get('port') or entry.get('address')}")
        out.append(entry)
    if not out:
        typer.echo("--scan recognised no sensor (`edge-agent sensors scan` says why)")
    return out


def register(app: typer.Typer) -> None:
    """Add `init` to the CLI."""
    app.command("init")(init)
