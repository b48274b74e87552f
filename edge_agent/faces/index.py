"""The in-memory gallery: one contiguous matrix of unit vectors, matched 1:N by cosine.

Cosine similarity of unit vectors is a dot product, so matching a query against every
template is one matrix-vector product followed by a top-k. How the matrix is held is a
per-deployment choice (``faces.gallery_dtype``):

- ``float32`` (default): exact; the product is one BLAS ``sgemv`` through numpy. Its cost
  is reading the matrix once per query, so it is bound by memory bandwidth
  (100,000 × 512 × 4 bytes = 205 MB per query).
- ``float16``: half the memory; the product runs in ONNX Runtime's ``MatMul`` with the
  matrix pre-packed at build time (numpy has no half-precision BLAS: converting blocks to
  float32 per query would be an order of magnitude slower).
- ``int8``: a quarter of the memory and of the bytes read per query; each row carries its
  own scale (symmetric quantisation) and the product runs in ONNX Runtime's integer GEMM
  (``MatMulInteger``) with the matrix pre-packed at build time.

For both reduced precisions the best candidates are re-scored against their stored rows with
the float32 query, so only the rows' own rounding remains in the reported score (≲ 1e-3 in
cosine for float16, ≲ 5e-3 for int8).

The int8 product is exact integer arithmetic on every CPU: the query is quantised to 7 bits
(uint8 1..127 around a zero point of 64), so no pair of products can saturate the 16-bit
intermediate sums of x86 kernels without VNNI (``vpmaddubsw``: 2 × 127 × 127 < 2¹⁵). The
only difference between the integer score of a row and its re-scored value is then the
query's own rounding, bounded per query by ``max‖row‖ · ‖q − q̂‖``; candidates are chosen
within twice that bound, so the shortcut for ``k = 1`` and the full search return the same
best row and score whatever the processor.

An index is immutable once built: a gallery change builds a new one and swaps it in, so
a search never sees a half-applied change and needs no lock.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edge_agent.faces.errors import ModelMismatchError

GalleryDtype = Literal["float32", "float16", "int8"]

F32 = npt.NDArray[np.float32]

_RESCORE_MIN = 32  # float16/int8: candidates re-scored with the float query, at least
# float16: how far an approximate score may be from the re-scored one (the rounding of a
# float16 product, ≲ 0.001 in cosine, with room to spare). int8 computes its bound per query.
_F16_ERROR = 0.0025
# int8: the query's quantisation range (7 bits, see the module docstring) and zero point.
_Q_PEAK = 63
_Q_ZERO = 64
# Float rounding of the scaled integer score and of the re-score (float64, cast to float32).
_SLOP = 1e-6


@dataclass(frozen=True, slots=True)
class Match:
    """One candidate identity and its best cosine similarity over its templates."""

    identity: str
    score: float


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one identification.

    Attributes:
        identity: The matched identity, or None for "unknown".
        score: Similarity of the best candidate (also when it is below the threshold).
        threshold: Threshold the decision was taken with.
        candidates: Best identities, best first (at most ``k``).
        model: Model reference of the gallery.
        match_ms: Time spent matching.
    """

    identity: str | None
    score: float
    threshold: float
    candidates: tuple[Match, ...]
    model: str
    match_ms: float


def normalize_rows(vectors: npt.NDArray[np.floating]) -> F32:
    """L2-normalise each row (float32, C-contiguous copy).

    Raises:
        ValueError: A row has zero length or is not finite.
    """
    array = np.array(vectors, dtype=np.float32, order="C", ndmin=2)
    norms = np.linalg.norm(array, axis=1)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError("vectors must be finite and non-zero")
    array /= norms[:, None]
    return array


class FaceIndex:
    """Templates of one model, searchable by cosine similarity.

    Args:
        model: ``name@version`` the templates came from; queries must come from it too.
        identities: Identity ids; ``owners`` indexes into them.
        owners: Per template row, its identity's index.
        vectors: ``(n, dim)`` templates (normalised here).
        dtype: How the matrix is held (see the module docstring).
        dim: Dimension of an empty gallery (otherwise taken from ``vectors``).
        threads: Threads of the int8 kernel.
    """

    def __init__(
        self,
        model: str,
        identities: Sequence[str],
        owners: npt.NDArray[np.integer],
        vectors: npt.NDArray[np.floating],
        *,
        dtype: GalleryDtype = "float32",
        dim: int | None = None,
        threads: int = 1,
    ) -> None:
        started = time.perf_counter()
        self.model = model
        self.identities = list(identities)
        self.dtype: GalleryDtype = dtype
        self.owners = np.ascontiguousarray(owners, dtype=np.int32)
        count = len(self.owners)
        unit = normalize_rows(vectors) if count else np.zeros((0, dim or 0), dtype=np.float32)
        if len(unit) != count:
            raise ValueError(f"{len(unit)} vectors but {count} owners")
        if count and (self.owners.min() < 0 or self.owners.max() >= len(self.identities)):
            raise ValueError("an owner index points past the identity list")
        self.size = count
        self.dim = int(unit.shape[1]) if count else int(dim or 0)
        self._f32: F32 | None = None
        self._f16: npt.NDArray[np.float16] | None = None
        self._i8: npt.NDArray[np.int8] | None = None
        self._scale: F32 | None = None
        self._row_norm = 0.0
        self._session: Any = None
        if dtype == "float32":
            self._f32 = unit
        elif dtype == "float16":
            self._f16 = unit.astype(np.float16)
            del unit
            if count:
                self._session = _gallery_session(self._f16, threads)
        elif dtype == "int8":
            peak = np.abs(unit).max(axis=1) if count else np.zeros(0, np.float32)
            self._scale = (peak / 127.0).astype(np.float32)
            safe = np.where(self._scale > 0, self._scale, 1.0).astype(np.float32)
            self._i8 = np.clip(np.rint(unit / safe[:, None]), -127, 127).astype(np.int8)
            del unit
            # Largest norm of a dequantised row: scales the query's rounding into a score bound.
            self._row_norm = _max_row_norm(self._i8, self._scale)
            if count:
                self._session = _gallery_session(self._i8, threads)
        else:
            raise ValueError(f"gallery dtype must be float32, float16 or int8, not {dtype!r}")
        self.build_ms = (time.perf_counter() - started) * 1000

    @property
    def nbytes(self) -> int:
        """Bytes of the matrix (the int8 kernel's packed copy not included)."""
        held = [a for a in (self._f32, self._f16, self._i8) if a is not None]
        return int(held[0].nbytes) if held else 0

    @property
    def matrix(self) -> F32:
        """The float32 matrix (only for ``float32`` galleries): what a bare product reads."""
        if self._f32 is None:
            raise ValueError(f"a {self.dtype} gallery has no float32 matrix")
        return self._f32

    # -- scoring ---------------------------------------------------------------------------

    def scores(self, query: F32) -> F32:
        """Cosine similarity of a unit query with every template (int8: approximate)."""
        return self._approximate(query)[0]

    def _approximate(self, query: F32) -> tuple[F32, float]:
        """Scores of every row and how far each may be from its re-scored value (`_exact`)."""
        if self._f32 is not None:
            product: F32 = self._f32 @ query
            return product, 0.0
        if self._f16 is not None:
            (half,) = self._session.run(None, {"q": query.astype(np.float16)[None, :]})
            scores16: F32 = half[0].astype(np.float32)
            return scores16, _F16_ERROR
        assert self._i8 is not None
        assert self._scale is not None
        q64 = query.astype(np.float64)
        peak = float(np.abs(q64).max())
        q_scale = peak / _Q_PEAK if peak > 0 else 1.0
        levels = np.clip(np.rint(q64 / q_scale), -_Q_PEAK, _Q_PEAK)
        (raw,) = self._session.run(None, {"q": (levels + _Q_ZERO).astype(np.uint8)[None, :]})
        scores: F32 = raw[0].astype(np.float32)
        scores *= self._scale
        scores *= np.float32(q_scale)
        # |row·q − row·q̂| ≤ ‖row‖·‖q − q̂‖ (Cauchy–Schwarz); the integer product is exact.
        rounding = float(np.linalg.norm(q64 - levels * q_scale))
        return scores, self._row_norm * rounding + _SLOP

    def _exact(self, rows: npt.NDArray[np.intp], query: F32) -> F32:
        """Scores of a few rows with the float query (int8: dequantised rows).

        Computed in float64 and rounded once, so a row's value does not depend on which
        other rows are re-scored with it (BLAS may sum differently for other block sizes).
        """
        if self._f32 is not None:
            block = self._f32[rows]
        elif self._f16 is not None:
            block = self._f16[rows].astype(np.float32)
        else:
            assert self._i8 is not None
            assert self._scale is not None
            block = self._i8[rows].astype(np.float32) * self._scale[rows, None]
        out: F32 = (block.astype(np.float64) @ query.astype(np.float64)).astype(np.float32)
        return out

    def search(self, query: npt.NDArray[np.floating], k: int = 1) -> list[Match]:
        """The ``k`` best identities for a query (best template per identity), best first.

        Raises:
            ValueError: The query has the wrong dimension, is zero or not finite.
        """
        q = self._query(query)
        n = self.size
        if n == 0 or k < 1:
            return []
        scores, error = self._approximate(q)
        exact = self._i8 is not None or self._f16 is not None
        if exact and k == 1:
            # The truly best row scores at most `error` less approximately, and the row with
            # the best approximate score at most `error` more: it is within twice that of the
            # maximum. One comparison pass instead of a partial sort of every score.
            near = np.flatnonzero(scores >= scores.max() - 2 * error)
            values = self._exact(near, q)
            row = int(near[int(np.argmax(values))])
            return [Match(self.identities[self.owners[row]], float(values.max()))]
        want = max(k * 4, _RESCORE_MIN) if exact else k
        if want == 1:
            row = int(np.argmax(scores))
            return [Match(self.identities[self.owners[row]], float(scores[row]))]
        m = min(n, want)
        while True:
            rows = np.argpartition(scores, n - m)[n - m :] if m < n else np.arange(n)
            values = self._exact(rows, q) if exact else scores[rows]
            order = np.argsort(-values, kind="stable")
            found: list[Match] = []
            seen: set[int] = set()
            for i in order:
                owner = int(self.owners[rows[i]])
                if owner in seen:
                    continue
                seen.add(owner)
                found.append(Match(self.identities[owner], float(values[i])))
                if len(found) == k:
                    break
            # A row left out scores at most `floor` re-scored: the answer stands when the
            # k-th found beats that, else look further.
            floor = float(scores[rows].min()) + error
            if m == n or (len(found) == k and found[-1].score >= floor):
                return found
            m = min(n, m * 4)  # many templates per identity: look further

    def identify(
        self,
        query: npt.NDArray[np.floating],
        threshold: float,
        *,
        k: int = 1,
        model: str | None = None,
    ) -> Decision:
        """Decide who a query is: the best identity if its score reaches the threshold.

        Args:
            query: The embedding (any length; normalised here).
            threshold: Cosine similarity a match needs (``score >= threshold``).
            k: Candidates to return.
            model: Model the query came from; refused if it is not the gallery's.

        Raises:
            ModelMismatchError: ``model`` differs from the gallery's model.
            ValueError: The query does not fit the gallery.
        """
        if model is not None and model != self.model:
            raise ModelMismatchError(self.model, model)
        started = time.perf_counter()
        found = self.search(query, k)
        match_ms = (time.perf_counter() - started) * 1000
        if not found:
            return Decision(None, -1.0, threshold, (), self.model, match_ms)
        best = found[0]
        identity = best.identity if best.score >= threshold else None
        return Decision(identity, best.score, threshold, tuple(found), self.model, match_ms)

    def _query(self, query: npt.NDArray[np.floating]) -> F32:
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(
                f"query has {q.shape[0]} values, the gallery of {self.model} holds {self.dim}"
            )
        norm = float(np.linalg.norm(q))
        if not np.isfinite(norm) or norm == 0:
            raise ValueError("query must be finite and non-zero")
        return np.ascontiguousarray(q / norm)


def _max_row_norm(rows: npt.NDArray[np.int8], scale: F32) -> float:
    """Largest Euclidean norm of the dequantised rows (blockwise: no float copy of all)."""
    peak = 0.0
    for start in range(0, len(rows), 8192):
        block = rows[start : start + 8192].astype(np.float64) * scale[start : start + 8192, None]
        peak = max(peak, float(np.sqrt((block * block).sum(axis=1)).max(initial=0.0)))
    return peak


def _gallery_session(matrix: npt.NDArray[np.int8] | npt.NDArray[np.float16], threads: int) -> Any:
    """An ONNX Runtime session computing ``q · matrixᵀ`` with the matrix pre-packed.

    The gallery is a constant initializer, so ONNX Runtime packs it once for its GEMM
    kernels: ``MatMulInteger`` (uint8 query with zero point 64 × int8 gallery → exact int32
    dot products of the quantised values) or ``MatMul`` in float16.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    model = (
        matmul_integer_model(matrix)  # type: ignore[arg-type]
        if matrix.dtype == np.int8
        else matmul_float16_model(matrix)  # type: ignore[arg-type]
    )
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


# -- a minimal ONNX encoder ----------------------------------------------------------------
# The `onnx` package is a training-time tool, not a runtime dependency; the int8 gallery
# graph (one node, one big initializer) is written here with the few protobuf fields it
# needs. Field numbers are those of onnx.proto (ModelProto, GraphProto, NodeProto,
# TensorProto, ValueInfoProto, TypeProto); tests check the result with the onnx checker.

_ONNX_INT8 = 3
_ONNX_UINT8 = 2
_ONNX_INT32 = 6
_ONNX_FLOAT16 = 10


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    """A varint field (wire type 0)."""
    return _varint(number << 3) + _varint(value)


def _tensor(name: str, data_type: int, dims: Sequence[int], raw: bytes) -> bytes:
    body = b"".join(_int_field(1, d) for d in dims)
    return body + _int_field(2, data_type) + _field(8, name.encode()) + _field(9, raw)


def _value_info(name: str, elem_type: int, dims: Sequence[int]) -> bytes:
    shape = b"".join(_field(1, _int_field(1, d)) for d in dims)
    tensor_type = _int_field(1, elem_type) + _field(2, shape)
    return _field(1, name.encode()) + _field(2, _field(1, tensor_type))


def matmul_integer_model(matrix: npt.NDArray[np.int8]) -> bytes:
    """Serialized ONNX model: ``dots[1, n] = MatMulInteger(q[1, dim] u8, matrixᵀ, 64)``."""
    n, dim = matrix.shape
    node = (
        _field(1, b"q")
        + _field(1, b"gallery")
        + _field(1, b"q_zero")
        + _field(2, b"dots")
        + _field(4, b"MatMulInteger")
    )
    gallery = _tensor("gallery", _ONNX_INT8, [dim, n], np.ascontiguousarray(matrix.T).tobytes())
    zero = _tensor("q_zero", _ONNX_UINT8, [], bytes([_Q_ZERO]))
    graph = (
        _field(1, node)
        + _field(2, b"face-gallery-int8")
        + _field(5, gallery)
        + _field(5, zero)
        + _field(11, _value_info("q", _ONNX_UINT8, [1, dim]))
        + _field(12, _value_info("dots", _ONNX_INT32, [1, n]))
    )
    opset = _field(1, b"") + _int_field(2, 17)
    return _int_field(1, 8) + _field(7, graph) + _field(8, opset)


def matmul_float16_model(matrix: npt.NDArray[np.float16]) -> bytes:
    """Serialized ONNX model: ``scores[1, n] = MatMul(q[1, dim] f16, matrixᵀ)`` in float16."""
    n, dim = matrix.shape
    node = _field(1, b"q") + _field(1, b"gallery") + _field(2, b"scores") + _field(4, b"MatMul")
    raw = np.ascontiguousarray(matrix.T, dtype="<f2").tobytes()
    graph = (
        _field(1, node)
        + _field(2, b"face-gallery-float16")
        + _field(5, _tensor("gallery", _ONNX_FLOAT16, [dim, n], raw))
        + _field(11, _value_info("q", _ONNX_FLOAT16, [1, dim]))
        + _field(12, _value_info("scores", _ONNX_FLOAT16, [1, n]))
    )
    opset = _field(1, b"") + _int_field(2, 17)
    return _int_field(1, 8) + _field(7, graph) + _field(8, opset)
