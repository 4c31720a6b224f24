"""Block planning and compact batches: the same stream, whatever the block size; fields derived
from the compact form equal the full batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import write_config, write_jsonl
from mixbatch.config import load_config
from mixbatch.errors import ConfigError
from mixbatch.loader.loader import MixedLoader
from mixbatch.prepare import prepare
from mixbatch.shape.materialize import ALL_FIELDS, DEFAULT_FIELDS, expand, resolve_fields
from mixbatch.testing import assert_resumes


def _cfg(tmp: Path, mixture: dict | None = None, batch: dict | None = None, sizes=(300, 200, 60)):
    rng = np.random.default_rng(1)
    sources = {}
    for k, n in enumerate(sizes):
        lens = np.clip(rng.lognormal(3.5, 1.2, size=n).astype(int), 1, 900)
        write_jsonl(tmp / f"s{k}.jsonl", [f"{chr(97 + k)}{i}:" + "y" * int(m)
                                          for i, m in enumerate(lens)])
        sources[f"s{k}"] = {"path": f"s{k}.jsonl"}
    data = {"seed": 5, "store": "store", "sources": sources,
            "mixture": mixture or {"unit": "tokens", "weights": {"s0": 0.5, "s1": 0.3, "s2": 0.2}},
            "batch": {"seq_len": 64, "batch_size": 4, "packing": "concat", **(batch or {})}}
    cfg = load_config(write_config(tmp / "c.yaml", data))
    prepare(cfg, workers=1)
    return cfg


def _batches(loader: MixedLoader, n: int, fields="all") -> list[dict]:
    out = []
    for step in loader.steps(n):
        out.append(loader.batch_of(step, fields=fields))
    return out


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert np.array_equal(np.asarray(x[k]), np.asarray(y[k])), k


MIXTURES = {
    "fixed": None,
    "samples": {"unit": "samples", "weights": {"s0": 0.2, "s1": 0.3, "s2": 0.5}},
    "steps": {"unit": "tokens", "schedule": [
        {"until_step": 7, "weights": {"s0": 1.0}},
        {"until_step": 20, "weights": {"s1": 0.5, "s2": 0.5}},
        {"weights": {"s0": 0.3, "s1": 0.3, "s2": 0.4}}]},
    "tokens": {"unit": "tokens", "schedule": [
        {"until_tokens": 1000, "weights": {"s0": 1.0}},
        {"until_tokens": 5000, "weights": {"s1": 0.5, "s2": 0.5}},
        {"weights": {"s0": 0.3, "s1": 0.3, "s2": 0.4}}]},
    "linear": {"unit": "tokens", "interpolation": "linear", "schedule": [
        {"until_step": 10, "weights": {"s0": 1.0}},
        {"weights": {"s1": 0.5, "s2": 0.5}}]},
}


@pytest.mark.parametrize("packing", ["concat", "bfd"])
@pytest.mark.parametrize("mixture", list(MIXTURES))
def test_blocks_equal_single_steps(tmp_path: Path, mixture: str, packing: str) -> None:
    cfg = _cfg(tmp_path, MIXTURES[mixture],
               batch={"packing": packing, **({"pack_window": 8} if packing == "bfd" else {})})
    one = MixedLoader(cfg, block_steps=1)
    for block in (2, 7, 64):
        assert [s.plan.width.sum() for s in MixedLoader(cfg, block_steps=block).steps(3)] \
            == [s.plan.width.sum() for s in MixedLoader(cfg, block_steps=1).steps(3)]
    want = _batches(one, 45)
    for block in (3, 64):
        _same(_batches(MixedLoader(cfg, block_steps=block), 45), want)
    blocked = MixedLoader(cfg, block_steps=64)
    _batches(blocked, 45)
    _same_state(blocked.state_dict(canonical=True), one.state_dict())


def _same_state(a: dict, b: dict) -> None:
    """Equal states; the feed's running maximum deviation is a float summed in other chunks."""
    a, b = json.loads(json.dumps(a)), json.loads(json.dumps(b))
    da, db = a["feed"].pop("max_deviation"), b["feed"].pop("max_deviation")
    assert da == pytest.approx(db, rel=1e-9, abs=1e-9)
    assert a == b


def test_blocks_to_the_end_of_a_finite_stream(tmp_path: Path) -> None:
    mixture = {"unit": "tokens", "weights": {"s0": 0.5, "s1": 0.5}, "on_exhausted": "stop"}
    cfg = _cfg(tmp_path, mixture, sizes=(40, 30))
    cfg = cfg.model_copy(update={"sources": {n: s.model_copy(update={"max_epochs": 1.0})
                                             for n, s in cfg.sources.items()}})
    want = _batches(MixedLoader(cfg, block_steps=1), 10_000)
    got = _batches(MixedLoader(cfg, block_steps=16), 10_000)
    assert 0 < len(want) < 10_000
    _same(got, want)


def test_state_mid_block_and_weight_changes(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    ref, blk = MixedLoader(cfg, block_steps=1), MixedLoader(cfg, block_steps=32)
    for n, w in ((5, None), (3, {"s0": 0.1, "s1": 0.1, "s2": 0.8}), (9, None),
                 (1, [0.4, 0.4, 0.2]), (20, None)):
        if w is not None:
            ref.set_weights(w)
            blk.set_weights(w)
        _same(_batches(blk, n), _batches(ref, n))
        _same_state(blk.state_dict(canonical=True), ref.state_dict())
    # a state taken in the middle of a block (a replay) resumes at any block size
    _batches(blk, 3)
    state = json.loads(json.dumps(blk.state_dict()))
    assert state["replay"]["steps"] == 3
    for block in (1, 5, 64):
        again = MixedLoader(cfg, block_steps=block)
        again.load_state_dict(state)
        _same(_batches(again, 12), _batches(_fresh(cfg, state), 12))


def _fresh(cfg, state) -> MixedLoader:
    ld = MixedLoader(cfg, block_steps=1)
    ld.load_state_dict(state)
    return ld


@pytest.mark.parametrize("packing", ["concat", "bfd"])
@pytest.mark.parametrize("world", [2, 4])
def test_blocks_with_ranks_resume(tmp_path: Path, world: int, packing: str) -> None:
    cfg = _cfg(tmp_path, batch={"packing": packing})
    assert_resumes(lambda: MixedLoader(cfg, rank=world - 1, world_size=world, block_steps=16),
                   total=40, cut_points=[0, 3, 16, 39])
    _same(_batches(MixedLoader(cfg, rank=1, world_size=world, block_steps=16), 30),
          _batches(MixedLoader(cfg, rank=1, world_size=world, block_steps=1), 30))


@pytest.mark.parametrize("packing", ["concat", "pad", "bfd"])
def test_compact_batch_expands_to_every_field(tmp_path: Path, packing: str) -> None:
    cfg = _cfg(tmp_path, batch={"packing": packing})
    loader = MixedLoader(cfg, block_steps=8)
    for step in loader.steps(12):
        compact = loader.compact_of(step)
        assert compact["input_ids"].dtype == np.uint16  # the byte tokenizer's store dtype
        full = loader.batch_of(step)
        assert full["input_ids"].dtype == np.int64
        _same([expand(compact, "all")], [full])
        part = expand(compact, DEFAULT_FIELDS)
        assert set(part) == {*DEFAULT_FIELDS, "step"}
        labels = full["labels"]
        # labels: -100 at every segment start and on padding, tokens elsewhere
        starts = full["cu_seqlens"][:-1]
        assert np.all(labels.reshape(-1)[starts] == -100)
        keep = labels.reshape(-1) != -100
        assert np.array_equal(labels.reshape(-1)[keep], full["input_ids"].reshape(-1)[keep])


def test_fields_are_checked() -> None:
    assert resolve_fields(None) == DEFAULT_FIELDS
    assert resolve_fields("all") == ALL_FIELDS
    with pytest.raises(ConfigError, match=r"unknown field.*'token_ids'"):
        resolve_fields(["input_ids", "token_ids"])
    with pytest.raises(ConfigError, match="at least one"):
        resolve_fields([])


def test_block_steps_is_checked(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    with pytest.raises(ConfigError, match="block_steps"):
        MixedLoader(cfg, block_steps=0)


def test_scheduled_changes_are_read_ahead_by_the_planner(tmp_path: Path) -> None:
    """A schedule by tokens in token mode (or by steps in sample mode with pad) is read ahead:
    across abrupt stage changes (a source dropping to 0 and coming back) the planner stays
    within one unit (a piece of <= seq_len tokens; one sample) of the integrated schedule."""
    stages = [{"until_tokens": 3000, "weights": {"s0": 1.0}},
              {"until_tokens": 3500, "weights": {"s1": 0.5, "s2": 0.5}},
              {"until_tokens": 9000, "weights": {"s0": 0.2, "s2": 0.8}},
              {"weights": {"s0": 0.3, "s1": 0.3, "s2": 0.4}}]
    cfg = _cfg(tmp_path, {"unit": "tokens", "schedule": stages})
    loader = MixedLoader(cfg)
    assert loader.feed.path is not None
    list(loader.steps(60))
    assert loader.feed.planner.total > 9000
    assert loader.feed.max_deviation <= cfg.batch.seq_len

    by_step = [{"until_step": 3, "weights": {"s0": 1.0}},
               {"until_step": 5, "weights": {"s1": 0.5, "s2": 0.5}},
               {"weights": {"s0": 0.2, "s2": 0.8}}]
    cfg = _cfg(tmp_path / "pad", {"unit": "samples", "schedule": by_step},
               batch={"packing": "pad", "batch_size": 6})
    loader = MixedLoader(cfg)
    assert loader.feed.path is not None
    plans = [s.plan for s in loader.steps(12)]
    assert loader.feed.max_deviation <= 1.0
    # the first stage is all s0: its 3 steps hold s0 only; the stage changes at step 3 exactly
    assert all(np.all(p.source == 0) for p in plans[:3])
    assert not np.any(plans[3].source == 0)
    # online weights end the read-ahead
    loader.set_weights([1, 1, 1])
    assert loader.feed.path is None
