"""Gallery sync over MQTT: the cloud adds, replaces and removes identities in batches and
compares checksums to reconcile.

These are plain command handlers (``async (args) -> result``) for the daemon's command
server; :func:`gallery_handlers` binds them to a running :class:`FacePipeline`. Requests::

    faces.add      {"model": "name@version", "identities": [{"id", "name"?, "embeddings"}]}
    faces.replace  same; each listed identity's templates of that model are replaced
    faces.remove   {"ids": ["..."]}
    faces.checksum {"model"?: "name@version", "detail"?: bool}

``embeddings`` is a list of vectors, each a list of numbers or the base64 of its float32
little-endian bytes (a quarter of the JSON size). Templates may be for any model version
(a cloud can stage templates for a model it is about to roll out); only those of the
running model are searched. Adding a template that is already there is a no-op, so a
re-delivered batch is harmless. Every change is in the gallery's audit log, with the
request id as the actor when the command server passes it as ``_request_id``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.errors import CommandError
from edge_agent.faces.pipeline import FacePipeline
from edge_agent.faces.store import GalleryChecksum
from edge_agent.inference.bundle import is_safe_name

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

MAX_IDENTITIES = 1000
"""Identities in one add/replace/remove request."""
MAX_TEMPLATES = 5000
"""Templates in one add/replace request."""


def gallery_handlers(pipeline: FacePipeline) -> dict[str, Handler]:
    """The ``faces.*`` command handlers bound to a running face pipeline."""

    async def add(args: dict[str, Any]) -> dict[str, Any]:
        return await _put(pipeline, args, replace=False)

    async def replace(args: dict[str, Any]) -> dict[str, Any]:
        return await _put(pipeline, args, replace=True)

    async def remove(args: dict[str, Any]) -> dict[str, Any]:
        return await _remove(pipeline, args)

    async def checksum(args: dict[str, Any]) -> dict[str, Any]:
        return await _checksum(pipeline, args)

    return {
        "faces.add": add,
        "faces.replace": replace,
        "faces.remove": remove,
        "faces.checksum": checksum,
    }


def _actor(args: dict[str, Any]) -> str:
    request = args.get("_request_id")
    return f"mqtt:{request}" if isinstance(request, str) else "mqtt"


def _model_ref(pipeline: FacePipeline, args: dict[str, Any], *, required: bool) -> str:
    model = args.get("model")
    if model is None and not required and pipeline.embedder is not None:
        return pipeline.embedder.ref
    if not isinstance(model, str):
        raise CommandError("bad_request", 'args.model must be "name@version"')
    name, _, version = model.partition("@")
    if not (is_safe_name(name) and version and is_safe_name(version)):
        raise CommandError("bad_request", f'model {model!r} is not "name@version"')
    return model


def _vectors(raw: Any, where: str) -> npt.NDArray[np.float32]:
    if not isinstance(raw, list) or not raw:
        raise CommandError("bad_request", f"{where}.embeddings must be a non-empty list")
    rows = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            try:
                data = base64.b64decode(item, validate=True)
            except (binascii.Error, ValueError) as err:
                raise CommandError("bad_request", f"{where}.embeddings[{i}] is not base64") from err
            if len(data) % 4:
                raise CommandError(
                    "bad_request", f"{where}.embeddings[{i}] is not float32 bytes ({len(data)})"
                )
            rows.append(np.frombuffer(data, dtype="<f4"))
        elif isinstance(item, list) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in item
        ):
            rows.append(np.asarray(item, dtype=np.float32))
        else:
            raise CommandError(
                "bad_request", f"{where}.embeddings[{i}] must be a list of numbers or base64"
            )
    if len({len(r) for r in rows}) != 1:
        raise CommandError("bad_request", f"{where}.embeddings have different lengths")
    array = np.stack(rows).astype(np.float32)
    if not np.all(np.isfinite(array)) or np.any(np.linalg.norm(array, axis=1) == 0):
        raise CommandError("bad_request", f"{where}.embeddings must be finite and non-zero")
    return array


async def _put(pipeline: FacePipeline, args: dict[str, Any], *, replace: bool) -> dict[str, Any]:
    model = _model_ref(pipeline, args, required=True)
    identities = args.get("identities")
    if not isinstance(identities, list) or not 1 <= len(identities) <= MAX_IDENTITIES:
        raise CommandError(
            "bad_request", f"args.identities must be a list of 1..{MAX_IDENTITIES} objects"
        )
    batch: list[tuple[str, str | None, npt.NDArray[np.float32]]] = []
    total = 0
    for i, item in enumerate(identities):
        where = f"identities[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise CommandError("bad_request", f"{where} needs an id string")
        name = item.get("name")
        if name is not None and not isinstance(name, str):
            raise CommandError("bad_request", f"{where}.name must be a string")
        vectors = _vectors(item.get("embeddings"), where)
        total += len(vectors)
        batch.append((item["id"], name, vectors))
    if total > MAX_TEMPLATES:
        raise CommandError("bad_request", f"{total} templates; at most {MAX_TEMPLATES} per request")
    dims = {v.shape[1] for _, _, v in batch}
    embedder = pipeline.embedder
    if len(dims) != 1:
        raise CommandError("bad_request", f"templates of one model have one length, got {dims}")
    if embedder is not None and model == embedder.ref and dims != {embedder.dim}:
        raise CommandError(
            "model_mismatch",
            f"{model} produces {embedder.dim} values, the templates have {dims.pop()}",
        )
    actor = _actor(args)
    store = pipeline.store
    assert store is not None

    def apply() -> dict[str, Any]:
        # Checked before anything is written, so a refused batch changes nothing.
        nameless = [i for i, name, _ in batch if not name and store.name_of(i) is None]
        if nameless:
            raise CommandError(
                "bad_request", f"new identities need a name: {', '.join(nameless[:10])}"
            )
        added = 0
        for identity, name, vectors in batch:
            try:
                added += store.enroll(
                    identity,
                    vectors,
                    model,
                    actor=actor,
                    name=name,
                    replace=replace,
                    action="sync.replace" if replace else "sync.add",
                )
            except ValueError as err:
                raise CommandError("bad_request", f"identity {identity!r}: {err}") from err
        if embedder is not None and model == embedder.ref:
            pipeline.reload()
        return {"model": model, "identities": len(batch), "templates_added": added}

    result = await pipeline.call(apply)
    result["checksum"] = _summary(await pipeline.call(lambda: store.checksum(model)))
    return result


async def _remove(pipeline: FacePipeline, args: dict[str, Any]) -> dict[str, Any]:
    ids = args.get("ids")
    if (
        not isinstance(ids, list)
        or not 1 <= len(ids) <= MAX_IDENTITIES
        or not all(isinstance(i, str) for i in ids)
    ):
        raise CommandError("bad_request", f"args.ids must be a list of 1..{MAX_IDENTITIES} ids")
    actor = _actor(args)
    store = pipeline.store
    assert store is not None

    def apply() -> dict[str, Any]:
        removed, missing, templates = [], [], 0
        for identity in ids:
            count = store.remove(identity, actor=actor)
            if count is None:
                missing.append(identity)
            else:
                removed.append(identity)
                templates += count
        if removed:
            pipeline.reload()
        return {"removed": removed, "not_enrolled": missing, "templates_removed": templates}

    return await pipeline.call(apply)


async def _checksum(pipeline: FacePipeline, args: dict[str, Any]) -> dict[str, Any]:
    model = _model_ref(pipeline, args, required=False)
    store = pipeline.store
    assert store is not None
    result = await pipeline.call(lambda: store.checksum(model))
    body = _summary(result)
    if args.get("detail"):
        body["per_identity"] = result.per_identity
    return body


def _summary(checksum: GalleryChecksum) -> dict[str, Any]:
    return {
        "model": checksum.model,
        "identities": checksum.identities,
        "templates": checksum.templates,
        "checksum": checksum.checksum,
    }
