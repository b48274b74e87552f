"""The cloud consumers' command lines refuse what they cannot use with a usage error (exit
status 2 and one line saying what), before they touch a broker or a database."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.cloud import cli
from edge_agent.cloud.args import broker_arguments_error, password
from tests.pki import make_cert, new_key, write_pem

DSN = "host=127.0.0.1 port=1 connect_timeout=1"  # never reached: the usage check comes first


def _args(*argv: str) -> object:
    return cli.build_parser().parse_args(["run", "--dsn", DSN, *argv])


def test_a_password_file_is_read_or_refused_with_its_name(tmp_path: Path) -> None:
    good, empty, binary = tmp_path / "good", tmp_path / "empty", tmp_path / "binary"
    good.write_text("s3cret\nignored\n")
    empty.write_text("")
    binary.write_bytes(b"\xff\xfe\x00")
    assert password(_args("--password-file", str(good))) == "s3cret"
    assert password(_args("--password-file", str(empty))) == ""
    assert password(_args()) is None
    assert broker_arguments_error(_args("--password-file", str(good))) is None
    missing = broker_arguments_error(_args("--password-file", str(tmp_path / "nope")))
    assert missing is not None
    assert missing.startswith(f"--password-file {tmp_path / 'nope'}: ")
    assert "No such file" in missing
    undecodable = broker_arguments_error(_args("--password-file", str(binary)))
    assert undecodable is not None
    assert "utf-8" in undecodable


def test_tls_files_are_loaded_before_anything_connects(tmp_path: Path) -> None:
    ca_key, client_key = new_key(), new_key()
    write_pem(tmp_path / "ca", ca_key, make_cert("ca", ca_key, ca_key, "ca", ca=True))
    write_pem(tmp_path / "client", client_key, make_cert("gw", client_key, ca_key, "ca"))
    ca, crt, key = (str(tmp_path / n) for n in ("ca.crt", "client.crt", "client.key"))
    assert broker_arguments_error(_args("--cafile", ca)) is None
    mutual = _args("--cafile", ca, "--certfile", crt, "--keyfile", key)
    assert broker_arguments_error(mutual) is None
    not_pem = broker_arguments_error(_args("--cafile", key))
    assert not_pem is not None
    assert not_pem.startswith(f"TLS files (--cafile {key}) cannot be used: ")
    swapped = broker_arguments_error(_args("--certfile", key, "--keyfile", crt))
    assert swapped is not None
    assert swapped.startswith(f"TLS files (--certfile {key}, --keyfile {crt}) cannot be used")


TIMINGS = "--grace >= 0, --retry > 0, --retry-max >= --retry and --tail-probe >= 0"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--password-file", "/nonexistent/password"], "--password-file /nonexistent/password: "),
        (["--session-expiry", "60"], "--session-expiry needs a fixed --client-id"),
        (["--certfile", "client.crt"], "mutual TLS needs both --certfile and --keyfile"),
        (["--cafile", "/nonexistent/ca.crt"], "TLS files (--cafile /nonexistent/ca.crt)"),
        (
            ["--certfile", "/nonexistent/c.crt", "--keyfile", "/nonexistent/c.key"],
            "TLS files (--certfile /nonexistent/c.crt, --keyfile /nonexistent/c.key)",
        ),
        (["--grace", "nan"], TIMINGS),
        (["--retry", "0"], TIMINGS),
        (["--retry", "inf", "--retry-max", "inf"], TIMINGS),
        (["--tail-probe", "-1"], TIMINGS),
    ],
)
def test_run_refuses_unusable_flags_before_connecting(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", "--dsn", DSN, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(says)
    assert "PostgreSQL" not in err, "refused before it tried the database"
    assert "Traceback" not in err
