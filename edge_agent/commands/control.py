"""`edge-agent status`, `tail` and `reload`: talking to the running daemon over its socket.

The technician's commands find the daemon through the same config it runs with:
`--config`, else `EDGE_AGENT_CONFIG`, else /etc/edge-agent/edge-agent.toml when it
exists (an installed service), else the embedded default.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from edge_agent.config import AgentConfig, load_config
from edge_agent.errors import ConfigError
from edge_agent.runner import EXIT_CONFIG

SYSTEM_CONFIG = Path("/etc/edge-agent/edge-agent.toml")
EXIT_NOT_RUNNING = 3  # like `systemctl status` for a stopped unit

ToolConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Config the daemon runs with (default: EDGE_AGENT_CONFIG, then "
        "/etc/edge-agent/edge-agent.toml if present, then the embedded default).",
        envvar="EDGE_AGENT_CONFIG",
    ),
]
SocketOption = Annotated[
    Path | None,
    typer.Option("--socket", help="Control socket path (overrides the config's)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


def resolve_config(path: Path | None) -> tuple[AgentConfig, Path | None]:
    """The config the technician's commands use, and the file it came from."""
    chosen = path if path is not None else (SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None)
    try:
        return load_config(chosen), chosen
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_CONFIG) from err


def socket_for(config: Path | None, socket: Path | None) -> Path:
    """The control socket to talk to."""
    from edge_agent.service.control import control_socket_path

    if socket is not None:
        return socket
    chosen = config if config is not None else (SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None)
    try:
        return control_socket_path(load_config(chosen))
    except ConfigError as err:
        # A config being edited may be invalid; the daemon still runs the previous one,
        # and `reload` must reach it to hear why the new one is refused.
        found = _socket_from_raw(chosen)
        if found is None:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(EXIT_CONFIG) from err
        return found


def _socket_from_raw(path: Path | None) -> Path | None:
    """The socket path from a config file that parses as TOML but does not validate."""
    from edge_agent.config_sources import read_config_file

    if path is None:
        return None
    try:
        data = read_config_file(path)
    except ConfigError:  # not readable, not UTF-8, not TOML: the caller reports the file
        return None
    service, storage = data.get("service") or {}, data.get("storage") or {}
    if isinstance(service, dict) and isinstance(service.get("control_socket"), str):
        found = Path(service["control_socket"])
    else:
        db = storage.get("path", "edge-agent.db") if isinstance(storage, dict) else "edge-agent.db"
        db_path = Path(str(db))
        if db_path.name in ("", ".", ".."):  # no file name to put ".sock" on
            return None
        found = db_path.with_suffix(".sock")
    return found if found.name else None


def _unreadable_reply(path: Path, cmd: str, err: Exception) -> typer.Exit:
    """A reply that is JSON but not the shape this version knows: another version answered."""
    from edge_agent import __version__

    typer.echo(
        f"error: the answer to {cmd!r} from {path} is not what edge-agent {__version__} "
        f"expects ({type(err).__name__}: {err}); if the daemon runs another version, restart "
        "it (sudo systemctl restart edge-agent)",
        err=True,
    )
    return typer.Exit(1)


def _call(path: Path, cmd: str, timeout: float = 30.0) -> dict[str, Any]:
    from edge_agent.service.control import ControlError, DaemonNotRunningError, request

    try:
        return request(path, cmd, timeout=timeout)
    except DaemonNotRunningError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(EXIT_NOT_RUNNING) from err
    except ControlError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err


# -- rendering -----------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h{m:02d}m"
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{s:02d}s"


def _clock(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _node_line(node: str, health: dict[str, Any], mqtt: dict[str, Any]) -> str:
    """One broker node of `mqtt.hosts` on the status page."""
    if mqtt["connected"] and node == mqtt.get("host"):
        return f"{node} in use"
    if health.get("failures"):
        return (
            f"{node} failed x{health['failures']} (last {_clock(health.get('last_failure'))}: "
            f"{health.get('last_error')})"
        )
    if health.get("last_success"):
        return f"{node} ok (last session {_clock(health['last_success'])})"
    return f"{node} not tried"


def render_status(st: dict[str, Any]) -> str:
    """The human-readable page of `edge-agent status`."""
    mqtt = st["mqtt"]
    device = st["device"]
    lines = [
        f"edge-agent {st['version']}  {st['state']}  up {_duration(st['uptime_s'])}  "
        f"pid {st['pid']}  config {st['config']}",
        f"device     {device['id']} (tenant {device['tenant']}, site {device['site']}), "
        f"topics {device['topic_root']}/...",
    ]
    if mqtt["connected"]:
        version = mqtt.get("protocol")
        via = f"with MQTT {version} " if version else ""
        if mqtt.get("protocol_fallback"):
            via += "(it refused MQTT 5) "
        broker = f"connected {via}since {_clock(mqtt['connected_since'])}"
    else:
        broker = "NOT connected" + (f": {mqtt['last_error']}" if mqtt["last_error"] else "")
    lines.append(
        f"broker     {mqtt['broker']} {broker}; published {mqtt['published']}, "
        f"acked {mqtt['acked']}"
    )
    hosts = mqtt.get("hosts") or {}
    if len(hosts) > 1:
        lines.append("nodes      " + "; ".join(_node_line(n, h, mqtt) for n, h in hosts.items()))
    refused = mqtt.get("refused") or {}
    if refused:
        lines.append(
            "refused    "
            + "; ".join(
                f"{topic}: {r['reason']} x{r['refusals']}, kept, next try in {r['retry_in_s']:g} s"
                for topic, r in sorted(refused.items())
            )
        )
    depth = st["outbox_depth"]
    lines.append(
        f"store      {st['windows_committed']} windows stored this run, outbox "
        f"{'?' if depth is None else depth} message(s) waiting"
        + (f"; last error: {st['store']['last_error']}" if st["store"]["last_error"] else "")
    )
    sd = st["systemd"]
    watchdog = f"watchdog {sd['watchdog_s']:g} s" if sd["watchdog_s"] else "no watchdog"
    degraded = (st.get("health") or {}).get("degraded") or []
    if sd["stall"]:
        health = f"STALLED: {sd['stall']}"
    elif degraded:
        health = f"degraded: {', '.join(degraded)}"
    else:
        health = "pipeline healthy"
    lines.append(f"systemd    notify via {sd['notify']}, {watchdog}, {health}")
    failing = {name: c for name, c in (st.get("components") or {}).items() if c.get("restarts")}
    if failing:
        lines.append(
            "restarted  "
            + "; ".join(
                f"{name} x{c['restarts']} ({c['state']}, last: {c['last_error']})"
                for name, c in sorted(failing.items())
            )
        )
    lines.append("")
    lines.append(
        f"{'SENSOR':<16} {'LINK':<9} {'STATE':<13} {'RATE':>10} {'LAST DATA':>10} "
        f"{'GAPS':>5} {'CRC':>5}  MODELS"
    )
    for name, s in st["sensors"].items():
        rate = "-" if s.get("rate_hz") is None else f"{s['rate_hz']:.1f} Hz"
        last = s["seconds_since_data"]
        last_text = "never" if last is None else f"{last:.1f} s ago"
        models = ", ".join(
            f"{ref} {'ok' if state == 'ok' else 'OFF: ' + state}"
            for ref, state in s["models"].items()
        )
        lines.append(
            f"{name:<16} {s['link']:<9} {s['state']:<13} {rate:>10} {last_text:>10} "
            f"{s['gaps']:>5} {s['crc_errors']:>5}  {models or '-'}"
        )
    lines.append("")
    lines.append("MODELS")
    for m in st["models"]:
        lines.append(
            f"  {m['ref']:<28} {m['runtime']:<8} {', '.join(m['sensors']) or '(unused)'}  "
            f"{m['path']}"
        )
    if not st["models"]:
        lines.append("  (none loaded)")
    errors = st.get("last_errors") or []
    lines.append("")
    lines.append("LAST ERRORS" if errors else "LAST ERRORS  none")
    for e in errors:
        detail = " ".join(f"{k}={v}" for k, v in (e.get("detail") or {}).items())
        lines.append(
            f"  {_clock(e['ts'])} {e['severity']:<7} {e['event']}"
            f"{' [' + e['sensor'] + ']' if e.get('sensor') else ''} {detail}"
        )
    return "\n".join(lines)


def render_record(record: dict[str, Any]) -> str:
    """One line of `edge-agent tail`."""
    stamp = time.strftime("%H:%M:%S", time.localtime(record.get("ts") or time.time()))
    kind = record.get("type")
    if kind == "result":
        return (
            f"{stamp} result {record['sensor']:<14} {record['label']:<12} "
            f"{record['confidence']:.2f}  {record['model']}"
        )
    if kind == "event":
        detail = " ".join(f"{k}={v}" for k, v in (record.get("detail") or {}).items())
        sensor = f" [{record['sensor']}]" if record.get("sensor") else ""
        return f"{stamp} event  {record['event']}{sensor} ({record['severity']}) {detail}"
    if kind == "dropped":
        return f"{stamp} ...    {record['count']} record(s) skipped (terminal too slow)"
    return json.dumps(record)


# -- commands ------------------------------------------------------------------------------------


def status(
    config: ToolConfigOption = None, socket: SocketOption = None, as_json: JsonOption = False
) -> None:
    """Show the running daemon: sensors and rates, models, broker, outbox, last errors."""
    path = socket_for(config, socket)
    reply = _call(path, "status")
    if not reply.get("ok"):
        typer.echo(f"error: {reply.get('error')}", err=True)
        raise typer.Exit(1)
    try:
        page = json.dumps(reply["status"], indent=2) if as_json else render_status(reply["status"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise _unreadable_reply(path, "status", err) from err
    typer.echo(page)


def tail(
    config: ToolConfigOption = None,
    socket: SocketOption = None,
    sensor: Annotated[str | None, typer.Option(help="Only this sensor.")] = None,
    events_only: Annotated[bool, typer.Option("--events", help="Only events.")] = False,
    results_only: Annotated[bool, typer.Option("--results", help="Only results.")] = False,
    count: Annotated[
        int | None, typer.Option("--count", "-n", min=1, help="Stop after this many lines.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Follow live window results and events until Ctrl-C."""
    from edge_agent.service.control import ControlError, DaemonNotRunningError, stream

    path = socket_for(config, socket)
    args: dict[str, Any] = {"sensor": sensor}
    if events_only:
        args["results"] = False
    if results_only:
        args["events"] = False
    shown = 0
    try:
        lines = stream(path, "tail", **args)
        first = next(lines, None)
        if first is None or not first.get("ok"):
            typer.echo(f"error: {(first or {}).get('error', 'no answer')}", err=True)
            raise typer.Exit(1)
        for record in lines:
            typer.echo(json.dumps(record) if as_json else render_record(record))
            shown += 1
            if count is not None and shown >= count:
                break
    except DaemonNotRunningError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(EXIT_NOT_RUNNING) from err
    except ControlError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    except KeyboardInterrupt:
        pass


def reload(
    config: ToolConfigOption = None, socket: SocketOption = None, as_json: JsonOption = False
) -> None:
    """Make the daemon re-read its config: changed sensors restart, the others keep streaming."""
    path = socket_for(config, socket)
    reply = _call(path, "reload", timeout=120.0)
    if as_json:
        typer.echo(json.dumps(reply, indent=2))
    elif reply.get("ok"):
        try:
            typer.echo(_render_reload(reply["reload"]))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise _unreadable_reply(path, "reload", err) from err
    else:
        typer.echo(f"reload refused, still running the previous config:\n{reply.get('error')}")
    if not reply.get("ok"):
        raise typer.Exit(1)


def _render_reload(r: dict[str, Any]) -> str:
    """What `edge-agent reload` prints for a reload the daemon applied."""

    def names(key: str) -> str:
        return ", ".join(r.get(key) or []) or "none"

    lines = [
        f"reloaded {r.get('config')}",
        f"  restarted: {names('restarted')}",
        f"  added:     {names('added')}",
        f"  removed:   {names('removed')}",
        f"  unchanged: {names('unchanged')}",
        f"  mqtt:      {r.get('mqtt')}",
    ]
    if r.get("restart_required"):
        lines.append(
            f"  needs a restart to apply: {names('restart_required')} "
            "(sudo systemctl restart edge-agent)"
        )
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add `status`, `tail` and `reload` to the CLI."""
    app.command()(status)
    app.command()(tail)
    app.command()(reload)
