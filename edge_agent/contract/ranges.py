"""Inclusive sequence ranges `(first, last)`: the arithmetic of gaps, fills and evictions.

Pure functions over sorted lists of disjoint ranges, shared by the gateway (the answer to a
`sync.resend` request) and the consumers (gaps, repairs, evictions): every range stored or
sent is in that form (merged, ascending).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "MAX_RESEND_SEQS",
    "Range",
    "complement",
    "holes",
    "intersect",
    "merge",
    "request_spans",
    "size",
    "subtract",
]

Range = tuple[int, int]

MAX_RESEND_SEQS = 10_000
"""Seqs one `sync.resend` request may cover (the gateway answers `bad_request` beyond)."""


def merge(ranges: Iterable[Range]) -> list[Range]:
    """Sorted, disjoint ranges covering the same seqs; touching ranges are joined."""
    out: list[Range] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def size(ranges: Iterable[Range]) -> int:
    """How many seqs the (disjoint) ranges hold."""
    return sum(b - a + 1 for a, b in ranges)


def subtract(ranges: Iterable[Range], covered: Iterable[Range]) -> list[Range]:
    """The seqs of `ranges` not in `covered`, merged."""
    cut = merge(covered)
    out: list[Range] = []
    for lo, hi in merge(ranges):
        start = lo
        for a, b in cut:
            if b < start:
                continue
            if a > hi:
                break
            if a > start:
                out.append((start, a - 1))
            start = max(start, b + 1)
            if start > hi:
                break
        if start <= hi:
            out.append((start, hi))
    return out


def intersect(ranges: Iterable[Range], other: Iterable[Range]) -> list[Range]:
    """The seqs in both, merged."""
    left = merge(ranges)
    return subtract(left, subtract(left, other))


def complement(lo: int, hi: int, present: Iterable[int]) -> list[Range]:
    """The seqs of `[lo, hi]` not in `present` (any order, duplicates allowed)."""
    return subtract([(lo, hi)] if lo <= hi else [], ((s, s) for s in present))


def holes(last: int | None, seqs: Iterable[int]) -> list[Range]:
    """Seqs missing between `last` (the highest stored before) and the highest of `seqs`.

    With `last` None (a stream seen for the first time) only holes between the new seqs
    count: nothing before the first seq received is a gap.
    """
    new = sorted(set(seqs))
    if not new:
        return []
    start = new[0] if last is None else last + 1
    return complement(start, new[-1], new) if new[-1] >= start else []


def request_spans(missing: Iterable[Range], limit: int = MAX_RESEND_SEQS) -> list[Range]:
    """`sync.resend` ranges covering every missing seq, each at most `limit` seqs long.

    Neighbouring holes share a request while its span stays within `limit` (the seqs
    already stored between them come again as duplicates, which cost less than a request
    each); a hole longer than `limit` is cut into several. Each span starts and ends on a
    missing seq.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, not {limit}")
    spans: list[Range] = []
    for first, b in merge(missing):
        a = first
        if spans and b - spans[-1][0] + 1 <= limit:
            spans[-1] = (spans[-1][0], b)
            continue
        if spans and a - spans[-1][0] + 1 <= limit:
            # Part of this hole still fits the current span.
            end = spans[-1][0] + limit - 1
            spans[-1] = (spans[-1][0], end)
            a = end + 1
        while a <= b:
            end = min(b, a + limit - 1)
            spans.append((a, end))
            a = end + 1
    return spans
