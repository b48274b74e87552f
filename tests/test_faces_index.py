"""1:N identification and threshold calibration on synthetic embedding clusters."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.faces.calibrate import calibrate, pair_scores, rates, threshold_for_far
from edge_agent.faces.errors import ModelMismatchError
from edge_agent.faces.index import FaceIndex, matmul_float16_model, matmul_integer_model

MODEL = "m@1"


def _clusters(people: int, per: int, dim: int, spread: float, seed: int = 0):
    """Identity centres (random unit vectors) and noisy samples around them."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((people, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.standard_normal((people, per, dim)).astype(np.float32) * (spread / math.sqrt(dim))
    samples = centres[:, None, :] + noise
    return centres, samples / np.linalg.norm(samples, axis=2, keepdims=True)


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_identifies_synthetic_identities_with_several_templates_each(dtype: str) -> None:
    people, per, dim = 400, 3, 128
    _, enrolled = _clusters(people, per + 1, dim, spread=0.5)
    gallery, probes = enrolled[:, :per], enrolled[:, per]
    ids = [f"person-{i}" for i in range(people)]
    owners = np.repeat(np.arange(people), per)
    index = FaceIndex(MODEL, ids, owners, gallery.reshape(-1, dim), dtype=dtype)  # type: ignore[arg-type]
    assert index.size == people * per
    assert index.dim == dim
    correct = 0
    for i, probe in enumerate(probes):
        decision = index.identify(probe, threshold=0.6, k=5, model=MODEL)
        assert len(decision.candidates) == 5
        assert len({c.identity for c in decision.candidates}) == 5  # identities, not templates
        scores = [c.score for c in decision.candidates]
        assert scores == sorted(scores, reverse=True)
        correct += decision.identity == ids[i]
        # k = 1 takes a shortcut for float16/int8 (rows near the best, re-scored): same answer.
        best = index.identify(probe, threshold=0.6)
        assert best.identity == decision.identity
        assert best.score == pytest.approx(decision.candidates[0].score, abs=1e-6)
    assert correct == people
    # A stranger (a new random direction) is nobody.
    _, strangers = _clusters(20, 1, dim, spread=0.0, seed=99)
    for s in strangers[:, 0]:
        decision = index.identify(s, threshold=0.6)
        assert decision.identity is None
        assert decision.score < 0.6


def test_int8_and_float16_scores_stay_close_to_exact() -> None:
    _, samples = _clusters(50, 4, 512, spread=0.8, seed=3)
    flat = samples.reshape(-1, 512)
    owners = np.arange(len(flat))
    ids = [str(i) for i in owners]
    exact = FaceIndex(MODEL, ids, owners, flat)
    query = flat[7] + 0.01
    reference = exact.scores(query / np.linalg.norm(query))
    for dtype, tolerance in (("float16", 2e-3), ("int8", 2e-2)):
        approx = FaceIndex(MODEL, ids, owners, flat, dtype=dtype)  # type: ignore[arg-type]
        assert np.max(np.abs(approx.scores(query / np.linalg.norm(query)) - reference)) < tolerance
        # Candidates are re-scored, so the reported score of the best one is near exact.
        best = approx.search(query, 1)[0]
        assert best.identity == "7"
        assert abs(best.score - float(reference[7])) < 5e-3
    assert exact.nbytes == 4 * approx.nbytes


def test_model_mismatch_and_bad_queries_are_refused() -> None:
    index = FaceIndex(MODEL, ["a"], np.array([0]), np.ones((1, 8), np.float32))
    with pytest.raises(ModelMismatchError, match=r"m@2 cannot be compared with a gallery of m@1"):
        index.identify(np.ones(8), 0.5, model="m@2")
    with pytest.raises(ValueError, match="has 7 values"):
        index.identify(np.ones(7), 0.5)
    with pytest.raises(ValueError, match="non-zero"):
        index.identify(np.zeros(8), 0.5)
    with pytest.raises(ValueError, match="dtype"):
        FaceIndex(MODEL, ["a"], np.array([0]), np.ones((1, 8)), dtype="bf16")  # type: ignore[arg-type]
    empty = FaceIndex(MODEL, [], np.zeros(0, np.int32), np.zeros((0, 8)), dim=8)
    decision = empty.identify(np.ones(8), 0.5)
    assert decision.identity is None
    assert decision.candidates == ()


def test_the_hand_written_gallery_graphs_are_valid_onnx() -> None:
    rng = np.random.default_rng(0)
    int8 = rng.integers(-127, 128, size=(300, 64)).astype(np.int8)
    half = rng.standard_normal((300, 64)).astype(np.float16)
    for matrix, build in ((int8, matmul_integer_model), (half, matmul_float16_model)):
        model = onnx.load_from_string(build(matrix))  # type: ignore[operator]
        onnx.checker.check_model(model, full_check=True)
        (gallery,) = [t for t in model.graph.initializer if t.name == "gallery"]
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(gallery), matrix.T)


def test_threshold_for_a_known_far() -> None:
    """Impostor scores 0/1000 … 999/1000: FAR(t) is exactly known."""
    impostor = np.arange(1000, dtype=np.float32) / 1000
    genuine = np.full(100, 0.9995, np.float32)
    for target in (0.1, 0.01, 0.001):
        t = threshold_for_far(impostor, target)
        far, _ = rates(genuine, impostor, t)
        assert far == pytest.approx(target)
        assert (
            rates(genuine, impostor, float(np.nextafter(np.float32(t), np.float32(-1))))[0] > target
        )
    result = calibrate(genuine, impostor, target_far=0.01)
    assert result.far == pytest.approx(0.01)
    assert result.tar == 1.0
    assert result.threshold == pytest.approx(0.989, abs=1e-6)  # just above the 11th best
    assert result.warnings == []  # 1000 impostor pairs resolve a FAR of 1e-2 (≥ 300)
    thin = calibrate(genuine, impostor, target_far=1e-4)
    assert "needs at least 30000" in thin.warnings[0]
    assert [round(p.far, 6) for p in result.operating_points] == [0.1, 0.01, 0.001]


def _far_random_directions(dim: int, t: float) -> float:
    """P(u·v ≥ t) for independent uniform unit vectors: density ∝ (1 − x²)^((dim − 3) / 2)."""
    x = np.linspace(-1, 1, 400_001)
    density = (1 - x**2) ** ((dim - 3) / 2)
    cdf = np.cumsum(density)
    return float(1 - np.interp(t, x, cdf / cdf[-1]))


def test_calibration_on_clusters_reaches_the_target_far_on_fresh_impostors() -> None:
    dim = 24
    _, calib = _clusters(300, 4, dim, spread=0.35, seed=5)
    labels = np.repeat(np.arange(300), 4)
    genuine, impostor = pair_scores(calib.reshape(-1, dim), labels)
    assert len(genuine) == 300 * 6
    assert len(impostor) == 1200 * 1199 // 2 - 300 * 6
    result = calibrate(genuine, impostor, target_far=1e-3)
    assert result.warnings == []
    # The clusters' centres are random directions, so impostor scores follow (closely) the
    # distribution of two random unit vectors; the analytic FAR at the chosen threshold is
    # near the target, and fresh impostors land there too.
    analytic = _far_random_directions(dim, result.threshold)
    assert 0.5e-3 < analytic < 2e-3
    _, fresh = _clusters(400, 1, dim, spread=0.35, seed=6)
    unit = fresh[:, 0]
    fresh_impostor = (unit @ unit.T)[np.triu_indices(400, 1)]
    far = float(np.mean(fresh_impostor >= result.threshold))
    assert far < 3e-3
    assert result.tar > 0.99
    assert result.eer < 0.01


def test_pair_scores_rejects_what_cannot_be_calibrated() -> None:
    with pytest.raises(ValueError, match="two people"):
        pair_scores(np.ones((3, 4)), [1, 1, 1])
    with pytest.raises(ValueError, match="no genuine pair"):
        pair_scores(np.eye(3), [1, 2, 3])
    with pytest.raises(ValueError, match="labels"):
        pair_scores(np.eye(3), [1, 2])
    big, _ = _clusters(300, 1, 8, 0.0)
    genuine, impostor = pair_scores(
        np.concatenate([big, big]), np.tile(np.arange(300), 2), max_impostor_pairs=10_000
    )
    assert len(genuine) == 300
    assert 8_000 < len(impostor) < 12_000


def test_int8_gallery_product_is_exact_integer_arithmetic_at_the_extremes() -> None:
    """The largest pair sums the int8 search can produce are computed exactly by ONNX Runtime.

    x86 kernels without VNNI add pairs of uint8 × int8 products into 16-bit lanes with
    saturation; the search keeps the query to uint8 1..127 so 2 × 127 × 127 cannot saturate.
    Whatever kernel this CPU picks, the graph must then return the exact integer products.
    """
    import onnxruntime as ort

    dim = 64
    rows = np.array(
        [np.full(dim, 127), np.full(dim, -127), np.tile([127, -127], dim // 2)], dtype=np.int8
    )
    session = ort.InferenceSession(matmul_integer_model(rows), providers=["CPUExecutionProvider"])
    for u8 in (np.full(dim, 127), np.full(dim, 1), np.tile([127, 1], dim // 2)):
        (dots,) = session.run(None, {"q": u8.astype(np.uint8)[None, :]})
        expected = rows.astype(np.int64) @ (u8.astype(np.int64) - 64)
        np.testing.assert_array_equal(dots[0], expected)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    dim=st.sampled_from([16, 128, 512]),
    people=st.integers(1, 60),
    spread=st.floats(0.0, 1.5),
)
def test_int8_shortcut_and_full_search_find_the_best_dequantised_row(
    seed: int, dim: int, people: int, spread: float
) -> None:
    """The contract of the int8 gallery: the reported best is the row whose dequantised
    values score highest with the float query (checked by brute force in float64), the same
    for k = 1 (shortcut) and k = 5, and every approximate score lies within the bound the
    search uses. Nothing here depends on one CPU's floating-point path: the integer product
    is exact and the comparisons are with that bound or a float32 rounding (1e-6)."""
    _, samples = _clusters(people, 3, dim, spread=spread, seed=seed % 2**31)
    flat = samples.reshape(-1, dim)
    owners = np.repeat(np.arange(people), 3)
    ids = [f"p{i}" for i in range(people)]
    index = FaceIndex(MODEL, ids, owners, flat, dtype="int8")
    rng = np.random.default_rng(seed)
    query = flat[rng.integers(len(flat))] + rng.standard_normal(dim).astype(np.float32) * 0.05
    q = (query / np.linalg.norm(query)).astype(np.float32)
    dequantised = index._i8.astype(np.float32) * index._scale[:, None]  # type: ignore[union-attr,index]
    truth = dequantised.astype(np.float64) @ q.astype(np.float64)
    approx, bound = index._approximate(q)
    assert np.all(np.abs(approx.astype(np.float64) - truth) <= bound)
    one = index.search(query, 1)[0]
    five = index.search(query, 5)
    assert one.score == pytest.approx(float(truth.max()), abs=1e-6)
    assert five[0].score == pytest.approx(one.score, abs=1e-6)
    assert float(truth[owners == ids.index(one.identity)].max()) == pytest.approx(
        float(truth.max()), abs=1e-6
    )
