"""A private PostgreSQL for the tests: initdb into a temporary directory, a free port.

Never the machine's own PostgreSQL: this cluster lives in its own directory, listens on
loopback on a free port with its unix socket in that directory, trusts local connections
and is removed when stopped. PostgreSQL refuses to run as root, so as root it runs as the
`postgres` system user (the directory is created for it). Durability is off (`fsync`,
`synchronous_commit`): a test database needs none, and it keeps the suite fast.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.broker import ServerProcess, free_port, wait_for


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, postgres) are not installed")
    return Path(initdb).parent


def _version(path: str) -> int:
    digits = Path(path).parts[-3]
    return int(digits) if digits.isdigit() else 0


@dataclass
class Postgres(ServerProcess):
    """A real PostgreSQL server of its own; `database()` hands out a fresh database."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    root: Path | None = None
    _names: Any = field(default_factory=lambda: itertools.count(1))

    def _as_owner(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        return {"user": "postgres", "group": "postgres", "extra_groups": []}

    def start(self) -> None:
        bindir = _bindir()
        self.root = Path(tempfile.mkdtemp(prefix="edge-agent-pg-"))
        data = self.root / "data"
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            **self._as_owner(),
        )
        self._launch()

    def _launch(self) -> None:
        assert self.root is not None
        bindir, data = _bindir(), self.root / "data"
        log = self.root / "postgres.log"
        argv = [
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(self.port),
            "-k",
            str(self.root),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=40",
            "-c",
            "shared_buffers=32MB",
        ]
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=out, **self._as_owner())
        wait_for(self._ready, 30, f"PostgreSQL on port {self.port}")

    def restart(self) -> None:
        """Stop the server at once (fast shutdown: clients are cut off) and start it again
        on the same data and port."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        self._launch()

    def _ready(self) -> bool:
        if not self.accepting(self.port, "postgres"):
            return False
        try:
            with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def dsn(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def database(self) -> str:
        """A new, empty database; returns its DSN."""
        name = f"test_{next(self._names)}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def stop(self) -> None:
        super().stop()
        if self.root is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.root)
            self.root = None
