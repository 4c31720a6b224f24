from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixbatch.errors import ConfigError, StateError
from mixbatch.shape.base import Docs, StepPlan
from mixbatch.shape.bfd import BFDShaper, best_fit_decreasing, cut_pieces
from mixbatch.shape.materialize import IGNORE_INDEX, materialize
from mixbatch.testing import ListFeed, ShaperRun, assert_resumes
from mixbatch.testing import feed_from_items as _feed_for
from mixbatch.testing import toy_stores as _stores


def _signature(plan: StepPlan) -> tuple:
    return (plan.row.tolist(), plan.col.tolist(), plan.source.tolist(), plan.doc.tolist(),
            plan.start.tolist(), plan.end.tolist(), plan.eod.tolist(), plan.pad.tolist())


def _run(shaper: BFDShaper, feed: ListFeed, rows: int, steps: int | None = None) -> list[tuple]:
    out = []
    while steps is None or len(out) < steps:
        plan = shaper.plan_step(feed, rows)
        if plan is None:
            break
        out.append(_signature(plan))
    return out


docs_strategy = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 80)), min_size=1,
                         max_size=60)


@settings(max_examples=200, deadline=None)
@given(items=docs_strategy, seq_len=st.integers(2, 33), window=st.integers(1, 4),
       rows=st.integers(1, 4))
def test_bfd_feeds_every_token_once_with_boundaries(items, seq_len, window, rows) -> None:
    feed, per_source = _feed_for(items)
    stores = _stores(per_source)
    shaper = BFDShaper(seq_len, window)
    spans: dict[tuple[int, int], list[tuple[int, int, bool]]] = {}
    ended = False
    while (plan := shaper.plan_step(feed, rows)) is not None:
        assert not ended, "only the final step may hold empty rows"
        width = plan.width
        assert np.all(width >= 1) and np.all(width <= seq_len)  # no piece wider than a row
        filled = np.bincount(plan.row, weights=width, minlength=rows).astype(np.int64)
        assert np.array_equal(filled + plan.pad, np.full(rows, seq_len))  # never overfilled
        assert plan.stats["pieces"] == len(plan.row)
        # segments ordered by row then column, columns are running offsets
        order = np.lexsort((plan.col, plan.row))
        assert np.array_equal(order, np.arange(len(order)))
        run = np.concatenate([[0], np.cumsum(width)[:-1]])
        first = np.concatenate([[True], plan.row[1:] != plan.row[:-1]])
        row_base = run[np.flatnonzero(first)][np.cumsum(first) - 1]
        assert np.array_equal(plan.col, run - row_base)
        ended = bool(np.any(plan.pad == seq_len))
        batch = materialize(plan, stores, eod_id=0, pad_id=-1)
        ids = batch["input_ids"]
        assert ids.shape == (rows, seq_len)
        pos = batch["position_ids"].reshape(-1)
        cu = batch["cu_seqlens"]
        assert cu[0] == 0 and cu[-1] == rows * seq_len and np.all(np.diff(cu) > 0)
        starts = np.zeros(rows * seq_len, bool)
        starts[cu[:-1]] = True
        real = batch["source_ids"].reshape(-1) >= 0
        assert np.array_equal((pos == 0) & real, starts & real)
        assert batch["max_seqlen"] == int(np.diff(cu).max())
        assert np.all(batch["labels"].reshape(-1)[cu[:-1]] == IGNORE_INDEX)
        assert np.all(batch["labels"][batch["source_ids"] < 0] == IGNORE_INDEX)
        # every segment holds its document's tokens, then the end token
        for k in range(len(plan.row)):
            s, a, b = int(plan.source[k]), int(plan.start[k]), int(plan.end[k])
            r, c = int(plan.row[k]), int(plan.col[k])
            assert ids[r, c:c + b - a].tolist() == [1000 * s + t + 1 for t in range(a, b)]
            if plan.eod[k]:
                assert ids[r, c + b - a] == 0
            spans.setdefault((s, int(plan.doc[k])), []).append((a, b, bool(plan.eod[k])))
    # every pulled document is fed, each tiles [0, len) once with exactly one end token
    assert len(spans) == len(items)
    for (s, d), pieces in spans.items():
        n = per_source[s][d]
        pieces.sort(key=lambda p: (p[0], p[2]))
        pos_ = 0
        for a, b, e in pieces:  # the end token's piece may repeat the last token (no lone
            assert a == pos_ or (e and a == pos_ - 1 == b - 1 and n % seq_len == 0)  # end token)
            pos_ = b
        assert pos_ == n and sum(e for *_, e in pieces) == 1 and pieces[-1][2]
        assert len(pieces) == (n + seq_len) // seq_len  # the only cuts are at seq_len
        if n < seq_len:
            assert pieces == [(0, n, True)]  # short documents are never cut


@settings(max_examples=100, deadline=None)
@given(items=docs_strategy, seq_len=st.integers(2, 33), window=st.integers(1, 4),
       rows=st.lists(st.integers(1, 9), min_size=1, max_size=4))
def test_bfd_step_arrays_and_stats(items, seq_len, window, rows) -> None:
    """Steps inside one window and steps across windows alike: the documented dtypes, and
    ``split_docs`` counts the cut documents with a piece in the step, once each."""
    feed, per_source = _feed_for(items)
    shaper = BFDShaper(seq_len, window)
    step = 0
    while (plan := shaper.plan_step(feed, rows[step % len(rows)])) is not None:
        assert plan.rows == rows[step % len(rows)] and plan.seq_len == seq_len
        assert plan.row.dtype == np.int32 and plan.source.dtype == np.int32
        for name in ("col", "doc", "start", "end", "pad"):
            assert getattr(plan, name).dtype == np.int64, name
        assert plan.eod.dtype == bool and plan.pad.shape == (plan.rows,)
        assert np.all((plan.row >= 0) & (plan.row < plan.rows))
        cut = {(int(s), int(d)) for s, d in zip(plan.source, plan.doc, strict=True)
               if per_source[int(s)][int(d)] >= seq_len}
        assert plan.stats["split_docs"] == len(cut)
        assert plan.stats["pieces"] == len(plan.row)
        step += 1


def _rows(p) -> list[tuple]:
    """Each row's segments as (source, doc, start, end, eod, col), rows in plan order."""
    return [tuple((int(p.source[k]), int(p.doc[k]), int(p.start[k]), int(p.end[k]),
                   bool(p.eod[k]), int(p.col[k])) for k in np.flatnonzero(p.row == r))
            for r in range(p.rows)]


def test_bfd_exact_small_example() -> None:
    # lengths 5, 1 | 2, 0, 3 (a window covers 2 * 4 = 8 positions: 6 + 2, then 3 + 1 + 4)
    feed = ListFeed([0, 1, 0, 1, 0], [0, 0, 1, 1, 2], [5, 1, 2, 0, 3])
    shaper = BFDShaper(4, 2)
    p = shaper.plan_step(feed, 3)
    assert p is not None
    # window 1 packs two full rows: doc 0:0-4 | doc 0:4-5+eod, doc (1, 0) + eod
    window1 = {((0, 0, 0, 4, False, 0),), ((0, 0, 4, 5, True, 0), (1, 0, 0, 1, True, 2))}
    # window 2: doc (0, 2) of width 4 | doc (0, 1) of width 3, then the empty doc (1, 1)
    window2 = {((0, 2, 0, 3, True, 0),), ((0, 1, 0, 2, True, 0), (1, 1, 0, 0, True, 3))}
    rows1 = _rows(p)
    assert set(rows1[:2]) == window1  # rows of a window come in a keyed order
    assert rows1[2] in window2
    assert p.pad.tolist() == [0, 0, 0] or p.pad.tolist()[:2] == [0, 0]
    assert p.stats["pieces"] == 4 and p.stats["windows"] == 2
    state = shaper.state_dict()
    assert state.pop("settings") == BFDShaper(4, 2).state_dict()["settings"]
    assert state == {"window_start": {"i": 2}, "window_weights": None, "emitted": 1}
    p2 = shaper.plan_step(feed, 3)
    assert p2 is not None
    rows2 = _rows(p2)
    assert {rows1[2], rows2[0]} == window2 and rows2[1:] == [(), ()]
    assert p2.pad.tolist()[1:] == [4, 4]
    assert {k: v for k, v in shaper.state_dict().items() if k != "settings"} == {
        "window_start": None, "window_weights": None, "emitted": 0}
    assert shaper.plan_step(feed, 3) is None
    # the keyed order is a pure function of the window: a second run gives the same rows
    again = BFDShaper(4, 2)
    feed2 = ListFeed([0, 1, 0, 1, 0], [0, 0, 1, 1, 2], [5, 1, 2, 0, 3])
    assert _rows(again.plan_step(feed2, 3)) == rows1


def test_cut_pieces_and_best_fit_decreasing_by_hand() -> None:
    k, start, end, eod = cut_pieces(np.array([3, 4, 9, 0]), 4)
    assert k.tolist() == [0, 1, 1, 2, 2, 2, 3]
    # 4 tokens fill a piece: the end token's piece repeats token 3 (no lone end token)
    assert start.tolist() == [0, 0, 3, 0, 4, 8, 0]
    assert end.tolist() == [3, 4, 4, 4, 8, 9, 0]
    assert eod.tolist() == [True, False, True, False, False, True, True]
    # widths 5 3 6 2 4 1 into 10, widest first: 6 opens b0 (4 left); 5 opens b1 (5 left);
    # 4 -> b0 (the tighter of 4 and 5 left; b0 full); 3 -> b1 (2 left); 2 -> b1 (full);
    # 1 fits nowhere and opens b2
    b, off, n = best_fit_decreasing(np.array([5, 3, 6, 2, 4, 1]), 10)
    assert n == 3
    assert b.tolist() == [1, 1, 0, 1, 0, 2]
    assert off.tolist() == [0, 5, 0, 8, 6, 0]
    for bad in ([0, 3], [3, 11]):  # widths must be 1..capacity
        with pytest.raises(ValueError, match="width"):
            best_fit_decreasing(np.array(bad), 10)


def _plain_scan_bfd(w: np.ndarray, cap: int) -> tuple[list[int], int]:
    """Reference: O(N * bins) scan, tie among equal remaining space -> most recent to reach it."""
    left: list[int] = []
    reached: list[int] = []
    ref_b = [0] * len(w)
    for clock, i in enumerate(np.argsort(-w, kind="stable").tolist(), start=1):
        fits = [j for j in range(len(left)) if left[j] >= w[i]]
        if fits:
            j = min(fits, key=lambda j: (left[j], -reached[j]))
        else:
            j = len(left)
            left.append(cap)
            reached.append(0)
        left[j] -= int(w[i])
        reached[j] = clock
        ref_b[i] = j
    return ref_b, len(left)


def _check_bfd(w: np.ndarray, cap: int) -> None:
    b, off, n = best_fit_decreasing(w, cap)
    ref_b, ref_n = _plain_scan_bfd(w, cap)
    assert b.tolist() == ref_b and n == ref_n
    assert b.dtype == np.int64 and off.dtype == np.int64
    filled = np.bincount(b, weights=w, minlength=n)
    assert np.all(filled <= cap)
    order = np.argsort(-w, kind="stable")
    for j in range(n):  # offsets tile each bin from 0, in packing order
        m = np.flatnonzero(b == j)
        m = m[np.argsort(off[m])]
        assert np.array_equal(off[m], np.concatenate([[0], np.cumsum(w[m])[:-1]]))
        assert np.array_equal(m, order[np.isin(order, m)])


@settings(max_examples=100, deadline=None)
@given(width=st.lists(st.integers(1, 40), min_size=0, max_size=200), cap=st.integers(40, 64))
def test_best_fit_decreasing_matches_a_plain_scan(width, cap) -> None:
    _check_bfd(np.asarray(width, np.int64), cap)


@settings(max_examples=150, deadline=None)
@given(raw=st.lists(st.integers(0, 10**6), min_size=0, max_size=120), cap=st.integers(1, 12))
def test_best_fit_decreasing_small_capacities_and_full_items(raw, cap) -> None:
    # many equal widths, items as wide as a bin, capacity 1: the stacks' tie rule matters
    _check_bfd(np.asarray(raw, np.int64) % cap + 1, cap)


@settings(max_examples=150, deadline=None)
@given(items=docs_strategy, seq_len=st.integers(2, 20), window=st.integers(1, 4),
       rows=st.integers(1, 4), cut_frac=st.floats(0, 1))
def test_bfd_resume_equals_straight_run(items, seq_len, window, rows, cut_frac) -> None:
    straight = _run(BFDShaper(seq_len, window), _feed_for(items)[0], rows)
    cut = round(cut_frac * len(straight))
    # O(K) state: a feed position and a counter
    assert_resumes(lambda: ShaperRun(BFDShaper(seq_len, window), _feed_for(items)[0], rows),
                   10**6, [cut], max_numbers=12)
    feed, _ = _feed_for(items)
    shaper = BFDShaper(seq_len, window)
    _run(shaper, feed, rows, cut)
    saved = json.loads(json.dumps(shaper.state_dict()))
    shaper2 = BFDShaper(seq_len, window)
    shaper2.load_state_dict(saved)
    assert shaper2.state_dict() == saved  # saving again before a step is the same


def test_bfd_resume_restores_the_feed_position_after_the_window() -> None:
    feed, _ = _feed_for([(i % 3, 3 + (7 * i) % 19) for i in range(40)])
    shaper = BFDShaper(8, 3)
    shaper.plan_step(feed, 1)
    saved_feed, saved_shaper = feed.state_dict(), shaper.state_dict()
    assert saved_shaper["window_start"] == {"i": 0} and saved_shaper["emitted"] == 1
    feed2, _ = _feed_for([(i % 3, 3 + (7 * i) % 19) for i in range(40)])
    feed2.load_state_dict(saved_feed)
    shaper2 = BFDShaper(8, 3)
    shaper2.load_state_dict(saved_shaper)
    expected = shaper.plan_step(feed, 1)
    got = shaper2.plan_step(feed2, 1)
    assert _signature(got) == _signature(expected)
    assert feed2.i == feed.i == saved_feed["i"]


class WeightedFeed(ListFeed):
    """A feed whose documents' source follows its weights at pull time (like MixedFeed)."""

    def __init__(self, lengths) -> None:
        super().__init__(np.zeros(len(lengths)), np.arange(len(lengths)), lengths)
        self.weights = np.array([1.0, 0.0])

    def set_weights(self, weights: np.ndarray) -> None:
        self.weights = np.asarray(weights, dtype=np.float64)

    def take(self, n: int) -> Docs:
        out = super().take(n)
        src = np.full(len(out), int(np.argmax(self.weights)), np.int32)
        return Docs(src, out.doc, out.length)


def test_bfd_resume_replays_a_window_with_its_own_weights() -> None:
    lengths = [5 + (11 * i) % 23 for i in range(60)]
    schedule = [np.array([1.0, 0.0]) if s < 3 else np.array([0.0, 1.0]) for s in range(200)]

    def set_weights(run, step):
        run.feed.set_weights(schedule[step])

    def make():
        return ShaperRun(BFDShaper(16, 16), WeightedFeed(lengths), 2, before_step=set_weights)

    first = make()
    first.step(5)  # the weights change at step 3, inside the first window
    state = first.state_dict()
    assert state["shaper"]["window_weights"] == [1.0, 0.0] and state["shaper"]["emitted"] == 10
    assert_resumes(make, 200, [5, 2, 9])


@settings(max_examples=100, deadline=None)
@given(items=docs_strategy, seq_len=st.integers(2, 20), window=st.integers(1, 3))
def test_mixture_is_exact_at_window_boundaries(items, seq_len, window) -> None:
    """Once a window's rows are all fed, the fully fed documents are a prefix of the stream."""
    feed, _ = _feed_for(items)
    shaper = BFDShaper(seq_len, window)
    fed: dict[int, int] = {}  # stream index -> positions fed
    index = {(s, d): i for i, (s, d) in enumerate(zip(feed.docs.source.tolist(),
                                                      feed.docs.doc.tolist(), strict=True))}
    boundaries = 0
    while True:
        pulled_before = feed.i
        plan = shaper.plan_step(feed, 1)
        if plan is None:
            break
        if plan.stats["windows"]:  # every earlier window has had all its rows fed
            done = {i for i, w in fed.items() if w == _width(items[i][1], seq_len)}
            assert done == set(range(pulled_before))
            boundaries += 1
        for k in range(len(plan.row)):
            i = index[(int(plan.source[k]), int(plan.doc[k]))]
            fed[i] = fed.get(i, 0) + int(plan.width[k])
    assert boundaries == len(feed.pulls) - 1  # the last pull found the stream ended
    assert {i for i, w in fed.items() if w == _width(items[i][1], seq_len)} == set(
        range(len(items)))


def _width(n: int, seq_len: int) -> int:
    """Positions a document of ``n`` tokens takes: its tokens, its end token, and its last
    token once more when the tokens fill whole pieces (the end token never stands alone)."""
    return n + 1 + int(n > 0 and n % seq_len == 0)


def _lognormal_lengths(n: int, seed: int = 0, median: float = 500.0, sigma: float = 1.0):
    rng = np.random.default_rng(seed)
    return np.maximum(1, rng.lognormal(np.log(median), sigma, n).astype(np.int64))


def test_padding_under_one_percent_at_2048() -> None:
    lengths = _lognormal_lengths(3000)
    feed = ListFeed(np.arange(3000) % 3, np.arange(3000), lengths)
    shaper = BFDShaper(2048, 256)
    windows: list[list[int]] = []  # padding of each row, per window
    while (plan := shaper.plan_step(feed, 1)) is not None:
        if plan.stats["windows"]:
            windows.append([])
        windows[-1].append(int(plan.pad[0]))
    assert len(windows) >= 4
    full = windows[:-1]  # the last window is partial
    pad = sum(map(sum, full))
    positions = 2048 * sum(map(len, full))
    assert pad / positions < 0.01
    # every pulled window (but the last) covers >= pack_window * seq_len positions
    assert all(len(w) >= 256 for w in full)


def test_state_and_arguments_are_checked() -> None:
    with pytest.raises(ConfigError, match="pack_window"):
        BFDShaper(16, 0)
    with pytest.raises(ConfigError, match="seq_len"):
        BFDShaper(0, 4)
    with pytest.raises(ConfigError, match="rows"):
        BFDShaper(16, 4).plan_step(ListFeed([0], [0], [3]), 0)
    with pytest.raises(StateError, match="malformed"):
        BFDShaper(16, 4).load_state_dict({"emitted": 1})
    with pytest.raises(StateError, match="malformed"):
        BFDShaper(16, 4).load_state_dict({"window_start": None, "emitted": 3})
    shaper = BFDShaper(4, 1)
    shaper.load_state_dict({"window_start": {"i": 0}, "window_weights": None, "emitted": 50})
    with pytest.raises(StateError, match="does not match"):
        shaper.plan_step(ListFeed([0, 0], [0, 1], [2, 2]), 2)


def test_empty_stream_and_fresh_state() -> None:
    shaper = BFDShaper(8, 2)
    assert {k: v for k, v in shaper.state_dict().items() if k != "settings"} == {
        "window_start": None, "window_weights": None, "emitted": 0}
    assert shaper.plan_step(ListFeed([], [], []), 4) is None
