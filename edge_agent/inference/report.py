"""Classification figures for training tools: per-class table, macro-F1, confusion matrix.

Training side only; numpy and the standard library (the PNG is written with zlib and struct,
so no plotting package is needed). Rows of a confusion matrix are the true label, columns the
predicted one.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

I64 = NDArray[np.int64]


@dataclass(frozen=True)
class ClassFigures:
    """Precision, recall and F1 of one class, and how many windows truly have it."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Figures:
    """What a classifier did on labelled windows."""

    labels: list[str]
    confusion: I64
    accuracy: float
    macro_f1: float
    per_class: list[ClassFigures]

    @property
    def windows(self) -> int:
        """Number of windows scored."""
        return int(self.confusion.sum())


def confusion_matrix(truth: I64, predicted: I64, k: int) -> I64:
    """Counts of (true, predicted) label pairs, [k, k]."""
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (np.asarray(truth), np.asarray(predicted)), 1)
    return matrix


def figures(truth: I64, predicted: I64, labels: list[str]) -> Figures:
    """Accuracy, per-class precision/recall/F1 and macro-F1 (0 where a ratio is undefined)."""
    matrix = confusion_matrix(truth, predicted, len(labels))
    per_class: list[ClassFigures] = []
    for i, label in enumerate(labels):
        tp = float(matrix[i, i])
        predicted_i = float(matrix[:, i].sum())
        true_i = float(matrix[i, :].sum())
        precision = tp / predicted_i if predicted_i else 0.0
        recall = tp / true_i if true_i else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append(ClassFigures(label, precision, recall, f1, int(true_i)))
    total = int(matrix.sum())
    return Figures(
        labels=list(labels),
        confusion=matrix,
        accuracy=float(np.trace(matrix)) / total if total else 0.0,
        macro_f1=float(np.mean([c.f1 for c in per_class])) if per_class else 0.0,
        per_class=per_class,
    )


def class_table(f: Figures) -> str:
    """Per-class precision, recall, F1 and support as a markdown table."""
    lines = ["| class | precision | recall | F1 | windows |", "|---|---:|---:|---:|---:|"]
    for c in f.per_class:
        lines.append(
            f"| {c.label} | {c.precision:.3f} | {c.recall:.3f} | {c.f1:.3f} | {c.support} |"
        )
    lines.append(f"| **macro** | | | **{f.macro_f1:.3f}** | {f.windows} |")
    return "\n".join(lines)


def confusion_markdown(f: Figures) -> str:
    """The confusion matrix as a markdown table."""
    lines = ["| true \\ predicted | " + " | ".join(f.labels) + " |"]
    lines.append("|---" * (len(f.labels) + 1) + "|")
    for label, row in zip(f.labels, f.confusion, strict=True):
        lines.append(f"| {label} | " + " | ".join(str(int(v)) for v in row) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# A confusion-matrix picture without a plotting package.
# --------------------------------------------------------------------------------------------

# 3x5 pixel digits, one string of 15 bits per glyph (rows top to bottom).
_DIGITS = {
    "0": "111101101101111",
    "1": "010110010010111",
    "2": "111001111100111",
    "3": "111001111001111",
    "4": "101101111001001",
    "5": "111100111001111",
    "6": "111100111101111",
    "7": "111001001001001",
    "8": "111101111101111",
    "9": "111101111001111",
}
_CELL = 40
_SCALE = 2


def _png(pixels: NDArray[np.uint8]) -> bytes:
    """An RGB PNG from an [H, W, 3] uint8 array."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def _draw_number(img: NDArray[np.uint8], value: int, cy: int, cx: int, dark: bool) -> None:
    text = str(value)
    w = (4 * len(text) - 1) * _SCALE
    x0, y0 = cx - w // 2, cy - 5 * _SCALE // 2
    colour = 0 if not dark else 255
    for n, ch in enumerate(text):
        bits = _DIGITS[ch]
        for r in range(5):
            for c in range(3):
                if bits[3 * r + c] == "1":
                    y = y0 + r * _SCALE
                    x = x0 + (4 * n + c) * _SCALE
                    img[y : y + _SCALE, x : x + _SCALE] = colour


def confusion_png(f: Figures, path: Path) -> None:
    """Write the confusion matrix as a heat map with counts (row-normalised shading).

    Rows are true labels in the order of the card's table, columns predicted labels; darker
    blue means a larger share of that row. Label names are in the card, not in the picture
    (a pixel font for words would be larger than the rest of this module).
    """
    k = len(f.labels)
    img = np.full((k * _CELL + 2, k * _CELL + 2, 3), 255, dtype=np.uint8)
    rows = f.confusion.sum(axis=1, keepdims=True)
    share = np.divide(f.confusion, np.where(rows == 0, 1, rows), dtype=np.float64)
    for i in range(k):
        for j in range(k):
            s = float(share[i, j])
            colour = np.array([255 - 215 * s, 255 - 160 * s, 255 - 60 * s], dtype=np.float64)
            y, x = 1 + i * _CELL, 1 + j * _CELL
            img[y : y + _CELL - 1, x : x + _CELL - 1] = colour.astype(np.uint8)
            _draw_number(img, int(f.confusion[i, j]), y + _CELL // 2, x + _CELL // 2, s > 0.5)
    img[0, :] = img[-1, :] = img[:, 0] = img[:, -1] = 0
    path.write_bytes(_png(img))
