"""The bundle archive: one gzip'd tar with `manifest.json`, `manifest.sig`, then the files.

Layout (flat; written by `pack_bundle`, byte-for-byte reproducible):

    manifest.json   first entry: the bundle manifest, pinning sha256 + size of every file
    manifest.sig    second entry: the detached ed25519 signature over manifest.json's bytes
    <files>         every file the manifest lists (model, card, golden vectors), nothing else

A gateway reads an archive twice. `inspect_archive` checks every entry (names, types, sizes),
the signature, and the sha256 of every file while streaming it, without writing a byte to
disk; only then does `extract_archive` write the files into an empty private directory,
checking their digests again. The manifest coming first means the signature is checked
before any model byte is even read.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from pydantic import ValidationError

from edge_agent.durable import fsync_dir
from edge_agent.inference.bundle import (
    MANIFEST,
    Manifest,
    file_sha256,
    is_safe_name,
    load_bundle,
    write_manifest,
)
from edge_agent.ota.errors import UpdateRejectedError
from edge_agent.ota.keys import SIGNATURE_FILE, sign_manifest, verify_manifest

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ARCHIVE_SUFFIX = ".bundle.tar.gz"
META_LIMIT = 1 << 20
"""Largest manifest.json / manifest.sig accepted."""
_BLOCK = 1 << 16


@dataclass(frozen=True)
class ArchiveInfo:
    """What `inspect_archive` found: the verified manifest and who signed it."""

    manifest_bytes: bytes
    signature_bytes: bytes | None
    manifest: Manifest
    signer: str | None
    unpacked_bytes: int

    @property
    def ref(self) -> str:
        """name@version."""
        return f"{self.manifest.name}@{self.manifest.version}"


@dataclass(frozen=True)
class PackedArchive:
    """An archive written by `pack_bundle` / `sign_archive`: what a deploy command names."""

    path: Path
    name: str
    version: str
    sha256: str
    size: int
    signer: str | None

    def deploy_args(self, url: str) -> dict[str, Any]:
        """The `args` of a `model.deploy` command fetching this archive from `url`."""
        return {"url": url, "sha256": self.sha256, "size": self.size}


def _reject(check: str, reason: str, stage: str = "verify") -> UpdateRejectedError:
    return UpdateRejectedError(stage, check, reason)


def _entry_name(member: tarfile.TarInfo) -> str:
    """The plain file name of an archive entry, or a rejection saying why it is unsafe."""
    name = member.name
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise _reject("unsafe_entry", f"entry {name!r} has an absolute path")
    if ".." in path.parts or "\\" in name:
        raise _reject("unsafe_entry", f"entry {name!r} climbs out of the bundle (`..`)")
    if member.issym() or member.islnk():
        raise _reject("unsafe_entry", f"entry {name!r} is a link; bundles hold plain files only")
    if not member.isreg():
        raise _reject("unsafe_entry", f"entry {name!r} is not a regular file")
    parts = [p for p in path.parts if p != "."]
    if len(parts) != 1 or not is_safe_name(parts[0]):
        raise _reject("unsafe_entry", f"entry {name!r} is not a plain file name (bundles are flat)")
    return parts[0]


def _members(tar: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, str]]:
    for member in tar:
        yield member, _entry_name(member)


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> bytes:
    if member.size > META_LIMIT:
        raise _reject("oversized", f"{name} is {member.size} bytes (limit {META_LIMIT})")
    fh = tar.extractfile(member)
    if fh is None:  # pragma: no cover - regular files always have a stream
        raise _reject("unsafe_entry", f"entry {name!r} has no content")
    data = fh.read()
    if len(data) != member.size:
        raise _reject("truncated", f"{name} is cut short ({len(data)} of {member.size} bytes)")
    return data


def _copy_hashed(src: IO[bytes], dst: IO[bytes] | None, limit: int) -> tuple[str, int]:
    """Stream at most `limit` + 1 bytes from `src` (to `dst`); returns (sha256, bytes)."""
    digest = hashlib.sha256()
    n = 0
    while n <= limit:
        block = src.read(min(_BLOCK, limit + 1 - n))
        if not block:
            break
        digest.update(block)
        if dst is not None:
            dst.write(block)
        n += len(block)
    return digest.hexdigest(), n


def _parse_manifest(data: bytes) -> Manifest:
    try:
        return Manifest.model_validate(json.loads(data))
    except (ValueError, ValidationError) as err:
        raise _reject("manifest", f"{MANIFEST} is not a valid bundle manifest: {err}") from err


def inspect_archive(archive: Path, trusted: Sequence[str] | None, max_bytes: int) -> ArchiveInfo:
    """Verify an archive completely without unpacking it.

    Args:
        archive: The archive file.
        trusted: Public keys whose signatures are accepted. `None` skips the signature
            check (publisher tools re-signing or inspecting their own archives only).
        max_bytes: Largest archive file and largest total of its files' sizes.

    Raises:
        UpdateRejectedError: anything wrong, with the check that failed.
    """
    size = archive.stat().st_size
    if size > max_bytes:
        raise _reject(
            "oversized", f"archive is {size} bytes, more than ota.max_bundle_bytes ({max_bytes})"
        )
    manifest_bytes: bytes | None = None
    signature: bytes | None = None
    manifest: Manifest | None = None
    signer: str | None = None
    seen: set[str] = set()
    total = 0
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for index, (member, name) in enumerate(_members(tar)):
                if name in seen:
                    raise _reject("unsafe_entry", f"entry {name!r} appears twice")
                seen.add(name)
                total += member.size
                if total > max_bytes:
                    raise _reject(
                        "oversized",
                        f"unpacked files exceed ota.max_bundle_bytes ({max_bytes} bytes)",
                    )
                if name == MANIFEST:
                    if index != 0:
                        raise _reject("format", f"{MANIFEST} must be the first entry")
                    manifest_bytes = _read_small(tar, member, name)
                    manifest = _parse_manifest(manifest_bytes)
                    continue
                if manifest is None or manifest_bytes is None:
                    raise _reject(
                        "format",
                        f"{MANIFEST} must be the first entry (is this an archive made by "
                        "`edge-agent models pack`?)",
                    )
                if name == SIGNATURE_FILE:
                    signature = _read_small(tar, member, name)
                    if trusted is not None:
                        signer = verify_manifest(signature, manifest_bytes, trusted).key_id
                    continue
                if trusted is not None and signature is None:
                    raise _reject(
                        "unsigned",
                        f"no {SIGNATURE_FILE} after {MANIFEST}: sign the archive with "
                        "`edge-agent models sign`",
                    )
                entry = manifest.files.get(name)
                if entry is None:
                    raise _reject("unlisted_file", f"{name} is not listed in the manifest")
                if member.size != entry.size:
                    raise _reject(
                        "size", f"{name} is {member.size} bytes, the manifest says {entry.size}"
                    )
                fh = tar.extractfile(member)
                if fh is None:  # pragma: no cover - regular files always have a stream
                    raise _reject("unsafe_entry", f"entry {name!r} has no content")
                digest, n = _copy_hashed(fh, None, entry.size)
                if n != entry.size:
                    raise _reject("truncated", f"{name} is cut short ({n} of {entry.size} bytes)")
                if digest != entry.sha256:
                    raise _reject(
                        "sha256",
                        f"{name} does not match its sha256 in the signed manifest "
                        "(corrupted or tampered with)",
                    )
    except UpdateRejectedError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise _reject("corrupt", f"the archive is corrupt or truncated: {err}") from err
    if manifest is None or manifest_bytes is None:
        raise _reject("format", f"no {MANIFEST} in the archive")
    if trusted is not None and signature is None:
        raise _reject("unsigned", f"no {SIGNATURE_FILE}: sign it with `edge-agent models sign`")
    missing = sorted(set(manifest.files) - seen)
    if missing:
        raise _reject(
            "missing_file",
            f"{', '.join(missing)} listed in the manifest but missing from the archive",
        )
    if manifest.model_file not in manifest.files:
        raise _reject("manifest", f"model_file {manifest.model_file!r} is not listed in files")
    return ArchiveInfo(manifest_bytes, signature, manifest, signer, total)


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def extract_archive(archive: Path, info: ArchiveInfo, dest: Path) -> None:
    """Unpack an inspected archive into the empty directory `dest`, durably.

    Files are created exclusively (never through an existing name or link), hashed again
    as they are written and fsynced; manifest.json and manifest.sig are written from the
    bytes `inspect_archive` verified.

    Raises:
        UpdateRejectedError: the archive changed since it was inspected, or a write failed.
    """
    if any(dest.iterdir()):
        raise _reject("not_empty", f"{dest} is not empty", stage="extract")
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member, name in _members(tar):
                if name in (MANIFEST, SIGNATURE_FILE):
                    continue
                entry = info.manifest.files[name]
                fh = tar.extractfile(member)
                if fh is None:  # pragma: no cover - regular files always have a stream
                    raise _reject("unsafe_entry", f"entry {name!r} has no content")
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(dest / name, flags, 0o644)
                with os.fdopen(fd, "wb") as out:
                    digest, n = _copy_hashed(fh, out, entry.size)
                    out.flush()
                    os.fsync(out.fileno())
                if n != entry.size or digest != entry.sha256:
                    raise _reject("sha256", f"{name} changed since it was verified", "extract")
    except UpdateRejectedError:
        raise
    except KeyError as err:
        raise _reject("unlisted_file", f"{err} is not listed in the manifest", "extract") from err
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise _reject("corrupt", f"unpacking failed: {err}", "extract") from err
    _write_new(dest / MANIFEST, info.manifest_bytes)
    if info.signature_bytes is not None:
        _write_new(dest / SIGNATURE_FILE, info.signature_bytes)
    fsync_dir(dest)


# -- publishing ---------------------------------------------------------------------------------


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _write_archive(
    out: Path, manifest: bytes, signature: bytes | None, files: Sequence[tuple[str, Path]]
) -> PackedArchive:
    """Write the archive (atomically) in the canonical entry order."""
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("wb") as raw:
        with (
            gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            tar.addfile(_tar_info(MANIFEST, len(manifest)), io.BytesIO(manifest))
            if signature is not None:
                tar.addfile(_tar_info(SIGNATURE_FILE, len(signature)), io.BytesIO(signature))
            for name, path in files:
                with path.open("rb") as fh:
                    tar.addfile(_tar_info(name, path.stat().st_size), fh)
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, out)
    parsed = _parse_manifest(manifest)
    signer = json.loads(signature)["key_id"] if signature is not None else None
    return PackedArchive(
        out, parsed.name, parsed.version, file_sha256(out), out.stat().st_size, signer
    )


def pack_bundle(
    source: Path,
    out: Path,
    *,
    key: Ed25519PrivateKey | None = None,
    golden: bool = True,
    atol: float = 1e-3,
    rtol: float = 1e-3,
) -> PackedArchive:
    """Archive a bundle directory, adding golden vectors when it has none, signed by `key`.

    The source directory is left untouched: golden vectors are computed on a copy, whose
    manifest is rewritten (every file re-hashed) before it is signed.

    Raises:
        BundleError: the source is not a valid bundle.
        RuntimeBackendError: the model cannot run, so golden vectors cannot be computed.
    """
    bundle = load_bundle(source)
    with tempfile.TemporaryDirectory(prefix="edge-agent-pack-") as tmp:
        work = Path(tmp) / "bundle"
        work.mkdir()
        for name in bundle.manifest.files:
            shutil.copyfile(source / name, work / name)
        manifest_bytes = (source / MANIFEST).read_bytes()
        raw = json.loads(manifest_bytes)
        if golden and "golden" not in raw:
            from edge_agent.ota.staging import write_golden

            shutil.copyfile(source / MANIFEST, work / MANIFEST)
            raw["golden"] = write_golden(load_bundle(work), atol=atol, rtol=rtol)
            write_manifest(work, {k: v for k, v in raw.items() if k != "files"})
            manifest_bytes = (work / MANIFEST).read_bytes()
        manifest = _parse_manifest(manifest_bytes)
        signature = sign_manifest(key, manifest_bytes) if key is not None else None
        files = [(name, work / name) for name in sorted(manifest.files)]
        return _write_archive(out, manifest_bytes, signature, files)


def sign_archive(archive: Path, key: Ed25519PrivateKey, out: Path | None = None) -> PackedArchive:
    """(Re-)sign an archive: every file is checked against its manifest first.

    Raises:
        UpdateRejectedError: the archive is damaged or not a bundle archive.
    """
    info = inspect_archive(archive, None, 1 << 62)
    with tempfile.TemporaryDirectory(prefix="edge-agent-sign-") as tmp:
        work = Path(tmp)
        extract_archive(archive, info, work)
        files = [(name, work / name) for name in sorted(info.manifest.files)]
        return _write_archive(
            out or archive,
            info.manifest_bytes,
            sign_manifest(key, info.manifest_bytes),
            files,
        )


def verify_installed(path: Path, trusted: Sequence[str]) -> tuple[str, str]:
    """Re-verify an installed version directory: its signature and every file's digest.

    Returns:
        (name@version, signer key id).

    Raises:
        UpdateRejectedError: unsigned, untrusted, or the signature does not match.
        BundleError: a file is missing or does not match the manifest.
    """
    manifest = (path / MANIFEST).read_bytes()
    sig_path = path / SIGNATURE_FILE
    if not sig_path.is_file():
        raise _reject("unsigned", f"{path} has no {SIGNATURE_FILE} (not installed over the air)")
    signer = verify_manifest(sig_path.read_bytes(), manifest, trusted).key_id
    return load_bundle(path).ref, signer
