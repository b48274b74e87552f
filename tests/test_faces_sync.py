"""Gallery sync command handlers against a real face pipeline (real gallery file, real model).

The handlers are called directly, as the command server would after parsing a request;
the MQTT round trip itself is the command server's and is tested there.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.config import FacesConfig
from edge_agent.errors import CommandError
from edge_agent.faces.keys import generate_key, write_key_file
from edge_agent.faces.pipeline import FacePipeline
from edge_agent.faces.store import gallery_checksum, template_digest
from edge_agent.faces.sync import gallery_handlers

MODEL = "face-embed-demo@1.0.0"


def _unit(n: int, dim: int = 128, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_add_replace_remove_and_reconcile(tmp_path: Path) -> None:
    key_file = tmp_path / "k"
    write_key_file(key_file, generate_key())
    events: list[tuple[str, dict[str, Any]]] = []

    async def scenario() -> None:
        pipeline = FacePipeline(
            FacesConfig(enabled=True, key_file=key_file),
            gallery_path=tmp_path / "g.db",
            emit=lambda kind, severity, sensor=None, **body: events.append((kind, body)),
        )
        pipeline._loop = asyncio.get_running_loop()
        await asyncio.to_thread(pipeline.open)
        try:
            await _exercise(pipeline, gallery_handlers(pipeline))
        finally:
            pipeline.close()

    asyncio.run(scenario())
    loads = [body for kind, body in events if kind == "face.gallery_loaded"]
    assert [b["identities"] for b in loads] == [0, 2, 2, 2, 1]
    assert loads[-1]["other_model_templates"] == {"next-model@2.0.0": 1}


async def _exercise(pipeline: FacePipeline, handlers: dict[str, Any]) -> None:
    vectors = _unit(5)
    cloud: list[tuple[str, str]] = []
    add = {
        "model": MODEL,
        "_request_id": "req-1",
        "identities": [
            {"id": "a", "name": "Alice", "embeddings": [vectors[0].tolist(), vectors[1].tolist()]},
            {
                "id": "b",
                "name": "Bob",
                "embeddings": [base64.b64encode(vectors[2].astype("<f4").tobytes()).decode()],
            },
        ],
    }
    cloud += [("a", template_digest(vectors[0])), ("a", template_digest(vectors[1]))]
    cloud += [("b", template_digest(vectors[2]))]
    result = await handlers["faces.add"](add)
    assert result["templates_added"] == 3
    assert result["checksum"]["checksum"] == gallery_checksum(MODEL, cloud).checksum
    assert pipeline.identify_vector(vectors[2], MODEL).identity == "b"
    # Re-delivery of the same batch adds nothing and keeps the checksum.
    again = await handlers["faces.add"](add)
    assert again["templates_added"] == 0
    assert again["checksum"] == result["checksum"]

    # Replace Bob's template: the old vector no longer matches him.
    replaced = await handlers["faces.replace"](
        {"model": MODEL, "identities": [{"id": "b", "embeddings": [vectors[3].tolist()]}]}
    )
    assert replaced["templates_added"] == 1
    assert pipeline.identify_vector(vectors[3], MODEL).identity == "b"
    assert pipeline.identify_vector(vectors[2], MODEL).identity is None

    # Templates staged for a model not running yet are stored, not searched.
    staged = await handlers["faces.add"](
        {"model": "next-model@2.0.0", "identities": [{"id": "a", "embeddings": [[1.0, 2.0]]}]}
    )
    assert staged["templates_added"] == 1

    detail = await handlers["faces.checksum"]({"detail": True})
    assert detail["model"] == MODEL
    assert (detail["identities"], detail["templates"]) == (2, 3)
    cloud_now = [*cloud[:2], ("b", template_digest(vectors[3]))]
    expected = gallery_checksum(MODEL, cloud_now)
    assert detail["checksum"] == expected.checksum
    assert detail["per_identity"] == expected.per_identity

    removed = await handlers["faces.remove"]({"ids": ["b", "nobody"], "_request_id": "req-9"})
    assert removed == {"removed": ["b"], "not_enrolled": ["nobody"], "templates_removed": 1}
    assert pipeline.store is not None
    audit = pipeline.store.audit_log()
    assert [e.action for e in audit] == [
        "sync.add",
        "sync.add",
        "sync.add",
        "sync.add",
        "sync.replace",
        "sync.add",
        "remove",
    ]
    assert audit[0].actor == "mqtt:req-1"
    assert audit[-1].actor == "mqtt:req-9"

    for args, code, message in [
        ({"identities": []}, "bad_request", "name@version"),
        ({"model": MODEL, "identities": []}, "bad_request", "1..1000"),
        ({"model": MODEL, "identities": [{"id": "x", "embeddings": "no"}]}, "bad_request", "list"),
        (
            {"model": MODEL, "identities": [{"id": "x", "name": "X", "embeddings": [[1.0, 2.0]]}]},
            "model_mismatch",
            "produces 128 values",
        ),
        (
            {"model": MODEL, "identities": [{"id": "new", "embeddings": [vectors[4].tolist()]}]},
            "bad_request",
            "new identities need a name: new",
        ),
        (
            {"model": MODEL, "identities": [{"id": "x", "embeddings": ["!!notbase64"]}]},
            "bad_request",
            "base64",
        ),
    ]:
        with pytest.raises(CommandError, match=message) as caught:
            await handlers["faces.add"](args)
        assert caught.value.code == code
    with pytest.raises(CommandError, match=r"args\.ids"):
        await handlers["faces.remove"]({"ids": "a"})


def test_a_model_without_a_threshold_needs_one_configured(tmp_path: Path) -> None:
    """No silent 0.5: without a calibrated threshold the face path refuses to start."""
    import json
    import shutil

    from edge_agent.faces.errors import FaceError
    from edge_agent.inference.bundle import shipped_models_dir, write_manifest

    demo = shipped_models_dir() / "face-embed-demo" / "1.0.0"
    target = tmp_path / "models" / "uncalibrated" / "1.0.0"
    target.mkdir(parents=True)
    shutil.copy(demo / "model.onnx", target / "model.onnx")
    manifest = json.loads((demo / "manifest.json").read_text())
    manifest.pop("files")
    manifest["name"] = "uncalibrated"
    manifest["face"]["threshold"] = None
    write_manifest(target, manifest)
    key_file = tmp_path / "k"
    write_key_file(key_file, generate_key())

    def pipeline(threshold: float | None) -> FacePipeline:
        return FacePipeline(
            FacesConfig(enabled=True, key_file=key_file, model="uncalibrated", threshold=threshold),
            gallery_path=tmp_path / "g.db",
            model_dirs=[tmp_path / "models"],
            emit=lambda *a, **k: None,
        )

    refused = pipeline(None)
    with pytest.raises(FaceError, match=r"set faces\.threshold"):
        refused.open()
    refused.close()
    configured = pipeline(0.42)
    configured.open()
    assert configured.threshold == 0.42
    configured.close()
