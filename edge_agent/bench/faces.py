"""Benchmarks of the face path, called by ``edge-agent bench``.

:func:`bench_identify` times 1:N identification over a synthetic gallery against a bare
numpy matrix-vector product over the same float32 matrix, interleaved query by query in
the same run so machine load affects both alike. :func:`bench_crop_to_decision` times the
whole path of one crop (decode, embed with the shipped demo model, match).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from edge_agent.faces.index import FaceIndex, GalleryDtype


def _percentiles(samples_s: list[float]) -> tuple[float, float]:
    ms = np.asarray(samples_s) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def bench_identify(
    n: int = 100_000,
    dim: int = 512,
    queries: int = 300,
    *,
    k: int = 1,
    dtypes: tuple[GalleryDtype, ...] = ("float32", "int8"),
    seed: int = 0,
) -> dict[str, Any]:
    """Time ``FaceIndex.identify`` over ``n`` × ``dim`` templates (one per identity).

    Queries are noisy copies of random templates (so most are matches), timed one at a
    time, as a gate sees them. For every query the bare ``matrix @ query`` of the float32
    gallery is timed right after, so the ratio compares like with like.

    Returns:
        ``identify_p50_ms``, ``identify_p99_ms`` (float32 gallery), ``numpy_matvec_p50_ms``,
        ``numpy_matvec_p99_ms``, ``identify_overhead_ratio`` (identify p99 / numpy p99),
        per other dtype ``identify_<dtype>_p50_ms``/``_p99_ms`` and its ratio, and the
        top-1 agreement of each dtype with the exact float32 answer.
    """
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    identities = [f"id-{i}" for i in range(n)]
    owners = np.arange(n, dtype=np.int32)
    picks = rng.integers(0, n, size=queries)
    noise = rng.standard_normal((queries, dim), dtype=np.float32) * np.float32(0.7 / dim**0.5)
    probes = vectors[picks] + noise
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    # float32 like the gallery: a float64 query would make numpy convert the whole matrix.
    probes = np.ascontiguousarray(probes, dtype=np.float32)

    out: dict[str, Any] = {"gallery": [n, dim], "queries": queries, "k": k}
    reference: list[str | None] = []
    for dtype in dtypes:
        started = time.perf_counter()
        index = FaceIndex("bench@1", identities, owners, vectors, dtype=dtype)
        out[f"build_{dtype}_ms"] = round((time.perf_counter() - started) * 1000, 1)
        out[f"gallery_{dtype}_mb"] = round(index.nbytes / 1e6, 1)
        matrix = index.matrix if dtype == "float32" else None
        identify_s: list[float] = []
        numpy_s: list[float] = []
        answers: list[str | None] = []
        for _ in range(5):  # warm caches and lazy initialisation
            index.identify(probes[0], 0.5, k=k)
        for q in probes:
            t0 = time.perf_counter()
            decision = index.identify(q, 0.5, k=k)
            t1 = time.perf_counter()
            identify_s.append(t1 - t0)
            answers.append(decision.identity)
            if matrix is not None:
                t2 = time.perf_counter()
                matrix @ q  # the bare product is the point
                numpy_s.append(time.perf_counter() - t2)
        p50, p99 = _percentiles(identify_s)
        if dtype == "float32":
            reference = answers
            n50, n99 = _percentiles(numpy_s)
            out.update(
                identify_p50_ms=round(p50, 3),
                identify_p99_ms=round(p99, 3),
                numpy_matvec_p50_ms=round(n50, 3),
                numpy_matvec_p99_ms=round(n99, 3),
                identify_overhead_ratio=round(p99 / n99, 3),
                identify_overhead_ratio_p50=round(p50 / n50, 3),
                identify_correct=float(
                    np.mean([a == f"id-{p}" for a, p in zip(answers, picks, strict=True)])
                ),
            )
        else:
            out[f"identify_{dtype}_p50_ms"] = round(p50, 3)
            out[f"identify_{dtype}_p99_ms"] = round(p99, 3)
            if "numpy_matvec_p99_ms" in out:
                out[f"identify_{dtype}_ratio"] = round(p99 / out["numpy_matvec_p99_ms"], 3)
            if reference:
                agree = np.mean([a == b for a, b in zip(answers, reference, strict=True)])
                out[f"identify_{dtype}_agreement"] = float(agree)
        del index, matrix
    return out


def bench_crop_to_decision(
    gallery: int = 10_000, crops: int = 100, *, model: str = "face-embed-demo"
) -> dict[str, Any]:
    """Time crop → decision with the shipped demo model over a synthetic gallery.

    The gallery holds ``gallery`` identities: a few real embeddings of synthetic people and
    random unit vectors for the rest. Each crop is raw RGB888 bytes, as a camera sends them.

    Returns:
        ``face_crop_to_decision_ms_p50`` and ``_p99`` (decode + embed + match) and the
        parts: ``face_embed_ms_p50``, ``face_match_ms_p50``.
    """
    from edge_agent.faces.embedder import open_embedder
    from edge_agent.faces.images import from_raw
    from edge_agent.faces.synthetic import SIZE, synthetic_face

    embedder = open_embedder(model)
    try:
        people = 20
        enrolled = embedder.embed([synthetic_face(i, 0) for i in range(people)])
        rng = np.random.default_rng(1)
        filler = rng.standard_normal((max(0, gallery - people), embedder.dim), dtype=np.float32)
        vectors = np.concatenate([enrolled, filler])
        index = FaceIndex(
            embedder.ref, [f"p{i}" for i in range(len(vectors))], np.arange(len(vectors)), vectors
        )
        raw = [synthetic_face(i % people, 1 + i).tobytes() for i in range(crops)]
        threshold = embedder.spec.threshold or 0.5
        total: list[float] = []
        embed: list[float] = []
        match: list[float] = []
        correct = 0
        for i, data in enumerate(raw):
            t0 = time.perf_counter()
            image = from_raw(data, SIZE, SIZE, 3)
            vector = embedder.embed([image])[0]
            t1 = time.perf_counter()
            decision = index.identify(vector, threshold)
            t2 = time.perf_counter()
            total.append(t2 - t0)
            embed.append(t1 - t0)
            match.append(t2 - t1)
            correct += decision.identity == f"p{i % people}"
        p50, p99 = _percentiles(total)
        return {
            "face_crop_to_decision_ms_p50": round(p50, 3),
            "face_crop_to_decision_ms_p99": round(p99, 3),
            "face_embed_ms_p50": round(_percentiles(embed)[0], 3),
            "face_match_ms_p50": round(_percentiles(match)[0], 3),
            "face_crop_gallery": gallery,
            "face_crop_model": embedder.ref,
            "face_crop_correct": correct / len(raw),
        }
    finally:
        embedder.close()
