"""Small simulators with known answers for the online policies (and checks of the simulators).

* :class:`BanditSim`: arms with known mean rewards, stationary or drifting; rewards reach a
  policy as training losses (ODM) or as gradients whose cosine with the target is the reward
  (FLAD).
* :class:`SkillSim`: the Skill-It toy, ``L_j ← L_min + (L_j − L_min)·exp(−rate·gate_j·(A^T p)_j)``
  with a known graph ``A`` and prerequisite gates (skill ``j`` learns only once its prerequisite
  is learned).
* :class:`RegressionSim`: linear regression, domain ``i`` has weights ``w_T + δ_i`` and the
  target ``w_T``; gradient alignment must favour the smallest ``‖δ_i‖``.
* :class:`UnigramSim`: the DoReMi toy, a unigram model per domain trained on expected gradients,
  a perfect reference model, a noise domain (uniform tokens), an easy and a hard domain.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from mixbatch.mixture.policies import Feedback, Policy


class BanditSim:
    """``K`` arms; ``means(step)`` gives each arm's mean reward, noise is Gaussian."""

    def __init__(self, means: Callable[[int], np.ndarray], noise: float, seed: int) -> None:
        self.means = means
        self.noise = noise
        self.rng = np.random.default_rng(seed)

    def reward(self, step: int) -> np.ndarray:
        m = np.asarray(self.means(step), dtype=float)
        return m + self.noise * self.rng.standard_normal(m.shape)

    def gradient_feedback(self, step: int, arm: int, dim: int = 4) -> Feedback:
        """Only ``arm`` was trained: its gradient has cosine ``reward`` with the target."""
        k = len(self.means(step))
        r = float(np.clip(self.reward(step)[arm], -1.0, 1.0))
        target = np.zeros(dim)
        target[0] = 1.0
        grads = np.full((k, dim), np.nan)
        grads[arm] = 0.0
        grads[arm, 0] = r
        grads[arm, 1] = np.sqrt(1.0 - r * r)
        return Feedback(step=step, grads=grads * 3.0, target_grad=target * 0.5)

    def loss_feedback(self, step: int, arm: int | None = None) -> Feedback:
        """Training losses: every arm's (mixed batch), or only ``arm``'s."""
        loss = self.reward(step)
        if arm is not None:
            only = np.full_like(loss, np.nan)
            only[arm] = loss[arm]
            loss = only
        return Feedback(step=step, train_loss=loss)


def run_bandit(policy: Policy, sim: BanditSim, steps: int, *, kind: str, seed: int,
               start: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Pull one arm per step from the policy's weights; return (pulled arms, weight history)."""
    rng = np.random.default_rng(seed)
    arms, history = [], []
    for step in range(start, start + steps):
        w = policy.weights()
        history.append(w)
        arm = int(rng.choice(len(w), p=w))
        arms.append(arm)
        if kind == "grad":
            policy.observe(sim.gradient_feedback(step, arm))
        elif kind == "loss_one":
            policy.observe(sim.loss_feedback(step, arm))
        else:
            policy.observe(sim.loss_feedback(step))
    return np.array(arms), np.array(history)


class SkillSim:
    """Losses of ``K`` skills under a known graph ``A`` (``A[i, j]``: training on ``i`` helps
    ``j``) and prerequisites (``prereq[j] = i`` gates skill ``j`` until ``L_i < threshold``)."""

    def __init__(self, graph: np.ndarray, prereq: dict[int, int], *, start: float = 4.0,
                 floor: float = 0.5, rate: float = 0.01, threshold: float = 1.5,
                 sharpness: float = 0.1) -> None:
        self.graph = np.asarray(graph, dtype=float)
        self.prereq = prereq
        self.loss = np.full(self.graph.shape[1], start)
        self.floor, self.rate = floor, rate
        self.threshold, self.sharpness = threshold, sharpness

    def gates(self) -> np.ndarray:
        g = np.ones_like(self.loss)
        for j, i in self.prereq.items():
            g[j] = 1.0 / (1.0 + np.exp((self.loss[i] - self.threshold) / self.sharpness))
        return g

    def train(self, p: np.ndarray, steps: int) -> None:
        for _ in range(steps):
            drive = self.gates() * (self.graph.T @ p)
            self.loss = self.floor + (self.loss - self.floor) * np.exp(-self.rate * drive)

    def copy(self) -> SkillSim:
        other = SkillSim(self.graph, self.prereq, floor=self.floor, rate=self.rate,
                         threshold=self.threshold, sharpness=self.sharpness)
        other.loss = self.loss.copy()
        return other


class RegressionSim:
    """Linear regression; domain ``i`` draws ``y = x·(w_T + δ_i) + noise``, the target
    ``y = x·w_T + noise``. The model is trained by SGD on the mixture ``α``."""

    def __init__(self, deltas: np.ndarray, *, dim: int = 8, batch: int = 32, lr: float = 0.05,
                 noise: float = 0.1, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.dim, self.batch, self.lr, self.noise = dim, batch, lr, noise
        self.w_target = self.rng.standard_normal(dim)
        self.deltas = np.asarray(deltas, dtype=float)
        self.w = np.zeros(dim)

    def gradient(self, w_true: np.ndarray, n: int) -> np.ndarray:
        x = self.rng.standard_normal((n, self.dim))
        y = x @ w_true + self.noise * self.rng.standard_normal(n)
        return x.T @ (x @ self.w - y) / n

    def domain_grads(self) -> np.ndarray:
        return np.stack([self.gradient(self.w_target + d, self.batch) for d in self.deltas])

    def target_grad(self, n: int = 16) -> np.ndarray:
        return self.gradient(self.w_target, n)

    def step(self, alpha: np.ndarray) -> None:
        counts = self.rng.multinomial(self.batch, alpha)
        g = np.zeros(self.dim)
        for i, c in enumerate(counts):
            if c:
                g += c * self.gradient(self.w_target + self.deltas[i], int(c))
        self.w -= self.lr * g / self.batch

    def target_loss(self) -> float:
        return float(np.sum((self.w - self.w_target) ** 2))


class UnigramSim:
    """One unigram model per domain (logits ``θ_d``), trained on the expected cross-entropy
    gradient scaled by the domain's share ``α_d`` of the batch. The reference model is perfect
    (``q_ref = p``), so the excess loss is the proxy's per-token gap to the truth."""

    def __init__(self, dists: np.ndarray, lr: float = 1.0) -> None:
        self.p = np.asarray(dists, dtype=float)
        self.theta = np.zeros_like(self.p)
        self.lr = lr

    def q(self) -> np.ndarray:
        e = np.exp(self.theta - self.theta.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def feedback(self, step: int) -> Feedback:
        q = self.q()
        ratio = np.log(self.p) - np.log(q)  # ℓ_θ − ℓ_ref per token type
        excess = (self.p * np.maximum(ratio, 0.0)).sum(axis=1)
        train = -(self.p * np.log(q)).sum(axis=1)
        ref = -(self.p * np.log(self.p)).sum(axis=1)
        return Feedback(step=step, excess_loss=excess, train_loss=train, ref_loss=ref)

    def step(self, alpha: np.ndarray) -> None:
        self.theta -= self.lr * alpha[:, None] * (self.q() - self.p)


# ---- the simulators do what they say ----------------------------------------------------------


def test_gradient_feedback_has_the_reward_as_cosine():
    sim = BanditSim(lambda t: np.array([0.3, -0.4]), noise=0.0, seed=0)
    fb = sim.gradient_feedback(1, arm=1)
    g, t = fb.grads[1], fb.target_grad
    assert np.isnan(fb.grads[0]).all()
    assert g @ t / (np.linalg.norm(g) * np.linalg.norm(t)) == pytest.approx(-0.4, abs=1e-12)


def test_skill_sim_gates_the_chain():
    graph = np.eye(3) + np.diag([0.5, 0.5], k=1)
    sim = SkillSim(graph, {1: 0, 2: 1})
    sim.train(np.array([0.0, 0.0, 1.0]), 500)
    assert sim.loss[2] > 3.9  # skill 2 cannot be learned before its prerequisites
    sim.train(np.array([1.0, 0.0, 0.0]), 500)
    assert sim.loss[0] < 1.0 and sim.loss[1] < 4.0


def test_regression_sim_optimum_is_the_mixture_of_deltas():
    sim = RegressionSim(np.array([[0.1] + [0.0] * 7, [0.0, 1.0] + [0.0] * 6]), noise=0.0)
    for _ in range(3000):
        sim.step(np.array([0.5, 0.5]))
    np.testing.assert_allclose(sim.w - sim.w_target, 0.5 * sim.deltas.sum(axis=0), atol=0.05)


def test_unigram_sim_learns_and_excess_vanishes():
    p = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    sim = UnigramSim(p, lr=2.0)
    first = sim.feedback(1)
    assert first.excess_loss[1] == 0 and first.excess_loss[0] > 0.1
    for _ in range(500):
        sim.step(np.array([1.0, 1.0]))
    assert sim.feedback(2).excess_loss[0] < 1e-3
