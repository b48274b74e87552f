"""Inference rounds: every model runs once over all windows cut for it in one round.

`infer_round` runs on the inference thread (or inline on the loop when the round is
cheap, see `run_inline`). A model that raises, or answers with the wrong shape or a
non-finite value, fails alone: its windows become `ModelFailure`s (the engine disables it
for the streams concerned and reports `model.failed`) while every other model's results
are returned as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edge_agent.inference.bundle import Bundle
from edge_agent.inference.runtime import FloatArray, Runtime, Segments
from edge_agent.pipeline.results import ResultBatch
from edge_agent.pipeline.stream import Emitted

INLINE_INFERENCE_S = 0.0005
"""A round whose models are expected to take less than this runs on the event loop."""


class Judge(Protocol):
    """A version on probation: runs the batch judged, the previous version answering for it."""

    def infer(
        self, runtime: Runtime, windows: FloatArray, segments: Segments
    ) -> tuple[FloatArray, Bundle]: ...


@dataclass(frozen=True, slots=True)
class ModelFailure:
    """A model that failed on the windows of one stream in one round."""

    emitted: Emitted
    reason: str


@dataclass(slots=True)
class Round:
    """What one inference round produced."""

    batches: list[ResultBatch]
    failures: list[ModelFailure]
    started_mono: float = 0.0
    ended_mono: float = 0.0


def run_inline(emitted: list[Emitted]) -> bool:
    """Whether this round's models are quick enough to run on the loop itself.

    Handing a batch to the inference thread and back costs two thread switches, more
    than a small model takes on a few windows; so a round whose expected model time
    (from each runtime's measured cost per window) is under `INLINE_INFERENCE_S` runs
    inline, and anything bigger or not yet measured goes to the inference thread.
    """
    expected_ns = 0.0
    for e in emitted:
        stats = e.model.slot.runtime.stats
        if stats.calls < 8:
            return False
        per_call = stats.busy_ns / stats.calls
        expected_ns += per_call + len(e.cut.windows) * stats.busy_ns / max(1, stats.windows)
    return expected_ns < INLINE_INFERENCE_S * 1e9


def _describe(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def infer_round(
    emitted: list[Emitted],
    probation: Mapping[Path, Judge],
    clock: Callable[[], float],
) -> Round:
    """Run every model once over all windows cut for it (inference thread or inline)."""
    started = clock()
    by_slot: dict[str, list[Emitted]] = {}
    for e in emitted:
        by_slot.setdefault(e.model.slot.ref, []).append(e)
    batches: list[ResultBatch] = []
    failures: list[ModelFailure] = []
    for parts in by_slot.values():
        slot = parts[0].model.slot
        windows = (
            parts[0].cut.windows
            if len(parts) == 1
            else np.concatenate([p.cut.windows for p in parts])
        )
        # Per-stream models (baselines) need to know which windows came from which stream.
        segments = [(p.stream.name, len(p.cut.windows)) for p in parts]
        batch = np.ascontiguousarray(windows, dtype=np.float32)
        watch = probation.get(slot.bundle.path) if probation else None
        try:
            if watch is None:
                out, producer = slot.runtime.infer(batch, segments), slot.bundle
            else:  # on probation: judged, the previous version answering what it fails on
                out, producer = watch.infer(slot.runtime, batch, segments)
            labels = producer.manifest.output.labels
            if out.ndim != 2 or len(out) != len(batch) or (labels and out.shape[1] != len(labels)):
                raise ValueError(
                    f"output shape {list(out.shape)} for {len(batch)} windows"
                    + (f" and {len(labels)} labels" if labels else "")
                )
        except Exception as err:  # this model fails alone; the others carry on
            reason = f"raised {_describe(err)}"
            failures.extend(ModelFailure(p, reason) for p in parts)
            continue
        finite = bool(np.isfinite(out).all())
        label_index = np.argmax(out, axis=1).astype(np.int64)
        confidence = out[np.arange(len(out)), label_index].astype(np.float32)
        manifest = producer.manifest
        at = 0
        for p in parts:
            n = len(p.cut.windows)
            if not finite and not np.isfinite(out[at : at + n]).all():
                failures.append(ModelFailure(p, "returned NaN or infinite values"))
                at += n
                continue
            batches.append(
                ResultBatch(
                    sensor=p.stream.name,
                    model=manifest.name,
                    version=manifest.version,
                    labels=manifest.output.labels,
                    t_start=p.cut.t_start,
                    t_end=p.cut.t_end,
                    label_index=label_index[at : at + n],
                    confidence=confidence[at : at + n],
                    recv_mono=p.recv_mono,
                )
            )
            at += n
    return Round(batches, failures, started, clock())
