"""Every door of the CLI: a bad file, config or socket answer is a clear error, never a traceback.

Each case is what an operator could really hand a command: a config that is not UTF-8, a
database path that names a directory, something else answering on the control socket.
The command must end with its documented exit status and a message naming the culprit.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_agent.cli import app

runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    """Exit status and all output of `edge-agent ARGS`; fails on an escaped exception."""
    result = runner.invoke(app, list(args), env={"EDGE_AGENT_CONFIG": None})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"escaped: {result.exception!r}") from result.exception
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    return result.exit_code, output


# -- config files ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["status"], ["reload"], ["tail"], ["ui"]])
def test_a_config_that_is_not_utf8_is_named_by_the_socket_commands(
    tmp_path: Path, command: list[str]
) -> None:
    config = tmp_path / "agent.toml"
    config.write_bytes(b"\xff\xfe[mqtt]\n")
    code, output = _run(*command, "-c", str(config))
    assert code == 2
    assert f"{config}: not UTF-8" in output


@pytest.mark.parametrize("db", ["/", ".", "state/.."])
@pytest.mark.parametrize("command", [["status"], ["doctor"], ["models", "list"]])
def test_a_database_path_without_a_file_name_is_a_config_error(
    tmp_path: Path, db: str, command: list[str]
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'[storage]\npath = "{db}"\n')
    code, output = _run(*command, "-c", str(config))
    assert code == 2
    assert "storage.path" in output
    assert "name the database file" in output


def test_status_with_an_empty_database_path_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[storage]\npath = ""\n')
    code, output = _run("status", "-c", str(config))
    assert code == 2
    assert "storage.path" in output


# -- the control socket ------------------------------------------------------------------------


def _serve_once(path: Path, reply: bytes) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.settimeout(5.0)

    def serve() -> None:
        with server:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(reply)

    thread = threading.Thread(target=serve, name="other-socket")
    thread.start()
    return thread


def _ask(path: Path, reply: bytes, command: list[str]) -> tuple[int, str]:
    """Run `command` against a socket at `path` that answers `reply` once."""
    thread = _serve_once(path, reply)
    try:
        return _run(*command, "--socket", str(path), "-c", "/dev/null")
    finally:
        thread.join(5.0)


@pytest.mark.parametrize("reply", [b"HTTP/1.0 400 Bad Request\r\n\r\n", b"\xff\xfe\x00\n"])
@pytest.mark.parametrize("command", [["status"], ["reload"], ["tail", "-n", "1"]])
def test_something_else_on_the_socket_is_named(
    tmp_path: Path, reply: bytes, command: list[str]
) -> None:
    path = tmp_path / "other.sock"
    code, output = _ask(path, reply, command)
    assert code == 1
    assert f"{path} answered with something that is not edge-agent's control protocol" in output


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (["status"], b'{"ok": true}\n'),
        (["status"], b'{"ok": true, "status": {"mqtt": 5}}\n'),
        (["status", "--json"], b'{"ok": true, "version": 9}\n'),
        (["reload"], b'{"ok": true}\n'),
        (["reload"], b'{"ok": true, "reload": 5}\n'),
    ],
)
def test_a_reply_of_another_shape_says_the_daemon_may_be_another_version(
    tmp_path: Path, command: list[str], reply: bytes
) -> None:
    path = tmp_path / "old.sock"
    code, output = _ask(path, reply, command)
    assert code == 1
    assert f"from {path} is not what edge-agent" in output
    assert "restart it" in output


# -- face gallery files ------------------------------------------------------------------------


def _faces_config(tmp_path: Path, key_file: Path, gallery: Path | None = None) -> Path:
    config = tmp_path / "agent.toml"
    text = f'[storage]\npath = "{tmp_path / "agent.db"}"\n[faces]\nkey_file = "{key_file}"\n'
    if gallery is not None:
        text += f'gallery_path = "{gallery}"\n'
    config.write_text(text)
    return config


@pytest.mark.parametrize("command", [["faces", "list"], ["faces", "audit"]])
def test_a_face_key_file_that_is_a_directory_is_named(tmp_path: Path, command: list[str]) -> None:
    key_dir = tmp_path / "keys"
    key_dir.mkdir()
    code, output = _run(*command, "-c", str(_faces_config(tmp_path, key_dir)))
    assert code == 1
    assert f"gallery key {key_dir}: is not a regular file" in output
    assert "faces keygen" in output


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("garbage.db", b"this is not sqlite\n" * 200, "not a SQLite database"),
        ("truncated.db", None, "not a SQLite database"),
        ("dir.db", "dir", "a directory, not a gallery file"),
    ],
)
def test_a_face_gallery_that_is_not_a_database_is_named(
    tmp_path: Path, name: str, content: bytes | str | None, says: str
) -> None:
    import sqlite3

    from edge_agent.faces.keys import generate_key, write_key_file

    key = tmp_path / "face.key"
    write_key_file(key, generate_key())
    gallery = tmp_path / name
    if content == "dir":
        gallery.mkdir()
    elif isinstance(content, bytes):
        gallery.write_bytes(content)
    else:  # a real database cut to a third of its size
        conn = sqlite3.connect(gallery)
        conn.execute("CREATE TABLE t (x)")
        conn.executemany("INSERT INTO t VALUES (?)", [("x" * 1000,)] * 100)
        conn.commit()
        conn.close()
        whole = gallery.read_bytes()
        gallery.write_bytes(whole[: len(whole) // 3])
    code, output = _run("faces", "list", "-c", str(_faces_config(tmp_path, key, gallery)))
    assert code == 1
    assert f"{gallery}: {says}" in output
    assert "faces.gallery_path" in output


# -- files the ota section names ---------------------------------------------------------------


@pytest.mark.parametrize("ca", ["missing.pem", "not-a-pem.txt", "a-directory"])
def test_an_ota_ca_file_that_cannot_be_loaded_refuses_the_download(tmp_path: Path, ca: str) -> None:
    ca_file = tmp_path / ca
    if ca == "not-a-pem.txt":
        ca_file.write_text("hello\n")
    elif ca == "a-directory":
        ca_file.mkdir()
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[storage]\npath = "{tmp_path / "agent.db"}"\n[ota]\nca_file = "{ca_file}"\n'
    )
    code, output = _run(
        "models", "install", "https://127.0.0.1:9/x.bundle.tar.gz",
        "--sha256", "0" * 64, "--size", "100",
        "-c", str(config), "--socket", str(tmp_path / "none.sock"),
    )  # fmt: skip
    assert code == 2
    assert f"ota.ca_file {ca_file} cannot be loaded" in output


@pytest.mark.parametrize(
    "command",
    [
        ["models", "activate", "m@1.0.0"],
        ["models", "remove", "m@1.0.0"],
        ["models", "rollback", "m"],
    ],
)
def test_an_ota_install_dir_that_is_a_file_is_named(tmp_path: Path, command: list[str]) -> None:
    taken = tmp_path / "ota"
    taken.write_text("")
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[storage]\npath = "{tmp_path / "agent.db"}"\n[ota]\ninstall_dir = "{taken}"\n'
    )
    code, output = _run(*command, "-c", str(config), "--socket", str(tmp_path / "none.sock"))
    assert code == 1
    assert f"install directory {taken}: cannot create {taken} (a file is in the way)" in output
    assert "ota.install_dir" in output


# -- the database --------------------------------------------------------------------------------


def test_doctor_says_a_database_path_naming_a_directory_is_not_a_database(tmp_path: Path) -> None:
    from edge_agent.service.doctor import check_database

    check = check_database(tmp_path)
    assert check.status == "fail"
    assert f"{tmp_path} is a directory, not a database" in check.summary
    assert "storage.path" in (check.fix or "")


def test_doctor_fails_a_database_from_a_newer_edge_agent(tmp_path: Path) -> None:
    import sqlite3

    from edge_agent.service.doctor import check_database
    from edge_agent.store.schema import SCHEMA_VERSION

    db = tmp_path / "agent.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    check = check_database(db)
    assert check.status == "fail"
    assert f"schema {SCHEMA_VERSION + 1} is newer than this edge-agent supports" in check.summary
    assert "upgrade edge-agent" in (check.fix or "")


def test_the_store_names_a_database_path_that_is_a_directory(tmp_path: Path) -> None:
    from edge_agent.errors import StoreError
    from edge_agent.store.db import Store

    store = Store(tmp_path, device_id="d", topic_root="t")
    with pytest.raises(StoreError, match=r"a directory, not a database file; point storage\.path"):
        store.open(timeout=5.0)
    store.close()


# -- files named on the command line -----------------------------------------------------------


@pytest.mark.parametrize("cert", ["missing.pem", "not-a-pem.txt"])
def test_ui_names_a_certificate_that_cannot_be_loaded(tmp_path: Path, cert: str) -> None:
    cert_file, key_file = tmp_path / cert, tmp_path / "key.pem"
    if cert == "not-a-pem.txt":
        cert_file.write_text("hello\n")
        key_file.write_text("hello\n")
    code, output = _run(
        "ui", "--cert", str(cert_file), "--key", str(key_file), "-c", "/dev/null", "--port", "0"
    )
    assert code == 2
    assert f"cannot load the TLS certificate {cert_file} with key {key_file}" in output


def test_bench_refuses_a_profile_directory_that_is_a_file_before_running(tmp_path: Path) -> None:
    taken = tmp_path / "profile"
    taken.write_text("")
    code, output = _run("bench", "--quick", "--profile", str(taken))
    assert code == 2
    assert f"--profile {taken}: a file, not a directory" in output


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_replay_names_a_capture_that_cannot_be_read(tmp_path: Path, what: str) -> None:
    capture = tmp_path / "imu.capture"
    if what == "directory":
        capture.mkdir()
    code, output = _run("replay", "--once", str(capture))
    assert code == 2
    assert f"{capture}: cannot be read" in output
    assert "edge-agent record" in output


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_models_sign_names_a_signing_key_that_cannot_be_read(tmp_path: Path, what: str) -> None:
    key = tmp_path / "publisher.pem"
    if what == "directory":
        key.mkdir()
    archive = tmp_path / "m.bundle.tar.gz"
    archive.write_bytes(b"not yet looked at")
    code, output = _run("models", "sign", str(archive), "--key", str(key))
    assert code == 2
    assert f"signing key {key}: cannot be read" in output
    assert "models keygen" in output


@pytest.mark.parametrize(
    ("where", "says"), [("dir", "is a directory"), ("under-file", "a file is in the way")]
)
def test_init_names_a_path_it_cannot_write(tmp_path: Path, where: str, says: str) -> None:
    if where == "dir":
        target = tmp_path / "etc"
        target.mkdir()
    else:
        (tmp_path / "etc").write_text("")
        target = tmp_path / "etc" / "edge-agent.toml"
    code, output = _run(
        "init", "--path", str(target), "--state-dir", str(tmp_path / "state"), "--force"
    )
    assert code == 2
    assert f"--path {target}" in output
    assert says in output


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("missing.bundle.tar.gz", "no such archive file"),
        ("nope@1.0.0", "is neither an archive file nor installed in"),
    ],
)
def test_models_verify_names_what_it_cannot_find(tmp_path: Path, target: str, says: str) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'[storage]\npath = "{tmp_path / "agent.db"}"\n')
    code, output = _run("models", "verify", target, "-c", str(config))
    assert code == 2
    assert f"{target}" in output
    assert says in output


@pytest.mark.parametrize(
    ("content", "says"), [(b"\xce\xff" * 20, "holds no password hash"), (None, "Is a directory")]
)
def test_ui_names_a_password_file_that_is_not_one(
    tmp_path: Path, content: bytes | None, says: str
) -> None:
    password_file = tmp_path / "ui-password"
    if content is None:
        password_file.mkdir()
    else:
        password_file.write_bytes(content)
    code, output = _run(
        "ui", "--password-file", str(password_file), "-c", "/dev/null",
        "--host", "0.0.0.0", "--insecure-lan", "--port", "0",
    )  # fmt: skip
    assert code == 2
    assert str(password_file) in output
    assert says in output
    assert "codec" not in output
