"""Downloads against a real HTTPS server (CA made at test time): verification, resume, refusals."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.ota.errors import UpdateRejectedError
from edge_agent.ota.fetch import FetchLimits, append_chunk, fetch
from tests.ota_support import FileServer, make_pki

DATA = bytes(range(256)) * 400  # 100 kB


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def files(tmp_path: Path) -> Path:
    d = tmp_path / "www"
    d.mkdir()
    (d / "a.bin").write_bytes(DATA)
    return d


@pytest.fixture
def https(files: Path, pki: tuple[Path, Path, Path]) -> Iterator[FileServer]:
    with FileServer(files, tls=(pki[1], pki[2])) as server:
        yield server


SHA = hashlib.sha256(DATA).hexdigest()


def _fetch(url: str, dest: Path, limits: FetchLimits, **kw: object) -> tuple[Path, list[int]]:
    seen: list[int] = []
    path = fetch(
        url,
        dest,
        sha256=str(kw.get("sha256", SHA)),
        size=int(kw.get("size", len(DATA))),  # type: ignore[call-overload]
        limits=limits,
        on_progress=lambda got, total: seen.append(got),
        cancel=kw.get("cancel", threading.Event()),  # type: ignore[arg-type]
    )
    return path, seen


def test_https_download_verified_by_the_configured_ca(
    tmp_path: Path, https: FileServer, pki: tuple[Path, Path, Path]
) -> None:
    limits = FetchLimits(max_bytes=1 << 20, ca_file=pki[0])
    path, seen = _fetch(https.url("a.bin"), tmp_path / "dl", limits)
    assert path.read_bytes() == DATA
    assert path.name == f"{SHA}.bundle"
    assert seen == sorted(seen)
    assert seen[-1] == len(DATA)
    assert not list((tmp_path / "dl").glob("*.part"))


def test_server_not_signed_by_a_trusted_ca_is_refused(tmp_path: Path, https: FileServer) -> None:
    with pytest.raises(UpdateRejectedError) as err:
        _fetch(https.url("a.bin"), tmp_path / "dl", FetchLimits(max_bytes=1 << 20))
    assert err.value.check == "tls"
    assert "ota.ca_file" in err.value.reason


def test_truncated_download_is_refused_then_resumed_by_the_next_deploy(
    tmp_path: Path, https: FileServer, pki: tuple[Path, Path, Path]
) -> None:
    """The server announces the full length but hangs up half way, every time: after the
    configured attempts the deploy is refused, the partial file stays, and the next deploy of
    the same archive asks only for the rest (HTTP Range)."""
    limits = FetchLimits(max_bytes=1 << 20, ca_file=pki[0], attempts=2, backoff_s=0.01)
    dest = tmp_path / "dl"
    with pytest.raises(UpdateRejectedError) as err:
        _fetch(https.url("a.bin", "cut"), dest, limits)
    assert err.value.check == "truncated"
    part = dest / f"{SHA}.part"
    assert 0 < part.stat().st_size < len(DATA)
    kept = part.stat().st_size
    path, _ = _fetch(https.url("a.bin"), dest, limits)
    assert path.read_bytes() == DATA
    assert https.requests[-1] == ("/f/a.bin", f"bytes={kept}-")


def test_wrong_digest_is_refused_and_discarded(
    tmp_path: Path, https: FileServer, pki: tuple[Path, Path, Path]
) -> None:
    limits = FetchLimits(max_bytes=1 << 20, ca_file=pki[0])
    with pytest.raises(UpdateRejectedError) as err:
        _fetch(https.url("a.bin"), tmp_path / "dl", limits, sha256="0" * 64)
    assert err.value.check == "sha256"
    assert list((tmp_path / "dl").iterdir()) == []


def test_oversized_is_refused_before_and_during_the_download(
    tmp_path: Path, https: FileServer, pki: tuple[Path, Path, Path]
) -> None:
    with pytest.raises(UpdateRejectedError) as err:
        _fetch(https.url("a.bin"), tmp_path / "dl", FetchLimits(max_bytes=1000, ca_file=pki[0]))
    assert err.value.check == "oversized"
    assert https.requests == []  # refused before connecting
    limits = FetchLimits(max_bytes=1 << 20, ca_file=pki[0])
    with pytest.raises(UpdateRejectedError) as err:
        _fetch(https.url("a.bin"), tmp_path / "dl", limits, size=1000)
    assert err.value.check == "oversized"


def test_plain_http_only_when_allowed(tmp_path: Path, files: Path) -> None:
    with FileServer(files) as http:
        with pytest.raises(UpdateRejectedError) as err:
            _fetch(http.url("a.bin"), tmp_path / "dl", FetchLimits(max_bytes=1 << 20))
        assert err.value.check == "insecure_url"
        path, _ = _fetch(
            http.url("a.bin"), tmp_path / "dl", FetchLimits(max_bytes=1 << 20, allow_http=True)
        )
        assert path.read_bytes() == DATA


def test_file_url_and_cancel(tmp_path: Path, files: Path) -> None:
    limits = FetchLimits(max_bytes=1 << 20)
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(UpdateRejectedError) as err:
        _fetch((files / "a.bin").as_uri(), tmp_path / "dl", limits, cancel=cancelled)
    assert err.value.check == "cancelled"
    path, _ = _fetch((files / "a.bin").as_uri(), tmp_path / "dl", limits)
    assert path.read_bytes() == DATA


def test_inline_chunks_in_order_with_redelivery(tmp_path: Path) -> None:
    dest = tmp_path / "dl"
    step = 30_000
    chunks = [(o, DATA[o : o + step]) for o in range(0, len(DATA), step)]
    got = 0
    for offset, data in chunks[:2]:
        got = append_chunk(
            dest, sha256=SHA, size=len(DATA), offset=offset, data=data, max_bytes=1 << 20
        )
    # A re-delivered chunk is accepted and changes nothing; a gap is refused with where to resume.
    assert (
        append_chunk(
            dest, sha256=SHA, size=len(DATA), offset=0, data=chunks[0][1], max_bytes=1 << 20
        )
        == got
    )
    with pytest.raises(UpdateRejectedError) as err:
        append_chunk(
            dest,
            sha256=SHA,
            size=len(DATA),
            offset=chunks[3][0],
            data=chunks[3][1],
            max_bytes=1 << 20,
        )
    assert err.value.check == "chunk_gap"
    assert f"resend from {got}" in err.value.reason
    for offset, data in chunks[2:]:
        got = append_chunk(
            dest, sha256=SHA, size=len(DATA), offset=offset, data=data, max_bytes=1 << 20
        )
    assert got == len(DATA)
    assert (dest / f"{SHA}.bundle").read_bytes() == DATA
    with pytest.raises(UpdateRejectedError) as err:
        append_chunk(dest, sha256="1" * 64, size=len(DATA), offset=0, data=DATA, max_bytes=1000)
    assert err.value.check == "oversized"
