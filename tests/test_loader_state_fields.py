"""Hostile or damaged loader states: every field is checked, and a bad one gives one StateError
line that names it (issue 12, item 2): negative steps, counters of thousands of digits, wrong
types, NaN or infinite numbers, lists of the wrong length, unknown keys."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from mixbatch.errors import StateError
from mixbatch.loader.loader import MixedLoader, load_state
from mixbatch.plan.interleave import Interleaver
from test_loader import _cfg

HUGE = 10**4999 + 7  # a 5,000-digit counter (what a JSON state may hold)


def _set(state: dict, path: tuple, value: Any) -> dict:
    s = copy.deepcopy(state)
    d = s
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    return s


def _assert_named(loader: MixedLoader, state: dict, field: str) -> None:
    with pytest.raises(StateError) as e:
        loader.load_state_dict(state)
    text = str(e.value)
    assert "\n" not in text and field in text, text


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict, dict]:
    tmp = tmp_path_factory.mktemp("state")
    cfg = _cfg(tmp)
    loader = MixedLoader(cfg)
    for _ in loader.steps(5):
        pass
    inside = loader.state_dict()  # inside a block: carries a replay
    plain = loader.state_dict(canonical=True)
    return cfg, json.loads(json.dumps(inside)), json.loads(json.dumps(plain))


BAD = [
    (("step",), -1, "step"),
    (("step",), HUGE, "step"),
    (("step",), "12", "step"),
    (("step",), 3.5, "step"),
    (("step",), True, "step"),
    (("tokens_planned",), -5, "tokens_planned"),
    (("tokens_planned",), HUGE, "tokens_planned"),
    (("tokens_planned",), None, "tokens_planned"),
    (("weights_override",), [0.5, float("nan"), 0.5], "weights_override"),
    (("weights_override",), [0.5, 0.5], "weights_override"),
    (("weights_override",), [1e308, 1e308, 1.0], "weights_override"),
    (("weights_override",), [-1.0, 1.0, 1.0], "weights_override"),
    (("weights_override",), "heavy", "weights_override"),
    (("weights_override",), [0.0, 0.0, 0.0], "weights_override"),
    (("stats",), [], "stats"),
    (("stats", "tokens"), [1, 2], "stats.tokens"),
    (("stats", "tokens"), [1, HUGE, 3], "stats.tokens"),
    (("stats", "docs"), [1, -2, 3], "stats.docs"),
    (("stats", "steps"), -3, "stats.steps"),
    (("stats", "imbalance_max"), float("nan"), "stats.imbalance_max"),
    (("stats", "imbalance_sum"), float("inf"), "stats.imbalance_sum"),
    (("stats", "padding"), "lots", "stats.padding"),
    (("stats", "step_tokens_min"), -1, "stats.step_tokens_min"),
    (("stats", "surprise"), 1, "stats.surprise"),
    (("feed",), None, "feed"),
    (("feed", "consumed"), [1, HUGE, 3], "feed.consumed"),
    (("feed", "consumed"), [1, 2], "consumed"),
    (("feed", "max_deviation"), float("nan"), "feed.max_deviation"),
    (("feed", "max_deviation"), -1.0, "feed.max_deviation"),
    (("feed", "ended"), "no", "feed.ended"),
    (("feed", "ended"), 0, "feed.ended"),
    (("feed", "part"), [0, 1.5, 0], "feed.part"),
    (("feed", "planner", "counts"), [1, 2, HUGE], "feed.planner.counts"),
    (("feed", "planner", "counts"), [1, 2, -3], "counts"),
    (("feed", "planner", "base"), [1.0, float("nan"), 2.0], "base"),
    (("feed", "planner", "segment_units"), HUGE, "segment_units"),
    (("feed", "planner", "weights"), [0.5, float("inf"), 0.5], "weights"),
    (("shaper",), "carry", "shaper"),
    (("shaper", "carry"), [0, 1, -2, 5, 0, 1], "shaper.carry"),
    (("shaper", "carry"), [0, 1, 2, HUGE, 0, 1], "shaper.carry"),
    (("shaper", "carry"), "abc", "shaper.carry"),
    (("replay",), {"steps": -2, "weights": [0.5, 0.3, 0.2]}, "replay"),
    (("replay",), {"steps": HUGE, "weights": [0.5, 0.3, 0.2]}, "replay.steps"),
    (("replay",), {"steps": 2, "weights": [0.5, float("nan"), 0.5]}, "replay.weights"),
    (("replay",), {"steps": 2}, "replay.weights"),
    (("replay",), [2], "replay"),
    (("fingerprint",), "x", "fingerprint"),
]


@pytest.mark.parametrize(("path", "value", "field"), BAD,
                         ids=[".".join(map(str, p)) + f"-{i}" for i, (p, _v, _f) in enumerate(BAD)])
def test_a_bad_field_is_named_in_one_line(saved: tuple, path: tuple, value: Any,
                                          field: str) -> None:
    cfg, inside, plain = saved
    loader = MixedLoader(cfg)
    base = inside if path[0] == "replay" else plain
    if path[0] == "shaper" and len(path) > 1 and plain["shaper"]["carry"] is None:
        pytest.skip("no carry in this state")
    _assert_named(loader, _set(base, path, value), field)


def test_the_good_states_still_resume(saved: tuple) -> None:
    cfg, inside, plain = saved
    want = MixedLoader(cfg)
    for _ in want.steps(5):
        pass
    ref = [s.plan.doc.tolist() for s in want.steps(3)]
    for state in (inside, plain):
        loader = MixedLoader(cfg)
        loader.load_state_dict(state)
        assert [s.plan.doc.tolist() for s in loader.steps(3)] == ref


def test_a_state_that_is_not_a_dict_or_misses_keys(saved: tuple) -> None:
    cfg, _inside, plain = saved
    loader = MixedLoader(cfg)
    _assert_named(loader, ["not", "a", "state"], "list")
    for key in ("step", "feed", "shaper", "stats", "tokens_planned"):
        broken = {k: v for k, v in plain.items() if k != key}
        _assert_named(loader, broken, key)


def test_a_state_file_with_a_5000_digit_counter(saved: tuple, tmp_path: Path) -> None:
    cfg, _inside, plain = saved
    text = json.dumps(plain).replace('"step": 5', '"step": 1' + "0" * 4999, 1)
    assert len(text) > 5000
    path = tmp_path / "state.json"
    path.write_text(text)
    with pytest.raises(StateError, match=r"state\.json") as e:
        MixedLoader(cfg).load_state_dict(load_state(path))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("field", "value"), [
    ("counts", [1, HUGE]), ("documents", [HUGE, 1]), ("base", [HUGE, 1.0]),
    ("segment_units", HUGE), ("num_sources", "2"), ("weights", [float("nan"), 1.0]),
    ("counts", "12"), ("base", [1.0]),
], ids=lambda v: v if isinstance(v, str) else "value")
def test_interleaver_fields_are_checked(field: str, value: Any) -> None:
    plan = Interleaver(2, "tokens")
    plan.choose_tokens([0.5, 0.5], [[3, 4, 5], [6, 7, 8]], 4)
    state = plan.state_dict()
    state[field] = value
    with pytest.raises(StateError, match=rf"interleave state\.{field}") as e:
        Interleaver(2, "tokens").load_state_dict(state)
    assert "\n" not in str(e.value)


def test_torch_adapters_check_their_own_fields(saved: tuple) -> None:
    from mixbatch.torch import MixbatchDataLoader, MixbatchDataset

    cfg, _inside, plain = saved
    ds = MixbatchDataset(cfg)
    for bad, field in (([1], "dataset state"), ({}, "dataset state.loader"),
                       ({"loader": plain, "lane_offset": -4}, "dataset state.lane_offset"),
                       ({"loader": plain, "lane_offset": HUGE}, "dataset state.lane_offset")):
        with pytest.raises(StateError, match=field):
            ds.load_state_dict(bad)
    dl = MixbatchDataLoader(cfg, max_steps=2)
    with pytest.raises(StateError, match="loader state"):
        dl.load_state_dict("step 5")
    dl.load_state_dict(_set(plain, ("step",), -1))
    with pytest.raises(StateError, match=r"loader state\.step"):
        list(dl)


def test_a_replay_in_a_mode_that_plans_no_blocks(tmp_path: Path) -> None:
    from test_loader import SHAPES

    cfg = _cfg(tmp_path, batch=SHAPES["buckets"])
    loader = MixedLoader(cfg)
    for _ in loader.steps(3):
        pass
    state = json.loads(json.dumps(loader.state_dict()))
    state["replay"] = {"steps": 2, "weights": [0.5, 0.3, 0.2]}
    _assert_named(MixedLoader(cfg), state, "replay")
