"""DoReMi: the update by hand, absent domains, and the noise / hard-domain toy."""

from __future__ import annotations

import numpy as np
import pytest

from mixbatch.errors import ConfigError
from mixbatch.mixture.policies import Feedback, make_policy
from test_policy_simulators import UnigramSim


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_update_matches_the_paper_by_hand():
    eta, c = 1.0, 1e-3
    policy = make_policy("doremi", 3, initial=[0.5, 0.3, 0.2])
    alpha = np.array([0.5, 0.3, 0.2])
    history = []
    for step, lam in enumerate([[0.2, 1.0, 0.0], [0.1, 0.4, 0.3]], start=1):
        policy.observe(Feedback(step=step, excess_loss=lam))
        alpha = (1 - c) * softmax(np.log(alpha) + eta * np.array(lam)) + c / 3
        history.append(alpha)
        np.testing.assert_allclose(policy.weights(), alpha, rtol=1e-14)
    np.testing.assert_allclose(policy.averaged_weights(), np.mean(history, axis=0), rtol=1e-14)
    assert not np.allclose(policy.averaged_weights(), policy.weights())


def test_absent_domain_keeps_its_previous_score():
    policy = make_policy("doremi", 3, smoothing=0.0)
    policy.observe(Feedback(step=1, excess_loss=[0.5, 0.1, 0.2]))
    before = policy.weights()
    # domain 0 absent twice (NaN, then by counts): its score 0.5 is reused
    policy.observe(Feedback(step=2, excess_loss=[np.nan, 0.1, 0.2]))
    policy.observe(Feedback(step=3, excess_loss=[9.0, 0.1, 0.2], counts=[0, 5, 5]))
    expect = softmax(np.log(before) + 2 * np.array([0.5, 0.1, 0.2]))
    np.testing.assert_allclose(policy.weights(), expect, rtol=1e-13)


def test_mean_mode_clips_the_mean_difference():
    policy = make_policy("doremi", 2, excess="mean", smoothing=0.0)
    policy.observe(Feedback(step=1, train_loss=[2.0, 3.0], ref_loss=[2.5, 2.0]))
    np.testing.assert_allclose(policy.weights(), softmax(np.array([0.0, 1.0])))


def test_negative_excess_is_an_error():
    with pytest.raises(ConfigError, match=r"excess_loss\[1\] is -0.1; it must be the mean"):
        make_policy("doremi", 2).observe(Feedback(step=1, excess_loss=[0.1, -0.1]))


V = 32
NOISE = np.full(V, 1 / V)
EASY = np.exp(0.3 * np.sin(np.arange(V)))
EASY /= EASY.sum()
HARD = 1 / np.arange(1, V + 1) ** 1.5
HARD /= HARD.sum()


@pytest.mark.parametrize("excess", ["token", "mean"])
def test_noise_domain_falls_to_the_floor_and_the_hard_domain_rises(excess):
    """Noise (uniform tokens: nothing to learn), easy (close to uniform), hard (Zipf, far from
    the proxy's start). The proxy trains on α; the reference is perfect."""
    sim = UnigramSim(np.stack([NOISE, EASY, HARD]), lr=0.05)
    policy = make_policy("doremi", 3, excess=excess)
    start = sim.feedback(0).excess_loss
    floor = 1e-3 / 3  # c/K
    lowest = 1.0
    for step in range(1, 501):
        sim.step(policy.weights())
        policy.observe(sim.feedback(step))
        w = policy.weights()
        assert (w >= floor - 1e-15).all()
        lowest = min(lowest, w[0])
    assert lowest < 1.5 * floor  # the noise domain reaches the c/K floor
    assert policy.weights()[0] < 0.01
    avg = policy.averaged_weights()
    assert avg[0] < 0.01  # and its output weight is far below uniform
    assert avg[2] > 1 / 3 + 0.5  # the hard domain's weight rises well above uniform
    end = sim.feedback(501).excess_loss
    assert start[0] == end[0] == 0.0 and end[2] < start[2] / 5  # and the proxy learned it
