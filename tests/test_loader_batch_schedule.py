"""The batch size as a schedule and as a run-time change: the row stream (and so the mixture)
does not move, ranks stay disjoint, resume is exact at any step and world size; bad schedules
and sizes are one clear error each."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_jsonl
from mixbatch.config import Config, config_from_dict
from mixbatch.errors import ConfigError, StateError
from mixbatch.loader.loader import MixedLoader
from mixbatch.plan.batch_schedule import RowsSchedule
from mixbatch.prepare import prepare
from mixbatch.testing import plan_signature

WEIGHTS = {"s0": 0.5, "s1": 0.3, "s2": 0.2}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three prepared sources; tests vary only the ``batch`` section (no new prepare)."""
    tmp = tmp_path_factory.mktemp("bs")
    rng = np.random.default_rng(3)
    sources = {}
    for k, n in enumerate((200, 150, 60)):
        lens = np.clip(rng.lognormal(3.2, 1.0, size=n).astype(int), 1, 300)
        write_jsonl(tmp / f"s{k}.jsonl", [f"{chr(97 + k)}{i}:" + "z" * int(m)
                                          for i, m in enumerate(lens)])
        sources[f"s{k}"] = {"path": f"s{k}.jsonl"}
    data = {"seed": 2, "store": "store", "sources": sources,
            "mixture": {"unit": "tokens", "weights": WEIGHTS}}
    prepare(_cfg(data, tmp, {"seq_len": 32}), workers=1)
    return {"data": data, "dir": tmp}


def _cfg(data: dict, tmp: Path, batch: dict, mixture: dict | None = None) -> Config:
    d = {**data, "batch": {"seq_len": 32, **batch}}
    if mixture is not None:
        d["mixture"] = mixture
    return config_from_dict(json.loads(json.dumps(d)), "c.yaml", tmp)


def _make(base: dict, batch: dict, world: int = 1, rank: int = 0, **kw) -> MixedLoader:
    return MixedLoader(_cfg(base["data"], base["dir"], batch, kw.pop("mixture", None)), rank,
                       world, **kw)


def _row_stream(steps: list) -> list[tuple]:
    """Every row of the global steps in order: (source, doc, start, end, eod) of its segments."""
    out = []
    for s in steps:
        p = s.plan
        for r in range(p.rows):
            m = p.row == r
            out.append((p.source[m].tolist(), p.doc[m].tolist(), p.start[m].tolist(),
                        p.end[m].tolist(), p.eod[m].tolist(), int(p.pad[r])))
    return out


def _stages(draw: st.DrawFn, clock: str) -> list[dict]:
    n = draw(st.integers(1, 4))
    bounds = sorted(draw(st.sets(st.integers(1, 30 if clock == "until_step" else 8000),
                                 min_size=n - 1, max_size=n - 1)))
    sizes = [4 * draw(st.integers(1, 4)) for _ in range(n)]
    stages = [{"batch_size": s, clock: b} for s, b in zip(sizes, bounds, strict=False)]
    stages.append({"batch_size": sizes[-1]})
    return stages


@st.composite
def schedules(draw: st.DrawFn) -> dict:
    clock = draw(st.sampled_from(["until_step", "until_tokens"]))
    packing = draw(st.sampled_from(["concat", "bfd", "pad"]))
    batch = {"packing": packing, "batch_size": _stages(draw, clock)}
    if packing == "bfd":
        batch["pack_window"] = 8
    changes = sorted(draw(st.sets(st.integers(1, 30), max_size=2)))
    sizes = [4 * draw(st.integers(1, 4)) for _ in changes]
    mixture = draw(st.sampled_from(list(MIXTURES)))
    return {"batch": batch, "changes": dict(zip(changes, sizes, strict=True)),
            "total": draw(st.integers(5, 36)), "mixture": MIXTURES[mixture]}


#: mixtures the property runs under: fixed, stages by step, stages by tokens, by samples
MIXTURES = {
    "fixed": None,
    "steps": {"unit": "tokens", "schedule": [{"until_step": 6, "weights": {"s0": 1.0}},
                                             {"weights": WEIGHTS}]},
    "tokens": {"unit": "tokens", "schedule": [{"until_tokens": 900, "weights": {"s1": 1.0}},
                                              {"weights": WEIGHTS}]},
    "samples": {"unit": "samples", "schedule": [{"until_step": 5, "weights": {"s2": 1.0}},
                                                {"weights": WEIGHTS}]},
}


def _expected_rows(stages: list[dict], changes: dict[int, int], steps: list) -> list[int]:
    """The rows of each step by the rule (the clock at the step's start), from the plans."""
    out, tokens, now = [], 0, None
    for j, s in enumerate(steps):
        now = changes.get(j, now)
        clock = [(st.get("until_step"), j) if "until_step" in st else
                 (st.get("until_tokens"), tokens) for st in stages]
        stage = next((k for k, (u, t) in enumerate(clock) if u is None or t < u),
                     len(stages) - 1)
        out.append(now if now is not None else stages[stage]["batch_size"])
        p = s.plan
        tokens += int((p.end - p.start).sum() + p.eod.sum())
    return out


def _run(loader: MixedLoader, n: int, changes: dict[int, int]) -> list:
    out = []
    for _ in range(n):
        if loader.step in changes:
            loader.set_batch_size(changes[loader.step])
        s = loader.next_step()
        if s is None:
            break
        out.append(s)
    return out


@settings(max_examples=24, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=schedules(), world=st.sampled_from([1, 2, 4]), data=st.data())
def test_schedule_prefix_ranks_resume(base: dict, case: dict, world: int, data) -> None:
    batch, changes, total, mix = case["batch"], case["changes"], case["total"], case["mixture"]
    batch = {**batch, "max_batch_size": 16}
    straight = _run(_make(base, batch, mixture=mix), total, changes)
    if mix in (None, MIXTURES["tokens"]):  # the rows are those of a constant batch size: the
        # mixture's prefix exactness carries over (stages by step move with the step size)
        const = _make(base, {"packing": batch["packing"], "batch_size": 4,
                             **({"pack_window": 8} if batch["packing"] == "bfd" else {})},
                      mixture=mix)
        rows = _row_stream(straight)
        assert _row_stream(list(const.steps(-(-len(rows) // 4))))[:len(rows)] == rows
    # each step has the rows the schedule (or the last change) gives
    assert [s.plan.rows for s in straight] == _expected_rows(batch["batch_size"], changes,
                                                             straight)
    # ranks: disjoint, together every row, each step's share equal
    loaders = [_make(base, batch, world, r, mixture=mix) for r in range(world)]
    per_rank = [_run(ld, total, changes) for ld in loaders]
    for j, s in enumerate(straight):
        got = np.concatenate([p[j].rows for p in per_rank])
        assert sorted(got.tolist()) == list(range(s.plan.rows))
        assert {len(p[j].rows) for p in per_rank} == {s.plan.rows // world}
        assert all(plan_signature(p[j].plan) == plan_signature(s.plan) for p in per_rank)
    # resume at a random step, at another world size, through JSON: the same global stream
    cut = data.draw(st.integers(0, len(straight)), label="cut")
    first = _make(base, batch, data.draw(st.sampled_from([1, 2, 4]), label="saved at"),
                  mixture=mix)
    _run(first, cut, changes)
    state = json.loads(json.dumps(first.state_dict()))
    assert len(state["batch_size_changes"]) <= len(changes)
    again = _make(base, batch, world, world - 1, mixture=mix)
    again.load_state_dict(state)
    rest = _run(again, total - cut, changes)
    assert [plan_signature(s.plan) for s in rest] == \
        [plan_signature(s.plan) for s in straight[cut:]]
    assert [s.rows.tolist() for s in rest] == [p.rows.tolist() for p in per_rank[-1][cut:]]


def test_schedule_sizes_by_step_and_tokens(base: dict) -> None:
    ld = _make(base, {"batch_size": [{"until_step": 3, "batch_size": 4},
                                     {"until_step": 5, "batch_size": 8}, {"batch_size": 12}]})
    assert [s.plan.rows for s in ld.steps(7)] == [4, 4, 4, 8, 8, 12, 12]
    assert ld.max_rows_per_step == 12
    # by tokens: a step of 4 rows of 32 tokens adds 128 planned positions (concat)
    ld = _make(base, {"batch_size": [{"until_tokens": 300, "batch_size": 4},
                                     {"batch_size": 8}]})
    assert [s.plan.rows for s in ld.steps(5)] == [4, 4, 4, 8, 8]


def test_grad_accum_and_micro_batch(base: dict) -> None:
    ld = _make(base, {"global_batch_size": 16, "grad_accum": 2}, world=2, rank=1)
    step = ld.next_step()
    assert step.plan.rows == 8 and len(step.rows) == 4 and ld.micro_batch_size == 4
    ld = _make(base, {"micro_batch_size": 3, "grad_accum": 2}, world=2)
    assert ld.rows_per_step == 6 and ld.micro_batch_size == 3
    assert _make(base, {"micro_batch_size": 3}, world=4).rows_per_step == 12
    with pytest.raises(ConfigError, match=r"batch.micro_batch_size 4 and "
                                          r"batch.global_batch_size 16 disagree at world size 2"):
        _make(base, {"micro_batch_size": 4, "global_batch_size": 16}, world=2)
    _make(base, {"micro_batch_size": 4, "global_batch_size": 16}, world=4)  # agrees


@pytest.mark.parametrize("batch, match", [
    ({"batch_size": [{"until_step": 9, "batch_size": 4}, {"until_step": 5, "batch_size": 8}]},
     "batch_size.1.until_step: 5 is not after the previous stage's 9"),
    ({"batch_size": [{"batch_size": 4}, {"until_step": 5, "batch_size": 8}]},
     "batch_size.0: only the last stage may be open"),
    ({"batch_size": [{"until_step": 3, "batch_size": 4}, {"until_tokens": 9, "batch_size": 8}]},
     "mix of until_step and until_tokens"),
    ({"batch_size": 0}, "batch.batch_size: must be >= 1"),
    ({"batch_size": [{"batch_size": -2}]}, "batch.batch_size.0.batch_size: Input should be "
                                           "greater than or equal to 1"),
    ({"batch_size": 8, "global_batch_size": 16}, "batch_size and global_batch_size are the same "
                                                 "setting .* disagree: 8 vs 16"),
    ({"batch_size": [{"batch_size": 4}], "micro_batch_size": 2}, "give one of the two"),
    ({"batch_size": 6, "grad_accum": 4}, "6 rows cannot be split into batch.grad_accum = 4"),
    ({"batch_size": 16, "max_batch_size": 8}, "max_batch_size 8 is below"),
    ({"packing": "buckets", "token_budget": 256, "batch_size": 4},
     r"batch.batch_size: not a setting of packing 'buckets' .* token_budget \(tokens per step\)"),
])
def test_bad_batch_sizes(base: dict, batch: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        _cfg(base["data"], base["dir"], batch)
    assert "\n" not in str(e.value)


def test_world_size_must_divide_every_stage(base: dict) -> None:
    batch = {"batch_size": [{"until_step": 4, "batch_size": 8}, {"batch_size": 12}]}
    with pytest.raises(ConfigError, match=r"batch.batch_size.1.batch_size: global batch 12 "
                                          r"cannot be split evenly over world size 8"):
        _make(base, batch, world=8)
    ld = _make(base, {"batch_size": 8, "max_batch_size": 32}, world=4)
    with pytest.raises(ConfigError, match="global batch 18 cannot be split evenly over world "
                                          "size 4"):
        ld.set_batch_size(18)
    with pytest.raises(ConfigError, match="above the largest batch this run allows"):
        ld.set_batch_size(64)
    with pytest.raises(ConfigError, match="not a positive whole number"):
        ld.set_batch_size(0)
    budget = _make(base, {"packing": "buckets", "token_budget": 256, "min_len": 8})
    with pytest.raises(ConfigError, match=r"by batch\.token_budget"):
        budget.set_batch_size(8)
    assert budget.max_rows_per_step is None  # rows vary with the lengths: size by positions


def test_changes_in_state_and_checked(base: dict) -> None:
    ld = _make(base, {"batch_size": 4, "max_batch_size": 16})
    list(ld.steps(3))
    ld.set_batch_size(16)
    list(ld.steps(2))
    ld.set_batch_size(8)
    state = ld.state_dict()
    assert state["batch_size_changes"] == [[5, 8]]  # the last change: O(1) however many
    fresh = _make(base, {"batch_size": 4, "max_batch_size": 16}, world=2)
    fresh.load_state_dict(state)
    assert fresh.rows_per_step == 8
    old = {**state, "batch_size_changes": [[3, 16], [5, 8]]}  # states that kept every change
    again = _make(base, {"batch_size": 4, "max_batch_size": 16})
    again.load_state_dict(old)
    assert again.rows_per_step == 8 and again.state_dict()["batch_size_changes"] == [[5, 8]]
    bad = {**state, "batch_size_changes": [[3, 16], [2, 8]]}
    with pytest.raises(StateError, match=r"batch_size_changes.1.step: 2 is out of order"):
        fresh.load_state_dict(bad)
    with pytest.raises(StateError, match=r"batch_size_changes.0.rows: 12 global rows cannot be "
                                         r"split over world size 8"):
        _make(base, {"batch_size": 8, "max_batch_size": 16}, world=8).load_state_dict(
            {**state, "batch_size_changes": [[3, 12]]})
    with pytest.raises(StateError, match="above this run's largest step"):
        _make(base, {"batch_size": 4}).load_state_dict(state)


def test_rows_schedule_steps_constant() -> None:
    s = RowsSchedule((4, 4, 8), (10, 20, None))
    assert s.steps_constant(0, 0, 64) == 20  # stages of one size count as one
    assert s.steps_constant(19, 0, 64) == 1
    assert s.steps_constant(25, 0, 64) == 64
    t = RowsSchedule((4, 8), (1000, None), by_tokens=True)
    assert t.steps_constant(0, 100, 64, 128) == 8  # ceil(900 / 128)
    assert t.steps_constant(0, 100, 64) == 1


def test_readme_schedule_example_is_valid(base: dict) -> None:
    text = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    block = text.split("**A schedule**", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    batch = yaml.safe_load(block)["batch"]
    ld = _make(base, {**batch, "seq_len": 32}, world=4)
    assert [ld.rows_schedule.rows_at(s, 0) for s in (0, 999, 1000, 3000)] == [64, 64, 128, 256]
    assert ld.max_rows_per_step == 512 and ld.micro_batch_size == 16


def test_torch_loader_with_workers_follows_the_schedule(base: dict) -> None:
    """The worker path (shared slots sized by the largest step) reads steps of every size."""
    from mixbatch.torch import MixbatchDataLoader

    cfg = _cfg(base["data"], base["dir"], {"packing": "bfd", "pack_window": 8, "batch_size": [
        {"until_step": 3, "batch_size": 4}, {"until_step": 6, "batch_size": 12},
        {"batch_size": 8}]})
    plain = list(MixbatchDataLoader(cfg, max_steps=9, rank=1, world_size=2))
    assert [len(b["input_ids"]) for b in plain] == [2, 2, 2, 6, 6, 6, 4, 4, 4]
    read = list(MixbatchDataLoader(cfg, max_steps=9, rank=1, world_size=2, num_workers=2))
    assert all(a["input_ids"].tolist() == b["input_ids"].tolist()
               for a, b in zip(plain, read, strict=True))


def test_micro_batch_memory_checked_at_the_world_size(base: dict) -> None:
    """``micro_batch_size`` alone: the global step grows with the world size, and its memory is
    checked again when the loader knows it."""
    from mixbatch.limits import step_memory

    cfg = _cfg(base["data"], base["dir"], {"micro_batch_size": 16})
    limit = 2 * step_memory(cfg.batch.model_copy(update={"batch_size": 16})).total
    batch = {"micro_batch_size": 16, "max_step_bytes": limit}
    assert _make(base, batch, world=2).rows_per_step == 32
    with pytest.raises(ConfigError, match=r"batch.seq_len × batch.batch_size: one step needs"):
        _make(base, batch, world=4)
