"""EXP3-FLAD and UCB1-FLAD: rewards, rates and updates by hand, and the bandit simulator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mixbatch.mixture.policies import Feedback, gradient_reward, make_policy
from mixbatch.mixture.policies.flad import Reward, exp3_flad_rate
from test_policy_simulators import BanditSim, run_bandit


def test_gradient_rewards_by_hand():
    target = np.array([3.0, 4.0])  # norm 5
    grads = np.array([[3.0, 4.0], [-6.0, -8.0], [4.0, -3.0], [0.0, 0.0], [np.nan, 1.0]])
    cos = gradient_reward(grads, target)
    np.testing.assert_allclose(cos[:3], [1.0, -1.0, 0.0], atol=1e-15)
    assert np.isnan(cos[3:]).all()  # zero or missing gradient: unobserved
    mag = gradient_reward(grads, target, Reward.MAGNITUDE)
    np.testing.assert_allclose(mag[:3], [1.0, (2 * 10 * 5 + 1e-8) / (100 + 25 + 1e-8), 1.0])
    both = gradient_reward(grads, target, Reward.COSINE_AND_MAGNITUDE)
    np.testing.assert_allclose(both[:3], (cos[:3] + 1) / 2 + mag[:3])


def test_exp3_rate_by_hand():
    assert exp3_flad_rate(0, 5) == 0.2
    assert exp3_flad_rate(10, 5) == pytest.approx(math.sqrt(math.log(5) / (5 * 101)))
    assert exp3_flad_rate(10, 5, 4) == pytest.approx(math.sqrt(math.log(5) / (5 * 401)))


def test_exp3_update_by_hand():
    policy = make_policy("exp3_flad", 3)
    assert policy.weights().tolist() == [1 / 3] * 3
    target = np.array([1.0, 0.0])
    grads = np.array([[0.6, 0.8], [np.nan, np.nan], [-1.0, 0.0]])
    policy.observe(Feedback(step=1, grads=grads, target_grad=target))
    gain = np.array([0.6 * 3, 0.0, -1.0 * 3])  # R̂ / π with π = 1/3, β = 1
    eps = math.sqrt(math.log(3) / (3 * 11))
    e = np.exp(gain / 3)  # ε_{t−1} = 1/3
    expect = (1 - 3 * eps) * e / e.sum() + eps
    np.testing.assert_allclose(policy.weights(), expect, rtol=1e-13)
    policy.observe(Feedback(step=2, grads=grads, target_grad=target))
    gain = gain + np.array([0.6, 0.0, -1.0]) / expect * np.array([1, 0, 1])
    eps2 = math.sqrt(math.log(3) / (3 * 21))
    e = np.exp(eps * gain)
    np.testing.assert_allclose(policy.weights(), (1 - 3 * eps2) * e / e.sum() + eps2, rtol=1e-12)


def test_ucb1_choice_by_hand():
    policy = make_policy("ucb1_flad", 3, initial_reward=[0.2, 0.5, 0.1])
    assert policy.weights().tolist() == [0.0, 1.0, 0.0]
    grads = np.array([[np.nan, np.nan], [-1.0, 0.0], [np.nan, np.nan]])
    for step in range(1, 4):
        policy.observe(Feedback(step=step, grads=grads, target_grad=np.array([1.0, 0.0])))
    sim = np.array([0.2, 0.5 * 0.9**3 - 0.1 * (1 + 0.9 + 0.81), 0.1])
    pulls = np.array([1.0, 4.0, 1.0])
    np.testing.assert_allclose(policy.sim, sim)
    np.testing.assert_allclose(policy.upper_confidence(), sim + np.sqrt(2 * np.log(6) / pulls))
    assert policy.weights().tolist() == [1.0, 0.0, 0.0]  # ties go to the first source
    assert make_policy("ucb1_flad", 3, min_weight=0.1).weights().tolist() == pytest.approx(
        [0.8, 0.1, 0.1])


MEANS = np.array([0.1, 0.2, 0.7, 0.3, 0.0])


@pytest.mark.parametrize("name", ["exp3_flad", "ucb1_flad"])
@pytest.mark.parametrize("seed", [0, 1])
def test_stationary_best_arm_gets_most_pulls(name, seed):
    sim = BanditSim(lambda t: MEANS, noise=0.1, seed=seed)
    arms, _ = run_bandit(make_policy(name, 5), sim, 3000, kind="grad", seed=seed)
    assert (arms[500:] == 2).mean() >= 0.7


@pytest.mark.parametrize(("name", "within"), [("ucb1_flad", 200), ("exp3_flad", 1500)])
def test_follows_drift(name, within):
    """At step 1000 the best arm changes from 2 to 0. UCB1's smoothed reward forgets within a
    few pulls; EXP3's gains are cumulative, so it needs about as long as the drift is old."""
    drift = 1000
    after = np.array([0.8, 0.2, -0.2, 0.3, 0.0])
    sim = BanditSim(lambda t: MEANS if t <= drift else after, noise=0.1, seed=0)
    arms, _ = run_bandit(make_policy(name, 5), sim, drift + within + 500, kind="grad", seed=0)
    assert (arms[drift - 300:drift] == 2).mean() >= 0.7
    assert (arms[drift + within:] == 0).mean() >= 0.7
