"""Errors of the face subsystem; each names what is wrong and what to do about it."""

from __future__ import annotations

from pathlib import Path

from edge_agent.errors import EdgeAgentError


class FaceError(EdgeAgentError):
    """Base class of the face subsystem's errors."""


class GalleryKeyError(FaceError, PermissionError):
    """The gallery key is missing, unreadable, malformed or too widely readable.

    Attributes:
        source: Where the key was looked for (a file path or a credential name).
        reason: What is wrong and what to do.
    """

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"gallery key {source}: {reason}")


class WrongKeyError(GalleryKeyError):
    """The key does not open this gallery; nothing was read or changed.

    Attributes:
        gallery: The gallery database.
        expected_key_id: Id of the key the gallery was encrypted with.
        key_id: Id of the key that was offered.
    """

    def __init__(self, source: str, gallery: Path, expected_key_id: str, key_id: str) -> None:
        self.gallery = gallery
        self.expected_key_id = expected_key_id
        self.key_id = key_id
        super().__init__(
            source,
            f"does not open {gallery}: the gallery is encrypted with key id {expected_key_id}, "
            f"this key has id {key_id}. Point faces.key_file at the right key (a key "
            "rotation interrupted before its last step leaves the new key in <key_file>.next)",
        )


class GalleryError(FaceError, RuntimeError):
    """The gallery database is unusable (not a gallery, a newer format, corrupted rows)."""


class ModelMismatchError(FaceError, ValueError):
    """Vectors of one embedding model were offered to a gallery built with another.

    Attributes:
        expected: ``name@version`` the gallery holds.
        got: ``name@version`` the vector came from.
    """

    def __init__(self, expected: str, got: str) -> None:
        self.expected = expected
        self.got = got
        super().__init__(
            f"embedding from model {got} cannot be compared with a gallery of {expected}: "
            "embeddings of different models live in different spaces; re-enrol with "
            f"{expected} or switch faces.model to {got}"
        )


class ImageError(FaceError, ValueError):
    """An image could not be decoded or does not fit the model.

    Attributes:
        source: File name or a description of the crop.
        reason: What is wrong.
    """

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")
