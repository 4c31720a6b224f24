"""ODM: exploration rate and updates by hand, warm-up, and the bandit simulator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mixbatch.mixture.policies import Feedback, make_policy
from mixbatch.mixture.policies.odm import exploration_rate
from test_policy_simulators import BanditSim, run_bandit


def test_exploration_rate_by_hand():
    assert exploration_rate(1, 3) == pytest.approx(1 / 3)  # √(ln 3 / 3) = 0.605 > 1/3
    assert exploration_rate(100, 3) == pytest.approx(math.sqrt(math.log(3) / 300))
    assert exploration_rate(2001, 22) == pytest.approx(math.sqrt(math.log(22) / (22 * 2001)))
    assert exploration_rate(0, 4) == 0.25
    assert exploration_rate(50, 1) == 0.0


def test_code_variant_by_hand():
    policy = make_policy("odm", 3, warmup=0)
    r = np.zeros(3)
    for step, loss in [(10, [1.0, 2.0, 3.0]), (11, [1.5, np.nan, 2.5])]:
        policy.observe(Feedback(step=step, train_loss=loss))
        loss = np.array(loss)
        seen = np.isfinite(loss)
        r[seen] = 0.9 * r[seen] + 0.1 * np.exp(loss[seen])
        eps = min(1 / 3, math.sqrt(math.log(3) / (3 * step)))
        np.testing.assert_allclose(policy.weights(), (1 - 3 * eps) * r / r.sum() + eps, rtol=1e-13)
    np.testing.assert_allclose(policy.reward, r)


def test_paper_variant_by_hand():
    policy = make_policy("odm", 2, warmup=0, variant="paper")
    loss = np.array([2.0, 1.0])
    policy.observe(Feedback(step=4, train_loss=loss))
    r = 0.1 * loss / 0.5  # π was uniform when the batch was drawn
    eps_prev, eps = 0.5, min(0.5, math.sqrt(math.log(2) / 8))
    e = np.exp(eps_prev * r)
    np.testing.assert_allclose(policy.weights(), (1 - 2 * eps) * e / e.sum() + eps, rtol=1e-13)


def test_warmup_keeps_the_initial_weights_and_ignores_feedback():
    policy = make_policy("odm", 2, warmup=5, initial=[3, 1])
    for step in range(1, 6):
        assert not policy.due(step)
        policy.observe(Feedback(step=step, train_loss=[1.0, 9.0]))
        assert policy.weights().tolist() == [0.75, 0.25]
    assert policy.updates == 0 and policy.due(6)
    policy.observe(Feedback(step=6, train_loss=[1.0, 9.0]))
    eps = math.sqrt(math.log(2) / 12)
    r = np.exp([1.0, 9.0])
    np.testing.assert_allclose(policy.weights(), (1 - 2 * eps) * r / r.sum() + eps, rtol=1e-13)


LOSSES = np.array([1.0, 2.0, 4.0])


@pytest.mark.parametrize("seed", [0, 1])
def test_stationary_highest_loss_domain_gets_most_pulls(seed):
    sim = BanditSim(lambda t: LOSSES, noise=0.1, seed=seed)
    policy = make_policy("odm", 3, warmup=100)
    arms, history = run_bandit(policy, sim, 1000, kind="mixed", seed=seed)
    assert (arms[200:] == 2).mean() >= 0.7
    eps = exploration_rate(1000, 3)
    # the noise multiplies every exp(L) by the same factor on average, so it cancels
    expect = (1 - 3 * eps) * np.exp(LOSSES) / np.exp(LOSSES).sum() + eps
    np.testing.assert_allclose(history[-1], expect, atol=0.015)


@pytest.mark.parametrize("seed", [0, 1])
def test_follows_drift_within_20_steps(seed):
    drift = 600
    sim = BanditSim(lambda t: LOSSES if t <= drift else LOSSES[::-1], noise=0.1, seed=seed)
    policy = make_policy("odm", 3, warmup=100)
    _, history = run_bandit(policy, sim, 1000, kind="mixed", seed=seed)
    assert history[drift - 1].argmax() == 2
    after = history[drift:].argmax(axis=1)
    assert (after[20:] == 0).all()


def test_paper_variant_leans_to_the_highest_loss_but_flattens():
    """Documented behaviour: the smoothed (not cumulative) reward times ε_{t−1} → 0 makes the
    paper's softmax drift back towards uniform; the code variant does not."""
    sim = BanditSim(lambda t: LOSSES, noise=0.1, seed=0)
    policy = make_policy("odm", 3, warmup=100, variant="paper")
    _, history = run_bandit(policy, sim, 3000, kind="loss_one", seed=0)
    w = history[-1]
    assert w[0] < w[1] < w[2]
    assert w.max() - w.min() < 0.1
