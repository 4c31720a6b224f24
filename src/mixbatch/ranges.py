"""Groups laid out back to back: each element's rank within its group, and concatenated ranges.

NumPy only and importing nothing of mixbatch, so that every part (stores, planner, shapers,
loader, prompting) can use it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["group_ranks", "span_positions"]


def group_ranks(counts: np.ndarray) -> np.ndarray:
    """For groups of ``counts[g]`` elements laid out one group after the other, each element's
    rank within its group: ``[0, 1, .., counts[0] - 1, 0, 1, .., counts[1] - 1, ...]`` (int64)."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)


def span_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])``, vectorised (int64)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.repeat(np.asarray(starts, dtype=np.int64), lengths) + group_ranks(lengths)
