"""The cloud consumers' command lines refuse what they cannot use with a usage error (exit
status 2 and one line saying what), before they touch a broker or a database."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.cloud import cli
from edge_agent.cloud.args import broker_arguments_error, password

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


@pytest.mark.parametrize(
    "argv",
    [
        ["--password-file", "/nonexistent/password"],
        ["--session-expiry", "60"],
        ["--certfile", "client.crt"],
        ["--grace", "nan"],
        ["--retry", "0"],
        ["--retry", "inf", "--retry-max", "inf"],
        ["--tail-probe", "-1"],
    ],
)
def test_run_refuses_unusable_flags_before_connecting(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", "--dsn", DSN, *argv]) == 2
    err = capsys.readouterr().err
    assert err.strip()
    assert "Traceback" not in err
