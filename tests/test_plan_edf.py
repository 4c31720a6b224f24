"""The compiled earliest-deadline kernels equal the NumPy + heap reference decision for decision.

``Interleaver(compiled=False)`` runs the reference (closed-form releases and deadlines of every
job, one heap operation per decision in Python); the default runs :mod:`mixbatch.plan.edf`.
Both are driven through the same calls: chunks of any size (block boundaries), weight changes
(segments, sources dropped to 0), caps (``final``), resumes from a saved state.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixbatch.plan import edf
from mixbatch.plan.interleave import Interleaver
from mixbatch.plan.reference import first_reach as _first_reach

weights = st.floats(1e-3, 1.0) | st.just(0.0) | st.floats(1e-12, 1e-6)


def _pair(k: int, unit: str) -> tuple[Interleaver, Interleaver]:
    return Interleaver(k, unit=unit), Interleaver(k, unit=unit, compiled=False)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(k=st.integers(1, 12), data=st.data())
def test_samples_equal_reference_across_blocks_changes_and_resume(k, data):
    fast, ref = _pair(k, "samples")
    for _ in range(data.draw(st.integers(1, 6))):
        w = data.draw(st.lists(weights, min_size=k, max_size=k).filter(lambda x: sum(x) > 0))
        n = data.draw(st.integers(0, 400))
        assert fast.choose(n, w).tolist() == ref.choose(n, w).tolist()
        assert fast.state_dict() == ref.state_dict()
        if data.draw(st.booleans()):  # resume both from the saved (JSON) state
            state = json.loads(json.dumps(fast.state_dict()))
            fast, ref = _pair(k, "samples")
            fast.load_state_dict(state)
            ref.load_state_dict(state)


@pytest.mark.parametrize("k", [2, 3, 30, 300])
def test_samples_equal_reference_long_runs(k):
    rng = np.random.default_rng(k)
    fast, ref = _pair(k, "samples")
    for n in (1, 7, 4096, 20000, 3):
        w = rng.dirichlet(np.full(k, 0.3))
        assert np.array_equal(fast.choose(n, w), ref.choose(n, w))


@pytest.mark.parametrize("w", [[1.3, 0.9], [0.7, 1.5], [1e-300, 1.0, 0.5], [5e-324, 1.0]])
def test_samples_rounding_fallback_and_tiny_weights(w):
    fast, ref = _pair(len(w), "samples")
    assert np.array_equal(fast.choose(3000, w), ref.choose(3000, w))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(k=st.integers(1, 8), data=st.data())
def test_tokens_equal_reference_across_blocks_changes_caps_and_resume(k, data):
    fast, ref = _pair(k, "tokens")
    for _ in range(data.draw(st.integers(1, 5))):
        w = data.draw(st.lists(weights, min_size=k, max_size=k).filter(lambda x: sum(x) > 0))
        lens = [np.array(data.draw(st.lists(st.integers(1, 3000), max_size=40)), np.int64)
                for _ in range(k)]
        final = data.draw(st.lists(st.booleans(), min_size=k, max_size=k))
        n = data.draw(st.integers(0, 120))
        a = fast.choose_tokens(w, lens, n, final=final)
        b = ref.choose_tokens(w, lens, n, final=final)
        assert a.tolist() == b.tolist()
        assert fast.state_dict() == ref.state_dict()
        if data.draw(st.booleans()):
            state = json.loads(json.dumps(fast.state_dict()))
            fast, ref = _pair(k, "tokens")
            fast.load_state_dict(state)
            ref.load_state_dict(state)


def test_tokens_equal_reference_long_run():
    rng = np.random.default_rng(0)
    k = 30
    fast, ref = _pair(k, "tokens")
    w = rng.dirichlet(np.ones(k))
    for _ in range(5):
        lens = [rng.lognormal(6, 1.5, 400).astype(np.int64) + 1 for _ in range(k)]
        assert np.array_equal(fast.choose_tokens(w, lens, 2000), ref.choose_tokens(w, lens, 2000))


@settings(max_examples=300, deadline=None)
@given(base=st.floats(0, 1e6), w=st.floats(1e-300, 1.0), level=st.floats(0, 1e7),
       lo=st.integers(0, 1 << 40))
def test_first_reach_equals_reference(base, w, level, lo):
    want = _first_reach(np.array([base]), np.array([w]), np.array([level]), lo)[0]
    assert edf.first_reach(base, w, level, np.int64(lo)) == want


# ------------------------------------------------------------------ weights known in advance


def _path(rng: np.random.Generator, k: int, stages: int, span: int, zeros: bool = True):
    from mixbatch.plan.interleave import WeightPath

    starts = np.concatenate([[0], np.sort(rng.choice(np.arange(1, span), stages - 1,
                                                    replace=False))])
    w = rng.dirichlet(np.full(k, 0.5), size=stages)
    if zeros:  # some stages drop sources to 0 (a warm-up or an annealing stage)
        w[rng.random(w.shape) < 0.25] = 0.0
        w[w.sum(axis=1) == 0, 0] = 1.0
    return WeightPath(starts, w / w.sum(axis=1, keepdims=True))


def _targets(path, n: int, unit_sizes: np.ndarray | None = None) -> np.ndarray:
    """T_i after each unit 1..n (the schedule integrated over the planner's clock)."""
    clock = np.arange(n)
    stage = np.searchsorted(path.starts, clock, side="right") - 1
    return np.cumsum(path.weights[stage], axis=0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(k=st.integers(2, 8), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_samples_read_ahead_keeps_tijdemans_bound_across_changes(k, seed, data):
    """Every prefix, every source: |c_i(n) - T_i(n)| <= 1 - 1/(2k-2), with abrupt stage
    changes (sources dropping to 0 and coming back) every few decisions."""
    from mixbatch.plan.interleave import tijdeman_delta

    rng = np.random.default_rng(seed)
    n = data.draw(st.integers(50, 600))
    path = _path(rng, k, data.draw(st.integers(2, 12)), n)
    plan = Interleaver(k)
    out = []
    cuts = sorted(set(data.draw(st.lists(st.integers(0, n), max_size=6))) | {0, n})
    for a, b in itertools.pairwise(cuts):  # any chunking, weights from the path
        out.append(plan.choose(b - a, path.at(a), path=path))
    src = np.concatenate(out)
    c = np.cumsum(np.eye(k)[src], axis=0)
    live = int(((path.weights > 0).any(axis=0)).sum())
    assert np.abs(c - _targets(path, n)).max() <= 1 - tijdeman_delta(live) + 1e-9


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(k=st.integers(2, 6), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_read_ahead_is_the_same_for_every_chunking_and_resume(k, seed, data):
    rng = np.random.default_rng(seed)
    n = data.draw(st.integers(20, 400))
    path = _path(rng, k, data.draw(st.integers(1, 8)), n + 50)
    whole = Interleaver(k)
    want = whole.choose(n, path.at(0), path=path)
    parts, plan, done = [], Interleaver(k), 0
    for cut in [*sorted(set(data.draw(st.lists(st.integers(1, n - 1), max_size=8)))), n]:
        parts.append(plan.choose(cut - done, path.at(done), path=path))
        state = json.loads(json.dumps(plan.state_dict()))
        plan = Interleaver(k)
        plan.load_state_dict(state)
        done = cut
    assert np.concatenate(parts).tolist() == want.tolist()
    assert plan.state_dict() == whole.state_dict()


def test_single_stage_path_is_the_plain_rule():
    from mixbatch.plan.interleave import WeightPath

    rng = np.random.default_rng(3)
    for k in (2, 5, 30):
        w = rng.dirichlet(np.ones(k))
        path = WeightPath([0, 10**9], [w, w])  # a change far ahead that changes nothing
        a, b = Interleaver(k), Interleaver(k)
        assert np.array_equal(a.choose(5000, w, path=path), b.choose(5000, w))
        lens = [rng.integers(1, 900, 300) for _ in range(k)]
        a, b = Interleaver(k, unit="tokens"), Interleaver(k, unit="tokens")
        assert np.array_equal(a.choose_tokens(w, lens, 2000, path=path),
                              b.choose_tokens(w, lens, 2000))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(k=st.integers(2, 6), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_tokens_read_ahead_keeps_one_document_across_changes(k, seed, data):
    """Token mode: at every document boundary |c_i(T) - T_i(T)| <= the longest document,
    across abrupt changes, also when the documents are cut at other points of the chunking."""
    rng = np.random.default_rng(seed)
    max_len = data.draw(st.integers(1, 300))
    lens = [rng.integers(1, max_len + 1, 400) for _ in range(k)]
    total = int(min(x.sum() for x in lens))  # every source can always supply
    path = _path(rng, k, data.draw(st.integers(2, 10)), total // 2)
    plan = Interleaver(k, unit="tokens")
    used = [0] * k
    src_all, len_all = [], []
    while sum(len_all) < total // 2:
        clock = plan.total
        up = [x[u:] for x, u in zip(lens, used, strict=True)]
        got = plan.choose_tokens(path.at(clock), up, int(rng.integers(1, 40)), path=path)
        for s in got.tolist():
            len_all.append(int(lens[s][used[s]]))
            used[s] += 1
            src_all.append(s)
    src, ln = np.array(src_all), np.array(len_all)
    clock = np.concatenate([[0], np.cumsum(ln)])
    stage_w = path.weights[np.searchsorted(path.starts, np.arange(clock[-1]), side="right") - 1]
    T = np.concatenate([np.zeros((1, k)), np.cumsum(stage_w, axis=0)])
    c = np.zeros((len(src) + 1, k))
    c[1:] = np.cumsum(np.eye(k)[src] * ln[:, None], axis=0)
    # at the document boundaries (extremes of the deviation are there)
    assert np.abs(c - T[clock]).max() <= max_len + 1e-6
