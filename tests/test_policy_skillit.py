"""Skill-It: the update by hand, graph handling, the chain-graph toy, graph estimation."""

from __future__ import annotations

import numpy as np
import pytest

from mixbatch.errors import ConfigError
from mixbatch.mixture.policies import Feedback, estimate_graph, make_policy
from test_policy_simulators import SkillSim


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


CHAIN = [[1, 1, 0], [0, 1, 1], [0, 0, 1]]  # 0 → 1 → 2: training on i helps i + 1
CHAIN_A = np.array([[1, 0.5, 0], [0, 1, 0.5], [0, 0, 1]])


def test_initial_mixture_and_windowed_update_by_hand():
    prior = np.array([0.2, 0.3, 0.5])
    policy = make_policy("skillit", 3, graph=CHAIN, eta=0.5, window=2, initial=prior.tolist())
    np.testing.assert_allclose(policy.graph, CHAIN_A)  # binary edges become 0.5
    np.testing.assert_allclose(policy.weights(), softmax(np.log(prior) + 0.5 * CHAIN_A @ np.ones(3)))
    losses = [np.array([3.0, 4.0, 4.0]), np.array([2.0, 3.9, 4.0]), np.array([1.0, 3.5, 4.0])]
    for r, loss in enumerate(losses, start=1):
        policy.observe(Feedback(step=1000 * r, eval_loss=loss))
        window = np.sum(losses[max(0, r - 2):r], axis=0)  # the last two rounds only
        np.testing.assert_allclose(policy.weights(),
                                   softmax(np.log(prior) + 0.5 * CHAIN_A @ window), rtol=1e-13)


def test_options_normalize_eta_schedule_and_mean():
    policy = make_policy("skillit", 2, eta=0.8, normalize_loss=True, eta_schedule=True,
                         reduce="mean")
    l0, l1 = np.array([2.0, 4.0]), np.array([1.0, 3.0])
    policy.observe(Feedback(step=1000, eval_loss=l0))
    policy.observe(Feedback(step=2000, eval_loss=l1))
    eta = 0.8 / (l1.sum() / l0.sum())
    np.testing.assert_allclose(policy.weights(), softmax(eta * ((l0 + l1) / 2) / l0), rtol=1e-13)


def test_real_valued_graph_is_used_as_given_and_may_be_rectangular():
    graph = [[0.3, 1.0], [1.0, 0.1], [0.0, 0.2]]  # 3 training skills, 2 eval groups
    policy = make_policy("skillit", 3, graph=graph)
    np.testing.assert_allclose(policy.graph, graph)
    policy.observe(Feedback(step=1000, eval_loss=[1.0, 2.0]))
    np.testing.assert_allclose(policy.weights(), softmax(0.5 * np.array(graph) @ [1.0, 2.0]))
    with pytest.raises(ConfigError, match="eval_loss has 3 values, the graph has 2 eval groups"):
        policy.observe(Feedback(step=2000, eval_loss=[1.0, 2.0, 3.0]))


def test_missing_eval_groups():
    policy = make_policy("skillit", 2)
    with pytest.raises(ConfigError, match=r"eval_loss\[1\] is missing and that group was never"):
        policy.observe(Feedback(step=1000, eval_loss=[1.0, np.nan]))
    policy.observe(Feedback(step=1000, eval_loss=[1.0, 2.0]))
    policy.observe(Feedback(step=2000, eval_loss=[3.0, np.nan]))  # group 1 keeps 2.0
    np.testing.assert_allclose(policy.weights(), softmax(0.5 * np.array([4.0, 4.0])))


def test_identity_graph_upweights_the_highest_loss():
    policy = make_policy("skillit", 3)
    policy.observe(Feedback(step=1000, eval_loss=[1.0, 3.0, 2.0]))
    assert policy.weights().argmax() == 1


def run_chain(eta: float, rounds: int = 30, steps: int = 100):
    sim = SkillSim(CHAIN_A, {1: 0, 2: 1})
    policy = make_policy("skillit", 3, graph=CHAIN, eta=eta, every=steps)
    weights, losses = [], []
    for r in range(1, rounds + 1):
        w = policy.weights()
        weights.append(w)
        sim.train(w, steps)
        losses.append(sim.loss.copy())
        policy.observe(Feedback(step=r * steps, eval_loss=sim.loss.copy()))
    return np.array(weights), np.array(losses)


@pytest.mark.parametrize("eta", [0.3, 0.5])
def test_chain_graph_puts_weight_on_prerequisites_first(eta):
    """Skill 2 is locked until skill 1 is learned, which is locked until skill 0 is. While the
    prerequisites are far from learned, Skill-It keeps skill 2 below uniform and most of the
    mass on skills 0 and 1; once skill 1 is learned, skill 2 takes the largest weight
    (η 0.3 and 0.5: the released scripts' range)."""
    weights, losses = run_chain(eta)
    assert weights[0][0] == weights[0][1] > weights[0][2]  # p_0 ∝ exp(η A 1)
    # weights[r] is the mixture of round r, chosen from the losses after round r - 1
    locked = np.concatenate([[True], losses[:-1, 1] > 2.0])  # skill 1 still far from learned
    assert locked[:5].all()
    assert (weights[locked, 2] < 1 / 3).all()
    assert (weights[locked, :2].sum(axis=1) > 2 / 3).all()
    learned = int(np.flatnonzero(losses[:, 1] < 1.5)[0])
    assert weights[learned + 1].argmax() == 2
    assert losses[-1].max() < 0.6  # and everything is learned in the end


def test_estimate_graph_is_exact_on_linear_dynamics():
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 1, (4, 3))
    before = np.array([3.0, 2.0, 4.0])
    h = 0.05
    after = before * (1 - h * true)  # H steps on skill i lower L_j by the fraction h·A_ij
    np.testing.assert_allclose(estimate_graph(before, after), h * true, rtol=1e-12)
    np.testing.assert_allclose(estimate_graph(np.tile(before, (4, 1)), after), h * true)


def test_estimate_graph_from_probe_runs_on_the_skill_simulator():
    start = SkillSim(CHAIN_A, {})  # no gates: every edge shows up in one probe
    h = 50
    after = []
    for i in range(3):
        probe = start.copy()
        probe.train(np.eye(3)[i], h)
        after.append(probe.loss)
    est = estimate_graph(start.loss, np.array(after))
    drop = (start.loss - start.floor) / start.loss * (1 - np.exp(-start.rate * h * CHAIN_A))
    np.testing.assert_allclose(est, drop, rtol=1e-12)
    assert ((est > 1e-9) == (CHAIN_A > 0)).all()
    policy = make_policy("skillit", 3, graph=est.tolist())  # ready to use
    assert policy.graph.shape == (3, 3)


def test_estimate_graph_errors():
    with pytest.raises(ConfigError, match="after must be K x M"):
        estimate_graph([1.0, 2.0], [1.0, 2.0])
    with pytest.raises(ConfigError, match=r"before must have shape \(2,\) or \(3, 2\)"):
        estimate_graph([1.0, 2.0, 3.0], np.ones((3, 2)))
    with pytest.raises(ConfigError, match="starting losses > 0"):
        estimate_graph([0.0, 2.0], np.ones((3, 2)))
