"""The shared policy contract: registry, settings, feedback checks, simplex and floor, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mixbatch.errors import ConfigError, StateError
from mixbatch.mixture.policies import (
    POLICIES,
    Feedback,
    PolicyName,
    apply_floor,
    make_policy,
    policy_class,
)

# Settings that make every policy update from the first feedback (ODM's warm-up is 2000 steps
# by default, Skill-It's and DGA's rounds are 1000 and 10 steps).
FAST = {
    "doremi": {},
    "odm": {"warmup": 2},
    "skillit": {"every": 1},
    "dga": {"every": 1},
    "exp3_flad": {},
    "ucb1_flad": {},
    "ado": {"refit_every": 5, "start": 0, "ignore": 0},
}
# (policy, extra settings) pairs covering the variants.
CASES = [
    ("doremi", {}),
    ("doremi", {"excess": "mean", "smoothing": 0.0}),
    ("odm", {}),
    ("odm", {"variant": "paper"}),
    ("skillit", {"normalize_loss": True, "eta_schedule": True}),
    ("skillit", {"graph": [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0.2, 0, 0, 1]],
                 "reduce": "mean", "window": 2}),
    ("dga", {}),
    ("dga", {"ema": 0.9, "eta": 3.0}),
    ("exp3_flad", {"accumulation": 4}),
    ("exp3_flad", {"reward": "cosine_and_magnitude"}),
    ("ucb1_flad", {}),
    ("ucb1_flad", {"reward": "magnitude", "initial_reward": [0.1, 0.5, 0.2, 0.3]}),
    ("ado", {"refit_every": 5, "start": 0, "ignore": 0}),
]
K = 4


def ids(case):
    name, extra = case
    return name + ("-" + "-".join(f"{k}" for k in extra) if extra else "")


def random_feedback(rng: np.random.Generator, step: int, k: int = K, p: int = 6,
                    first: bool = False) -> Feedback:
    """Every field, with some sources absent (NaN, zero counts, or masked)."""
    absent = rng.random(k) < 0.25
    train = rng.uniform(1.0, 4.0, k)
    ref = train - rng.uniform(-0.3, 1.0, k)
    excess = rng.uniform(0.0, 1.0, k)
    grads = rng.standard_normal((k, p))
    for arr in (train, ref, excess):
        arr[absent] = np.nan
    grads[absent] = np.nan
    counts = rng.integers(1, 50, k)
    counts[absent] = 0
    evals = rng.uniform(0.5, 4.0, k)
    if not first:
        evals[rng.random(k) < 0.2] = np.nan
    observed = None if rng.random() < 0.5 else ~absent
    return Feedback(step=step, tokens=step * 1000, train_loss=train, ref_loss=ref,
                    excess_loss=excess, eval_loss=evals, grads=grads,
                    target_grad=rng.standard_normal(p), counts=counts, observed=observed)


def build(case, **more):
    name, extra = case
    return make_policy(name, K, **{**FAST[name], **extra, **more})


# ---- registry and settings --------------------------------------------------------------------


def test_registry_has_every_name():
    assert set(POLICIES) == set(PolicyName)
    for name in PolicyName:
        policy = make_policy(name.value, 3)
        assert policy.name == name.value
        assert policy_class(name) is type(policy)


def test_unknown_policy_lists_the_choices():
    with pytest.raises(ConfigError) as err:
        make_policy("doremy", 3)
    msg = str(err.value)
    assert "'doremy'" in msg
    for name in PolicyName:
        assert repr(name.value) in msg


def test_unknown_setting_lists_the_settings():
    with pytest.raises(ConfigError, match=r"policy 'odm': unknown setting 'eta' \(settings: "
                                          r"min_weight, every, warmup, smoothing, variant, initial\)"):
        make_policy("odm", 3, eta=1.0)


@pytest.mark.parametrize(("name", "settings", "message"), [
    ("doremi", {"eta": -1}, r"policy 'doremi': eta: must be > 0"),
    ("doremi", {"smoothing": 2}, r"smoothing: must be <= 1"),
    ("doremi", {"excess": "tokens"}, r"excess: got 'tokens', expected one of 'token', 'mean'"),
    ("odm", {"variant": "both"}, r"variant: got 'both', expected one of 'code', 'paper'"),
    ("odm", {"warmup": 1.5}, r"warmup: expected an integer"),
    ("odm", {"every": 0}, r"every: must be >= 1"),
    ("skillit", {"graph": [[1, 0], [0, 1]]}, r"graph: has 2 rows, expected one per source \(3\)"),
    ("skillit", {"graph": [1, 2, 3]}, r"graph: expected a K x M matrix"),
    ("skillit", {"window": 0}, r"window: must be >= 1"),
    ("skillit", {"normalize_loss": "yes"}, r"normalize_loss: expected true or false"),
    ("dga", {"ema": 1.0}, r"ema: must be < 1"),
    ("dga", {"initial": [1, 1]}, r"initial: expected 3 weights"),
    ("dga", {"initial": [1, -1, 1]}, r"initial: weights must be finite, >= 0"),
    ("exp3_flad", {"reward": "dot"}, r"reward: got 'dot', expected one of 'cosine', 'magnitude'"),
    ("ucb1_flad", {"initial_reward": [1, 2]}, r"initial_reward: expected 3 numbers"),
    ("ucb1_flad", {"beta": 0}, r"beta: must be > 0"),
    ("doremi", {"min_weight": 0.5}, r"min_weight 0.5 is too large for 3 sources"),
    ("doremi", {"min_weight": -0.1}, r"min_weight: must be >= 0"),
])
def test_bad_settings_name_policy_and_field(name, settings, message):
    with pytest.raises(ConfigError, match=message):
        make_policy(name, 3, **settings)


def test_num_sources_must_be_positive():
    with pytest.raises(ConfigError, match="num_sources must be an integer >= 1"):
        make_policy("doremi", 0)


def test_defaults_are_the_authors():
    d = {n.value: policy_class(n).defaults() for n in PolicyName}
    assert d["doremi"] == {"min_weight": 0.0, "every": 1, "eta": 1.0, "smoothing": 1e-3,
                                "excess": "token", "initial": None}
    assert (d["odm"]["warmup"], d["odm"]["smoothing"], d["odm"]["every"], d["odm"]["variant"]) \
        == (2000, 0.9, 1, "code")
    assert (d["skillit"]["eta"], d["skillit"]["window"], d["skillit"]["every"]) == (0.5, 3, 1000)
    assert (d["exp3_flad"]["beta"], d["ucb1_flad"]["beta"]) == (1.0, 0.1)
    assert d["exp3_flad"]["reward"] == d["ucb1_flad"]["reward"] == "cosine"
    assert policy_class("exp3_flad").grad_params == policy_class("ucb1_flad").grad_params == "lm_head"


# ---- feedback ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n.value for n in PolicyName])
def test_missing_feedback_field_names_field_and_policy(name):
    policy = make_policy(name, K, **FAST[name])
    with pytest.raises(ConfigError) as err:
        policy.observe(Feedback(step=5))
    msg = str(err.value)
    assert f"policy {name!r}" in msg
    assert "step 5" in msg
    for field in policy.needs:
        assert repr(field) in msg or field in msg


def test_doremi_needs_depend_on_the_excess_setting():
    assert make_policy("doremi", 2).needs == {"excess_loss"}
    assert make_policy("doremi", 2, excess="mean").needs == {"train_loss", "ref_loss"}
    with pytest.raises(ConfigError, match=r"has no 'ref_loss'"):
        make_policy("doremi", 2, excess="mean").observe(Feedback(step=1, train_loss=[1, 2]))


@pytest.mark.parametrize(("feedback", "message"), [
    (Feedback(step=1, train_loss=[1.0, 2.0]), r"feedback.train_loss: expected shape 3"),
    (Feedback(step=1, train_loss=[[1.0, 2.0, 3.0]]), r"feedback.train_loss: expected shape 3"),
    (Feedback(step=1, train_loss=[1.0, np.inf, 2.0]), r"train_loss: values must be finite"),
    (Feedback(step=1, train_loss=["a", 1, 2]), r"train_loss: expected numbers"),
    (Feedback(step=-1, train_loss=[1.0, 2.0, 3.0]), r"feedback.step: expected an integer >= 0"),
    (Feedback(step=1, tokens=-5, train_loss=[1, 2, 3]), r"feedback.tokens"),
    (Feedback(step=1, train_loss=[1, 2, 3], counts=[1, -1, 2]), r"counts: expected finite"),
    (Feedback(step=1, train_loss=[1, 2, 3], observed=[1, 0, 1]), r"observed: expected 3 booleans"),
    (Feedback(step=1, train_loss=[1, 2, 3], grads=np.ones((3, 4)), target_grad=np.ones(5)),
     r"grads have 4 parameters per source but target_grad has 5"),
    (Feedback(step=1, train_loss=[1, 2, 3], grads=np.ones((2, 4))), r"grads: expected shape 3 x P"),
])
def test_bad_feedback_is_a_clear_error(feedback, message):
    with pytest.raises(ConfigError, match=message):
        make_policy("odm", 3, warmup=0).observe(feedback)


def test_steps_must_increase():
    policy = make_policy("odm", 2, warmup=0)
    policy.observe(Feedback(step=3, train_loss=[1, 2]))
    with pytest.raises(ConfigError, match="step 3 is not after the last observed step 3"):
        policy.observe(Feedback(step=3, train_loss=[1, 2]))


def test_observed_mask_counts_and_nan():
    fb = Feedback(step=1, counts=np.array([3, 0, 1]))
    assert fb.mask(3).tolist() == [True, False, True]
    fb = Feedback(step=1, counts=np.array([3, 0, 1]), observed=np.array([False, True, True]))
    assert fb.mask(3).tolist() == [False, True, True]
    assert Feedback(step=1).mask(2).tolist() == [True, True]


def test_due_follows_every():
    policy = make_policy("skillit", 2, every=100)
    assert [s for s in range(0, 401) if policy.due(s)] == [100, 200, 300, 400]
    odm = make_policy("odm", 2, warmup=3, every=2)
    assert [s for s in range(0, 9) if odm.due(s)] == [4, 6, 8]


# ---- simplex, floor, resume -------------------------------------------------------------------


def test_apply_floor_formula():
    raw = np.array([0.7, 0.3, 0.0])
    np.testing.assert_allclose(apply_floor(raw, 0.1), [0.7 * 0.7 + 0.1, 0.7 * 0.3 + 0.1, 0.1])
    assert apply_floor(raw, 0.0).tolist() == raw.tolist()


@pytest.mark.parametrize("case", CASES, ids=ids)
@pytest.mark.parametrize("floor", [0.0, 0.05])
def test_weights_stay_on_the_simplex_above_the_floor(case, floor):
    rng = np.random.default_rng(7)
    policy = build(case, min_weight=floor)
    for step in range(1, 61):
        w = policy.weights()
        assert w.shape == (K,) and np.isfinite(w).all()
        assert abs(w.sum() - 1.0) < 1e-12
        assert (w >= floor - 1e-15).all()
        policy.observe(random_feedback(rng, step, first=step == 1))
    assert policy.updates > 0


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_state_round_trip_through_json_continues_identically(case):
    rng = np.random.default_rng(11)
    feedback = [random_feedback(rng, s, first=s == 1) for s in range(1, 41)]
    straight = build(case, min_weight=0.01)
    for fb in feedback[:20]:
        straight.observe(fb)
    saved = json.loads(json.dumps(straight.state_dict()))
    resumed = build(case, min_weight=0.01)
    resumed.load_state_dict(saved)
    assert resumed.weights().tolist() == straight.weights().tolist()
    for fb in feedback[20:]:
        straight.observe(fb)
        resumed.observe(fb)
        assert resumed.weights().tolist() == straight.weights().tolist()
    assert resumed.state_dict() == straight.state_dict()
    if case[0] == "doremi":
        assert resumed.averaged_weights().tolist() == straight.averaged_weights().tolist()


def _leaves(obj) -> int:
    if isinstance(obj, dict):
        return sum(_leaves(v) for v in obj.values())
    if isinstance(obj, list):
        return sum(_leaves(v) for v in obj)
    return 1


@pytest.mark.parametrize("name", [n.value for n in PolicyName])
def test_state_is_small(name):
    k = 40
    rng = np.random.default_rng(3)
    policy = make_policy(name, k, **FAST[name])
    for step in range(1, 30):
        policy.observe(random_feedback(rng, step, k=k, first=step == 1))
    state = policy.state_dict()
    state["settings"].pop("graph", None)  # the K x M graph is configuration, O(K·M)
    # ADO's bins: O(K·bins_per_decade·log10 of the growth of n), bounded in test_policy_ado
    state["state"].pop("bins", None)
    window = FAST[name].get("window", 3)
    assert _leaves(state) <= 8 * k + window * k + 64


def test_load_state_refuses_other_policies_sizes_and_settings():
    policy = make_policy("doremi", 3)
    policy.observe(Feedback(step=1, excess_loss=[0.1, 0.2, 0.3]))
    state = json.loads(json.dumps(policy.state_dict()))
    with pytest.raises(StateError, match="saved by policy 'doremi'"):
        make_policy("odm", 3).load_state_dict(state)
    with pytest.raises(StateError, match="saved for 3 sources, this policy has 4"):
        make_policy("doremi", 4).load_state_dict(state)
    with pytest.raises(StateError, match=r"settings changed since it was saved \(eta\)"):
        make_policy("doremi", 3, eta=2.0).load_state_dict(state)
    with pytest.raises(StateError, match="not a mixbatch policy state"):
        make_policy("doremi", 3).load_state_dict({"format": "x"})
    broken = json.loads(json.dumps(state))
    broken["state"]["alpha"] = [0.5, 0.5]
    with pytest.raises(StateError, match="malformed"):
        make_policy("doremi", 3).load_state_dict(broken)
