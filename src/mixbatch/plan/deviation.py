"""How far a sequence of choices strays from its mixture: the largest prefix deviation
``max_{n,i} |c_i(n) - w_i n|`` that DESIGN invariant 1 bounds (:mod:`mixbatch.plan.interleave`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["max_prefix_deviation"]


def max_prefix_deviation(
    sources: np.ndarray,
    weights: Sequence[float] | np.ndarray,
    lengths: np.ndarray | None = None,
) -> float:
    """``max_{n,i} |c_i(n) - w_i n|`` over every prefix of a sequence, for constant weights.

    ``sources`` are the chosen sources in order; ``lengths`` (token mode) the length of each
    chosen document, the unit then being tokens. Vectorised: the extremes of
    ``c_i - w_i n`` lie just before and just after each of source ``i``'s units (or
    documents), and at the end, so only those points are evaluated.
    """
    w = np.asarray(weights, dtype=np.float64)
    s = np.asarray(sources, dtype=np.int64)
    ln = np.ones(s.size, dtype=np.int64) if lengths is None else np.asarray(lengths, np.int64)
    if s.size == 0:
        return 0.0
    clock_end = np.cumsum(ln).astype(np.float64)  # clock after each document
    clock_start = clock_end - ln
    order = np.argsort(s, kind="stable")
    order_src = s[order]
    per_src_end = np.cumsum(ln[order])
    group_first = np.searchsorted(order_src, order_src, side="left")
    offset = np.concatenate([[0], per_src_end])[group_first]
    c_after = (per_src_end - offset).astype(np.float64)  # source's units after its document
    c_before = c_after - ln[order]
    ahead = c_after - w[order_src] * clock_end[order]
    behind = w[order_src] * clock_start[order] - c_before
    n = clock_end[-1]
    final = np.abs(np.bincount(s, weights=ln, minlength=w.size) - w * n)
    return float(max(ahead.max(), behind.max(), final.max(), 0.0))
