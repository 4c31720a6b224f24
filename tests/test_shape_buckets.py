"""``packing: buckets`` (dataset decomposition): exact cases, properties, curricula, resume."""

from __future__ import annotations

import itertools
import json
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixbatch.config import OnExhausted, Unit
from mixbatch.errors import ConfigError, StateError
from mixbatch.loader.feed import MixedFeed
from mixbatch.loader.order import SourceOrder
from mixbatch.plan.interleave import Interleaver, max_prefix_deviation, tijdeman_delta
from mixbatch.shape import IGNORE_INDEX, Docs, materialize
from mixbatch.shape.buckets import (
    BucketShaper,
    bucket_pieces,
    bucket_schedule,
    curriculum_odds,
    curriculum_targets,
    decompose,
)
from mixbatch.testing import ListFeed, ShaperRun, assert_resumes
from mixbatch.testing import feed_from_items as _feed_for
from mixbatch.testing import toy_stores as _stores

CURRICULA = ["uniform", "natural", "grow_p2", "grow_linear"]


def _reference_pieces(n: int, L: int, lo: int) -> tuple[list[tuple[int, int]], int]:
    """Greedy, one document at a time: the largest power of two <= min(rest, L), while the rest
    is at least ``lo``; (offset, length) pieces and the truncated tail."""
    out, pos = [], 0
    while n - pos >= lo:
        size = min(L, 1 << ((n - pos).bit_length() - 1))
        out.append((pos, size))
        pos += size
    return out, n - pos


# ------------------------------------------------------------------------ decomposition


def test_decompose_exact_example() -> None:
    # 9192 = 2 * 4096 + 1000, 1000 = 512 + 256 + 128 + 64 + (40 below min_len)
    docs = Docs(np.array([2], np.int32), np.array([7]), np.array([2 * 4096 + 1000]))
    pieces, tails = decompose(docs, 4096, 64)
    assert pieces.start.tolist() == [0, 4096, 8192, 8704, 8960, 9088]
    assert (1 << pieces.log2).tolist() == [4096, 4096, 512, 256, 128, 64]
    assert pieces.source.tolist() == [2] * 6 and pieces.doc.tolist() == [7] * 6
    assert tails.tolist() == [40]


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(0, 300), min_size=1, max_size=30),
       kmax=st.integers(0, 7), kmin_off=st.integers(0, 7))
def test_decompose_matches_reference(lengths, kmax, kmin_off) -> None:
    L, lo = 1 << kmax, 1 << max(kmax - kmin_off, 0)
    docs = Docs(np.zeros(len(lengths), np.int32), np.arange(len(lengths)),
                np.asarray(lengths, np.int64))
    pieces, tails = decompose(docs, L, lo)
    expected = []
    for d, n in enumerate(lengths):
        ref, tail = _reference_pieces(n, L, lo)
        assert tails[d] == tail
        expected += [(d, a, size) for a, size in ref]
    got = list(zip(pieces.doc.tolist(), pieces.start.tolist(), (1 << pieces.log2).tolist(),
                   strict=True))
    assert got == expected


@settings(max_examples=100, deadline=None)
@given(lengths=st.lists(st.integers(0, 3000), min_size=0, max_size=40),
       kmax=st.integers(0, 11), kmin_off=st.integers(0, 11))
def test_bucket_pieces_are_decompose_split_by_bucket(lengths, kmax, kmin_off) -> None:
    L, lo = 1 << kmax, 1 << max(kmax - kmin_off, 0)
    docs = Docs(np.zeros(len(lengths), np.int32), np.arange(len(lengths)) * 3,
                np.asarray(lengths, np.int64))
    pieces, tails = decompose(docs, L, lo)
    parts, tails2 = bucket_pieces(docs, L, lo)
    assert np.array_equal(tails, tails2) and len(parts) == kmax - (lo.bit_length() - 1) + 1
    for b, (at, start) in enumerate(parts):
        mine = pieces.log2 == (lo.bit_length() - 1) + b
        assert np.array_equal(docs.doc[at], pieces.doc[mine])  # stream order in each bucket
        assert np.array_equal(start, pieces.start[mine])


# ------------------------------------------------------------------------ curricula


@settings(max_examples=100, deadline=None)
@given(batches=st.lists(st.integers(0, 30), min_size=1, max_size=6),
       curriculum=st.sampled_from(CURRICULA))
def test_schedule_follows_the_curriculum_within_one_batch(batches, curriculum) -> None:
    N = np.asarray(batches)
    odds = curriculum_odds(curriculum, N.size)
    order = bucket_schedule(N, odds)
    D = curriculum_targets(N, odds)
    counts = np.zeros((len(order) + 1, N.size))
    if len(order):
        counts[1:] = np.cumsum(np.eye(N.size)[order], axis=0)
    assert np.abs(counts - D).max() < 1.0
    assert np.array_equal(np.bincount(order, minlength=N.size), N)


def _per_step_schedule(N: np.ndarray, odds: np.ndarray) -> np.ndarray:
    """The rule one step at a time: one ``choose(1, increment)`` per step (the reference)."""
    D = curriculum_targets(N, odds)
    w = np.maximum(np.diff(D, axis=0), 0.0)
    il = Interleaver(N.size)
    return np.array([il.choose(1, w[n])[0] for n in range(int(N.sum()))], dtype=np.int64)


def _prefix_deviation(order: np.ndarray, D: np.ndarray) -> float:
    counts = np.zeros_like(D)
    if len(order):
        counts[1:] = np.cumsum(np.eye(D.shape[1])[order], axis=0)
    return float(np.abs(counts - D).max())


@settings(max_examples=100, deadline=None)
@given(batches=st.lists(st.integers(0, 60), min_size=1, max_size=8),
       curriculum=st.sampled_from(CURRICULA))
def test_grouped_schedule_keeps_the_per_step_bound(batches, curriculum) -> None:
    N = np.asarray(batches)
    odds = curriculum_odds(curriculum, N.size)
    D = curriculum_targets(N, odds)
    active = int((N > 0).sum())
    bound = 1.0 - tijdeman_delta(active) if active >= 2 else 0.0
    calls = []
    choose = Interleaver.choose

    def counted(self, n, *args, **kwargs):
        calls.append(n)
        return choose(self, n, *args, **kwargs)

    with mock.patch.object(Interleaver, "choose", counted):
        grouped = bucket_schedule(N, odds)
    # one call per run of equal increments: at most two per bucket (its linear part, and the
    # step across its kink), not one per step
    assert len(calls) <= 2 * active and sum(calls) == N.sum()
    per_step = _per_step_schedule(N, odds)
    for order in (grouped, per_step):
        assert np.array_equal(np.bincount(order, minlength=N.size), N)  # exact at the end
        assert _prefix_deviation(order, D) <= bound + 1e-9  # Tijdeman's bound, every prefix
    if not np.array_equal(grouped, per_step):  # only ties broken apart by rounding differ
        assert np.abs(np.cumsum(np.eye(N.size)[grouped] - np.eye(N.size)[per_step],
                                axis=0)).max() <= 1


def test_curriculum_exact_sequences() -> None:
    N = np.array([4, 2, 1])  # bucket 0 is the shortest
    assert bucket_schedule(N, curriculum_odds("uniform", 3)).tolist() == [0, 1, 0, 0, 2, 1, 0]
    assert bucket_schedule(N, curriculum_odds("natural", 3)).tolist() == [0, 1, 0, 0, 2, 1, 0]
    # odds 4 2 1: the short bucket runs out at step 5, the middle at 6, the longest ends
    assert bucket_schedule(N, curriculum_odds("grow_p2", 3)).tolist() == [0, 0, 0, 1, 0, 1, 2]
    assert bucket_schedule(N, curriculum_odds("grow_linear", 3)).tolist() == [0, 0, 1, 0, 0, 1, 2]
    assert curriculum_odds("grow_p2", 6).tolist() == [32, 16, 8, 4, 2, 1]  # the paper's odds
    assert curriculum_odds("grow_linear", 4).tolist() == [4, 3, 2, 1]


def test_uniform_keeps_constant_proportions() -> None:
    N = np.array([60, 30, 15, 7, 3])
    order = bucket_schedule(N, curriculum_odds("uniform", 5))
    assert max_prefix_deviation(order, N / N.sum()) < 1.0


@pytest.mark.parametrize("curriculum", ["grow_p2", "grow_linear"])
def test_grow_curricula_lengthen_through_each_cycle(curriculum) -> None:
    N = np.array([64, 32, 16, 8, 4, 2])  # equal tokens per bucket
    order = bucket_schedule(N, curriculum_odds(curriculum, 6))
    thirds = [part.mean() for part in np.array_split(order, 3)]
    assert thirds[0] < thirds[1] < thirds[2]
    assert order[-1] == 5  # a cycle ends with the longest bucket
    flat = bucket_schedule(N, curriculum_odds("uniform", 6))
    halves = [part.mean() for part in np.array_split(flat, 2)]
    assert abs(halves[0] - halves[1]) < 0.2


def _lognormal_feed(n: int, seed: int = 0, k: int = 3) -> tuple[ListFeed, np.ndarray]:
    rng = np.random.default_rng(seed)
    lens = np.maximum(1, np.round(rng.lognormal(np.log(300), 1.0, n))).astype(np.int64)
    src = rng.integers(0, k, n)
    return ListFeed(src, np.arange(n), lens), lens


def test_grow_p2_run_lengthens_and_repeats_per_cycle() -> None:
    feed, _ = _lognormal_feed(20000)
    shaper = BucketShaper(4096, 4096 * 8, 64, "grow_p2", cycles=2, row_multiple=8,
                          window_tokens=4096 * 8 * 200)
    lens = []
    while (p := shaper.plan_step(feed, 8)) is not None and p.stats["window"] == 0:
        lens.append(np.log2(p.seq_len))
    assert lens[0] == 12  # the run starts with the longest bucket
    cycles = np.array_split(np.asarray(lens[1:]), 2)
    for cyc in cycles:
        quarters = [q.mean() for q in np.array_split(cyc, 4)]
        assert quarters == sorted(quarters)


# ------------------------------------------------------------------------ shaper properties


def _run_all(shaper, feed, stores, rows_hint=8):
    plans = []
    while (p := shaper.plan_step(feed, rows_hint)) is not None:
        plans.append(p)
        if stores is not None:
            _check_materialized(p, stores)
    return plans


def _check_materialized(p, stores) -> None:
    b = materialize(p, stores, eod_id=0, pad_id=-1)
    R, L = p.rows, p.seq_len
    assert b["input_ids"].shape == (R, L)
    # one piece per row: boundaries every L positions, positions 0..L-1, no padding
    assert b["cu_seqlens"].tolist() == (np.arange(R + 1) * L).tolist()
    assert np.array_equal(b["position_ids"], np.tile(np.arange(L), (R, 1)))
    pos = b["position_ids"].reshape(-1)
    starts = np.zeros(R * L, bool)
    starts[b["cu_seqlens"][:-1]] = True
    assert np.array_equal(pos == 0, starts)
    assert np.all(b["labels"][:, 0] == IGNORE_INDEX)
    assert b["max_seqlen"] == L
    for r in range(R):
        s, a = int(p.source[r]), int(p.start[r])
        assert b["input_ids"][r].tolist() == (1000 * s + np.arange(a, a + L) + 1).tolist()


params = st.fixed_dictionaries({
    "kmax": st.integers(1, 4),
    "kmin_off": st.integers(0, 4),
    "rm": st.sampled_from([1, 2, 4]),
    "mult": st.integers(1, 3),
    "window_mult": st.integers(1, 6),
    "curriculum": st.sampled_from(CURRICULA),
    "cycles": st.integers(1, 3),
})
docs_strategy = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 70)), min_size=1,
                         max_size=60)


def _make(prm) -> BucketShaper:
    L = 1 << prm["kmax"]
    lo = 1 << max(prm["kmax"] - prm["kmin_off"], 0)
    budget = L * prm["rm"] * prm["mult"]
    return BucketShaper(L, budget, lo, prm["curriculum"], prm["cycles"], prm["rm"],
                        window_tokens=budget * prm["window_mult"])


@settings(max_examples=150, deadline=None)
@given(items=docs_strategy, prm=params)
def test_every_token_fed_once_or_counted_truncated(items, prm) -> None:
    feed, per_source = _feed_for(items)
    stores = _stores(per_source)
    shaper = _make(prm)
    plans = _run_all(shaper, feed, stores)
    spans: dict[tuple[int, int], list[tuple[int, int]]] = {}
    fed = 0
    for p in plans:
        assert p.rows * p.seq_len == shaper.token_budget  # constant tokens per step
        assert p.rows % shaper.row_multiple == 0
        assert not p.pad.any() and not p.eod.any()
        assert np.all(p.end - p.start == p.seq_len)
        fed += int((p.end - p.start).sum())
        for s, d, a, z in zip(p.source.tolist(), p.doc.tolist(), p.start.tolist(),
                              p.end.tolist(), strict=True):
            spans.setdefault((s, d), []).append((a, z))
    truncated = sum(p.truncated for p in plans) + shaper.unreported_truncated
    total = sum(n for _, n in items)
    assert fed + truncated == total
    for (s, d), pieces in spans.items():  # disjoint, inside the document
        pieces.sort()
        assert pieces[0][0] >= 0 and pieces[-1][1] <= per_source[s][d]
        assert all(a1 >= z0 for (_, z0), (a1, _) in itertools.pairwise(pieces))
    # the run starts with the longest bucket of its first window
    if plans:
        first_window = [p.seq_len for p in plans if p.stats["window"] == plans[0].stats["window"]]
        assert plans[0].seq_len == max(first_window)


def test_steps_follow_the_mixture_and_keep_each_source_in_order() -> None:
    """One window, sources of very different lengths (so every bucket holds another mix), the
    uniform curriculum: after every step each source's fed tokens are within one step's tokens
    of its share of the window's fed tokens (measured 0.61 step), and inside every bucket each
    source's pieces come in stream order. (A length curriculum, grow_p2, feeds the short
    buckets first; here they hold mostly source 0, and the mixture follows the curriculum:
    measured 22 steps off. The README says so.)"""
    rng = np.random.default_rng(3)
    n = 3000
    src = rng.integers(0, 3, n)
    scale = np.array([100, 400, 1500])[src]  # sources differ in length
    lens = np.maximum(1, rng.lognormal(np.log(scale), 0.8)).astype(np.int64)
    feed = ListFeed(src, np.arange(n), lens)
    budget = 2048 * 4
    shaper = BucketShaper(2048, budget, 32, "uniform", 1, 4, window_tokens=int(lens.sum()) + 1)
    plans = _run_all(shaper, feed, None)
    assert {p.stats["window"] for p in plans} == {0}  # one window: all documents
    fed = np.array([np.bincount(p.source, weights=p.end - p.start, minlength=3) for p in plans])
    c = np.cumsum(fed, axis=0)
    share = c[-1] / c[-1].sum()
    assert np.abs(c - share * c.sum(axis=1, keepdims=True)).max() <= budget
    rank = {(s, d): i for i, (s, d) in enumerate(zip(src.tolist(), range(n), strict=True))}
    for k in range(5, 12):
        for s in range(3):
            seen = [(rank[(s, int(d))], int(a)) for p in plans if p.seq_len == 1 << k
                    for ss, d, a in zip(p.source, p.doc, p.start, strict=True) if ss == s]
            assert seen == sorted(seen)


def test_documents_below_min_len_are_reported_at_the_end() -> None:
    feed = ListFeed([0, 1, 0], [0, 0, 1], [3, 7, 5])
    shaper = BucketShaper(16, 32, 8, row_multiple=2, window_tokens=32)
    assert shaper.plan_step(feed, 8) is None
    # 3 and 5 are below min_len; 7 too: nothing to feed, all reported as unreported truncation
    assert shaper.unreported_truncated == 15
    assert shaper.state_dict()["carry_truncated"] == 15


def test_exact_small_run() -> None:
    # seq_len 8, min_len 2, budget 16 (2 rows of 8, 4 of 4, 8 of 2), one window
    feed = ListFeed([0, 1, 0, 1], [0, 0, 1, 1], [17, 12, 6, 9])
    shaper = BucketShaper(8, 16, 2, "uniform", 1, 2, window_tokens=64)
    plans = _run_all(shaper, feed, None)
    # pieces: 17 = 8+8 (+1 cut); 12 = 8+4; 6 = 4+2; 9 = 8 (+1 cut)
    # bucket 8: four pieces -> 2 batches; bucket 4: two pieces (leftover 8 tokens);
    # bucket 2: one piece (leftover 2 tokens)
    assert [p.seq_len for p in plans] == [8, 8]
    assert [list(zip(p.source.tolist(), p.doc.tolist(), p.start.tolist(), strict=True))
            for p in plans] == [[(0, 0, 0), (1, 0, 0)], [(0, 0, 8), (1, 1, 0)]]
    assert plans[0].truncated == 1 + 1 + 8 + 2 and plans[1].truncated == 0
    assert plans[0].stats["window_leftover"] == 10 and plans[0].stats["window_tail"] == 2


def test_truncated_fraction_on_lognormal_lengths() -> None:
    feed, lens = _lognormal_feed(60000)
    budget = 4096 * 16
    shaper = BucketShaper(4096, budget, 64, "grow_p2", 1, 8)  # default window: 256 budgets
    plans = _run_all(shaper, feed, None)
    tail = sum(p.stats.get("window_tail", 0) for p in plans)
    leftover = sum(p.stats.get("window_leftover", 0) for p in plans)
    fed = sum(p.rows * p.seq_len for p in plans)
    truncated = sum(p.truncated for p in plans) + shaper.unreported_truncated
    assert fed + truncated == lens.sum()
    assert tail + leftover == truncated
    assert 0.055 < tail / lens.sum() < 0.075  # about min_len / 2 per document
    assert leftover / lens.sum() < 0.03


# ------------------------------------------------------------------------ resume


@settings(max_examples=80, deadline=None)
@given(items=docs_strategy, prm=params, cuts=st.lists(st.integers(0, 40), min_size=1, max_size=3))
def test_resume_equals_straight_run(items, prm, cuts) -> None:
    # O(1) state here: no documents, no pieces
    assert_resumes(lambda: ShaperRun(_make(prm), _feed_for(items)[0]), 10**6, cuts,
                   max_numbers=16)


def test_resume_with_weights_changing_inside_a_window() -> None:
    """With the real feed, a window is replayed with the weights it was pulled with."""
    rng = np.random.default_rng(1)
    lens = [rng.integers(1, 90, 400).tolist(), rng.integers(1, 40, 400).tolist()]
    stores = _stores(lens)

    def make_feed():
        orders = [SourceOrder(f"s{i}", len(lens[i]), seed=0) for i in range(2)]
        return MixedFeed(stores, orders, Unit.TOKENS, OnExhausted.RENORMALIZE)

    def weights(step):
        return np.array([0.8, 0.2]) if step < 3 else np.array([0.1, 0.9])

    def make_shaper():
        return BucketShaper(32, 128, 4, "grow_p2", 1, 2, window_tokens=128 * 12)

    def set_weights(run, step):
        run.feed.set_weights(weights(step))

    def make():
        return ShaperRun(make_shaper(), make_feed(), before_step=set_weights)

    assert_resumes(make, 30, [1, 4, 7, 13, 20])
    first = make()
    head = first.step(4)
    state = json.loads(json.dumps(first.state_dict()))
    assert state["shaper"]["window_weights"] is not None
    # control: replaying with the resumed step's weights instead gives another stream
    state["shaper"]["window_weights"] = None
    second = make()
    second.load_state_dict(state)
    assert head + second.step(26) != make().step(30)


def test_malformed_state_is_refused() -> None:
    shaper = BucketShaper(16, 32, 4, row_multiple=2)
    with pytest.raises(StateError, match="shaper state"):
        shaper.load_state_dict({"window_start": None})
    with pytest.raises(StateError, match="shaper state"):
        shaper.load_state_dict({"window_start": None, "window_weights": None, "emitted": -1,
                                "windows": 0, "steps": 0, "carry_truncated": 0})


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"seq_len": 1000}, "batch.seq_len"),
    ({"min_len": 100}, "batch.min_len"),
    ({"min_len": 8192}, "batch.min_len"),
    ({"token_budget": 2048}, "batch.token_budget"),  # cannot hold one sequence of 4096
    ({"token_budget": None}, "batch.token_budget"),
    ({"token_budget": 4096 * 12}, "batch.token_budget"),  # not a multiple of 4096 * 8
    ({"row_multiple": 0}, "batch.row_multiple"),
    ({"curriculum": "shrink"}, "batch.curriculum"),
    ({"cycles": 0}, "batch.cycles"),
    ({"window_tokens": 10}, "window_tokens"),
])
def test_bad_config_names_the_field(kwargs, field) -> None:
    args = {"seq_len": 4096, "token_budget": 4096 * 16, "min_len": 64, "row_multiple": 8}
    args.update(kwargs)
    with pytest.raises(ConfigError) as e:
        BucketShaper(**args)
    assert str(e.value).startswith(field + ":")
    assert "\n" not in str(e.value)
