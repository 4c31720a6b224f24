"""ADO: the power-law fit, the bounded statistics against the full-history fit, the sampling
rule, settings and exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.signal import savgol_filter

from mixbatch.errors import ConfigError, StateError
from mixbatch.mixture.policies import Feedback, make_policy
from mixbatch.mixture.policies.ado import (
    LogBins,
    clip_min_probability,
    fit_power_law,
    power_law,
)
from mixbatch.online import parse_policy

# (A, E, α) per domain: a fast learner, a slow one with a high floor, a nearly flat one
TRUE = np.array([[np.log(30.0), np.log(2.0), 0.3],
                 [np.log(20.0), np.log(3.0), 0.2],
                 [np.log(5.0), np.log(2.5), 0.1]])
BATCH = 4096  # units per step


def _run(policy, steps: int, noise: float, seed: int = 0, first: int = 1,
         keep: list | None = None) -> None:
    """Feed ``policy`` a simulated run: domain losses follow ``TRUE`` in the total units seen,
    times log-normal noise; the units per domain follow the policy's weights."""
    for t in range(first, first + steps):
        counts = np.round(policy.weights() * BATCH)
        n = policy.total + counts.sum()
        noise_t = np.random.default_rng([seed, t]).normal(0.0, noise, 3)  # fixed per step
        loss = power_law(TRUE, n) * np.exp(noise_t)
        if keep is not None:
            keep.append((n, loss))
        policy.observe(Feedback(step=t, counts=counts, train_loss=loss))


def _full_history_fit(rows: list, ignore: int) -> np.ndarray:
    """The released code's fit: every step kept, Savitzky–Golay (101, 3), every 10th point."""
    n = np.array([r[0] for r in rows])
    loss = np.array([r[1] for r in rows])
    smooth = savgol_filter(loss.T, 101, 3, axis=-1)[:, ignore::10]
    return np.stack([fit_power_law(np.log(n[ignore::10]), np.log(smooth[i]))
                     for i in range(3)])


def test_fit_recovers_a_noiseless_law() -> None:
    n = np.geomspace(1e4, 1e7, 40)
    for params in TRUE:
        got = fit_power_law(np.log(n), np.log(power_law(params, n)))
        assert np.allclose(got, params, atol=2e-3), (got, params)


def test_fit_keeps_to_the_bounds() -> None:
    n = np.geomspace(10, 1e4, 30)
    steep = 1.0 + 50.0 * n ** -1.5  # α = 1.5 is outside [0, 0.8]; the floor 1 is below e^0.5
    a, e, alpha = fit_power_law(np.log(n), np.log(steep))
    assert 0.0 <= alpha <= 0.8 + 1e-12 and e >= 0.5 - 1e-12 and a <= 6.5 + 1e-12


def test_bins_stay_close_to_the_full_history_fit() -> None:
    """On a simulated noisy run the binned statistics give nearly the laws the full-history
    fit gives: the predicted losses agree within 0.5% over the fitted range and at twice the
    units, and the weights they imply within 0.02."""
    steps, ignore = 2000, 200
    pol = make_policy("ado", 3, refit_every=steps, start=steps, ignore=ignore)
    rows: list = []
    _run(pol, steps, noise=0.02, keep=rows)
    binned = pol.laws()
    full = _full_history_fit(rows, ignore)
    n = np.geomspace(rows[ignore][0], 2 * rows[-1][0], 50)
    for i in range(3):
        rel = np.abs(power_law(binned[i], n) / power_law(full[i], n) - 1)
        assert rel.max() < 5e-3, (i, rel.max(), binned[i], full[i])
    other = make_policy("ado", 3, refit_every=steps, start=steps, ignore=ignore)
    other.load_state_dict(pol.state_dict())
    other.params = full
    other.p, other.p_avg = pol.prior.copy(), pol.prior.copy()
    pol.p, pol.p_avg = pol.prior.copy(), pol.prior.copy()
    pol._mix(steps)
    other._mix(steps)
    assert np.abs(pol.weights() - other.weights()).max() < 0.02


def test_statistics_are_bounded() -> None:
    pol = make_policy("ado", 3, refit_every=10_000, start=10_000, ignore=0, bins_per_decade=10)
    _run(pol, 2000, noise=0.01)
    size = pol.bins.count.shape[1]
    assert pol.bins.first == 36  # the first step's n = 4096 units: 10·log10 n = 36.1
    assert size == int(10 * np.log10(pol.total)) - 36 + 1
    _run(pol, 2000, noise=0.01, first=2001)  # twice the steps: at most a few more bins
    assert pol.bins.count.shape[1] - size <= int(np.ceil(10 * np.log10(2))) + 1
    assert pol.bins.count.sum(axis=1).tolist() == [4000.0] * 3  # every step counted once


def test_bins_skip_absent_domains() -> None:
    bins = LogBins(2, 20)
    bins.add(100.0, np.array([2.0, np.nan]), np.array([True, False]))
    assert bins.filled().tolist() == [1, 0]
    x, y, c = bins.points(0)
    assert np.allclose(x, np.log(100.0)) and np.allclose(y, np.log(2.0)) and c.tolist() == [1.0]
    bins.add(10.0, np.array([3.0, 1.0]), np.array([True, True]))  # a lower bin: arrays grow left
    assert bins.first == 20 and bins.count.shape == (2, 21) and bins.filled().tolist() == [2, 1]
    assert np.allclose(bins.points(0)[0], np.log([10.0, 100.0]))


def test_sampling_rule_follows_the_code() -> None:
    pol = make_policy("ado", 3, refit_every=10, start=0, ignore=0, initial=[0.5, 0.3, 0.2])
    pol.params = TRUE.copy()
    pol.total = 1e6
    pol.history = np.array([0.6, 0.3, 0.1])
    pol._mix(step=9)
    slope = TRUE[:, 2] * (power_law(TRUE, 1e6) - np.exp(TRUE[:, 1])) / 1e6
    rho = slope * np.array([0.5, 0.3, 0.2]) * np.sqrt(pol.history * (1 - pol.history))
    rho = clip_min_probability(rho / rho.sum(), 0.01)
    prior = np.array([0.5, 0.3, 0.2])
    assert np.allclose(pol.weights(), 0.9 * prior + 0.1 * rho)
    assert np.allclose(pol.p_avg, 0.9 * prior + 0.1 * rho)  # 1/(t+1) = 0.1 at step 9
    assert np.argmax(rho) == 0  # the largest α·(L − e^E) gets the most


def test_clip_min_probability() -> None:
    # as in the released code: raised to the floor, then renormalised (so just under it)
    out = clip_min_probability(np.array([0.999, 0.001, 0.0]), 0.01)
    assert np.allclose(out, np.array([0.999, 0.01, 0.01]) / 1.019)
    assert np.allclose(clip_min_probability(np.array([0.5, 0.5]), 0.01), [0.5, 0.5])


def test_weights_move_to_the_largest_gain_and_stay_on_the_simplex() -> None:
    pol = make_policy("ado", 3, refit_every=100, start=50, ignore=100)
    _run(pol, 1000, noise=0.02)
    w = pol.weights()
    assert np.isclose(w.sum(), 1.0) and (w > 0).all() and pol.fits == 9
    gain = TRUE[:, 2] * (power_law(TRUE, pol.total) - np.exp(TRUE[:, 1]))  # α·(L − e^E)
    best = int(np.argmax(gain))
    assert np.argmax(w) == best and w[best] > 1 / 3 + 0.05


def test_resume_is_exact() -> None:
    settings = {"refit_every": 50, "start": 20, "ignore": 30}
    straight = make_policy("ado", 3, **settings)
    _run(straight, 300, noise=0.02)
    cut = make_policy("ado", 3, **settings)
    _run(cut, 170, noise=0.02)
    saved = json.loads(json.dumps(cut.state_dict()))
    resumed = make_policy("ado", 3, **settings)
    resumed.load_state_dict(saved)
    _run(resumed, 130, noise=0.02, first=171)
    assert json.dumps(resumed.state_dict()) == json.dumps(straight.state_dict())
    with pytest.raises(StateError, match="settings changed"):
        make_policy("ado", 3, refit_every=51, start=20, ignore=30).load_state_dict(saved)


@pytest.mark.parametrize(("settings", "message"), [
    ({"every": 2}, "every: ADO observes every step"),
    ({"min_prob": 0.5}, "min_prob: 0.5 is too large for 3 sources"),
    ({"refit_every": 0}, "refit_every"),
    ({"bins_per_decade": 0}, "bins_per_decade"),
    ({"alpha_max": 0.0}, "alpha_max"),
    ({"initial": [1, 2]}, "initial: expected 3 weights"),
])
def test_bad_settings_are_one_line(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_policy("ado", 3, **settings)


def test_bad_feedback() -> None:
    pol = make_policy("ado", 2, start=0, ignore=0)
    with pytest.raises(ConfigError, match="has no 'counts'"):
        pol.observe(Feedback(step=1, train_loss=np.array([1.0, 2.0])))
    with pytest.raises(ConfigError, match=r"train_loss\[1\] is -1.0; the power law needs"):
        pol.observe(Feedback(step=1, train_loss=np.array([1.0, -1.0]),
                             counts=np.array([3.0, 3.0])))


def test_spec_scales_the_step_settings_to_the_run() -> None:
    assert parse_policy("ado").policy_settings(100_000) == {
        "refit_every": 1000, "start": 500, "ignore": 1000}  # the authors' values
    assert parse_policy("ado").policy_settings(30) == {"refit_every": 3, "start": 1, "ignore": 3}
    assert parse_policy({"name": "ado", "start": 0}).policy_settings(30)["start"] == 0
    with pytest.raises(ConfigError, match=r"^mixture.policy.min_prob"):
        parse_policy({"name": "ado", "min_prob": 0.9}, ["a", "b"])
