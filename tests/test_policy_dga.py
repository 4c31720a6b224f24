"""DGA: the update by hand, absent domains, EMA, and the linear-regression task."""

from __future__ import annotations

import numpy as np
import pytest

from mixbatch.mixture.policies import Feedback, make_policy
from test_policy_simulators import RegressionSim


def test_update_by_hand():
    policy = make_policy("dga", 3, eta=0.5, initial=[0.2, 0.3, 0.5])
    grads = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]])
    target = np.array([2.0, 1.0])
    policy.observe(Feedback(step=10, grads=grads, target_grad=target))
    w = np.array([0.2, 0.3, 0.5]) * np.exp(0.5 * grads @ target)
    np.testing.assert_allclose(policy.weights(), w / w.sum(), rtol=1e-13)


def test_absent_domains_keep_their_mass():
    policy = make_policy("dga", 3, eta=1.0)
    grads = np.array([[1.0, 0.0], [np.nan, np.nan], [0.0, 1.0]])
    policy.observe(Feedback(step=10, grads=grads, target_grad=np.array([1.0, 0.0])))
    w = policy.weights()
    assert w[1] == pytest.approx(1 / 3)
    assert w[0] / w[2] == pytest.approx(np.e)
    policy.observe(Feedback(step=20, grads=np.ones((3, 2)), target_grad=np.ones(2),
                            observed=np.array([False, False, True])))
    assert policy.weights()[:2].tolist() == w[:2].tolist()


def test_ema_smooths_the_sampled_mixture():
    policy = make_policy("dga", 2, eta=1.0, ema=0.75)
    grads, target = np.array([[1.0], [0.0]]), np.array([1.0])
    policy.observe(Feedback(step=10, grads=grads, target_grad=target))
    raw = np.array([np.e, 1.0]) / (np.e + 1)
    np.testing.assert_allclose(policy.weights(), 0.75 * 0.5 + 0.25 * raw)
    np.testing.assert_allclose(policy.alpha, raw)


DELTAS = np.zeros((3, 8))
DELTAS[0, 0], DELTAS[1, 1], DELTAS[2, 2] = 0.2, 1.0, 1.0  # domain 0 is closest to the target


def run_regression(policy, seed: int, steps: int = 3000) -> RegressionSim:
    sim = RegressionSim(DELTAS, seed=seed)
    for step in range(1, steps + 1):
        sim.step(policy.weights() if policy is not None else np.full(3, 1 / 3))
        if policy is not None and policy.due(step):
            policy.observe(Feedback(step=step, grads=sim.domain_grads(),
                                    target_grad=sim.target_grad()))
    return sim


@pytest.mark.parametrize(("seed", "ema"), [(0, None), (1, None), (2, 0.9)])
def test_weight_concentrates_on_the_domain_closest_to_the_target(seed, ema):
    """The mixture optimum is α ∝ 1/‖δ_i‖² = (25, 1, 1)/27 ≈ (0.93, 0.04, 0.04)."""
    policy = make_policy("dga", 3, ema=ema)
    sim = run_regression(policy, seed)
    w = policy.weights()
    assert w[0] > 0.5
    assert w[0] > 5 * max(w[1], w[2])
    uniform = run_regression(None, seed)
    assert sim.target_loss() < uniform.target_loss() / 3
