"""The local search after the greedy hand-out order (``follow_order(..., repair=r)``,
:mod:`mixbatch.shape.follow`, "Repair"), which pad_buckets uses: a permutation, deterministic,
never worse than the greedy at its worst step boundary, within its group slack where the
greedy was, and on a window whose greedy order leaves its skewed items for the end, better."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mixbatch.shape.follow import follow_order, stream_composition


def _deviations(order: np.ndarray, comp: np.ndarray, src: np.ndarray,
                tok: np.ndarray) -> np.ndarray:
    """``max_i |c_i - C_i(t)|`` after every item but the last (the window's end is exact)."""
    k = comp.shape[1]
    cum_t, cum_s = stream_composition(src, tok, k)
    c = np.cumsum(comp[order], axis=0)
    t = c.sum(axis=1)
    p = np.minimum(np.searchsorted(cum_t, t, side="right") - 1, len(src))
    target = cum_s[p].copy()
    inside = np.flatnonzero(p < len(src))
    target[inside, src[p[inside]]] += (t - cum_t[p])[inside]
    return np.abs(c - target).max(axis=1)[:-1]


def _ahead(order: np.ndarray, group: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Per position, how far the placed item's group runs ahead of its share over its slack
    (two of the group's largest items), as the greedy's rule reads it."""
    _, g = np.unique(group, return_inverse=True)
    per = np.bincount(g, weights=size)
    share = per / per.sum()
    slack = np.zeros(per.size)
    np.maximum.at(slack, g, size)
    slack *= 2.0
    t = np.concatenate([[0.0], np.cumsum(size[order])])[:-1]
    done = np.zeros(per.size)
    out = np.zeros(len(order))
    for m, j in enumerate(order.tolist()):
        out[m] = done[g[j]] + size[j] - share[g[j]] * (t[m] + size[j]) - slack[g[j]]
        done[g[j]] += size[j]
    return np.maximum(out, 0.0)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(2, 60), k=st.integers(1, 4),
       near=st.integers(1, 8), groups=st.integers(1, 3))
def test_repair_is_a_deterministic_permutation_never_worse_than_the_greedy(
        data, n: int, k: int, near: int, groups: int) -> None:
    src = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    tok = np.array(data.draw(st.lists(st.integers(1, 50), min_size=n, max_size=n)))
    item = np.array(data.draw(st.lists(st.integers(0, max(n // 2, 1)), min_size=n,
                                       max_size=n)))
    _, item = np.unique(item, return_inverse=True)
    m = int(item.max()) + 1
    comp = np.zeros((m, k))
    np.add.at(comp, (item, src), tok)
    group = np.array(data.draw(st.lists(st.integers(0, groups - 1), min_size=m, max_size=m)))
    tie = np.arange(m)[::-1].copy()
    greedy = follow_order(comp, tie, src, tok, group=group)
    fixed = follow_order(comp, tie, src, tok, group=group, repair=near)
    assert sorted(fixed.tolist()) == list(range(m))
    assert np.array_equal(fixed, follow_order(comp, tie, src, tok, group=group, repair=near))
    if m >= 2:
        assert _deviations(fixed, comp, src, tok).max() <= \
            _deviations(greedy, comp, src, tok).max() + 1e-9
        size = comp.sum(axis=1)
        assert _ahead(fixed, group, size).sum() <= _ahead(greedy, group, size).sum() + 1e-6
    # `enough` at or above the greedy's worst deviation leaves the greedy's order
    top = float(_deviations(greedy, comp, src, tok).max()) if m >= 2 else 0.0
    assert np.array_equal(follow_order(comp, tie, src, tok, group=group, repair=near,
                                       enough=top), greedy)


def test_repair_fixes_what_the_one_step_greedy_cannot_see() -> None:
    """Stream A10 A10 A10 B20 B20 A20; items X = 20 A, Y = 30 A, Z = 40 B. X and Y both follow
    the stream exactly as the first item, and the keyed rank picks X; after X the only ways on
    are Z (10 off at t = 60) or Y then Z (Y at t = 50: 10 A ahead). Handing Y first, then Z,
    then X follows the stream exactly: the repair finds it, the greedy does not."""
    src = np.array([0, 0, 0, 1, 1, 0])
    tok = np.array([10, 10, 10, 20, 20, 20])
    comp = np.array([[20.0, 0.0], [30.0, 0.0], [0.0, 40.0]])
    tie = np.arange(3)
    greedy = follow_order(comp, tie, src, tok)
    fixed = follow_order(comp, tie, src, tok, repair=2)
    assert greedy.tolist() == [0, 2, 1]
    assert _deviations(greedy, comp, src, tok).max() == 10.0
    assert fixed.tolist() == [1, 2, 0]
    assert _deviations(fixed, comp, src, tok).max() == 0.0
    # within `enough` of the stream, the greedy's order stands
    assert follow_order(comp, tie, src, tok, repair=2, enough=10.0).tolist() == [0, 2, 1]
