"""What one model decided for the windows of one stream: the unit the store commits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass
class ResultBatch:
    """Decisions for the windows of one model on one stream, committed together."""

    sensor: str
    model: str
    version: str
    labels: list[str]
    t_start: npt.NDArray[np.float64]
    t_end: npt.NDArray[np.float64]
    label_index: npt.NDArray[np.int64]
    confidence: npt.NDArray[np.float32]
    recv_mono: float

    def __len__(self) -> int:
        return len(self.label_index)
