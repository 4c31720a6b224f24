"""Ranks within back-to-back groups and concatenated ranges (mixbatch.ranges)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mixbatch.ranges import group_ranks, span_positions

_counts = st.lists(st.integers(0, 12), max_size=20)


@given(_counts)
def test_group_ranks_count_from_zero_in_every_group(counts: list[int]) -> None:
    want = [r for c in counts for r in range(c)]
    got = group_ranks(np.array(counts, dtype=np.int64))
    assert got.dtype == np.int64
    assert got.tolist() == want


@given(st.lists(st.tuples(st.integers(0, 10**12), st.integers(0, 12)), max_size=20))
def test_span_positions_concatenate_the_ranges(pairs: list[tuple[int, int]]) -> None:
    starts = np.array([s for s, _ in pairs], dtype=np.int64)
    lengths = np.array([n for _, n in pairs], dtype=np.int32)
    want = [s + j for s, n in pairs for j in range(n)]
    got = span_positions(starts, lengths)
    assert got.dtype == np.int64
    assert got.tolist() == want
