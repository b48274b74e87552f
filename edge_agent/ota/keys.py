"""ed25519 keys and the detached signature over a bundle's manifest.

The manifest pins the sha256 and size of every file of the bundle, so one signature over
its exact bytes covers the whole bundle. The signature travels as `manifest.sig`, a small
JSON document naming the key that made it (`key_id`), so a gateway trusting several keys
(during a rotation) says precisely which key signed an update it refuses.

`cryptography` is imported inside the functions: the daemon pays for it only when an update
actually arrives.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.ota.errors import UpdateRejectedError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SIGNATURE_FILE = "manifest.sig"
PASSPHRASE_ENV = "EDGE_AGENT_KEY_PASSPHRASE"  # noqa: S105 - a variable name, not a secret
"""If set, private keys are written encrypted with (and read with) this passphrase."""


def key_id(public_raw: bytes) -> str:
    """A short, stable name of a public key: the first 16 hex digits of its sha256."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def decode_public_key(text: str) -> bytes:
    """The 32 raw bytes of a base64 ed25519 public key.

    Raises:
        ValueError: `text` is not base64 of exactly 32 bytes.
    """
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"not base64: {text[:20]!r}...") from err
    if len(raw) != 32:
        raise ValueError(f"an ed25519 public key has 32 bytes, this one {len(raw)}")
    return raw


def generate_key(path: Path) -> str:
    """Write a new private key to `path` (PEM, mode 0600) and return its public key (base64).

    Raises:
        FileExistsError: `path` exists (a signing key is never overwritten).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    passphrase = os.environ.get(PASSPHRASE_ENV)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return public_key_of(key)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a PEM ed25519 private key (encrypted ones with `EDGE_AGENT_KEY_PASSPHRASE`).

    Raises:
        ValueError: the file is not an ed25519 private key, or the passphrase is wrong.
        OSError: the file cannot be read.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    passphrase = os.environ.get(PASSPHRASE_ENV)
    try:
        key = serialization.load_pem_private_key(
            path.read_bytes(), password=passphrase.encode() if passphrase else None
        )
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: not a readable PEM private key ({err})") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an ed25519 key ({type(key).__name__})")
    return key


def public_key_of(key: Ed25519PrivateKey) -> str:
    """The base64 public key of a private key, as `ota.trusted_keys` lists it."""
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def sign_manifest(key: Ed25519PrivateKey, manifest: bytes) -> bytes:
    """The `manifest.sig` document for the exact bytes of a manifest."""
    public = base64.b64decode(public_key_of(key))
    doc = {
        "format": 1,
        "algorithm": "ed25519",
        "key_id": key_id(public),
        "signature": base64.b64encode(key.sign(manifest)).decode("ascii"),
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


@dataclass(frozen=True)
class SignatureInfo:
    """Who signed a manifest."""

    key_id: str


def _reject(check: str, reason: str) -> UpdateRejectedError:
    return UpdateRejectedError("verify", check, reason)


def verify_manifest(signature: bytes, manifest: bytes, trusted: Sequence[str]) -> SignatureInfo:
    """Check `manifest.sig` against the manifest's bytes and the trusted public keys.

    Raises:
        UpdateRejectedError: no trusted keys, a malformed signature document, a key that is
            not trusted (`untrusted_key`), or a signature that does not match (`signature`).
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not trusted:
        raise _reject(
            "untrusted_key",
            "no publisher keys are trusted on this gateway: add the publisher's public key "
            "to ota.trusted_keys",
        )
    try:
        doc: Any = json.loads(signature)
        if not isinstance(doc, dict) or doc.get("algorithm") != "ed25519":
            raise ValueError("expected a JSON object with algorithm 'ed25519'")
        signer = str(doc["key_id"])
        raw_sig = base64.b64decode(str(doc["signature"]), validate=True)
    except (ValueError, KeyError, UnicodeDecodeError, binascii.Error) as err:
        raise _reject("signature", f"{SIGNATURE_FILE} is malformed: {err}") from err
    keys = {key_id(raw): raw for raw in (decode_public_key(k) for k in trusted)}
    public = keys.get(signer)
    if public is None:
        raise _reject(
            "untrusted_key",
            f"signed by key {signer}, which is not in ota.trusted_keys (trusted: "
            f"{', '.join(sorted(keys))}); sign with a trusted key or add this publisher's key",
        )
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(raw_sig, manifest)
    except InvalidSignature as err:
        raise _reject(
            "signature",
            f"the signature by key {signer} does not match the manifest: the manifest was "
            "modified after signing, or the signature is corrupt",
        ) from err
    return SignatureInfo(signer)
