"""The broker-connection flags of both cloud consumers: `edge-agent-cloud run` and the
contract's SQLite checker, `scripts/cloud_consumer.py`.

Standard library only: the script runs without the `cloud` extra, so this module must not
import psycopg or anything of the package that does.
"""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path

__all__ = ["add_broker_arguments", "broker_arguments_error", "password", "tls_context"]


def add_broker_arguments(parser: argparse.ArgumentParser, *, protocols: tuple[str, ...]) -> None:
    """Add --host, --port, --prefix, --protocol, --share, --client-id, --session-expiry,
    --username, --password-file, --tls, --cafile, --certfile and --keyfile.

    Args:
        parser: The command's parser.
        protocols: The --protocol choices, the default first ("auto" tries 5, then 3.1.1).
    """
    parser.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=1883, help="broker port (default 1883)")
    parser.add_argument("--prefix", default="edge", help="topic prefix of the fleet (default edge)")
    auto = "; auto tries 5 and falls back to 3.1.1" if "auto" in protocols else ""
    parser.add_argument(
        "--protocol",
        choices=protocols,
        default=protocols[0],
        help=f"MQTT version{auto} (default {protocols[0]})",
    )
    parser.add_argument(
        "--share",
        metavar="GROUP",
        help="be one member of the MQTT 5 shared subscription $share/GROUP (refused where "
        "the broker has none)",
    )
    parser.add_argument("--client-id", help="MQTT client id (default: unique per run)")
    parser.add_argument(
        "--session-expiry",
        type=int,
        default=0,
        metavar="S",
        help="keep the broker session S seconds across disconnects (needs --client-id)",
    )
    parser.add_argument("--username", help="user name for the broker")
    parser.add_argument("--password-file", type=Path, help="file whose first line is the password")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (system CAs)")
    parser.add_argument("--cafile", help="CA bundle of the broker (implies --tls)")
    parser.add_argument("--certfile", help="client certificate for mutual TLS")
    parser.add_argument("--keyfile", help="client key for mutual TLS")


def broker_arguments_error(args: argparse.Namespace) -> str | None:
    """What makes the broker flags unusable together (a usage error, exit status 2), or None."""
    if args.session_expiry and not args.client_id:
        return "--session-expiry needs a fixed --client-id"
    if bool(args.certfile) != bool(args.keyfile):
        return "mutual TLS needs both --certfile and --keyfile"
    if args.password_file is not None:
        try:
            password(args)
        except (OSError, UnicodeDecodeError) as err:
            return f"--password-file {args.password_file}: {err}"
    if args.tls or args.cafile or args.certfile:
        try:  # the files as the connection will load them (ssl.SSLError is an OSError)
            tls_context(args.cafile, args.certfile, args.keyfile)
        except OSError as err:
            files = ", ".join(
                f"--{name} {value}"
                for name, value in (
                    ("cafile", args.cafile),
                    ("certfile", args.certfile),
                    ("keyfile", args.keyfile),
                )
                if value
            )
            return f"TLS files ({files}) cannot be used: {err}"
    return None


def password(args: argparse.Namespace) -> str | None:
    """The first line of --password-file ("" for an empty file), or None without one."""
    path: Path | None = args.password_file
    if path is None:
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[0] if lines else ""


def tls_context(cafile: str | None, certfile: str | None, keyfile: str | None) -> ssl.SSLContext:
    """The client context of --cafile (else the system's CAs) and --certfile/--keyfile.

    Raises:
        OSError: a file is missing, unreadable or not PEM (ssl.SSLError is an OSError).
    """
    context = ssl.create_default_context(cafile=cafile)
    if certfile:
        context.load_cert_chain(certfile, keyfile)
    return context
