"""Getting a bundle archive onto the gateway: resumable downloads and inline MQTT chunks.

Everything lands in `<install_dir>/.downloads/` under the archive's expected sha256:
`<sha256>.part` while bytes arrive (kept across failures and restarts, so the next attempt
asks for the rest with an HTTP Range request), renamed to `<sha256>.bundle` only once the
size and the sha256 match. Nothing here trusts the content: the archive's signature and
files are checked afterwards by `archive.inspect_archive`.

Schemes: https (verified against the system CAs or `ota.ca_file`), file://, and http only
when `ota.allow_http` is set; a redirect may not downgrade https to http.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit
from urllib.request import url2pathname

from edge_agent import __version__
from edge_agent.durable import fsync_dir
from edge_agent.errors import os_reason
from edge_agent.inference.bundle import file_sha256
from edge_agent.ota.errors import UpdateRejectedError

BLOCK = 1 << 16
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

Progress = Callable[[int, int], None]
"""Called with (bytes received, bytes expected) as a download advances."""


@dataclass(frozen=True)
class FetchLimits:
    """The `ota` settings a download obeys."""

    max_bytes: int
    allow_http: bool = False
    ca_file: Path | None = None
    timeout_s: float = 30.0
    attempts: int = 5
    backoff_s: float = 0.2


def _reject(check: str, reason: str) -> UpdateRejectedError:
    return UpdateRejectedError("download", check, reason)


class _TransientError(Exception):
    """A broken transfer worth resuming."""


def display_url(url: str) -> str:
    """`url` without credentials or query string (which may hold tokens), for events and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def check_request(url: str, sha256: str, size: int, limits: FetchLimits) -> None:
    """Refuse a deploy request before any byte is fetched.

    Raises:
        UpdateRejectedError: bad digest or size, too big, or a scheme that is not allowed.
    """
    if not SHA256_RE.match(sha256):
        raise _reject("bad_request", "sha256 must be 64 lowercase hex digits")
    if size <= 0:
        raise _reject("bad_request", "size must be a positive number of bytes")
    if size > limits.max_bytes:
        raise _reject(
            "oversized",
            f"the bundle is {size} bytes, more than ota.max_bundle_bytes ({limits.max_bytes})",
        )
    scheme = urlsplit(url).scheme.lower()
    if scheme == "http" and not limits.allow_http:
        raise _reject(
            "insecure_url",
            "plain http is refused: publish over https, or set ota.allow_http = true",
        )
    if scheme not in ("https", "http", "file"):
        raise _reject("bad_url", f"unsupported URL scheme {scheme!r}; use https://, file://")


def _finish(part: Path, final: Path, sha256: str) -> Path:
    """Check the digest of a complete `.part` and rename it to its final name."""
    got = file_sha256(part)
    if got != sha256:
        part.unlink()
        raise _reject(
            "sha256",
            f"the downloaded bytes have sha256 {got[:16]}..., the deploy request said "
            f"{sha256[:16]}...: wrong URL or a corrupted transfer (the bytes were discarded)",
        )
    with part.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(part, final)
    fsync_dir(final.parent)
    return final


class _RedirectGuard(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never from https to plain http unless http is allowed."""

    def __init__(self, allow_http: bool) -> None:
        self.allow_http = allow_http

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        scheme = urlsplit(newurl).scheme.lower()
        if scheme != "https" and not (scheme == "http" and self.allow_http):
            raise _reject(
                "insecure_url", f"the server redirected to {display_url(newurl)}: refused"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _copy(
    src: Any,
    part: Path,
    have: int,
    size: int,
    on_progress: Progress,
    cancel: threading.Event,
) -> int:
    """Append `src` to `part` from `have`; returns the bytes now in `part`.

    Blocks are taken as they arrive (`read1`) and written unbuffered, so what a SIGKILL
    leaves in `part` is everything received, for the next attempt to resume from.
    """
    read = getattr(src, "read1", src.read)
    with part.open("ab" if have else "wb", buffering=0) as out:
        while True:
            if cancel.is_set():
                raise _reject("cancelled", "the agent is stopping; the partial download is kept")
            try:
                block = read(BLOCK)
            except (OSError, http.client.HTTPException) as err:
                raise _TransientError(str(err)) from err
            if not block:
                break
            if have + len(block) > size:
                out.close()
                part.unlink()
                raise _reject("oversized", f"the server sent more than the {size} bytes announced")
            out.write(block)
            have += len(block)
            on_progress(have, size)
        os.fsync(out.fileno())
    return have


def _transfer_http(
    url: str,
    part: Path,
    have: int,
    size: int,
    limits: FetchLimits,
    on_progress: Progress,
    cancel: threading.Event,
) -> int:
    try:
        context = ssl.create_default_context(
            cafile=str(limits.ca_file) if limits.ca_file is not None else None
        )
    except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
        raise _reject(
            "tls",
            f"ota.ca_file {limits.ca_file} cannot be loaded ({os_reason(err)}): point it at "
            "the PEM file of the CA that signed the download server's certificate",
        ) from err
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=context), _RedirectGuard(limits.allow_http)
    )
    headers = {"User-Agent": f"edge-agent/{__version__}", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - scheme checked
    try:
        response = opener.open(request, timeout=limits.timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 416:  # our partial file is not a prefix of what is served now
            part.unlink(missing_ok=True)
            raise _TransientError("range not satisfiable; starting over") from err
        if err.code >= 500 or err.code in (408, 429):
            raise _TransientError(f"HTTP {err.code}") from err
        raise _reject("http_status", f"the server answered HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        if isinstance(err.reason, ssl.SSLCertVerificationError):
            raise _reject(
                "tls",
                f"the server's certificate is not trusted ({err.reason.verify_message}); "
                "use a server with a valid certificate, or set ota.ca_file for a private CA",
            ) from err
        raise _TransientError(str(err.reason)) from err
    except (OSError, http.client.HTTPException) as err:
        raise _TransientError(str(err)) from err
    with response:
        status = response.status
        if have and status == 206:
            expected = f"bytes {have}-"
            if not str(response.headers.get("Content-Range", "")).startswith(expected):
                part.unlink(missing_ok=True)
                raise _TransientError("unexpected Content-Range; starting over")
        elif status == 200:
            have = 0  # no range support: start over
        else:
            raise _reject("http_status", f"unexpected HTTP status {status}")
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and have + int(length) > size:
            part.unlink(missing_ok=True)
            raise _reject(
                "oversized",
                f"the server offers {have + int(length)} bytes; the deploy request said {size}",
            )
        return _copy(response, part, have, size, on_progress, cancel)


def _transfer_file(
    url: str, part: Path, have: int, size: int, on_progress: Progress, cancel: threading.Event
) -> int:
    source = Path(url2pathname(urlsplit(url).path))
    try:
        fh = source.open("rb")
    except OSError as err:
        raise _reject("not_found", f"cannot read {source}: {err.strerror}") from err
    with fh:
        total = os.fstat(fh.fileno()).st_size
        if total > size:
            raise _reject("oversized", f"{source} is {total} bytes; the deploy request said {size}")
        fh.seek(have)
        return _copy(fh, part, have, size, on_progress, cancel)


def fetch(
    url: str,
    downloads: Path,
    *,
    sha256: str,
    size: int,
    limits: FetchLimits,
    on_progress: Progress,
    cancel: threading.Event,
) -> Path:
    """Download `url` into `downloads/<sha256>.bundle`, resuming a previous partial download.

    Blocking: run it on a worker thread; `cancel` stops it between blocks.

    Returns:
        The complete archive, its size and sha256 checked.

    Raises:
        UpdateRejectedError: refused (scheme, size, digest, TLS, HTTP status) or still
            incomplete after `limits.attempts` attempts (`truncated`).
    """
    check_request(url, sha256, size, limits)
    downloads.mkdir(parents=True, exist_ok=True)
    final = downloads / f"{sha256}.bundle"
    if final.is_file() and final.stat().st_size == size:
        return final
    part = downloads / f"{sha256}.part"
    scheme = urlsplit(url).scheme.lower()
    failures = 0
    last_error = "the transfer ended early"
    while True:
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        if have == size:
            return _finish(part, final, sha256)
        on_progress(have, size)
        try:
            if scheme == "file":
                got = _transfer_file(url, part, have, size, on_progress, cancel)
            else:
                got = _transfer_http(url, part, have, size, limits, on_progress, cancel)
        except _TransientError as err:
            got, last_error = -1, str(err)
        if got == size:
            return _finish(part, final, sha256)
        if got >= 0:
            last_error = f"the transfer ended early at {got} bytes"
        failures += 1
        if failures >= limits.attempts:
            have = part.stat().st_size if part.exists() else 0
            raise _reject(
                "truncated",
                f"download incomplete: {have} of {size} bytes after {failures} attempts "
                f"({last_error}); the partial file is kept and a new deploy of the same "
                "sha256 resumes it",
            )
        if cancel.wait(min(5.0, limits.backoff_s * 2 ** (failures - 1))):
            raise _reject("cancelled", "the agent is stopping; the partial download is kept")


def append_chunk(
    downloads: Path, *, sha256: str, size: int, offset: int, data: bytes, max_bytes: int
) -> int:
    """Add one inline chunk (`model.chunk` over MQTT) to `<sha256>.part`.

    Chunks must arrive in order; a chunk that was already received (a re-delivery) is
    accepted and ignored. The complete file is checked and renamed like a download.

    Returns:
        Bytes received so far (== `size` once complete).

    Raises:
        UpdateRejectedError: bad request, over the limit, a gap, or the wrong digest.
    """
    if not SHA256_RE.match(sha256):
        raise _reject("bad_request", "sha256 must be 64 lowercase hex digits")
    if size <= 0 or size > max_bytes:
        raise _reject(
            "oversized", f"inline bundles may have 1 to {max_bytes} bytes (ota.inline_max_bytes)"
        )
    downloads.mkdir(parents=True, exist_ok=True)
    final = downloads / f"{sha256}.bundle"
    if final.is_file() and final.stat().st_size == size:
        return size
    part = downloads / f"{sha256}.part"
    have = part.stat().st_size if part.exists() else 0
    if offset < 0 or offset > have:
        raise _reject(
            "chunk_gap",
            f"chunk at offset {offset}, but {have} bytes were received: resend from {have}",
        )
    end = offset + len(data)
    if end > size:
        raise _reject("oversized", f"chunk ends at {end}, past the announced size {size}")
    if end > have:
        with part.open("ab") as out:
            out.write(data[have - offset :])
            out.flush()
            os.fsync(out.fileno())
        have = end
    if have == size:
        _finish(part, final, sha256)
    return have


def discard(downloads: Path, sha256: str) -> None:
    """Forget a downloaded or partial archive."""
    for suffix in (".part", ".bundle"):
        with contextlib.suppress(FileNotFoundError):
            (downloads / f"{sha256}{suffix}").unlink()
