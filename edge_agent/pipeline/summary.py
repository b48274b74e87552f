"""Per-sensor, per-model summaries over a fixed interval: what the cloud sees by default."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass
class SummaryAccumulator:
    """Collects window results of one (sensor, model) until the interval closes."""

    sensor: str
    model: str
    model_version: str
    labels: list[str]
    counts: npt.NDArray[np.int64] = field(init=False)
    confidence_sum: float = 0.0
    windows: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    dropped_at_start: int = 0
    anomaly_index: int | None = field(init=False)
    """Output index of the label `anomaly`, for anomaly detectors; None for other models."""

    def __post_init__(self) -> None:
        self.counts = np.zeros(max(1, len(self.labels)), dtype=np.int64)
        self.anomaly_index = self.labels.index("anomaly") if "anomaly" in self.labels else None

    def add(self, label_index: npt.NDArray[np.int64], confidence: npt.NDArray[np.float32]) -> None:
        """Count a batch of window decisions."""
        self.counts += np.bincount(label_index, minlength=len(self.counts))[: len(self.counts)]
        self.confidence_sum += float(confidence.sum(dtype=np.float64))
        self.windows += len(label_index)

    def add_latency(self, latency_ms: float, n: int) -> None:
        """Window close → commit latency of `n` windows committed together."""
        if len(self.latencies_ms) < 100_000:
            self.latencies_ms.extend([latency_ms] * min(n, 1000))

    def flush(self, t_start: float, t_end: float, dropped_total: int) -> dict[str, Any]:
        """The summary body for the closed interval; resets for the next one."""
        dropped = dropped_total - self.dropped_at_start
        self.dropped_at_start = dropped_total
        label_counts = {label: int(c) for label, c in zip(self.labels, self.counts, strict=False)}
        total = int(self.counts.sum())
        lat = np.asarray(self.latencies_ms, dtype=np.float64)
        body: dict[str, Any] = {
            "sensor": self.sensor,
            "model": self.model,
            "model_version": self.model_version,
            "interval_start": round(t_start, 3),
            "interval_end": round(t_end, 3),
            "windows_processed": self.windows,
            "windows_dropped": dropped,
            "label_counts": label_counts,
            "label_distribution": {
                k: round(v / total, 4) for k, v in label_counts.items() if total
            },
            "top_label": self.labels[int(np.argmax(self.counts))] if total else None,
            # Windows an anomaly detector flagged; null for models that do not detect anomalies.
            "anomaly_count": None
            if self.anomaly_index is None
            else int(self.counts[self.anomaly_index]),
            "mean_confidence": round(self.confidence_sum / self.windows, 4)
            if self.windows
            else None,
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
            "latency_ms_p99": round(float(np.percentile(lat, 99)), 3) if len(lat) else None,
        }
        self.counts[:] = 0
        self.confidence_sum = 0.0
        self.windows = 0
        self.latencies_ms = []
        return body
