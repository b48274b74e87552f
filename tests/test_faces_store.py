"""The encrypted gallery: real SQLite files, real AES-GCM, real key files and permissions."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from edge_agent.faces.errors import GalleryError, GalleryKeyError, WrongKeyError
from edge_agent.faces.keys import (
    KeySource,
    generate_key,
    key_id,
    parse_key,
    read_key_file,
    resolve_key_source,
    write_key_file,
)
from edge_agent.faces.store import GalleryStore, gallery_checksum, open_gallery, template_digest

MODEL = "face-embed-demo@1.0.0"


def _vectors(n: int, dim: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _raw_file_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    for extra in (path.with_name(path.name + "-journal"), path.with_name(path.name + "-wal")):
        if extra.exists():
            data += extra.read_bytes()
    return data


def test_the_database_file_holds_no_plaintext_embedding_or_name(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    templates = _vectors(20)
    with GalleryStore(db, generate_key()) as store:
        for i in range(10):
            store.enroll(
                f"emp-{i}", templates[2 * i : 2 * i + 2], MODEL, actor="t", name=f"Ada Lovelace {i}"
            )
        store.remove("emp-3", actor="t")
        assert store.load_templates(MODEL).vectors.shape == (18, 128)
    raw = _raw_file_bytes(db)
    for vector in templates:
        for dtype in ("<f4", "<f8", "<f2"):
            blob = vector.astype(dtype).tobytes()
            # Any 16-byte run of a template's bytes would give it away.
            for start in range(0, len(blob) - 16, 64):
                assert blob[start : start + 16] not in raw
    assert b"Ada Lovelace" not in raw
    assert b"Lovelace".hex().encode() not in raw
    assert os.stat(db).st_mode & 0o777 == 0o600


def test_a_wrong_key_is_refused_with_both_ids_and_touches_nothing(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    key = generate_key()
    with GalleryStore(db, key) as store:
        store.enroll("emp-1", _vectors(2), MODEL, actor="t", name="A")
    before = (db.read_bytes(), db.stat().st_mtime_ns, sorted(p.name for p in tmp_path.iterdir()))
    other = generate_key()
    with pytest.raises(WrongKeyError) as caught:
        GalleryStore(db, other, key_source="/etc/edge-agent/face.key")
    err = caught.value
    assert err.expected_key_id == key_id(key)
    assert err.key_id == key_id(other)
    assert "/etc/edge-agent/face.key" in str(err)
    assert key_id(key) in str(err)
    assert isinstance(err, PermissionError)
    after = (db.read_bytes(), db.stat().st_mtime_ns, sorted(p.name for p in tmp_path.iterdir()))
    assert after == before
    with GalleryStore(db, key) as store:  # the right key still opens it, data intact
        assert [i.id for i in store.identities()] == ["emp-1"]


def test_not_a_gallery_and_a_moved_row_are_reported(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t(x)")
    conn.commit()
    conn.close()
    with pytest.raises(GalleryError, match="not a face gallery"):
        GalleryStore(other, generate_key())
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(GalleryError, match="not a SQLite database"):
        GalleryStore(tmp_path / "junk.db", generate_key())

    db = tmp_path / "g.db"
    key = generate_key()
    with GalleryStore(db, key) as store:
        store.enroll("a", _vectors(1, seed=1), MODEL, actor="t", name="A")
        store.enroll("b", _vectors(1, seed=2), MODEL, actor="t", name="B")
    conn = sqlite3.connect(db)
    conn.execute("UPDATE templates SET identity_id = 'b' WHERE identity_id = 'a'")  # a swap
    conn.commit()
    conn.close()
    with GalleryStore(db, key) as store, pytest.raises(GalleryError, match="does not decrypt"):
        store.load_templates(MODEL)


def test_key_files_must_be_private_and_well_formed(tmp_path: Path) -> None:
    path = tmp_path / "face.key"
    key = generate_key()
    write_key_file(path, key)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_key_file(path) == key
    with pytest.raises(GalleryKeyError, match="already exists"):
        write_key_file(path, generate_key())
    path.chmod(0o640)
    with pytest.raises(GalleryKeyError, match=r"chmod 600"):
        read_key_file(path)
    path.chmod(0o600)
    path.write_text("too short\n")
    with pytest.raises(GalleryKeyError, match="not a 256-bit key"):
        read_key_file(path)
    with pytest.raises(GalleryKeyError, match="does not exist"):
        read_key_file(tmp_path / "missing.key")
    import base64

    assert parse_key(base64.b64encode(key), "x") == key
    assert parse_key(key, "x") == key
    assert parse_key(key.hex().upper().encode() + b"\n", "x") == key


def test_key_from_systemd_credentials_directory(tmp_path: Path) -> None:
    """$CREDENTIALS_DIRECTORY is a private ramfs under systemd; here a plain directory."""
    creds = tmp_path / "creds"
    creds.mkdir()
    key = generate_key()
    (creds / "face-gallery-key").write_text(key.hex())
    (creds / "face-gallery-key").chmod(0o440)  # group bit set: fine for a credential
    source = resolve_key_source(None, "face-gallery-key", {"CREDENTIALS_DIRECTORY": str(creds)})
    assert source.credential
    assert source.read() == key
    assert "credential face-gallery-key" in str(source)
    with pytest.raises(GalleryKeyError, match="no key configured"):
        resolve_key_source(None, "face-gallery-key", {})
    explicit = resolve_key_source(tmp_path / "k", "x", {"CREDENTIALS_DIRECTORY": str(creds)})
    assert explicit == KeySource(tmp_path / "k")


def test_rotation_re_seals_everything_and_an_interrupted_one_is_finished(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    key_path = tmp_path / "face.key"
    old = generate_key()
    write_key_file(key_path, old)
    source = KeySource(key_path)
    templates = _vectors(4)
    with open_gallery(db, source) as store:
        store.enroll("a", templates[:2], MODEL, actor="t", name="Alice", images=[b"PIXELS"])
        store.enroll("b", templates[2:], MODEL, actor="t", name="Bob")
        checksum = store.checksum(MODEL).checksum
        # Rotation as `faces rotate-key` does it, stopped before the final rename.
        new = generate_key()
        write_key_file(source.next_path, new)
        assert store.rotate_key(new, actor="t") == key_id(new)
    assert key_path.read_text().strip() == old.hex()
    with pytest.raises(WrongKeyError):
        GalleryStore(db, old)
    with open_gallery(db, source) as store:  # finds the staged key and moves it into place
        assert store.key_id == key_id(new)
        assert store.checksum(MODEL).checksum == checksum
        assert [i.name for i in store.identities()] == ["Alice", "Bob"]
        assert store.image_count() == 1
        assert [e.action for e in store.audit_log()][-1] == "rotate_key"
    assert not source.next_path.exists()
    assert read_key_file(key_path) == new


def test_enrol_is_idempotent_replace_replaces_and_remove_cascades(tmp_path: Path) -> None:
    v = _vectors(5)
    with GalleryStore(tmp_path / "g.db", generate_key()) as store:
        assert store.enroll("a", v[:3], MODEL, actor="t", name="A") == 3
        assert store.enroll("a", v[:3], MODEL, actor="t") == 0  # a re-delivered batch
        assert store.enroll("a", v[3:4], "other@2", actor="t") == 1
        assert store.template_counts() == {MODEL: 3, "other@2": 1}
        assert store.enroll("a", v[4:], MODEL, actor="t", replace=True) == 1
        assert store.template_counts() == {MODEL: 1, "other@2": 1}
        with pytest.raises(ValueError, match="give it a name"):
            store.enroll("new", v[:1], MODEL, actor="t")
        with pytest.raises(ValueError, match="all zeros"):
            store.enroll("a", np.zeros((1, 128)), MODEL, actor="t")
        assert store.remove("a", actor="t") == 2
        assert store.remove("a", actor="t") is None
        assert store.template_counts() == {}
        actions = [(e.action, e.templates) for e in store.audit_log()]
        assert actions == [
            ("enroll", 3),
            ("enroll", 0),
            ("enroll", 1),
            ("replace", 1),
            ("remove", 2),
        ]


def test_the_audit_log_is_append_only_and_its_chain_detects_edits(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    with GalleryStore(db, generate_key()) as store:
        for i in range(3):
            store.enroll(f"p{i}", _vectors(1, seed=i), MODEL, actor="cli:tech", name=f"P{i}")
        assert store.verify_audit() is None
    conn = sqlite3.connect(db)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE audit SET actor = 'someone else'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit")
    # Someone with write access drops the guard and rewrites history: the chain shows it.
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET actor = 'nobody' WHERE id = 2")
    conn.commit()
    conn.close()
    with GalleryStore(db, store._key) as reopened:
        assert reopened.verify_audit() == 2


def test_checksum_is_order_independent_and_names_the_identity_that_differs(
    tmp_path: Path,
) -> None:
    v = _vectors(6)
    with GalleryStore(tmp_path / "a.db", generate_key()) as a:
        for i in range(3):
            a.enroll(f"id{i}", v[2 * i : 2 * i + 2], MODEL, actor="t", name="x")
        ours = a.checksum(MODEL)
    # The cloud computes it from the vectors it sent, in any order.
    cloud = gallery_checksum(
        MODEL, [(f"id{i // 2}", template_digest(v[i])) for i in reversed(range(6))]
    )
    assert cloud == ours
    assert ours.identities == 3
    assert ours.templates == 6
    expected_id1 = hashlib.sha256(
        "\n".join(sorted(template_digest(x) for x in v[2:4])).encode()
    ).hexdigest()
    assert ours.per_identity["id1"] == expected_id1
    changed = gallery_checksum(
        MODEL,
        [(f"id{i // 2}", template_digest(v[i] if i != 3 else v[i] * 2)) for i in range(6)],
    )
    assert changed.checksum != ours.checksum
    diff = [k for k in ours.per_identity if ours.per_identity[k] != changed.per_identity[k]]
    assert diff == ["id1"]
