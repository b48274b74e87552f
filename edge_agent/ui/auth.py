"""The page's password (scrypt, a standard memory-hard KDF) and its login sessions.

The password is stored only as `scrypt$N$r$p$salt$hash` (base64, mode 0600) in the file
`edge-agent ui passwd` writes. A login creates a session: a random cookie value and a
random CSRF token that every action must send back in the `X-CSRF-Token` header.
Sessions live in the UI process's memory only (a restart logs everyone out).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.errors import EdgeAgentError

N, R, P = 2**14, 8, 1
"""scrypt cost: 16 MiB and ~50 ms per check on a gateway-class CPU."""
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
SESSION_S = 12 * 3600.0
MAX_SESSIONS = 64
FAILURES_PER_MINUTE = 5


class PasswordError(EdgeAgentError, ValueError):
    """A password (or password file) that cannot be used."""


def hash_password(password: str) -> str:
    """The stored form of `password`.

    Raises:
        PasswordError: shorter than 8 or longer than 1024 characters.
    """
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise PasswordError(
            f"the password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long"
        )
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${N}${R}${P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches `stored` (False for a malformed `stored` or password)."""
    if len(password) > MAX_PASSWORD:
        return False
    parts = stored.strip().split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        expected = base64.b64decode(parts[5], validate=True)
    except ValueError:
        return False
    if not (2 <= n <= 2**20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
        return False
    if not (8 <= len(salt) <= 64 and 16 <= len(expected) <= 64):
        return False
    try:
        digest = hashlib.scrypt(
            password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(expected), maxmem=2**27
        )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(digest, expected)


def read_password_file(path: Path) -> str | None:
    """The stored hash in `path`, or None when there is no such file.

    Raises:
        PasswordError: the file exists but cannot be read or holds no scrypt hash.
    """
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise PasswordError(f"cannot read the password file {path}: {err.strerror}") from err
    except UnicodeDecodeError as err:  # a hash is ASCII: this is some other file
        raise PasswordError(
            f"{path} holds no password hash (not text); set one with `edge-agent ui passwd`"
        ) from err
    if not text.startswith("scrypt$") or text.count("$") != 5:
        raise PasswordError(f"{path} holds no password hash; set one with `edge-agent ui passwd`")
    return text


def write_password_file(path: Path, stored: str) -> None:
    """Write `stored` to `path` (mode 0600), replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(stored + "\n")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


@dataclass
class Session:
    """One logged-in browser."""

    csrf: str
    expires: float


class Sessions:
    """Login sessions and a per-client limit on failed logins."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._failures: dict[str, list[float]] = {}

    def create(self) -> tuple[str, Session]:
        """A new session: (cookie value, session)."""
        now = self.clock()
        self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
        while len(self._sessions) >= MAX_SESSIONS:  # the oldest goes first
            del self._sessions[next(iter(self._sessions))]
        token = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(32), expires=now + SESSION_S)
        self._sessions[token] = session
        return token, session

    def get(self, token: str | None) -> Session | None:
        """The live session of a cookie value, or None."""
        if not token:
            return None
        session = self._sessions.get(token)
        if session is None or session.expires <= self.clock():
            self._sessions.pop(token, None)
            return None
        return session

    def drop(self, token: str | None) -> None:
        """Log a session out."""
        if token:
            self._sessions.pop(token, None)

    def allowed(self, client: str) -> bool:
        """Whether `client` may try a password now (at most 5 failures a minute)."""
        now = self.clock()
        recent = [t for t in self._failures.get(client, []) if now - t < 60.0]
        self._failures[client] = recent
        if not recent:
            self._failures.pop(client, None)
        return len(recent) < FAILURES_PER_MINUTE

    def failed(self, client: str) -> None:
        """Count a failed login of `client`."""
        if len(self._failures) > 10_000:  # bounded, whatever a scanner sends
            self._failures.clear()
        self._failures.setdefault(client, []).append(self.clock())
