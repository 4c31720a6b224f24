"""Token mode of the interleaving rule: documents by token deadline, bound of one document."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixbatch.errors import ConfigError, StateError
from mixbatch.mixture.weights import normalize_weights
from mixbatch.plan.interleave import Interleaver, max_prefix_deviation


def reference_tokens(k, chunks):
    """Non-preemptive EDF on documents, one decision at a time, from the definition.

    ``chunks``: list of (weights, upcoming, max_docs). Each chunk starts a segment when its
    weights differ (weights here never drop to 0, so no hand-over is needed).
    """
    counts = [0] * k
    base = [0.0] * k
    w = None
    tau = 0
    results = []
    for weights, upcoming, max_docs in chunks:
        new = normalize_weights(weights).tolist()
        assert all(x > 0 for x in new)
        if new != w:
            if w is not None:
                base = [b + wi * float(tau) for b, wi in zip(base, w, strict=True)]
            w, tau = new, 0
        cursor = [0] * k
        taken = [0] * k  # tokens taken in this chunk
        sentinel_start = [counts[i] + int(np.sum(upcoming[i])) for i in range(k)]
        out = []

        def released(i, start, t, base=base, w=w):
            return base[i] + w[i] * float(t) >= float(start)

        def first_release(i, start, t, released=released):
            lo = hi = t
            while not released(i, start, hi):
                lo, hi = hi, t + 2 * (hi - t) + 1
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if released(i, start, mid) else (mid + 1, hi)
            return lo

        for _ in range(max_docs):
            if any(released(i, sentinel_start[i], tau) for i in range(k)):
                break
            cands = []
            for i in range(k):
                if cursor[i] >= len(upcoming[i]):
                    continue
                start = counts[i] + taken[i]
                length = int(upcoming[i][cursor[i]])
                key = (float(start + length) - base[i]) / w[i]
                cands.append((released(i, start, tau), key, i, start))
            ready = [c for c in cands if c[0]]
            if ready:
                _, _, best, _ = min(ready, key=lambda c: (c[1], c[2]))
            else:
                soonest = []
                for i in range(k):
                    if cursor[i] < len(upcoming[i]):
                        start = counts[i] + taken[i]
                        key = (float(start + int(upcoming[i][cursor[i]])) - base[i]) / w[i]
                        soonest.append((first_release(i, start, tau), 0, key, i))
                    else:
                        soonest.append((first_release(i, sentinel_start[i], tau), 1, 0.0, i))
                _, is_sentinel, _, best = min(soonest)
                if is_sentinel:
                    break
            length = int(upcoming[best][cursor[best]])
            cursor[best] += 1
            taken[best] += length
            tau += length
            out.append(best)
        for i in range(k):
            counts[i] += taken[i]
        results.append(out)
    return results


def lengths_strategy(k, max_len):
    return st.lists(
        st.lists(st.integers(1, max_len), min_size=0, max_size=60), min_size=k, max_size=k
    )


def test_exact_sequence_by_hand():
    # w = (.5, .5). T=0: both released, deadlines 6 (len 3) and 4 (len 2) -> 1. T=2: W=1,
    # source 1's next starts at 2 (not released) -> 0. T=5: W=2.5, source 0's next starts at
    # 3 (not released), source 1's (start 2, len 7) is -> 1. T=12: W=6 -> 0, 0, 0 ...
    plan = Interleaver(2, unit="tokens")
    out = plan.choose_tokens([1, 1], [np.array([3, 1, 4, 1, 5]), np.array([2, 7, 1, 8])], 7)
    assert out.tolist() == [1, 0, 1, 0, 0, 0, 1]
    assert plan.counts.tolist() == [9, 10]
    assert plan.documents.tolist() == [4, 3]


def test_unit_lengths_stay_within_one():
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(7))
    plan = Interleaver(7, unit="tokens")
    out = plan.choose_tokens(w, [np.ones(3000, dtype=np.int64)] * 7, 2000)
    assert out.size == 2000
    assert max_prefix_deviation(out, w) <= 1.0


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(k=st.integers(1, 6), data=st.data())
def test_vectorised_equals_reference(k, data):
    chunks = []
    for _ in range(data.draw(st.integers(1, 4))):
        w = data.draw(st.lists(st.floats(1e-3, 1.0), min_size=k, max_size=k))
        upcoming = [np.array(x, dtype=np.int64) for x in data.draw(lengths_strategy(k, 50))]
        chunks.append((w, upcoming, data.draw(st.integers(0, 80))))
    expected = reference_tokens(k, chunks)
    plan = Interleaver(k, unit="tokens")
    for (w, upcoming, max_docs), want in zip(chunks, expected, strict=True):
        assert plan.choose_tokens(w, upcoming, max_docs).tolist() == want


@settings(max_examples=100, deadline=None)
@given(
    k=st.integers(1, 12),
    data=st.data(),
)
def test_bound_one_document(k, data):
    """|c_i(T) - W_i(T)| <= longest document, at every document boundary (hence every token):
    ahead by at most (1 - w_i) times the source's own document, behind by at most L_max."""
    w = data.draw(
        st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 1.0)), min_size=k, max_size=k).filter(
            lambda x: sum(x) > 0
        )
    )
    p = normalize_weights(w)
    shape = data.draw(st.sampled_from(["uniform", "bimodal", "constant"]))
    max_len = data.draw(st.sampled_from([1, 3, 100, 4096]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    upcoming = []
    for _ in range(k):
        if shape == "uniform":
            x = rng.integers(1, max_len + 1, size=400)
        elif shape == "bimodal":
            x = np.where(rng.random(400) < 0.1, max_len, 1)
        else:
            x = np.full(400, rng.integers(1, max_len + 1))
        upcoming.append(x.astype(np.int64))
    plan = Interleaver(k, unit="tokens")
    out = plan.choose_tokens(w, upcoming, 300)
    cursor = np.zeros(k, dtype=np.int64)
    lengths = np.empty(out.size, dtype=np.int64)
    for j, s in enumerate(out.tolist()):
        lengths[j] = upcoming[s][cursor[s]]
        cursor[s] += 1
    np.testing.assert_array_equal(cursor, plan.documents)
    longest = max(int(x.max()) for x in upcoming)
    assert max_prefix_deviation(out, p, lengths) <= longest + 1e-6
    # Ahead side, per source: never more than (1 - w_i) of its own longest document.
    clock = np.cumsum(lengths).astype(np.float64)
    for i in np.flatnonzero(p > 0):
        mine = out == i
        if mine.any():
            ahead = np.cumsum(np.where(mine, lengths, 0))[mine] - p[i] * clock[mine]
            assert ahead.max() <= (1 - p[i]) * upcoming[i].max() + 1e-6


def test_stops_when_lengths_run_out():
    plan = Interleaver(2, unit="tokens")
    out = plan.choose_tokens([1, 1], [np.array([5, 5]), np.array([5, 5, 5, 5, 5])], 100)
    # Source 0 has two listed documents; the planner stops once its third one is due.
    assert np.bincount(out, minlength=2)[0] == 2
    assert out.size < 100
    more = plan.choose_tokens([1, 1], [np.full(50, 5), np.full(50, 5)], 10)
    assert more.size == 10
    assert abs(plan.counts[0] - plan.counts[1]) <= 5


def test_zero_weight_sources_need_no_lengths():
    plan = Interleaver(3, unit="tokens")
    upcoming = [np.full(100, 8), np.zeros(0, np.int64), np.full(100, 2)]
    out = plan.choose_tokens([1, 0, 1], upcoming, 50)
    assert 1 not in out.tolist()
    assert out.size == 50


def test_resume_is_exact():
    rng = np.random.default_rng(4)
    k = 5
    lens = [rng.integers(1, 300, size=5000) for _ in range(k)]
    w = rng.dirichlet(np.ones(k))

    def run(plan, calls):
        out = []
        for _ in range(calls):
            docs = plan.documents
            upcoming = [lens[i][docs[i] : docs[i] + 200] for i in range(k)]
            out.append(plan.choose_tokens(w, upcoming, 100))
        return np.concatenate(out)

    full = run(Interleaver(k, unit="tokens"), 10)
    a = Interleaver(k, unit="tokens")
    head = run(a, 4)
    b = Interleaver(k, unit="tokens")
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    tail = run(b, 6)
    np.testing.assert_array_equal(full, np.concatenate([head, tail]))


def test_errors():
    plan = Interleaver(2, unit="tokens")
    with pytest.raises(ConfigError, match="upcoming"):
        plan.choose_tokens([1, 1], [np.array([1])], 3)
    with pytest.raises(ConfigError, match=r"upcoming\[1\]"):
        plan.choose_tokens([1, 1], [np.array([1]), np.array([0])], 3)
    with pytest.raises(ConfigError, match=r"upcoming\[0\]"):
        plan.choose_tokens([1, 1], [np.array([1.5]), np.array([1])], 3)
    with pytest.raises(ConfigError, match="max_docs"):
        plan.choose_tokens([1, 1], [np.array([1]), np.array([1])], -1)
    with pytest.raises(StateError, match="unit"):
        plan.choose(3, [1, 1])
    with pytest.raises(StateError, match="documents"):
        state = plan.state_dict()
        state["documents"] = [1, 0]
        plan.load_state_dict(state)


def test_tiny_weight_and_mask():
    plan = Interleaver(3, unit="tokens")
    upcoming = [np.full(200, 7), np.full(200, 3), np.full(200, 5)]
    out = plan.choose_tokens([5e-324, 1.0, 1.0], upcoming, 100)
    assert out.size == 100 and 0 not in out.tolist()
    docs = plan.documents
    more = plan.choose_tokens(
        [1.0, 1.0, 1.0], [u[d:] for u, d in zip(upcoming, docs, strict=True)], 60,
        available=[True, True, False],
    )
    assert 2 not in more.tolist()
    # Source 2 was settled when masked: its target is its count.
    assert plan.target[2] == plan.counts[2]
    assert plan.target.sum() == pytest.approx(plan.total)


def test_weights_default_to_current():
    a, b = Interleaver(2, unit="tokens"), Interleaver(2, unit="tokens")
    up = [np.arange(1, 101), np.arange(100, 0, -1)]
    first = a.choose_tokens([1, 3], up, 10)
    b.set_weights([1, 3])
    assert b.choose_tokens(None, up, 10).tolist() == first.tolist()
