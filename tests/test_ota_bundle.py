"""Bundle archives: packing, ed25519 signatures, verification before unpacking, safe extraction.

Real archives written by `pack_bundle`, and archives tampered with byte by byte the way an
attacker, a broken transfer or a careless tool would produce them.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.inference.bundle import load_bundle
from edge_agent.ota.archive import extract_archive, inspect_archive, sign_archive
from edge_agent.ota.errors import UpdateRejectedError
from edge_agent.ota.keys import generate_key, key_id, load_private_key, public_key_of
from tests.ota_support import Publisher, make_bundle, read_members, write_members

MAX = 10 * 1024 * 1024


@pytest.fixture
def publisher(tmp_path: Path) -> Publisher:
    return Publisher(tmp_path / "out")


@pytest.fixture
def packed(tmp_path: Path, publisher: Publisher) -> Path:
    return publisher.pack(make_bundle(tmp_path / "src", "1.1.0")).path


def _rejected(archive: Path, trusted: list[str], max_bytes: int = MAX) -> UpdateRejectedError:
    with pytest.raises(UpdateRejectedError) as info:
        inspect_archive(archive, trusted, max_bytes)
    return info.value


def test_pack_sign_verify_extract_roundtrip(tmp_path: Path, publisher: Publisher) -> None:
    src = make_bundle(tmp_path / "src", "1.1.0")
    packed = publisher.pack(src)
    info = inspect_archive(packed.path, [publisher.public], MAX)
    assert info.ref == "imu-test@1.1.0"
    assert info.signer == packed.signer
    # Golden vectors were added to a copy; the source bundle is untouched.
    assert "golden.json" in info.manifest.files
    assert not (src / "golden.json").exists()
    dest = tmp_path / "dest"
    dest.mkdir()
    extract_archive(packed.path, info, dest)
    bundle = load_bundle(dest)
    assert bundle.manifest.version == "1.1.0"
    assert (dest / "manifest.sig").is_file()
    # The archive is reproducible: same bundle and key, same bytes.
    again = publisher.pack(src)
    assert again.sha256 == packed.sha256


def test_flipped_bit_in_the_model_is_rejected(
    tmp_path: Path, packed: Path, publisher: Publisher
) -> None:
    members = read_members(packed)
    for i, (info, data) in enumerate(members):
        if info.name == "model.onnx":
            flipped = bytearray(data)
            flipped[len(flipped) // 2] ^= 0x01
            members[i] = (info, bytes(flipped))
    err = _rejected(write_members(tmp_path / "flip.tar.gz", members), [publisher.public])
    assert (err.stage, err.check) == ("verify", "sha256")
    assert "model.onnx" in err.reason


def test_signature_by_an_untrusted_key_is_rejected(tmp_path: Path, packed: Path) -> None:
    stranger = public_key_of(Ed25519PrivateKey.generate())
    err = _rejected(packed, [stranger])
    assert err.check == "untrusted_key"
    assert "not in ota.trusted_keys" in err.reason


def test_no_trusted_keys_means_nothing_is_accepted(packed: Path) -> None:
    assert _rejected(packed, []).check == "untrusted_key"


def test_key_rotation_accepts_either_trusted_key(tmp_path: Path, publisher: Publisher) -> None:
    new_key = Publisher(tmp_path / "new")
    packed = new_key.pack(make_bundle(tmp_path / "src", "2.0.0"))
    info = inspect_archive(packed.path, [publisher.public, new_key.public], MAX)
    assert info.signer == packed.signer


def test_manifest_changed_after_signing_is_rejected(
    tmp_path: Path, packed: Path, publisher: Publisher
) -> None:
    members = read_members(packed)
    info, data = members[0]
    assert info.name == "manifest.json"
    members[0] = (info, data.replace(b'"1.1.0"', b'"9.9.9"'))
    err = _rejected(write_members(tmp_path / "m.tar.gz", members), [publisher.public])
    assert err.check == "signature"


def test_missing_file_is_rejected(tmp_path: Path, packed: Path, publisher: Publisher) -> None:
    members = [m for m in read_members(packed) if m[0].name != "MODEL_CARD.md"]
    err = _rejected(write_members(tmp_path / "miss.tar.gz", members), [publisher.public])
    assert err.check == "missing_file"
    assert "MODEL_CARD.md" in err.reason


@pytest.mark.parametrize(
    ("name", "kind", "words"),
    [
        ("../evil", tarfile.REGTYPE, "climbs out"),
        ("sub/../../evil", tarfile.REGTYPE, "climbs out"),
        ("/etc/evil", tarfile.REGTYPE, "absolute path"),
        ("link", tarfile.SYMTYPE, "is a link"),
        ("hard", tarfile.LNKTYPE, "is a link"),
        ("dir", tarfile.DIRTYPE, "not a regular file"),
        ("fifo", tarfile.FIFOTYPE, "not a regular file"),
        ("nested/file", tarfile.REGTYPE, "not a plain file name"),
    ],
)
def test_unsafe_entries_are_rejected_before_anything_is_written(
    tmp_path: Path, packed: Path, publisher: Publisher, name: str, kind: bytes, words: str
) -> None:
    members = read_members(packed)
    evil = tarfile.TarInfo(name)
    evil.type = kind
    evil.linkname = "/etc/passwd"
    members.insert(2, (evil, b"pwned" if kind == tarfile.REGTYPE else b""))
    err = _rejected(write_members(tmp_path / "evil.tar.gz", members), [publisher.public])
    assert (err.check, words in err.reason) == ("unsafe_entry", True), err.reason
    assert not (tmp_path / "evil").exists()


def test_duplicate_and_unlisted_entries_are_rejected(
    tmp_path: Path, packed: Path, publisher: Publisher
) -> None:
    members = read_members(packed)
    dup = _rejected(
        write_members(tmp_path / "d.tar.gz", [*members, members[-1]]), [publisher.public]
    )
    assert dup.check == "unsafe_entry"
    extra = (tarfile.TarInfo("extra.bin"), b"x")
    unlisted = _rejected(
        write_members(tmp_path / "u.tar.gz", [*members, extra]), [publisher.public]
    )
    assert unlisted.check == "unlisted_file"


def test_oversized_archive_and_unpacked_size_are_rejected(
    tmp_path: Path, publisher: Publisher
) -> None:
    big = make_bundle(tmp_path / "src", "1.2.0", extra_files={"padding.bin": bytes(2_000_000)})
    packed = publisher.pack(big)
    assert packed.size < 1_000_000  # zeros compress: the archive itself is small...
    err = _rejected(packed.path, [publisher.public], max_bytes=1_000_000)
    assert err.check == "oversized"  # ...but its unpacked files are not
    assert "unpacked" in err.reason
    err = _rejected(packed.path, [publisher.public], max_bytes=packed.size - 1)
    assert err.check == "oversized"


def test_truncated_archive_is_rejected(tmp_path: Path, packed: Path, publisher: Publisher) -> None:
    data = packed.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    assert _rejected(cut, [publisher.public]).check in {"corrupt", "truncated", "missing_file"}


def test_unsigned_archive_is_rejected_and_can_be_signed_later(
    tmp_path: Path, publisher: Publisher
) -> None:
    src = make_bundle(tmp_path / "src", "1.3.0")
    unsigned = Publisher(tmp_path / "u")
    from edge_agent.ota.archive import pack_bundle

    archive = pack_bundle(src, tmp_path / "unsigned.tar.gz")
    assert archive.signer is None
    assert _rejected(archive.path, [unsigned.public]).check == "unsigned"
    signed = sign_archive(archive.path, publisher.key, tmp_path / "signed.tar.gz")
    assert inspect_archive(signed.path, [publisher.public], MAX).signer == signed.signer


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    path = tmp_path / "publisher.key"
    public = generate_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    key = load_private_key(path)
    assert public_key_of(key) == public
    assert len(key_id(key.public_key().public_bytes_raw())) == 16
    with pytest.raises(FileExistsError):
        generate_key(path)
