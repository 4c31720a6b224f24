"""Rank and worker partition: each part within one row of its share of every source."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixbatch.errors import ConfigError
from mixbatch.plan.interleave import Interleaver
from mixbatch.plan.partition import deal_by_source, partition_batch, split_among_workers


def check_parts(sources, parts, equal_sizes):
    n = sources.size
    p = len(parts)
    joined = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    assert np.array_equal(np.sort(joined), np.arange(n))  # disjoint, union = all rows
    sizes = [x.size for x in parts]
    if equal_sizes:
        assert sizes == [n // p] * p
    else:
        assert max(sizes) - min(sizes) <= 1
    for part in parts:
        assert np.all(np.diff(part) > 0)  # planner order kept inside a part
    k = int(sources.max()) + 1 if n else 0
    total = np.bincount(sources, minlength=k)
    for part in parts:
        mine = np.bincount(sources[part], minlength=k)
        assert np.all(mine >= total // p)
        assert np.all(mine <= -(-total // p))


@settings(max_examples=200, deadline=None)
@given(
    world=st.integers(1, 16),
    per_rank=st.integers(1, 40),
    data=st.data(),
)
def test_partition_within_one_of_share(world, per_rank, data):
    k = data.draw(st.integers(1, 12))
    rows = data.draw(st.lists(st.integers(0, k - 1), min_size=world * per_rank,
                              max_size=world * per_rank))
    sources = np.array(rows, dtype=np.int64)
    parts = partition_batch(sources, world)
    check_parts(sources, parts, equal_sizes=True)
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition_batch(sources, world),
                                                      strict=True))


@settings(max_examples=200, deadline=None)
@given(workers=st.integers(1, 12), rows=st.lists(st.integers(0, 7), max_size=100))
def test_workers_within_one_of_share(workers, rows):
    sources = np.array(rows, dtype=np.int64)
    check_parts(sources, split_among_workers(sources, workers), equal_sizes=False)


def test_periodic_blend_reaches_every_rank():
    # Megatron's contiguous slicing gives each rank one source for w = (.5, .5), mbs=1, dp=2.
    batch = Interleaver(2).choose(8, [1, 1])
    assert batch.tolist() == [0, 1] * 4
    for part in partition_batch(batch, 4):
        assert sorted(batch[part].tolist()) == [0, 1]


def test_exact_small_case():
    sources = np.array([2, 0, 0, 1, 0, 2, 1, 0])
    parts = partition_batch(sources, 2)
    # Sorted by source: rows 1,2,4,7 (source 0), 3,6 (1), 0,5 (2); dealt alternately.
    assert [p.tolist() for p in parts] == [[0, 1, 3, 4], [2, 5, 6, 7]]


def test_errors():
    with pytest.raises(ConfigError, match="world_size"):
        partition_batch(np.array([0, 1, 2]), 2)
    with pytest.raises(ConfigError, match="world_size"):
        partition_batch(np.array([0, 1]), 0)
    with pytest.raises(ConfigError, match="sources"):
        partition_batch(np.array([0.5, 1.0]), 2)
    with pytest.raises(ConfigError, match="sources"):
        deal_by_source(np.array([-1, 0]), 2)
    with pytest.raises(ConfigError, match="num_workers"):
        split_among_workers(np.array([0, 1]), 0)
    assert [p.size for p in split_among_workers(np.zeros(0, dtype=np.int64), 3)] == [0, 0, 0]
