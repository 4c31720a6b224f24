"""The compiled shaping passes against plain reference implementations of what they replace:
the repair's pruned search (``shape/follow_repair.py``) against the plain search of every
trial, the hand-out greedy's one-source shortcut against the greedy, pad_buckets' pools, cuts
and keyed orders (``shape/pad_plan.py``) against their one-pool NumPy forms, bfd's window
packing (``shape/bfd_pack.py``) against cut_spans + best_fit_decreasing, and the window's
state copy."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mixbatch.plan.permutation import keyed_order
from mixbatch.shape.base import Docs
from mixbatch.shape.bfd import _Window, best_fit_decreasing, cut_spans
from mixbatch.shape.follow import (
    _follow,
    _kinds,
    follow_order,
    stream_composition,
)
from mixbatch.shape.follow_repair import repair_order
from mixbatch.shape.pad_buckets import PadBucketShaper
from mixbatch.shape.pad_plan import cut_runs, keyed_orders, pool_parts
from mixbatch.shape.window import copy_state


def _plain_repair(order, near, enough, comp, total, cum_t, cum_s, src, group, size, share,
                  slack) -> np.ndarray:
    """The local search of ``shape/follow.py`` ("Repair") trial by trial: every trial built
    and scored over its whole span."""
    n, k = comp.shape
    order = order.copy()

    def state_devs(seq, a, b, c0, t0, g0):
        c, g, t = c0.copy(), g0.copy(), t0
        worst = excess = 0.0
        for m in range(a, b + 1):
            j = seq[m]
            over = g[group[j]] + size[j] - share[group[j]] * (t + size[j]) - slack[group[j]]
            excess += max(over, 0.0)
            g[group[j]] += size[j]
            t += total[j]
            c += comp[j]
            if t >= cum_t[-1]:
                target = cum_s[-1]
            else:
                p = np.searchsorted(cum_t, t, side="right") - 1
                target = cum_s[p].copy()
                target[src[p]] += t - cum_t[p]
            worst = max(worst, float(np.abs(c - target).max()))
        return worst, excess

    for _ in range(n):
        cs = np.zeros((n + 1, k))
        gs = np.zeros((n + 1, len(share)))
        ts = np.zeros(n + 1)
        for m in range(n):
            j = order[m]
            cs[m + 1] = cs[m] + comp[j]
            gs[m + 1] = gs[m]
            gs[m + 1, group[j]] += size[j]
            ts[m + 1] = ts[m] + total[j]
        dev = np.array([state_devs(order, m, m, cs[m], ts[m], gs[m]) for m in range(n)])
        at = int(np.argmax(dev[:n - 1, 0]))
        best_w = dev[at, 0]
        if best_w <= enough:
            break
        best = None
        for a in range(at + 1):
            ox = dev[a:at + 1, 1].sum()
            for b in range(at + 1, n):
                ox += dev[b, 1]
                if at - a > near and b - at - 1 > near:
                    continue
                for how in range(3):
                    trial = order.copy()
                    if how == 0:
                        trial[a], trial[b] = order[b], order[a]
                    elif how == 1:
                        trial[a:b], trial[b] = order[a + 1:b + 1], order[a]
                    else:
                        trial[a + 1:b + 1], trial[a] = order[a:b], order[b]
                    nw, nx = state_devs(trial, a, b, cs[a], ts[a], gs[a])
                    if nw < best_w and nx <= ox + 1e-9:
                        best_w, best = nw, trial
        if best is None:
            break
        order = best
    return order


def _inputs(data, n: int, k: int, groups: int, fractional: bool):
    src = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    tok = np.array(data.draw(st.lists(st.integers(1, 60), min_size=n, max_size=n)), float)
    if fractional:
        tok = tok / 7.0
    item = np.array(data.draw(st.lists(st.integers(0, max(n // 2, 1)), min_size=n,
                                       max_size=n)))
    _, item = np.unique(item, return_inverse=True)
    m = int(item.max()) + 1
    comp = np.zeros((m, k))
    np.add.at(comp, (item, src), tok)
    group = np.array(data.draw(st.lists(st.integers(0, groups - 1), min_size=m, max_size=m)))
    return src, tok, comp, group


@settings(max_examples=80, deadline=None)
@given(data=st.data(), n=st.integers(2, 45), k=st.integers(1, 4), near=st.integers(1, 6),
       groups=st.integers(1, 3), fractional=st.booleans())
def test_pruned_repair_equals_the_plain_search(data, n, k, near, groups, fractional) -> None:
    src, tok, comp, group = _inputs(data, n, k, groups, fractional)
    m = comp.shape[0]
    if m < 2:
        return
    tie = np.array(data.draw(st.permutations(range(m))))
    greedy = follow_order(comp, tie, src, tok, group=group)
    _, gid = np.unique(group, return_inverse=True)
    total = comp.sum(axis=1)
    per = np.bincount(gid, weights=total)
    share = per / per.sum()
    slack = np.zeros(per.size)
    np.maximum.at(slack, gid, total)
    slack *= 2.0
    cum_t, cum_s = stream_composition(src, tok, k)
    args = (greedy, near, 0.0, comp, total, cum_t, cum_s, src.astype(np.int64),
            gid.astype(np.int64), total, share, slack)
    assert np.array_equal(repair_order(*args), _plain_repair(*args))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(2, 40), samples=st.booleans())
def test_one_source_shortcut_equals_the_greedy(data, n, samples) -> None:
    src = np.zeros(n, dtype=np.int64)
    tok = np.ones(n) if samples else np.array(
        data.draw(st.lists(st.integers(1, 60), min_size=n, max_size=n)), float)
    item = np.array(data.draw(st.lists(st.integers(0, n // 2), min_size=n, max_size=n)))
    _, item = np.unique(item, return_inverse=True)
    m = int(item.max()) + 1
    comp = np.zeros((m, 1))
    np.add.at(comp, (item, src), tok)
    tie = np.array(data.draw(st.permutations(range(m))), dtype=np.int64)
    cum_t, cum_s = stream_composition(src, tok, 1)
    zero = np.zeros(m, dtype=np.int64)
    members, first = _kinds(comp, zero, np.zeros(m), tie)
    greedy = _follow(comp, comp.sum(axis=1), tie, cum_t, cum_s, src, zero, np.zeros(m),
                     np.zeros(1), np.full(1, np.inf), members, first)
    assert np.array_equal(follow_order(comp, tie, src, tok), greedy)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(2, 40), k=st.integers(1, 4))
def test_plain_order_equals_the_order_with_one_group(data, n, k) -> None:
    # one group never holds an item back (its share is everything), so the general path
    # with groups gives the order the compiled plain path gives without them
    src, tok, comp, _ = _inputs(data, n, k, 1, False)
    m = comp.shape[0]
    tie = np.array(data.draw(st.permutations(range(m))), dtype=np.int64)
    assert np.array_equal(follow_order(comp, tie, src, tok),
                          follow_order(comp, tie, src, tok, group=np.zeros(m, np.int64)))


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from([0.0, 1.0, 2.0, 3.0, 2.5]), st.integers(0, 3),
                               st.integers(0, 2)), min_size=1, max_size=40),
       tie=st.randoms(use_true_random=False))
def test_kinds_number_rows_as_numpy_unique(rows, tie) -> None:
    # integer rows take the packed-key path, rows with 2.5 the merge sort
    key = np.array(rows, dtype=np.float64)
    comp, gid, size = key[:, :1], key[:, 1].astype(np.int64), key[:, 2]
    ranks = np.arange(len(rows))
    tie.shuffle(ranks)
    members, first = _kinds(comp, gid, size, ranks.astype(np.int64))
    _, kind = np.unique(key, axis=0, return_inverse=True)
    kind = kind.ravel()
    want = np.lexsort((ranks, kind))
    assert members.tolist() == want.tolist()
    assert first.tolist() == np.searchsorted(kind[want], np.arange(kind.max() + 2)).tolist()


@settings(max_examples=80, deadline=None)
@given(weight=st.lists(st.integers(1, 50), min_size=1, max_size=60),
       cuts=st.lists(st.integers(0, 60), max_size=4), per=st.integers(10, 200),
       sort=st.booleans())
def test_pool_parts_cut_each_run_as_one_pool_rule(weight, cuts, per, sort) -> None:
    w = np.array(weight, float)
    bounds = sorted({0, len(w), *[c for c in cuts if c < len(w)]})
    got = pool_parts(w, np.array(bounds), float(per), sort)
    part = -1
    for a, z in itertools.pairwise(bounds):
        if not sort or z - a <= 1:
            part += 1
            assert set(got[a:z].tolist()) == {part}
            continue
        cum = np.cumsum(w[a:z])
        last = max(round(float(cum[-1]) / per), 1) - 1
        pool = np.minimum((cum - w[a:z]) // per, last).astype(np.int64)
        want = part + 1 + np.concatenate([[0], np.cumsum(np.diff(pool) != 0)])
        assert got[a:z].tolist() == want.tolist()
        part = int(want[-1])


@settings(max_examples=60, deadline=None)
@given(e=st.lists(st.integers(1, 40), min_size=1, max_size=50), split=st.integers(0, 50),
       rm=st.sampled_from([1, 2, 4]))
def test_cut_runs_cut_every_run_as_cut_batches(e, split, rm) -> None:
    shaper = PadBucketShaper(40, 40 * rm * 2, row_multiple=rm, pad_to=1)
    e_arr = np.array(e, dtype=np.int64)
    split = min(split, len(e))
    cost, _ = shaper._row_costs(e_arr, None)
    starts, runs = cut_runs(cost, None, np.array([0, split, len(e)]), rm, shaper.token_budget)
    want = [(a, z) for a, z in shaper.cut_batches(e_arr[:split])] + \
        [(a + split, z + split) for a, z in shaper.cut_batches(e_arr[split:])]
    assert list(zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True)) == want
    assert runs.tolist() == [0 if z <= split else 1 for _, z in want]


@given(counts=st.lists(st.integers(0, 30), min_size=1, max_size=6),
       keys=st.lists(st.integers(0, 2**64 - 1), min_size=6, max_size=6))
def test_keyed_orders_are_keyed_order_per_group(counts, keys) -> None:
    got = keyed_orders(keys[:len(counts)], np.array(counts))
    want = [keyed_order(c, key) for c, key in zip(counts, keys, strict=False)]
    assert got.tolist() == (np.concatenate(want).tolist() if want else [])


@settings(max_examples=80, deadline=None)
@given(spans=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 90), st.booleans()),
                      min_size=1, max_size=40), seq_len=st.sampled_from([4, 16, 33]))
def test_bfd_window_is_cut_spans_then_best_fit(spans, seq_len) -> None:
    n = len(spans)
    source = np.array([s for s, _, _ in spans], dtype=np.int32)
    length = np.array([ln for _, ln, _ in spans], dtype=np.int64)
    start = np.zeros(n, dtype=np.int64)
    eod = np.array([e for _, _, e in spans], dtype=bool)
    docs = Docs(source, np.arange(n, dtype=np.int64), length, None, start, length, eod)
    win = _Window.pack(docs, seq_len)
    k, a, b, last = cut_spans(start, length, eod, seq_len)
    _, offset, n_bins = best_fit_decreasing(b - a + last, seq_len)
    assert win.n_rows == n_bins
    # the same pieces, each row holding one bin's pieces at their offsets
    got = sorted(zip(win.source.tolist(), win.doc.tolist(), win.start.tolist(),
                     win.end.tolist(), win.eod.tolist(), win.col.tolist(), strict=True))
    want = sorted(zip(source[k].tolist(), k.tolist(), a.tolist(), b.tolist(), last.tolist(),
                      offset.tolist(), strict=True))
    assert got == want
    width = win.end - win.start + win.eod
    assert (np.bincount(win.row, weights=width, minlength=win.n_rows) + win.pad
            == seq_len).all()
    assert win.ptr[0] == 0 and win.ptr[-1] == len(win.row)


def test_copy_state_shares_nothing_mutable() -> None:
    state = {"a": [1, 2, [3.5, None]], "b": {"c": (1, [2])}, "d": True, "e": np.arange(3)}
    copied = copy_state(state)
    assert copied["a"] == state["a"] and copied["b"] == state["b"]
    assert np.array_equal(copied["e"], state["e"])
    copied["a"][2].append(1)
    copied["b"]["c"][1].append(3)
    copied["e"][0] = 7
    assert state["a"][2] == [3.5, None] and state["b"]["c"] == (1, [2])
    assert state["e"][0] == 0
