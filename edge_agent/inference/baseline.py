"""Statistical baseline backend: per-stream moving-average / z-score anomaly detection.

A bundle with `runtime = "baseline"` carries a small JSON file of parameters instead of a
network. For each window the model computes one feature per channel group, the log of the
group's motion energy (the RMS over the window of the vector with its window mean removed;
so a constant offset such as gravity does not count), and compares it with an exponentially
weighted moving mean and variance *of the same stream*. A window whose feature lies more
than `z_threshold` standard deviations away from its stream's baseline is an anomaly.

State is per stream, which is why the daemon passes each batch's `Segments`: batches mix
windows of several sensors. Anomalies update the baseline only up to the threshold
(winsorised), so a single spike does not drag the baseline along while a lasting change of
behaviour is learned within about `span_windows` windows. State lives in memory: after a
restart each stream warms up again for `warmup_windows` windows, reported as normal.

The output is [N, 2] in the manifest's label order (`normal`, `anomaly`): the anomaly column
is a logistic of the z-score margin, `1 / (1 + exp(-steepness * (z - z_threshold)))`, so the
arg-max flags exactly the windows past the threshold. It is a score, not a calibrated
probability.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.errors import RuntimeBackendError
from edge_agent.inference.bundle import Bundle
from edge_agent.inference.runtime import FloatArray, Runtime, Segments

LABELS = ["normal", "anomaly"]

F64 = npt.NDArray[np.float64]


class ChannelGroup(BaseModel):
    """Channels treated as one vector, e.g. the three accelerometer axes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Group name, for cards and logs.")
    channels: list[str] = Field(min_length=1, description="Channel names from the manifest.")
    floor: float = Field(
        gt=0,
        description="Energy added before the log, in the channels' unit: the noise "
        "level below which changes do not count.",
    )


class BaselineParams(BaseModel):
    """Contents of a baseline bundle's model file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(pattern="^ewma-zscore$", description="Algorithm; only ewma-zscore.")
    groups: list[ChannelGroup] = Field(min_length=1, description="One feature per group.")
    span_windows: float = Field(ge=2, description="EWMA span in windows: alpha = 2 / (span + 1).")
    warmup_windows: int = Field(ge=1, description="Windows per stream before scoring starts.")
    z_threshold: float = Field(gt=0, description="|z| above which a window is an anomaly.")
    min_std: float = Field(
        gt=0, description="Lower bound of the baseline's standard deviation (log units)."
    )
    steepness: float = Field(gt=0, description="Slope of the score's logistic.")


@dataclass
class _StreamState:
    mean: F64 = field(default_factory=lambda: np.zeros(0))
    var: F64 = field(default_factory=lambda: np.zeros(0))
    seen: int = 0


@dataclass
class BaselineState:
    """Per-stream baselines, keyed by stream name."""

    streams: dict[str, _StreamState] = field(default_factory=dict)


class BaselineRuntime(Runtime):
    """Moving-average / z-score baseline per stream; see the module docstring."""

    name: ClassVar[str] = "baseline"

    def __init__(self, bundle: Bundle, *, threads: int = 1) -> None:
        super().__init__(bundle, threads=threads)
        manifest = bundle.manifest
        try:
            raw = json.loads(bundle.model_path.read_text(encoding="utf-8"))
            params = BaselineParams.model_validate(raw)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RuntimeBackendError(
                f"{bundle.ref}: cannot read {manifest.model_file}: {err}"
            ) from err
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
            )
            raise RuntimeBackendError(
                f"{bundle.ref}: {manifest.model_file} invalid: {problems}"
            ) from err
        if manifest.output.labels != LABELS:
            raise RuntimeBackendError(
                f"{bundle.ref}: a baseline outputs labels {LABELS}, "
                f"the manifest lists {manifest.output.labels}"
            )
        channels = manifest.input.channels
        self._groups: list[list[int]] = []
        for group in params.groups:
            missing = [c for c in group.channels if c not in channels]
            if missing:
                raise RuntimeBackendError(
                    f"{bundle.ref}: group {group.name!r} uses {missing}, "
                    f"not among the input channels {channels}"
                )
            self._groups.append([channels.index(c) for c in group.channels])
        self._floors = np.array([g.floor for g in params.groups], dtype=np.float64)
        self.params = params
        self.alpha = 2.0 / (params.span_windows + 1.0)
        self.state = BaselineState()

    def features(self, windows: FloatArray) -> F64:
        """Log motion energy per group, [N, groups]."""
        x = windows.astype(np.float64, copy=False)
        var = x.var(axis=1)  # per channel, window mean removed
        energy = np.stack([np.sqrt(var[:, idx].sum(axis=1)) for idx in self._groups], axis=1)
        return np.log(energy + self._floors)

    def run(self, windows: FloatArray) -> FloatArray:
        """Score windows of one anonymous stream whose state is not kept (warm-up, tools)."""
        return self._score(windows, _StreamState())

    def run_streams(self, windows: FloatArray, segments: Segments) -> FloatArray:
        """Score each stream's windows against, and then update, that stream's baseline."""
        if not segments:
            return self.run(windows)
        parts: list[FloatArray] = []
        at = 0
        streams = self.state.streams
        for stream, count in segments:
            state = streams.get(stream)
            if state is None:
                state = streams[stream] = _StreamState()
            parts.append(self._score(windows[at : at + count], state))
            at += count
        if at != len(windows):
            raise RuntimeBackendError(
                f"{self.bundle.ref}: segments cover {at} windows, the batch has {len(windows)}"
            )
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _score(self, windows: FloatArray, state: _StreamState) -> FloatArray:
        p = self.params
        feats = self.features(windows)
        out = np.zeros((len(windows), 2), dtype=np.float32)
        alpha, threshold, min_var = self.alpha, p.z_threshold, p.min_std**2
        mean, var, seen = state.mean, state.var, state.seen
        for i, f in enumerate(feats):
            if seen == 0:
                mean, var = f.copy(), np.zeros_like(f)
                score = 0.0
            else:
                sd = np.sqrt(np.maximum(var, min_var))
                z = (f - mean) / sd
                score = float(np.max(np.abs(z))) if seen >= p.warmup_windows else 0.0
                # An outlier moves the mean no further than the threshold would (winsorised)
                # and leaves the variance alone: otherwise a fault inflates the variance and
                # hides itself within a few windows.
                step = np.clip(f - mean, -threshold * sd, threshold * sd)
                mean = mean + alpha * step
                if score <= threshold:
                    var = (1.0 - alpha) * (var + alpha * step * step)
            seen += 1
            margin = p.steepness * (score - threshold)
            anomaly = 1.0 / (1.0 + math.exp(-margin)) if margin > -50 else 0.0
            out[i, 0] = 1.0 - anomaly
            out[i, 1] = anomaly
        state.mean, state.var, state.seen = mean, var, seen
        return out

    def reset(self, stream: str | None = None) -> None:
        """Forget one stream's baseline (or all), e.g. after the sensor was re-mounted."""
        if stream is None:
            self.state.streams.clear()
        else:
            self.state.streams.pop(stream, None)
