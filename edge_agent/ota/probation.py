"""Probation: a newly activated version is watched on live windows, the previous one standing by.

For `ota.probation_windows` windows and `ota.probation_s` seconds after activation, every
batch the new version runs is judged:

- `errors`: an inference call raised (share of calls above `ota.max_error_rate`);
- `non_finite`: a NaN or inf in the output;
- `latency`: the median time per window of its calls exceeds `ota.latency_budget_ms` (a
  median, so one call delayed by a busy machine does not condemn a model);
- `label_collapse` / `label_drift`: at the end, the distribution of predicted labels is
  compared with the previous version's on the same windows (the previous version runs
  beside it on every batch of the probation): one label taking nearly everything where
  the previous version did not, or a total variation distance above `ota.max_label_drift`.

A batch the new version fails on (an exception, a non-finite row) is answered by the
previous version and tagged with its version, so no window goes without a result and no
garbage is stored. The first failure is the verdict: the watch answers every later batch
with the previous version until the daemon has swapped it back.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.config import OtaConfig
from edge_agent.inference.bundle import Bundle
from edge_agent.inference.runtime import FloatArray, Runtime, Segments

MIN_COMPARED_WINDOWS = 20
"""Fewer windows than this say nothing about a label distribution; it is not judged."""
MIN_LATENCY_CALLS = 5
"""Calls timed before latency is judged (the median of their time per window)."""


@dataclass(frozen=True)
class ProbationLimits:
    """The `ota` settings a probation applies."""

    windows: int
    seconds: float
    max_error_rate: float
    max_label_drift: float
    collapse_share: float
    latency_budget_ms: float

    @classmethod
    def from_config(cls, ota: OtaConfig) -> ProbationLimits:
        """The limits configured in `[ota]`."""
        return cls(
            windows=ota.probation_windows,
            seconds=ota.probation_s,
            max_error_rate=ota.max_error_rate,
            max_label_drift=ota.max_label_drift,
            collapse_share=ota.collapse_share,
            latency_budget_ms=ota.latency_budget_ms,
        )

    @property
    def immediate(self) -> bool:
        """No probation at all: confirm on activation."""
        return self.windows == 0 and self.seconds == 0


@dataclass(frozen=True)
class Verdict:
    """How a probation ended."""

    passed: bool
    signal: str
    """`passed`, `errors`, `non_finite`, `latency`, `label_collapse`, `label_drift`, `operator`."""
    reason: str
    detected_mono: float
    stats: dict[str, Any] = field(default_factory=dict)


def _shares(counts: Counter[str]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}


def label_drift(new: Counter[str], old: Counter[str]) -> float:
    """Total variation distance between two label histograms (0: same, 1: disjoint)."""
    p, q = _shares(new), _shares(old)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


class ProbationWatch:
    """Judges one new version on the live batches it runs (inference thread or loop).

    Args:
        bundle: The version on probation.
        previous: The bundle that served before it.
        previous_runtime: Its runtime, kept loaded to stand in and to compare against.
        limits: What to judge by.
        on_verdict: Called once, from whichever thread reached the verdict.
        clock: Monotonic seconds (a parameter so tests can drive time).
        timer: Nanoseconds for timing one inference call (a parameter so a test can judge
            latency without depending on how fast its processor is).
    """

    def __init__(
        self,
        bundle: Bundle,
        previous: Bundle,
        previous_runtime: Runtime,
        limits: ProbationLimits,
        on_verdict: Callable[[Verdict], None],
        clock: Callable[[], float] = time.monotonic,
        timer: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        self.bundle = bundle
        self.previous = previous
        self.previous_runtime = previous_runtime
        self.limits = limits
        self._on_verdict = on_verdict
        self._clock = clock
        self._timer = timer
        self.started = clock()
        self.verdict: Verdict | None = None
        self._lock = threading.Lock()
        self.calls = 0
        self.windows = 0
        self.judged_windows = 0
        self.errors = 0
        self.non_finite = 0
        self.fallback_windows = 0
        self.busy_ns = 0
        self._ms_per_window: deque[float] = deque(maxlen=256)
        self.last_error: str | None = None
        self.new_labels: Counter[str] = Counter()
        self.old_labels: Counter[str] = Counter()
        new_labels = bundle.manifest.output.labels
        old_labels = previous.manifest.output.labels
        self._compare = bool(new_labels) and bool(old_labels)

    # -- on the inference path ---------------------------------------------------------------

    def infer(
        self, runtime: Runtime, windows: FloatArray, segments: Segments
    ) -> tuple[FloatArray, Bundle]:
        """Run a batch on the new version (`runtime`), judged; returns (outputs, producer)."""
        if self.verdict is not None and not self.verdict.passed:
            return self.previous_runtime.infer(windows, segments), self.previous
        n = len(windows)
        out: FloatArray | None = None
        error: str | None = None
        start = self._timer()
        try:
            out = runtime.infer(windows, segments)
        except Exception as err:  # a model failing at run time is what probation is for
            error = f"{type(err).__name__}: {err}"
        elapsed = self._timer() - start
        bad_rows = 0
        if out is not None:
            if out.ndim != 2 or len(out) != n:
                error, out = f"output shape {list(out.shape)} for {n} windows", None
            else:
                bad_rows = int(np.count_nonzero(~np.all(np.isfinite(out), axis=1)))
        fallback = out is None or bad_rows > 0
        shadow = (
            self.previous_runtime.infer(windows, segments) if fallback or self._compare else None
        )
        verdict = None
        with self._lock:
            self.calls += 1
            self.windows += n
            if out is None:
                self.errors += 1
                self.last_error = error
            elif bad_rows:
                self.non_finite += bad_rows
            else:
                self.busy_ns += elapsed
                if n:
                    self._ms_per_window.append(elapsed / n / 1e6)
                self.judged_windows += n
                if self._compare and shadow is not None:
                    self._count(out, shadow)
            if fallback:
                self.fallback_windows += n
            if self.verdict is None:
                verdict = self._judge(self._clock())
                if verdict is not None:
                    self.verdict = verdict
        if verdict is not None:
            self._on_verdict(verdict)
        if fallback:
            assert shadow is not None
            return shadow, self.previous
        assert out is not None
        return out, self.bundle

    def _count(self, out: FloatArray, shadow: FloatArray) -> None:
        new_labels = self.bundle.manifest.output.labels
        old_labels = self.previous.manifest.output.labels
        for i, c in zip(*np.unique(np.argmax(out, axis=1), return_counts=True), strict=True):
            self.new_labels[new_labels[int(i)] if int(i) < len(new_labels) else str(i)] += int(c)
        for i, c in zip(*np.unique(np.argmax(shadow, axis=1), return_counts=True), strict=True):
            self.old_labels[old_labels[int(i)] if int(i) < len(old_labels) else str(i)] += int(c)

    # -- judging -----------------------------------------------------------------------------

    def check_time(self) -> None:
        """Called periodically from the loop: ends a probation whose time is up."""
        verdict = None
        with self._lock:
            if self.verdict is None:
                verdict = self._judge(self._clock())
                self.verdict = verdict
        if verdict is not None:
            self._on_verdict(verdict)

    def abort(self, reason: str) -> Verdict | None:
        """An operator's rollback: fail the probation now (None if it already ended)."""
        with self._lock:
            if self.verdict is not None:
                return None
            self.verdict = Verdict(False, "operator", reason, self._clock(), self.stats())
            return self.verdict

    def stats(self) -> dict[str, Any]:
        """Counters so far (JSON-ready); call with the lock held or from the loop."""
        mean_ms = self.busy_ns / self.judged_windows / 1e6 if self.judged_windows else None
        new_top = max(_shares(self.new_labels).values(), default=None)
        old_top = max(_shares(self.old_labels).values(), default=None)
        return {
            "windows": self.windows,
            "calls": self.calls,
            "errors": self.errors,
            "non_finite_windows": self.non_finite,
            "answered_by_previous": self.fallback_windows,
            "mean_ms_per_window": round(mean_ms, 4) if mean_ms is not None else None,
            "median_ms_per_window": round(statistics.median(self._ms_per_window), 4)
            if self._ms_per_window
            else None,
            "label_drift": round(label_drift(self.new_labels, self.old_labels), 4)
            if self.new_labels and self.old_labels
            else None,
            "top_label_share": round(new_top, 4) if new_top is not None else None,
            "previous_top_label_share": round(old_top, 4) if old_top is not None else None,
            "seconds": round(self._clock() - self.started, 3),
        }

    def _fail(self, signal: str, reason: str, now: float) -> Verdict:
        return Verdict(False, signal, reason, now, self.stats())

    def _judge(self, now: float) -> Verdict | None:
        limits = self.limits
        if self.non_finite:
            return self._fail(
                "non_finite",
                f"{self.bundle.ref} output NaN/inf for {self.non_finite} window(s) on live data",
                now,
            )
        if self.errors and self.errors / self.calls > limits.max_error_rate:
            return self._fail(
                "errors",
                f"{self.errors} of {self.calls} inference calls of {self.bundle.ref} failed "
                f"(last: {self.last_error}); ota.max_error_rate is {limits.max_error_rate:g}",
                now,
            )
        if len(self._ms_per_window) >= MIN_LATENCY_CALLS:
            median_ms = statistics.median(self._ms_per_window)
            if median_ms > limits.latency_budget_ms:
                return self._fail(
                    "latency",
                    f"{self.bundle.ref} takes {median_ms:.1f} ms per live window (median of "
                    f"{len(self._ms_per_window)} calls), over "
                    f"ota.latency_budget_ms ({limits.latency_budget_ms:g} ms)",
                    now,
                )
        if self.windows < limits.windows or now - self.started < limits.seconds:
            return None
        if self._compare and self.judged_windows >= MIN_COMPARED_WINDOWS:
            new_shares, old_shares = _shares(self.new_labels), _shares(self.old_labels)
            top_label, top = max(new_shares.items(), key=lambda kv: kv[1])
            old_top = max(old_shares.values(), default=0.0)
            if top >= limits.collapse_share and old_top < limits.collapse_share:
                return self._fail(
                    "label_collapse",
                    f"{self.bundle.ref} labelled {100 * top:.0f} % of {self.judged_windows} "
                    f"windows {top_label!r}; {self.previous.ref} on the same windows at most "
                    f"{100 * old_top:.0f} % one label",
                    now,
                )
            drift = label_drift(self.new_labels, self.old_labels)
            if drift > limits.max_label_drift:
                return self._fail(
                    "label_drift",
                    f"the label distribution of {self.bundle.ref} differs from "
                    f"{self.previous.ref}'s on the same {self.judged_windows} windows by "
                    f"{drift:.2f} (total variation; ota.max_label_drift is "
                    f"{limits.max_label_drift:g})",
                    now,
                )
        return Verdict(True, "passed", "probation passed", now, self.stats())
