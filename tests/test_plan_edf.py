"""The compiled earliest-deadline kernels equal the NumPy + heap reference decision for decision.

``Interleaver(compiled=False)`` runs the reference (closed-form releases and deadlines of every
job, one heap operation per decision in Python); the default runs :mod:`mixbatch.plan.edf`.
Both are driven through the same calls: chunks of any size (block boundaries), weight changes
(segments, sources dropped to 0), caps (``final``), resumes from a saved state.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixbatch.plan import edf
from mixbatch.plan.interleave import Interleaver, _first_reach

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
