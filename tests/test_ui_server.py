"""The doors of `edge-agent ui` without a browser: request parsing, passwords, sessions and
what of the daemon's feed the page may see.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.ui.auth import (
    FAILURES_PER_MINUTE,
    MAX_SESSIONS,
    PasswordError,
    Sessions,
    hash_password,
    read_password_file,
    verify_password,
)
from edge_agent.ui.server import (
    BadRequestError,
    _sensor_of,
    is_loopback,
    read_request,
    sanitize,
)


async def _parse(data: bytes) -> object:
    reader = asyncio.StreamReader(limit=8 * 1024)
    reader.feed_data(data)
    reader.feed_eof()
    try:
        return await read_request(reader, "test")
    except BadRequestError as err:
        return err


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=20000))
def test_any_bytes_give_a_request_or_a_refusal(data: bytes) -> None:
    """The HTTP door: nothing a client sends raises anything but BadRequestError."""
    out = asyncio.run(_parse(data))
    if not isinstance(out, BadRequestError):
        assert out.path.startswith("/")  # type: ignore[attr-defined]
        assert len(out.body) <= 16 * 1024  # type: ignore[attr-defined]


@settings(max_examples=100, deadline=None)
@given(
    path=st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=50),
    headers=st.dictionaries(
        st.text(st.characters(min_codepoint=65, max_codepoint=90), min_size=1, max_size=10),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
        max_size=5,
    ),
    body=st.binary(max_size=100),
)
def test_well_formed_requests_parse(path: str, headers: dict[str, str], body: bytes) -> None:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k.lower() != "content-length")
    raw = f"POST /{path} HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    out = asyncio.run(_parse(raw))
    assert not isinstance(out, BadRequestError)
    assert out.body == body  # type: ignore[attr-defined]
    assert out.path == f"/{path}"  # type: ignore[attr-defined]


def test_overlong_heads_and_bodies_are_refused() -> None:
    assert isinstance(asyncio.run(_parse(b"GET / HTTP/1.1\r\nX: " + b"a" * 9000)), BadRequestError)
    big = b"POST / HTTP/1.1\r\nContent-Length: 999999\r\n\r\n"
    assert isinstance(asyncio.run(_parse(big)), BadRequestError)
    negative = b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"
    assert isinstance(asyncio.run(_parse(negative)), BadRequestError)
    short = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"
    assert isinstance(asyncio.run(_parse(short)), BadRequestError)


def test_passwords_are_stored_as_scrypt_and_checked() -> None:
    stored = hash_password("a long passphrase")
    assert stored.startswith("scrypt$16384$8$1$")
    assert verify_password("a long passphrase", stored)
    assert not verify_password("a long passphrasE", stored)
    assert hash_password("a long passphrase") != stored  # salted
    with pytest.raises(PasswordError):
        hash_password("short")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.text(max_size=40))
def test_any_stored_text_is_refused_or_checked_never_raises(stored: str, password: str) -> None:
    assert verify_password(password, stored) in (True, False)
    assert not verify_password(password, "scrypt$" + stored)


def test_a_malformed_password_file_is_one_clear_error(tmp_path: Path) -> None:
    assert read_password_file(tmp_path / "missing") is None
    bad = tmp_path / "bad"
    bad.write_bytes(b"\xff\xfe not a hash")
    with pytest.raises(PasswordError, match="password"):
        read_password_file(bad)
    plain = tmp_path / "plain"
    plain.write_text("hunter22\n")
    with pytest.raises(PasswordError, match="no password hash"):
        read_password_file(plain)


def test_sessions_expire_are_bounded_and_failed_logins_limited() -> None:
    now = [0.0]
    sessions = Sessions(clock=lambda: now[0])
    token, session = sessions.create()
    assert sessions.get(token) is session
    assert sessions.get("forged") is None
    for _ in range(MAX_SESSIONS + 5):
        sessions.create()
    assert sessions.get(token) is None  # the oldest went first
    token, _ = sessions.create()
    now[0] += 13 * 3600
    assert sessions.get(token) is None
    for _ in range(FAILURES_PER_MINUTE):
        assert sessions.allowed("10.0.0.9")
        sessions.failed("10.0.0.9")
    assert not sessions.allowed("10.0.0.9")
    assert sessions.allowed("10.0.0.10")
    now[0] += 61
    assert sessions.allowed("10.0.0.9")


def test_the_page_never_sees_face_data() -> None:
    event = {"type": "event", "event": "face.identified", "detail": {"person": "ann", "score": 0.9}}
    assert sanitize(event) == {**event, "detail": {}}
    health = {"type": "health", "status": {"faces": {"templates": 3}, "state": "running"}}
    assert sanitize(health) == {"type": "health", "status": {"state": "running"}}
    earlier = {"type": "health", "status": {"last_errors": [event]}}
    assert sanitize(earlier) == {
        "type": "health",
        "status": {"last_errors": [{**event, "detail": {}}]},
    }
    assert sanitize({"type": "face_crop", "jpeg": "..."}) is None
    assert sanitize({"type": "signals", "sensor": "a"}) == {"type": "signals", "sensor": "a"}


def test_loopback_names() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("192.168.1.2")
    assert not is_loopback("gateway.lan")


def test_the_service_form_starts_without_the_cli_or_the_config_models(tmp_path: Path) -> None:
    """`edge-agent ui --socket ...` (the unit's form) loads neither typer nor pydantic/numpy."""
    probe = (
        "import sys; from edge_agent.ui.main import lean_main; "
        f"code = lean_main(['--socket', 's', '--host', '0.0.0.0', '--insecure-lan', "
        f"'--password-file', {str(tmp_path / 'none')!r}]); "
        "print(code, *(m in sys.modules for m in ('typer', 'pydantic', 'numpy')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["2", "False", "False", "False"]
    assert "without a password" in out.stderr


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_the_record_door_takes_only_a_sensor_name(body: bytes) -> None:
    """`POST /api/record/start`: anything but `{"sensor": "<printable name>"}` gives None."""
    sensor = _sensor_of(body)
    if sensor is not None:
        assert 0 < len(sensor) <= 255
        assert sensor.isprintable()
    assert _sensor_of(b'{"sensor": "imu-0"}') == "imu-0"
    assert _sensor_of(b'{"sensor": ""}') is None
    assert _sensor_of(b'["imu-0"]') is None
