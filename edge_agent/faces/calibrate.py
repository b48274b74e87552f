"""Threshold calibration: FAR/FRR from genuine and impostor pairs, and the threshold for a
target false accept rate.

A decision accepts when ``score >= threshold``. Over a labelled set of embeddings every
pair of the same person is *genuine* and every pair of different people an *impostor*:

- FAR(t), false accept rate: share of impostor pairs with score ≥ t;
- FRR(t), false reject rate: share of genuine pairs with score < t; TAR = 1 − FRR.

The threshold for a target FAR is the lowest t whose measured FAR does not exceed it.
Face recognition is usually operated at FAR = 1e-4 (TAR@FAR=1e-4); a fixed 0.5 is a common
mistake, since the score scale differs from model to model. A FAR of 1e-4 can only be
resolved with enough impostor pairs: by the rule of three, at least 3 / FAR of them
(30,000), which :func:`calibrate` warns about.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]

DEFAULT_FAR_POINTS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
MAX_IMPOSTOR_PAIRS = 5_000_000


def pair_scores(
    embeddings: npt.NDArray[np.floating],
    labels: npt.ArrayLike,
    *,
    max_impostor_pairs: int = MAX_IMPOSTOR_PAIRS,
    seed: int = 0,
) -> tuple[F32, F32]:
    """Cosine scores of every genuine pair and of the impostor pairs (all, or a sample).

    Args:
        embeddings: ``(n, dim)`` vectors (normalised here).
        labels: ``n`` identity labels.
        max_impostor_pairs: Above this many impostor pairs, a uniform sample is kept.
        seed: Seed of that sample.

    Raises:
        ValueError: Shapes disagree, fewer than two people, or no genuine pair at all.
    """
    vectors = np.asarray(embeddings, dtype=np.float32)
    names = np.asarray(labels)
    if vectors.ndim != 2 or len(vectors) != len(names):
        raise ValueError(f"{len(names)} labels for embeddings of shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(vectors)):
        raise ValueError("embeddings must be finite and non-zero")
    unit = vectors / norms
    _, codes = np.unique(names, return_inverse=True)
    if codes.max(initial=0) < 1:
        raise ValueError("calibration needs embeddings of at least two people")
    n = len(unit)
    total_impostor = n * (n - 1) // 2 - int(sum(c * (c - 1) // 2 for c in np.bincount(codes)))
    keep = min(1.0, max_impostor_pairs / max(1, total_impostor))
    rng = np.random.default_rng(seed)
    genuine: list[F32] = []
    impostor: list[F32] = []
    block = max(1, 4_000_000 // max(1, n))
    for start in range(0, n, block):
        stop = min(n, start + block)
        scores = unit[start:stop] @ unit.T
        rows = np.arange(start, stop)[:, None]
        upper = np.arange(n)[None, :] > rows
        same = codes[start:stop, None] == codes[None, :]
        genuine.append(scores[upper & same])
        mask = upper & ~same
        if keep < 1.0:
            mask &= rng.random(mask.shape) < keep
        impostor.append(scores[mask])
    genuine_scores = np.concatenate(genuine).astype(np.float32)
    if len(genuine_scores) == 0:
        raise ValueError("no genuine pair: calibration needs two or more embeddings per person")
    return genuine_scores, np.concatenate(impostor).astype(np.float32)


@dataclass(frozen=True)
class CurvePoint:
    """FAR and FRR at one threshold."""

    threshold: float
    far: float
    frr: float


@dataclass(frozen=True)
class Calibration:
    """Result of :func:`calibrate`.

    Attributes:
        target_far: The FAR asked for.
        threshold: Lowest threshold whose measured FAR ≤ ``target_far``.
        far: Measured FAR at ``threshold``.
        frr: Measured FRR at ``threshold``.
        tar: 1 − ``frr``: TAR@FAR.
        eer: Equal error rate (where FAR and FRR cross).
        eer_threshold: Threshold at the EER.
        genuine_pairs: Genuine pairs measured.
        impostor_pairs: Impostor pairs measured.
        operating_points: The threshold and TAR at standard FARs (1e-1 … 1e-6) that the
            impostor count can resolve.
        curve: FAR/FRR over evenly spaced thresholds, for plotting.
        warnings: What limits the result (too few pairs, ...).
    """

    target_far: float
    threshold: float
    far: float
    frr: float
    tar: float
    eer: float
    eer_threshold: float
    genuine_pairs: int
    impostor_pairs: int
    operating_points: list[CurvePoint] = field(default_factory=list)
    curve: list[CurvePoint] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def threshold_for_far(impostor: F32, target_far: float) -> float:
    """Lowest threshold t with ``mean(impostor >= t) <= target_far``.

    At most ``floor(target_far × n)`` impostor scores may reach t, so t sits just above
    the next one down.
    """
    ordered = np.sort(np.asarray(impostor, dtype=np.float64))[::-1]
    allowed = math.floor(target_far * len(ordered) + 1e-9)
    if allowed >= len(ordered):
        return float(ordered[-1]) if len(ordered) else -1.0
    return float(np.nextafter(np.float32(ordered[allowed]), np.float32(np.inf)))


def rates(genuine: F32, impostor: F32, threshold: float) -> tuple[float, float]:
    """(FAR, FRR) at a threshold."""
    far = float(np.count_nonzero(impostor >= threshold)) / max(1, len(impostor))
    frr = float(np.count_nonzero(genuine < threshold)) / max(1, len(genuine))
    return far, frr


def calibrate(
    genuine: npt.ArrayLike,
    impostor: npt.ArrayLike,
    *,
    target_far: float = 1e-4,
    curve_points: int = 41,
) -> Calibration:
    """Measure FAR/FRR and pick the threshold for ``target_far``.

    Raises:
        ValueError: No genuine or no impostor scores, or a target outside (0, 1).
    """
    if not 0 < target_far < 1:
        raise ValueError(f"target FAR must be in (0, 1), got {target_far}")
    g = np.sort(np.asarray(genuine, dtype=np.float32))
    imp = np.sort(np.asarray(impostor, dtype=np.float32))
    if len(g) == 0 or len(imp) == 0:
        raise ValueError("calibration needs genuine and impostor scores")
    warnings = []
    needed = math.ceil(3 / target_far)
    if len(imp) < needed:
        warnings.append(
            f"only {len(imp)} impostor pairs: a FAR of {target_far:g} needs at least "
            f"{needed} to be resolved (rule of three); the threshold is optimistic — "
            "calibrate with more people"
        )
    if len(g) < 100:
        warnings.append(f"only {len(g)} genuine pairs: the FRR/TAR is a rough estimate")

    threshold = threshold_for_far(imp, target_far)
    far, frr = rates(g, imp, threshold)

    # EER: scan the distinct scores for the threshold where FAR and FRR are closest.
    candidates = np.unique(np.concatenate([g, imp]))
    fars = 1.0 - np.searchsorted(imp, candidates, side="left") / len(imp)
    frrs = np.searchsorted(g, candidates, side="left") / len(g)
    best = int(np.argmin(np.abs(fars - frrs)))
    eer = float((fars[best] + frrs[best]) / 2)

    points = []
    for point in DEFAULT_FAR_POINTS:
        if len(imp) * point < 1:
            break
        t = threshold_for_far(imp, point)
        a, r = rates(g, imp, t)
        points.append(CurvePoint(t, a, r))
    low, high = float(min(g[0], imp[0])), float(max(g[-1], imp[-1]))
    curve = []
    for t in np.linspace(low, high, curve_points):
        a, r = rates(g, imp, float(t))
        curve.append(CurvePoint(float(t), a, r))
    return Calibration(
        target_far=target_far,
        threshold=threshold,
        far=far,
        frr=frr,
        tar=1.0 - frr,
        eer=eer,
        eer_threshold=float(candidates[best]),
        genuine_pairs=len(g),
        impostor_pairs=len(imp),
        operating_points=points,
        curve=curve,
        warnings=warnings,
    )
