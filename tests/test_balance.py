from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixbatch.errors import ConfigError
from mixbatch.plan.partition import partition_batch
from mixbatch.shape.balance import balance_rows, row_costs, row_labels_costs
from mixbatch.shape.base import StepPlan


def _max_load(parts: list[np.ndarray], costs: np.ndarray) -> float:
    return max(float(costs[p].sum()) for p in parts)


def _check_partition(parts: list[np.ndarray], labels: np.ndarray, world: int) -> None:
    n = len(labels)
    assert len(parts) == world
    assert all(len(p) == n // world for p in parts)  # equal row counts
    assert all(np.array_equal(p, np.sort(p)) for p in parts)  # ascending
    allrows = np.concatenate(parts) if parts else np.empty(0, np.int64)
    assert np.array_equal(np.sort(allrows), np.arange(n))  # disjoint, union = all rows
    for lab in np.unique(labels):
        count = int(np.sum(labels == lab))
        lo, hi = count // world, -(-count // world)
        for p in parts:
            assert lo <= int(np.sum(labels[p] == lab)) <= hi  # within one of its share


@settings(max_examples=300, deadline=None)
@given(data=st.data(), world=st.integers(1, 6), per_rank=st.integers(1, 8),
       n_labels=st.integers(1, 4))
def test_balance_keeps_quotas_and_beats_round_robin(data, world, per_rank, n_labels) -> None:
    n = world * per_rank
    labels = np.array(data.draw(st.lists(st.integers(-1, n_labels - 1), min_size=n, max_size=n)))
    costs = np.array(data.draw(st.lists(st.floats(0, 1000, allow_nan=False), min_size=n,
                                        max_size=n)))
    parts = balance_rows(labels, costs, world)
    _check_partition(parts, labels, world)
    assert [p.tolist() for p in balance_rows(labels, costs, world)] == [p.tolist() for p in parts]
    best = _max_load(parts, costs)
    rr = partition_batch(labels - labels.min(), world)  # partition wants labels >= 0
    assert best <= _max_load(rr, costs) + 1e-9
    mean = float(costs.sum()) / world
    assert best <= mean + float(costs.max()) + 1e-6  # the LPT bound


def test_balance_beats_round_robin_on_skewed_costs() -> None:
    """Piece costs like a packed step's: many cheap rows, a few long-document rows."""
    rng = np.random.default_rng(0)
    wins = 0
    trials = 200
    for _ in range(trials):
        world = int(rng.integers(2, 9))
        n = world * int(rng.integers(2, 9))
        labels = rng.integers(-1, 3, n)
        costs = rng.lognormal(0, 1.5, n)
        parts = balance_rows(labels, costs, world)
        _check_partition(parts, labels, world)
        rr = _max_load(partition_batch(labels + 1, world), costs)
        wins += _max_load(parts, costs) < rr - 1e-12
    assert wins > 0.9 * trials


def test_balance_exact_small_cases() -> None:
    # one label, 2 ranks: LPT puts 10 and 2 together, 7 and 5 together: 12 / 12
    parts = balance_rows(np.zeros(4, np.int64), np.array([10.0, 7, 5, 2]), 2)
    assert [p.tolist() for p in parts] == [[0, 3], [1, 2]]
    # labels 0 0 1 1, one of each per rank: {9, 2} = 11 / {1, 8} = 9 is optimal;
    # the round-robin deal gives {9, 8} = 17 / {1, 2} = 3
    labels, costs = np.array([0, 0, 1, 1]), np.array([9.0, 1, 8, 2])
    assert [p.tolist() for p in partition_batch(labels, 2)] == [[0, 2], [1, 3]]
    assert [p.tolist() for p in balance_rows(labels, costs, 2)] == [[0, 3], [1, 2]]
    # six labels of one row each: the deal gives rank 0 all three costly rows (300 / 0);
    # a cross-label swap moves one over (labels stay within floor/ceil 0..1): 200 / 100
    labels, costs = np.arange(6), np.array([100.0, 0, 100, 0, 100, 0])
    assert [p.tolist() for p in partition_batch(labels, 2)] == [[0, 2, 4], [1, 3, 5]]
    assert [p.tolist() for p in balance_rows(labels, costs, 2)] == [[1, 2, 4], [0, 3, 5]]
    # empty rows (-1) are a label of their own and are spread like any other
    parts = balance_rows(np.array([-1, -1, 0, 0]), np.array([0.0, 0, 5, 5]), 2)
    assert [p.tolist() for p in parts] == [[0, 2], [1, 3]]


def test_balance_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="does not split evenly"):
        balance_rows(np.zeros(5, np.int64), np.ones(5), 2)
    with pytest.raises(ConfigError, match="one per row"):
        balance_rows(np.zeros(4, np.int64), np.ones(3), 2)
    with pytest.raises(ConfigError, match=">= 0"):
        balance_rows(np.zeros(2, np.int64), np.array([1.0, -1.0]), 1)
    with pytest.raises(ConfigError, match="world_size"):
        balance_rows(np.zeros(2, np.int64), np.ones(2), 0)
    with pytest.raises(ConfigError, match="integer labels"):
        balance_rows(np.array([0.5, 1.0]), np.ones(2), 1)
    assert [p.tolist() for p in balance_rows(np.empty(0, np.int64), np.empty(0), 3)] == [[], [], []]


def test_row_costs_by_hand() -> None:
    # row 0: segments of width 3 (2 tokens + end) and 6; row 1: one of width 4; row 2 empty
    plan = StepPlan(3, 8, np.array([0, 0, 1], np.int32), np.array([0, 3, 0]),
                    np.zeros(3, np.int32), np.array([0, 1, 2]), np.array([0, 0, 4]),
                    np.array([2, 6, 8]), np.array([True, False, False]), np.array([0, 2, 8]))
    d = 2  # s + s^2 / 12
    expected = [3 + 9 / 12 + 6 + 36 / 12, 4 + 16 / 12, 0.0]
    assert np.allclose(row_costs(plan, d), expected)
    with pytest.raises(ConfigError, match="d_model"):
        row_costs(plan, 0)


def test_compiled_labels_and_costs_equal_the_plan_methods() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        rows, k, n = int(rng.integers(1, 12)), int(rng.integers(1, 5)), int(rng.integers(0, 40))
        row = np.sort(rng.integers(0, rows, n)).astype(np.int32)
        start = np.zeros(n, np.int64)
        end = rng.integers(0, 50, n).astype(np.int64)
        eod = rng.random(n) < 0.5
        plan = StepPlan(rows, 64, row, np.zeros(n, np.int64), rng.integers(0, k, n).astype(np.int32),
                        np.arange(n, dtype=np.int64), start, end, eod, np.zeros(rows, np.int64))
        labels, costs = row_labels_costs(plan.row, plan.source, plan.width, rows, k, 96)
        assert np.array_equal(labels, plan.row_source(k))
        assert np.allclose(costs, row_costs(plan, 96), rtol=1e-12)
