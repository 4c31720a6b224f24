"""The token budget of ``buckets`` and ``pad_buckets`` as a schedule and as a run-time change:
every step keeps the budget in force, the pieces of every window are the same as with one
budget (the mixture at window boundaries does not move), ranks stay disjoint, resume is exact at
any step and world size; bad schedules and budgets are one clear error each."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixbatch.errors import ConfigError, StateError
from mixbatch.loader.loader import MixedLoader
from mixbatch.plan.batch_schedule import budget_schedule_from
from mixbatch.testing import plan_signature
from test_loader_batch_schedule import _cfg, _make, base  # noqa: F401 (a fixture)

SEQ = 32
#: budgets each mode can plan with at seq_len 32, row_multiple 4
BUDGETS = {"pad_buckets": [128, 256, 384, 512], "buckets": [128, 256, 512]}
MODE = {"pad_buckets": {"packing": "pad_buckets", "num_buckets": 3, "row_multiple": 4},
        "buckets": {"packing": "buckets", "min_len": 8, "row_multiple": 4}}


def _batch(mode: str, budget: int | list[dict], **extra) -> dict:
    return {**MODE[mode], "token_budget": budget, **extra}


def _run(loader: MixedLoader, n: int, changes: dict[int, int]) -> list[tuple]:
    """``n`` steps, with run-time changes at their steps: (step, budget in force)."""
    out = []
    for _ in range(n):
        if loader.step in changes:
            loader.set_token_budget(changes[loader.step])
        budget = loader.token_budget
        s = loader.next_step()
        if s is None:
            break
        out.append((s, budget))
    return out


def _within(mode: str, step, budget: int) -> bool:
    p = step.plan
    if mode == "buckets":  # every step holds exactly its budget
        return p.rows * p.seq_len == budget
    return p.stats["cost"] <= budget and p.rows % 4 == 0


def _by_window(steps: list) -> dict[int, Counter]:
    """The pieces fed in each window: (source, doc, start, end) with multiplicity."""
    out: dict[int, Counter] = {}
    for s, _ in steps:
        p = s.plan
        out.setdefault(p.stats["window"], Counter()).update(zip(
            p.source.tolist(), p.doc.tolist(), p.start.tolist(), p.end.tolist(), strict=True))
    return out


@st.composite
def cases(draw: st.DrawFn) -> dict:
    mode = draw(st.sampled_from(list(MODE)))
    clock = draw(st.sampled_from(["until_step", "until_tokens"]))
    n = draw(st.integers(1, 3))
    bounds = sorted(draw(st.sets(st.integers(1, 25 if clock == "until_step" else 6000),
                                 min_size=n - 1, max_size=n - 1)))
    sizes = [draw(st.sampled_from(BUDGETS[mode])) for _ in range(n)]
    stages = [{"token_budget": b, clock: u} for b, u in zip(sizes, bounds, strict=False)]
    stages.append({"token_budget": sizes[-1]})
    changes = sorted(draw(st.sets(st.integers(1, 30), max_size=2)))
    return {"mode": mode, "stages": stages,
            "changes": {c: draw(st.sampled_from(BUDGETS[mode])) for c in changes},
            "total": draw(st.integers(5, 40))}


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=cases(), world=st.sampled_from([1, 2, 4]), data=st.data())
def test_budget_schedule_windows_ranks_resume(base: dict, case: dict, world: int,  # noqa: F811
                                              data) -> None:
    mode, changes, total = case["mode"], case["changes"], case["total"]
    batch = _batch(mode, case["stages"], window_tokens=2048, max_token_budget=512)
    straight = _run(_make(base, batch), total, changes)
    # every step keeps the budget in force at its start (the schedule's stage or the change)
    assert all(_within(mode, s, b) for s, b in straight)
    rule = budget_schedule_from([(x["token_budget"], x.get("until_step"),
                                  x.get("until_tokens")) for x in case["stages"]])
    if rule.by_tokens is False and not changes:
        assert [b for _, b in straight] == [rule.rows_at(j, 0) for j in range(len(straight))]
    # the windows (fixed size) hold the same pieces as with one budget: a change re-plans the
    # rest of a window, it does not move pieces to another window (pad_buckets feeds every
    # piece in its window, so the mixture at window boundaries is the one budget's)
    const = _run(_make(base, _batch(mode, 512, window_tokens=2048)), 4 * total, {})
    done = {s.plan.stats["window"] for s, _ in straight
            if s.plan.stats["window_step"] == s.plan.stats["window_steps"] - 1}
    ours, ref = _by_window(straight), _by_window(const)
    for w in done:
        if w + 1 in ref:  # windows the reference run finished too
            if mode == "pad_buckets":
                assert ours[w] == ref[w]
            else:  # each piece at most once (what fills no whole batch depends on the budget)
                assert max(ours[w].values()) == 1
    # ranks: disjoint, together every row, the same global plan
    per_rank = [_run(_make(base, batch, world, r), total, changes) for r in range(world)]
    for j, (s, _) in enumerate(straight):
        got = np.concatenate([p[j][0].rows for p in per_rank])
        assert sorted(got.tolist()) == list(range(s.plan.rows))
        assert all(plan_signature(p[j][0].plan) == plan_signature(s.plan) for p in per_rank)
    # resume at a random step, at another world size, through JSON: the same global stream
    cut = data.draw(st.integers(0, len(straight)), label="cut")
    first = _make(base, batch, data.draw(st.sampled_from([1, 2, 4]), label="saved at"))
    _run(first, cut, changes)
    state = json.loads(json.dumps(first.state_dict()))
    again = _make(base, batch, world, world - 1)
    again.load_state_dict(state)
    rest = _run(again, total - cut, changes)
    assert [plan_signature(s.plan) for s, _ in rest] == \
        [plan_signature(s.plan) for s, _ in straight[cut:]]


@pytest.mark.parametrize("mode", list(MODE))
def test_ramp_by_step_and_default_windows(base: dict, mode: str) -> None:  # noqa: F811
    """A ramp with the default window (256 budgets of the window's budget): steps follow it,
    the state keeps the open window's budgets and resumes them."""
    stages = [{"until_step": 3, "token_budget": 128}, {"until_step": 6, "token_budget": 256},
              {"token_budget": 512}]
    ld = _make(base, _batch(mode, stages))
    steps = _run(ld, 9, {})
    assert [b for _, b in steps] == [128] * 3 + [256] * 3 + [512] * 3
    assert all(_within(mode, s, b) for s, b in steps)
    state = ld.state_dict()
    assert state["shaper"]["budgets"][0][1] == 128  # the window was planned with 128
    assert [b for _, b in state["shaper"]["budgets"]] == [128, 256, 512]
    again = _make(base, _batch(mode, stages))
    again.load_state_dict(json.loads(json.dumps(state)))
    fresh = _run(_make(base, _batch(mode, stages)), 14, {})[9:]
    assert [plan_signature(s.plan) for s, _ in _run(again, 5, {})] == \
        [plan_signature(s.plan) for s, _ in fresh]


def test_run_time_change_kept_in_state(base: dict) -> None:  # noqa: F811
    ld = _make(base, _batch("pad_buckets", 256, max_token_budget=512))
    _run(ld, 3, {})
    ld.set_token_budget(512)
    assert ld.token_budget == 512
    _run(ld, 2, {})
    ld.set_token_budget(128)
    state = ld.state_dict()
    assert state["token_budget_changes"] == [[5, 128]]  # the last change only
    fresh = _make(base, _batch("pad_buckets", 256, max_token_budget=512), world=2)
    fresh.load_state_dict(state)
    assert fresh.token_budget == 128
    with pytest.raises(StateError, match=r"token_budget_changes.1.step: 2 is out of order"):
        fresh.load_state_dict({**state, "token_budget_changes": [[3, 512], [2, 128]]})
    with pytest.raises(StateError, match="above this run's largest budget"):
        _make(base, _batch("pad_buckets", 256)).load_state_dict(
            {**state, "token_budget_changes": [[3, 512], [5, 128]]})
    with pytest.raises(StateError, match=r"token_budget_changes.0.budget: 100 cannot hold"):
        fresh.load_state_dict({**state, "token_budget_changes": [[3, 100]]})
    with pytest.raises(StateError, match="has no token budget"):
        _make(base, {"batch_size": 8}).load_state_dict(
            {**_make(base, {"batch_size": 8}).state_dict(), "token_budget_changes": [[0, 256]]})


def test_bad_run_time_budgets(base: dict) -> None:  # noqa: F811
    pb = _make(base, _batch("pad_buckets", 256, max_token_budget=1024))
    with pytest.raises(ConfigError, match="set_token_budget: 100 cannot hold row_multiple = 4 "
                                          "rows of seq_len 32"):
        pb.set_token_budget(100)
    with pytest.raises(ConfigError, match="above the largest budget this run allows"):
        pb.set_token_budget(2048)
    with pytest.raises(ConfigError, match="not a positive whole number"):
        pb.set_token_budget(0)
    bk = _make(base, _batch("buckets", 256, max_token_budget=1024))
    with pytest.raises(ConfigError, match=r"set_token_budget: must be a multiple of seq_len × "
                                          r"row_multiple = 32 × 4 = 128"):
        bk.set_token_budget(320)
    with pytest.raises(ConfigError, match="not a token budget; use set_batch_size"):
        _make(base, {"batch_size": 8}).set_token_budget(256)
    assert _make(base, {"batch_size": 8}).token_budget is None


@pytest.mark.parametrize("batch, match", [
    (_batch("pad_buckets", [{"until_step": 9, "token_budget": 256},
                            {"until_step": 5, "token_budget": 512}]),
     "token_budget.1.until_step: 5 is not after the previous stage's 9"),
    (_batch("pad_buckets", [{"token_budget": 256}, {"until_step": 5, "token_budget": 512}]),
     "token_budget.0: only the last stage may be open"),
    (_batch("buckets", [{"until_step": 3, "token_budget": 256},
                        {"until_tokens": 9, "token_budget": 512}]),
     "mix of until_step and until_tokens"),
    (_batch("buckets", 0), "batch.token_budget: must be >= 2"),
    (_batch("buckets", []), "batch.token_budget: a schedule needs at least one stage"),
    (_batch("pad_buckets", [{"token_budget": -5}]),
     "batch.token_budget.0.token_budget: Input should be greater than or equal to 2"),
    (_batch("pad_buckets", [{"until_step": 3, "token_budget": 512}, {"token_budget": 256}],
            max_token_budget=256), "max_token_budget 256 is below"),
])
def test_bad_budget_schedules(base: dict, batch: dict, match: str) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match=match) as e:
        _cfg(base["data"], base["dir"], batch)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("mode, budget, match", [
    ("pad_buckets", 100, r"batch.token_budget.1.token_budget: 100 cannot hold row_multiple"),
    ("buckets", 320, r"batch.token_budget.1.token_budget: must be a multiple of seq_len × "
                     r"row_multiple = 32 × 4 = 128"),
])
def test_stage_the_shaper_cannot_plan(base: dict, mode: str, budget: int,  # noqa: F811
                                      match: str) -> None:
    stages = [{"until_step": 3, "token_budget": 256}, {"token_budget": budget}]
    with pytest.raises(ConfigError, match=match):
        _make(base, _batch(mode, stages))


def test_readme_budget_example_is_valid(base: dict) -> None:  # noqa: F811
    from pathlib import Path

    import yaml

    text = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    block = text.split("their `token_budget` takes the same stages", 1)[1]
    batch = yaml.safe_load(block.split("```yaml\n", 1)[1].split("```", 1)[0])["batch"]
    ld = _make(base, {**batch, "seq_len": SEQ}, world=4)
    assert ld.budget_schedule is not None
    assert [ld.budget_schedule.rows_at(s, 0) for s in (0, 999, 1000, 3000)] == \
        [65536, 65536, 131072, 262144]
    assert ld.token_budget == 65536 and ld.cfg.batch.largest_budget == 524288
