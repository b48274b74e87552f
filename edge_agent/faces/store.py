"""The gallery on disk: SQLite, every template and name sealed with AES-256-GCM.

What is stored in clear: identity ids (the deployment's own pseudonymous ids, e.g. badge
numbers, so rows can be found and reconciled), model references, counts, timestamps and
the audit log. What is sealed: display names, template vectors and (only when enabled)
enrolment images. Each sealed value is ``nonce (12 bytes) || ciphertext || tag`` and is
bound by its associated data to the identity (and model) it belongs to, so a row moved to
another identity no longer decrypts.

The database uses a rollback journal rather than WAL so a refused open (wrong key) reads
the file and changes nothing, and ``secure_delete`` so removed templates are overwritten
rather than left in free pages. Gallery changes are rare; commits are ``synchronous=FULL``.

One connection, guarded by a lock: the daemon's face worker and the MQTT sync handlers may
use the same store from different threads. Other processes (the CLI while the daemon
runs) change the file through their own connection; :meth:`GalleryStore.data_version`
lets the daemon notice.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge_agent.durable import fsync_dir
from edge_agent.faces.errors import GalleryError, WrongKeyError
from edge_agent.faces.keys import KEY_BYTES, KeySource, key_id, read_key_file

FORMAT = 1
"""Gallery schema version written to ``meta``."""

_NONCE = 12
_CHECK_PLAINTEXT = b"edge-agent face gallery"
_GENESIS = "0" * 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS identities(
    id TEXT PRIMARY KEY,
    name BLOB NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS templates(
    id INTEGER PRIMARY KEY,
    identity_id TEXT NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    model TEXT NOT NULL,
    dim INTEGER NOT NULL,
    sealed BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS templates_identity ON templates(identity_id, model);
CREATE INDEX IF NOT EXISTS templates_model ON templates(model);
CREATE TABLE IF NOT EXISTS images(
    id INTEGER PRIMARY KEY,
    identity_id TEXT NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    sealed BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit(
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    action TEXT NOT NULL,
    identity_id TEXT,
    model TEXT,
    templates INTEGER NOT NULL,
    actor TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the face audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the face audit log is append-only'); END;
"""


def template_digest(vector: npt.NDArray[np.float32]) -> str:
    """sha256 of a template's float32 little-endian bytes: what gallery checksums are made of."""
    return hashlib.sha256(np.ascontiguousarray(vector, dtype="<f4").tobytes()).hexdigest()


@dataclass(frozen=True)
class IdentityInfo:
    """One enrolled identity as `faces list` shows it.

    Attributes:
        id: The deployment's identity id.
        name: Display name (decrypted).
        templates: Template count per model reference.
        created: Unix time of the first enrolment.
        updated: Unix time of the last change.
    """

    id: str
    name: str
    templates: dict[str, int]
    created: float
    updated: float


@dataclass(frozen=True)
class AuditEntry:
    """One row of the append-only audit log.

    Attributes:
        id: Row id, increasing.
        ts: Unix time.
        action: ``enroll``, ``replace``, ``remove``, ``rotate_key``.
        identity_id: Identity concerned (None for gallery-wide actions).
        model: Model reference of the templates concerned.
        templates: Templates added or removed.
        actor: Who did it: ``cli:<user>``, ``mqtt:<request id>``.
        detail: Free text, never biometric data.
        hash: sha256 chaining this row to the previous one.
    """

    id: int
    ts: float
    action: str
    identity_id: str | None
    model: str | None
    templates: int
    actor: str
    detail: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, as published in ``face.audit`` events."""
        return {
            "audit_id": self.id,
            "audit_ts": self.ts,
            "action": self.action,
            "identity": self.identity_id,
            "model": self.model,
            "templates": self.templates,
            "actor": self.actor,
            "detail": self.detail,
        }


@dataclass
class TemplateSet:
    """Every template of one model, decrypted: what the in-memory index is built from.

    Attributes:
        model: Model reference.
        identities: Identity ids, indexed by ``owners``.
        owners: Per template, the index of its identity in ``identities``.
        vectors: ``(n, dim)`` float32 templates as stored (not normalised).
        digests: Per template, :func:`template_digest`.
    """

    model: str
    identities: list[str]
    owners: npt.NDArray[np.int32]
    vectors: npt.NDArray[np.float32]
    digests: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GalleryChecksum:
    """What the cloud compares to reconcile its copy of the gallery (see docs/face.md).

    Attributes:
        model: Model reference covered.
        identities: Identities with at least one template of the model.
        templates: Templates of the model.
        checksum: sha256 over ``"<id>:<identity digest>\\n"`` lines in id order.
        per_identity: Identity digest (sha256 over the sorted template digests joined by
            newlines) per identity id.
    """

    model: str
    identities: int
    templates: int
    checksum: str
    per_identity: dict[str, str]


def gallery_checksum(model: str, digests: Iterable[tuple[str, str]]) -> GalleryChecksum:
    """Compute the reconciliation checksum from ``(identity id, template digest)`` pairs."""
    by_identity: dict[str, list[str]] = {}
    count = 0
    for identity, digest in digests:
        by_identity.setdefault(identity, []).append(digest)
        count += 1
    per_identity = {
        identity: hashlib.sha256("\n".join(sorted(ds)).encode("ascii")).hexdigest()
        for identity, ds in by_identity.items()
    }
    total = hashlib.sha256()
    for identity in sorted(per_identity):
        total.update(f"{identity}:{per_identity[identity]}\n".encode())
    return GalleryChecksum(model, len(per_identity), count, total.hexdigest(), per_identity)


class GalleryStore:
    """The encrypted gallery file. Open with a key; wrong keys are refused up front.

    Args:
        path: SQLite file; created (mode 0600) if missing.
        key: The 32-byte AES key.
        key_source: How to name the key in errors.
        create: Create a new gallery when the file does not exist.

    Raises:
        WrongKeyError: The gallery was sealed with another key; nothing was changed.
        GalleryError: The file is not a gallery or cannot be opened.
    """

    def __init__(
        self, path: Path, key: bytes, *, key_source: str = "key", create: bool = True
    ) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a gallery key is {KEY_BYTES} bytes")
        self.path = Path(path)
        self.key_source = key_source
        self._lock = threading.RLock()
        self._key = key
        self._aead = AESGCM(key)
        self._conn = self._connect(create)

    # -- lifecycle -------------------------------------------------------------------------

    def _connect(self, create: bool) -> sqlite3.Connection:
        exists = self.path.exists()
        if self.path.is_dir():
            raise GalleryError(
                f"{self.path}: a directory, not a gallery file; point faces.gallery_path at a "
                "file in it (or unset it for the default beside storage.path)"
            )
        if not exists and not create:
            raise GalleryError(f"{self.path}: no gallery here (enrol someone to create it)")
        if not exists:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.close(fd)
        try:
            conn = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as err:
            raise GalleryError(f"{self.path}: cannot open: {err}") from err
        try:
            self._check_existing(conn)
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA secure_delete = ON")
            conn.execute("PRAGMA synchronous = FULL")
            if not self._has_meta(conn):
                self._create(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _has_meta(self, conn: sqlite3.Connection) -> bool:
        try:
            row = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
            ).fetchone()
        except sqlite3.DatabaseError as err:
            raise GalleryError(
                f"{self.path}: not a SQLite database ({err}); restore the gallery from a "
                "backup, or check faces.gallery_path"
            ) from err
        return row is not None

    def _check_existing(self, conn: sqlite3.Connection) -> None:
        """Read-only checks: format and key, before anything is written."""
        if not self._has_meta(conn):
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise GalleryError(f"{self.path}: a SQLite file but not a face gallery")
            return
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        fmt = int(meta.get("format", "0"))
        if fmt != FORMAT:
            raise GalleryError(
                f"{self.path}: gallery format {fmt}, this edge-agent reads format {FORMAT}"
            )
        expected = meta.get("key_id", "")
        if expected != key_id(self._key):
            raise WrongKeyError(self.key_source, self.path, expected, key_id(self._key))
        check = conn.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
        try:
            plain = self._open(bytes.fromhex(check[0]), b"key-check")
        except (InvalidTag, ValueError, TypeError) as err:
            raise GalleryError(
                f"{self.path}: the key id matches but the key check does not decrypt; "
                "the gallery is damaged — restore it from a backup"
            ) from err
        if plain != _CHECK_PLAINTEXT:
            raise GalleryError(f"{self.path}: key check holds unexpected content")

    def _create(self, conn: sqlite3.Connection) -> None:
        # Schema and meta in one transaction: a crash leaves no table, or a whole gallery.
        # The values are hex digits and numbers made here, never caller input.
        values = [
            ("format", str(FORMAT)),
            ("key_id", key_id(self._key)),
            ("key_check", self._seal(_CHECK_PLAINTEXT, b"key-check").hex()),
            ("created", repr(time.time())),
        ]
        rows = ", ".join(f"('{k}', '{v}')" for k, v in values)
        conn.executescript(
            f"BEGIN IMMEDIATE;{_SCHEMA}INSERT INTO meta(key, value) VALUES {rows};COMMIT;"  # noqa: S608
        )

    def close(self) -> None:
        """Close the database; safe to call twice."""
        with self._lock:
            conn, self._conn = self._conn, None  # type: ignore[assignment]
            if conn is not None:
                conn.close()

    def __enter__(self) -> GalleryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def key_id(self) -> str:
        """Id of the key the gallery is sealed with."""
        return key_id(self._key)

    # -- sealing ---------------------------------------------------------------------------

    def _seal(self, data: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, data, aad)

    def _open(self, sealed: bytes, aad: bytes, aead: AESGCM | None = None) -> bytes:
        return (aead or self._aead).decrypt(sealed[:_NONCE], sealed[_NONCE:], aad)

    @staticmethod
    def _template_aad(identity: str, model: str, dim: int) -> bytes:
        return f"template\0{identity}\0{model}\0{dim}".encode()

    @staticmethod
    def _name_aad(identity: str) -> bytes:
        return f"name\0{identity}".encode()

    @staticmethod
    def _image_aad(identity: str) -> bytes:
        return f"image\0{identity}".encode()

    def _unseal(self, sealed: bytes, aad: bytes, what: str) -> bytes:
        try:
            return self._open(sealed, aad)
        except InvalidTag as err:
            raise GalleryError(
                f"{self.path}: {what} does not decrypt (tampered, or moved between rows)"
            ) from err

    # -- changes ---------------------------------------------------------------------------

    def enroll(
        self,
        identity: str,
        vectors: npt.NDArray[np.floating],
        model: str,
        *,
        actor: str,
        name: str | None = None,
        replace: bool = False,
        images: Sequence[bytes] = (),
        action: str | None = None,
    ) -> int:
        """Add templates to an identity (created if new), in one transaction, audited.

        Templates already present for the identity and model (same digest) are skipped,
        so a re-delivered sync batch does not duplicate them.

        Args:
            identity: Identity id.
            vectors: ``(n, dim)`` templates (stored as float32, as given).
            model: ``name@version`` of the model that produced them.
            actor: Who asks, for the audit log.
            name: Display name; required for a new identity, updates an existing one.
            replace: Drop the identity's existing templates of this model first.
            images: Enrolment images to keep, sealed (only when the deployment enabled it).
            action: Audit action name (default ``enroll`` or ``replace``).

        Returns:
            Templates added.

        Raises:
            ValueError: Bad id, empty or non-finite vectors, or a new identity without name.
        """
        array = _as_templates(vectors)
        _check_identity(identity)
        now = time.time()
        dim = array.shape[1]
        with self._lock, _Transaction(self._conn) as conn:
            row = conn.execute("SELECT 1 FROM identities WHERE id = ?", (identity,)).fetchone()
            if row is None:
                if not name:
                    raise ValueError(f"identity {identity!r} is new: give it a name")
                conn.execute(
                    "INSERT INTO identities(id, name, created, updated) VALUES (?, ?, ?, ?)",
                    (identity, self._seal(name.encode(), self._name_aad(identity)), now, now),
                )
            else:
                if name:
                    conn.execute(
                        "UPDATE identities SET name = ? WHERE id = ?",
                        (self._seal(name.encode(), self._name_aad(identity)), identity),
                    )
                conn.execute("UPDATE identities SET updated = ? WHERE id = ?", (now, identity))
            removed = 0
            if replace:
                removed = conn.execute(
                    "DELETE FROM templates WHERE identity_id = ? AND model = ?",
                    (identity, model),
                ).rowcount
            existing = set() if replace else self._digests_of(conn, identity, model)
            rows = []
            for vector in array:
                digest = template_digest(vector)
                if digest in existing:
                    continue
                existing.add(digest)
                sealed = self._seal(
                    vector.astype("<f4").tobytes(), self._template_aad(identity, model, dim)
                )
                rows.append((identity, model, dim, sealed, now))
            conn.executemany(
                "INSERT INTO templates(identity_id, model, dim, sealed, created) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            for image in images:
                conn.execute(
                    "INSERT INTO images(identity_id, sealed, created) VALUES (?, ?, ?)",
                    (identity, self._seal(image, self._image_aad(identity)), now),
                )
            detail = f"{len(rows)} added"
            if replace:
                detail += f", {removed} replaced"
            if len(rows) < len(array):
                detail += f", {len(array) - len(rows)} already present"
            if images:
                detail += f", {len(images)} image(s) kept"
            self._audit(
                conn,
                action or ("replace" if replace else "enroll"),
                identity,
                model,
                len(rows),
                actor,
                detail,
            )
        return len(rows)

    def remove(self, identity: str, *, actor: str) -> int | None:
        """Delete an identity with its templates and images, audited.

        Returns:
            Templates removed, or None when the identity is not enrolled (nothing audited).
        """
        with self._lock, _Transaction(self._conn) as conn:
            if (
                conn.execute("SELECT 1 FROM identities WHERE id = ?", (identity,)).fetchone()
                is None
            ):
                return None
            removed = conn.execute(
                "DELETE FROM templates WHERE identity_id = ?", (identity,)
            ).rowcount
            conn.execute("DELETE FROM images WHERE identity_id = ?", (identity,))
            conn.execute("DELETE FROM identities WHERE id = ?", (identity,))
            self._audit(conn, "remove", identity, None, removed, actor, "identity removed")
        return int(removed)

    def rotate_key(self, new_key: bytes, *, actor: str) -> str:
        """Re-seal every row with ``new_key`` in one transaction; returns the new key id.

        The caller stores the new key durably *before* calling this (see
        ``edge-agent faces rotate-key``), so a crash at any point leaves a gallery that one
        of the two keys opens.
        """
        if len(new_key) != KEY_BYTES:
            raise ValueError(f"a gallery key is {KEY_BYTES} bytes")
        new_aead = AESGCM(new_key)

        def reseal(sealed: bytes, aad: bytes) -> bytes:
            nonce = os.urandom(_NONCE)
            return nonce + new_aead.encrypt(nonce, self._unseal(sealed, aad, "a row"), aad)

        old_id, new_id = key_id(self._key), key_id(new_key)
        with self._lock, _Transaction(self._conn) as conn:
            for ident, name in conn.execute("SELECT id, name FROM identities").fetchall():
                conn.execute(
                    "UPDATE identities SET name = ? WHERE id = ?",
                    (reseal(name, self._name_aad(ident)), ident),
                )
            for row_id, ident, model, dim, sealed in conn.execute(
                "SELECT id, identity_id, model, dim, sealed FROM templates"
            ).fetchall():
                conn.execute(
                    "UPDATE templates SET sealed = ? WHERE id = ?",
                    (reseal(sealed, self._template_aad(ident, model, dim)), row_id),
                )
            for row_id, ident, sealed in conn.execute(
                "SELECT id, identity_id, sealed FROM images"
            ).fetchall():
                conn.execute(
                    "UPDATE images SET sealed = ? WHERE id = ?",
                    (reseal(sealed, self._image_aad(ident)), row_id),
                )
            check = new_aead.encrypt(nonce := os.urandom(_NONCE), _CHECK_PLAINTEXT, b"key-check")
            conn.executemany(
                "UPDATE meta SET value = ? WHERE key = ?",
                [(new_id, "key_id"), ((nonce + check).hex(), "key_check")],
            )
            self._audit(conn, "rotate_key", None, None, 0, actor, f"key {old_id} -> {new_id}")
            self._key, self._aead = new_key, new_aead
        return new_id

    def _audit(
        self,
        conn: sqlite3.Connection,
        action: str,
        identity: str | None,
        model: str | None,
        templates: int,
        actor: str,
        detail: str,
    ) -> None:
        row = conn.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        prev = row[0] if row else _GENESIS
        ts = time.time()
        digest = _audit_hash(prev, ts, action, identity, model, templates, actor, detail)
        conn.execute(
            "INSERT INTO audit(ts, action, identity_id, model, templates, actor, detail, prev, "
            "hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (ts, action, identity, model, templates, actor, detail, prev, digest),
        )

    # -- reads -----------------------------------------------------------------------------

    def _digests_of(self, conn: sqlite3.Connection, identity: str, model: str) -> set[str]:
        out = set()
        for dim, sealed in conn.execute(
            "SELECT dim, sealed FROM templates WHERE identity_id = ? AND model = ?",
            (identity, model),
        ):
            plain = self._unseal(sealed, self._template_aad(identity, model, dim), "a template")
            out.add(hashlib.sha256(plain).hexdigest())
        return out

    def load_templates(self, model: str) -> TemplateSet:
        """Decrypt every template of ``model`` (identities in id order)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT identity_id, dim, sealed FROM templates WHERE model = ? "
                "ORDER BY identity_id, id",
                (model,),
            ).fetchall()
        identities: list[str] = []
        owners = np.empty(len(rows), dtype=np.int32)
        dims = {r[1] for r in rows}
        if len(dims) > 1:
            raise GalleryError(f"{self.path}: templates of {model} have several dimensions {dims}")
        dim = dims.pop() if dims else 0
        vectors = np.empty((len(rows), dim), dtype=np.float32)
        digests = []
        last = None
        for i, (identity, _dim, sealed) in enumerate(rows):
            plain = self._unseal(sealed, self._template_aad(identity, model, dim), "a template")
            if identity != last:
                identities.append(identity)
                last = identity
            owners[i] = len(identities) - 1
            vectors[i] = np.frombuffer(plain, dtype="<f4")
            digests.append(hashlib.sha256(plain).hexdigest())
        return TemplateSet(model, identities, owners, vectors, digests)

    def checksum(self, model: str) -> GalleryChecksum:
        """Reconciliation checksum of the templates of ``model``."""
        templates = self.load_templates(model)
        return gallery_checksum(
            model,
            (
                (templates.identities[o], d)
                for o, d in zip(templates.owners, templates.digests, strict=True)
            ),
        )

    def identities(self) -> list[IdentityInfo]:
        """Every identity with its decrypted name and template counts, in id order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, name, created, updated FROM identities ORDER BY id"
            ).fetchall()
            counts: dict[str, dict[str, int]] = {}
            for ident, model, n in self._conn.execute(
                "SELECT identity_id, model, count(*) FROM templates GROUP BY identity_id, model"
            ):
                counts.setdefault(ident, {})[model] = n
        return [
            IdentityInfo(
                ident,
                self._unseal(name, self._name_aad(ident), "a name").decode(),
                counts.get(ident, {}),
                created,
                updated,
            )
            for ident, name, created, updated in rows
        ]

    def name_of(self, identity: str) -> str | None:
        """Decrypted display name of one identity, or None if not enrolled."""
        with self._lock:
            row = self._conn.execute(
                "SELECT name FROM identities WHERE id = ?", (identity,)
            ).fetchone()
        if row is None:
            return None
        return self._unseal(row[0], self._name_aad(identity), "a name").decode()

    def template_counts(self) -> dict[str, int]:
        """Templates per model reference."""
        with self._lock:
            return dict(self._conn.execute("SELECT model, count(*) FROM templates GROUP BY model"))

    def image_count(self) -> int:
        """Enrolment images kept (0 unless the deployment enabled keeping them)."""
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM images").fetchone()[0])

    def audit_log(self, since_id: int = 0, limit: int = 1000) -> list[AuditEntry]:
        """Audit rows after ``since_id``, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, ts, action, identity_id, model, templates, actor, detail, hash "
                "FROM audit WHERE id > ? ORDER BY id LIMIT ?",
                (since_id, limit),
            ).fetchall()
        return [AuditEntry(*row) for row in rows]

    def verify_audit(self) -> int | None:
        """Check the audit hash chain; returns the id of the first broken row, or None."""
        prev = _GENESIS
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, ts, action, identity_id, model, templates, actor, detail, prev, hash "
                "FROM audit ORDER BY id"
            ).fetchall()
        for row_id, ts, action, ident, model, templates, actor, detail, row_prev, digest in rows:
            expected = _audit_hash(prev, ts, action, ident, model, templates, actor, detail)
            if row_prev != prev or digest != expected:
                return int(row_id)
            prev = digest
        return None

    def get_meta(self, key: str) -> str | None:
        """A value of the ``meta`` table (e.g. the daemon's published-audit cursor)."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Set a ``meta`` value; the gallery's own keys (format, key id) are refused."""
        if key in ("format", "key_id", "key_check", "created"):
            raise ValueError(f"meta key {key!r} is managed by the gallery")
        with self._lock, _Transaction(self._conn) as conn:
            conn.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def data_version(self) -> int:
        """Changes when another connection committed (SQLite ``PRAGMA data_version``)."""
        with self._lock:
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` on any exception."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _audit_hash(
    prev: str,
    ts: float,
    action: str,
    identity: str | None,
    model: str | None,
    templates: int,
    actor: str,
    detail: str,
) -> str:
    fields = [prev, repr(float(ts)), action, identity or "", model or "", str(templates), actor]
    return hashlib.sha256("\0".join([*fields, detail]).encode()).hexdigest()


def _check_identity(identity: str) -> None:
    if not identity or len(identity) > 128 or not identity.isprintable():
        raise ValueError(f"identity id {identity!r} must be 1..128 printable characters")


def _as_templates(vectors: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"templates must be (n, dim) with n, dim ≥ 1, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("templates must be finite numbers")
    if np.any(np.linalg.norm(array, axis=1) == 0):
        raise ValueError("a template of all zeros has no direction and cannot be matched")
    return array


def open_gallery(path: Path, source: KeySource, *, create: bool = True) -> GalleryStore:
    """Open the gallery with the key from ``source``, finishing an interrupted rotation.

    ``edge-agent faces rotate-key`` writes the new key to ``<key file>.next``, re-seals the
    gallery in one transaction, then renames the new key over the old one. If it stopped
    between the last two steps, the gallery opens only with the ``.next`` key: that key
    is then moved into place and used.

    Raises:
        GalleryKeyError: The key is missing, unreadable or too widely readable.
        WrongKeyError: Neither the key nor a staged rotation key opens the gallery.
        GalleryError: The file is not a usable gallery.
    """
    key = source.read()
    try:
        return GalleryStore(path, key, key_source=str(source), create=create)
    except WrongKeyError as err:
        staged = source.next_path
        if source.credential or not staged.is_file():
            raise
        new_key = read_key_file(staged)
        if key_id(new_key) != err.expected_key_id:
            raise
        store = GalleryStore(path, new_key, key_source=str(staged), create=create)
        os.replace(staged, source.path)
        fsync_dir(source.path.parent)
        return store
