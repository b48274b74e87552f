"""The gallery key: 32 random bytes from a 0600 file or a systemd credential.

AES-256-GCM needs one secret key; it never lives in the database or the config. It is
read from ``faces.key_file`` (a file readable by its owner only, like an SSH private key),
or from ``$CREDENTIALS_DIRECTORY/<faces.key_credential>`` when systemd hands it over with
``LoadCredential=``/``LoadCredentialEncrypted=`` (a private, read-only ramfs, so the
permission check does not apply there).

A key is identified by a short id derived from it, stored in the gallery, so a wrong key
is refused with both ids named instead of failing on the first row.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edge_agent.durable import fsync_dir
from edge_agent.faces.errors import GalleryKeyError

KEY_BYTES = 32
"""AES-256."""

DEFAULT_CREDENTIAL = "face-gallery-key"
"""Credential name looked up in ``$CREDENTIALS_DIRECTORY`` when no key file is configured."""

NEXT_SUFFIX = ".next"
"""A rotation writes the new key beside the old one with this suffix before switching."""


def generate_key() -> bytes:
    """A fresh random key from the operating system's CSPRNG."""
    return os.urandom(KEY_BYTES)


def key_id(key: bytes) -> str:
    """A 16-hex-digit id of a key: tells keys apart, reveals nothing usable about them."""
    return hashlib.sha256(b"edge-agent face gallery key id\0" + key).hexdigest()[:16]


def parse_key(raw: bytes, source: str) -> bytes:
    """Accept a key as 64 hex digits, base64 of 32 bytes, or 32 raw bytes.

    Raises:
        GalleryKeyError: The content is none of those.
    """
    text = raw.strip()
    if len(text) == 2 * KEY_BYTES:
        with contextlib.suppress(ValueError):
            return bytes.fromhex(text.decode("ascii"))
    if text and len(text) in (43, 44):
        with contextlib.suppress(ValueError, binascii.Error):
            decoded = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
            if len(decoded) == KEY_BYTES:
                return decoded
    if len(raw) == KEY_BYTES:
        return raw
    raise GalleryKeyError(
        source,
        f"holds {len(raw)} bytes that are not a 256-bit key (64 hex digits, base64 of 32 "
        "bytes, or 32 raw bytes); create one with `edge-agent faces keygen PATH`",
    )


@dataclass(frozen=True)
class KeySource:
    """Where the gallery key comes from.

    Attributes:
        path: The file holding it.
        credential: True when systemd provided it (read-only; rotation writes elsewhere).
    """

    path: Path
    credential: bool = False

    def __str__(self) -> str:
        return f"credential {self.path.name}" if self.credential else str(self.path)

    @property
    def next_path(self) -> Path:
        """Where a rotation stages the new key (only for key files)."""
        return self.path.with_name(self.path.name + NEXT_SUFFIX)

    def read(self) -> bytes:
        """Read and parse the key, checking a key file's permissions first.

        Raises:
            GalleryKeyError: Missing, unreadable, readable by group or others, or malformed.
        """
        return read_key_file(self.path, check_mode=not self.credential, label=str(self))


def resolve_key_source(
    key_file: Path | None,
    credential: str = DEFAULT_CREDENTIAL,
    environ: Mapping[str, str] | None = None,
) -> KeySource:
    """Pick the key: the configured file, else the systemd credential.

    Raises:
        GalleryKeyError: Neither is available; the message says how to provide one.
    """
    if key_file is not None:
        return KeySource(Path(key_file))
    env = os.environ if environ is None else environ
    directory = env.get("CREDENTIALS_DIRECTORY")
    if directory:
        path = Path(directory) / credential
        if path.is_file():
            return KeySource(path, credential=True)
    raise GalleryKeyError(
        "(none)",
        "no key configured: set faces.key_file to a 0600 file made by `edge-agent faces "
        f"keygen PATH`, or pass it as the systemd credential {credential!r} "
        f"(LoadCredentialEncrypted={credential}:PATH in the unit)",
    )


def read_key_file(path: Path, *, check_mode: bool = True, label: str | None = None) -> bytes:
    """Read a key file; with ``check_mode`` refuse one that group or others may read.

    Raises:
        GalleryKeyError: As for :meth:`KeySource.read`.
    """
    source = label or str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError as err:
        raise GalleryKeyError(
            source, "does not exist; create it with `edge-agent faces keygen PATH`"
        ) from err
    except OSError as err:
        raise GalleryKeyError(source, f"cannot be opened: {err.strerror}") from err
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # a directory opens, but cannot be read as a file
        os.close(fd)
        raise GalleryKeyError(
            source, "is not a regular file; create the key with `edge-agent faces keygen PATH`"
        )
    with os.fdopen(fd, "rb") as fh:
        if check_mode and info.st_mode & 0o077:
            raise GalleryKeyError(
                source,
                f"is readable or writable by group or others (mode {info.st_mode & 0o777:04o}); "
                f"run `chmod 600 {path}` (the key decrypts every face template)",
            )
        raw = fh.read(4096)
    return parse_key(raw, source)


def write_key_file(path: Path, key: bytes, *, exclusive: bool = True) -> None:
    """Write a key as hex to a new 0600 file, durably (fsync of file and directory).

    Args:
        path: Destination.
        key: The 32-byte key.
        exclusive: Refuse to overwrite an existing file.

    Raises:
        GalleryKeyError: The file exists (with ``exclusive``) or cannot be written.
    """
    if len(key) != KEY_BYTES:
        raise GalleryKeyError(str(path), f"a key is {KEY_BYTES} bytes, got {len(key)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    flags |= os.O_EXCL if exclusive else os.O_TRUNC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError as err:
        raise GalleryKeyError(
            str(path), "already exists; refusing to overwrite a key (it may be in use)"
        ) from err
    except OSError as err:
        raise GalleryKeyError(str(path), f"cannot be created: {err.strerror}") from err
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is filtered by the umask; make it exact
        os.write(fd, key.hex().encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)
