from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import write_config, write_jsonl
from mixbatch.config import load_config
from mixbatch.errors import ConfigError, StateError
from mixbatch.loader.loader import MixedLoader
from mixbatch.prepare import prepare
from mixbatch.testing import assert_resumes, step_signature


def _corpus(tmp: Path, sizes=(300, 200, 50), seed=0) -> dict:
    rng = np.random.default_rng(seed)
    sources = {}
    for k, n in enumerate(sizes):
        lens = np.clip(rng.lognormal(3.5, 1.0, size=n).astype(int), 1, 600)
        texts = [f"{chr(97 + k)}{i}:" + "x" * int(m) for i, m in enumerate(lens)]
        write_jsonl(tmp / f"s{k}.jsonl", texts)
        sources[f"s{k}"] = {"path": f"s{k}.jsonl"}
    return sources


def _cfg(tmp: Path, **over) -> object:
    data = {"seed": 3, "store": "store", "sources": _corpus(tmp),
            "mixture": {"unit": "tokens", "weights": {"s0": 0.5, "s1": 0.3, "s2": 0.2}},
            "batch": {"seq_len": 64, "batch_size": 4, "packing": "concat"}}
    for k, v in over.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) and k in data else v
    if data["batch"]["packing"] in ("buckets", "pad_buckets"):
        del data["batch"]["batch_size"]  # rows per step follow the token budget
    cfg = load_config(write_config(tmp / "c.yaml", data))
    prepare(cfg, workers=1)
    return cfg


SHAPES = {
    "concat": {"packing": "concat"},
    "pad": {"packing": "pad"},
    "bfd": {"packing": "bfd", "pack_window": 8},
    "buckets": {"packing": "buckets", "min_len": 8, "token_budget": 512, "window_tokens": 4096},
    "pad_buckets": {"packing": "pad_buckets", "token_budget": 1024, "window_tokens": 4096},
}


@pytest.mark.parametrize("packing", list(SHAPES))
@pytest.mark.parametrize("unit", ["tokens", "samples"])
def test_resume_equivalence(tmp_path: Path, packing: str, unit: str) -> None:
    cfg = _cfg(tmp_path, batch=SHAPES[packing], mixture={"unit": unit})
    assert_resumes(lambda: MixedLoader(cfg), total=60, cut_points=[0, 1, 17, 59])


@pytest.mark.parametrize("packing", ["buckets", "pad_buckets"])
def test_variable_row_modes_split_over_ranks(tmp_path: Path, packing: str) -> None:
    cfg = _cfg(tmp_path, batch=SHAPES[packing])
    full = MixedLoader(cfg)
    ranks = [MixedLoader(cfg, rank=r, world_size=4) for r in range(4)]
    for _ in range(20):
        g = full.next_step()
        got = [ld.next_step() for ld in ranks]
        rows = sorted(np.concatenate([s.rows for s in got]).tolist())
        assert rows == list(range(g.plan.rows)) and g.plan.rows % 8 == 0
    with pytest.raises(ConfigError, match="world size 3 does not divide"):
        MixedLoader(cfg, rank=0, world_size=3)


def test_same_seed_same_batches_other_seed_differs(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    a = step_signature(MixedLoader(cfg), 20)
    assert a == step_signature(MixedLoader(cfg), 20)
    other = cfg.model_copy(update={"seed": 4})
    assert a != step_signature(MixedLoader(other), 20)


def test_token_mix_is_exact_over_every_prefix(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    loader = MixedLoader(cfg)
    list(loader.steps(300))
    longest = max(int(np.max(s.lengths)) for s in loader.stores)
    assert loader.feed.max_deviation <= longest
    counts = loader.feed.planner.counts
    share = counts / counts.sum()
    assert np.allclose(share, [0.5, 0.3, 0.2], atol=longest / counts.sum() * 2)


def test_sample_mix_within_one_document(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, mixture={"unit": "samples"}, batch={"packing": "pad"})
    loader = MixedLoader(cfg)
    list(loader.steps(200))
    assert loader.feed.max_deviation < 1.0
    docs = loader.fed_docs
    assert docs.sum() == 800
    assert np.all(np.abs(docs - 800 * np.array([0.5, 0.3, 0.2])) < 1)


def test_ranks_disjoint_union_and_balanced(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, batch={"batch_size": 8, "packing": "pad"}, mixture={"unit": "samples"})
    full = MixedLoader(cfg, rank=0, world_size=1)
    ranks = [MixedLoader(cfg, rank=r, world_size=4) for r in range(4)]
    for _ in range(30):
        g = full.next_step()
        parts = [ld.next_step() for ld in ranks]
        seen = np.concatenate([p.rows for p in parts])
        assert sorted(seen.tolist()) == list(range(8))  # disjoint, union = global batch
        labels = g.plan.row_source(3)
        for p in parts:
            assert np.array_equal(p.plan.source, g.plan.source)  # same global plan everywhere
            mine = np.bincount(labels[p.rows], minlength=3)
            share = np.bincount(labels, minlength=3) / 4
            assert np.all(np.abs(mine - share) < 1)


def test_state_resumes_at_another_world_size(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, batch={"batch_size": 8})
    straight = MixedLoader(cfg, rank=0, world_size=1)
    list(straight.steps(10))
    state = json.loads(json.dumps(MixedLoader(cfg, rank=1, world_size=2).state_dict()))
    two = MixedLoader(cfg, rank=1, world_size=2)
    list(two.steps(10))
    state = json.loads(json.dumps(two.state_dict()))  # saved by rank 1 of 2
    four = [MixedLoader(cfg, rank=r, world_size=4) for r in range(4)]
    for ld in four:
        ld.load_state_dict(state)
    for _ in range(5):
        g = straight.next_step()
        got = [ld.next_step() for ld in four]
        rows = np.concatenate([s.rows for s in got])
        assert sorted(rows.tolist()) == list(range(8))
        assert np.array_equal(got[0].plan.doc, g.plan.doc)
        assert np.array_equal(got[0].plan.start, g.plan.start)


def test_batches_have_the_documented_fields(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    loader = MixedLoader(cfg)
    step = loader.next_step()
    b = loader.batch_of(step)
    assert b["input_ids"].shape == (4, 64)
    for key in ("labels", "position_ids", "source_ids", "doc_ids"):
        assert b[key].shape == (4, 64)
    assert b["cu_seqlens"].dtype == np.int32 and b["cu_seqlens"][-1] == 256
    # tokens really come from the stores: decode the first segment
    p = step.plan
    store = loader.stores[int(p.source[0])]
    n = int(p.end[0] - p.start[0])
    assert b["input_ids"][0, :n].tolist() == store[int(p.doc[0])][p.start[0]: p.end[0]].tolist()


def test_resume_refuses_changed_sources_or_seed(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    ld = MixedLoader(cfg)
    list(ld.steps(3))
    state = ld.state_dict()
    with pytest.raises(StateError, match=r"seed 3 -> 4"):
        MixedLoader(cfg.model_copy(update={"seed": 4})).load_state_dict(state)
    fewer = cfg.model_copy(update={"sources": {k: v for k, v in cfg.sources.items() if k != "s2"},
                                   "mixture": cfg.mixture.model_copy(update={"weights": {"s0": 1}})})
    with pytest.raises(StateError, match=r"sources \['s0', 's1', 's2'\] -> \['s0', 's1'\]"):
        MixedLoader(fewer).load_state_dict(state)
    with pytest.raises(StateError, match="not a mixbatch loader state"):
        MixedLoader(cfg).load_state_dict({"format": "x"})
    broken = json.loads(json.dumps(state))
    broken["feed"]["consumed"] = [1]
    with pytest.raises(StateError, match=r"loader state\.feed\.consumed: expected 3 integer counts"):
        MixedLoader(cfg).load_state_dict(broken)


def test_changed_weights_continue_from_counts(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    ld = MixedLoader(cfg)
    list(ld.steps(50))
    state = ld.state_dict()
    new = cfg.model_copy(update={"mixture": cfg.mixture.model_copy(
        update={"weights": {"s0": 0.1, "s1": 0.1, "s2": 0.8}})})
    ld2 = MixedLoader(new)
    ld2.load_state_dict(state)
    before = ld2.feed.planner.counts.copy()
    list(ld2.steps(100))
    added = ld2.feed.planner.counts - before
    assert added[2] / added.sum() == pytest.approx(0.8, abs=0.05)


def test_set_weights_online(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, mixture={"unit": "samples"}, batch={"packing": "pad"})
    ld = MixedLoader(cfg)
    list(ld.steps(10))
    ld.set_weights({"s0": 0, "s1": 1, "s2": 0})
    before = ld.fed_docs.copy()
    list(ld.steps(10))
    assert (ld.fed_docs - before).tolist() == [0, 40, 0]
    state = json.loads(json.dumps(ld.state_dict()))
    ld2 = MixedLoader(cfg)
    ld2.load_state_dict(state)
    assert step_signature(ld2, 3) == step_signature(ld, 3)
    with pytest.raises(ConfigError):
        ld.set_weights({"s0": -1})


def test_schedule_two_stages(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, mixture={"unit": "samples", "weights": None, "schedule": [
        {"until_step": 20, "weights": {"s0": 1.0}},
        {"weights": {"s1": 0.5, "s2": 0.5}}]}, batch={"packing": "pad"})
    ld = MixedLoader(cfg)
    list(ld.steps(20))
    assert ld.fed_docs.tolist() == [80, 0, 0]
    list(ld.steps(20))
    assert ld.fed_docs.tolist() == [80, 40, 40]


def test_max_epochs_and_on_exhausted(tmp_path: Path) -> None:
    sources = _corpus(tmp_path)
    sources["s2"]["max_epochs"] = 1
    cfg = _cfg(tmp_path, sources=sources, mixture={"unit": "samples"}, batch={"packing": "pad"})
    ld = MixedLoader(cfg)
    list(ld.steps(200))  # 800 docs; s2 has 50 and a cap of one epoch
    assert ld.fed_docs[2] == 50
    assert ld.fed_docs.sum() == 800
    # every document of s2 exactly once
    stop = cfg.model_copy(update={"mixture": cfg.mixture.model_copy(update={"on_exhausted": "stop"})})
    ld = MixedLoader(stop)
    steps = list(ld.steps(200))
    assert ld.feed.ended and len(steps) < 200
    assert ld.fed_docs[2] == 50


def test_world_size_must_divide_batch(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    with pytest.raises(ConfigError, match="cannot be split evenly over world size 3"):
        MixedLoader(cfg, rank=0, world_size=3)


def test_holdout_documents_are_never_fed(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, holdout=0.1, mixture={"unit": "samples"}, batch={"packing": "pad"})
    loader = MixedLoader(cfg)
    held = loader.heldout()
    assert [len(h) for h in held.values()] == [30, 20, 5]
    again = MixedLoader(cfg).heldout()
    assert all(np.array_equal(held[n], again[n]) for n in held)  # a fixed split
    seen: dict[int, set[int]] = {0: set(), 1: set(), 2: set()}
    for step in loader.steps(300):  # several epochs of every source
        for s, d in zip(step.plan.source.tolist(), step.plan.doc.tolist(), strict=True):
            seen[s].add(d)
    for k, name in enumerate(loader.names):
        assert not seen[k] & set(held[name].tolist())
        assert len(seen[k]) + len(held[name]) == len(loader.stores[k])  # the rest is all trained on


def test_bfd_ranks_are_cost_balanced(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, batch={"packing": "bfd", "pack_window": 16, "batch_size": 8,
                                "d_model": 16})
    plain = cfg.model_copy(update={"batch": cfg.batch.model_copy(update={"balance": False})})
    balanced, dealt = MixedLoader(cfg, rank=0, world_size=4), MixedLoader(plain, 0, 4)
    list(balanced.steps(40))
    list(dealt.steps(40))
    b, d = balanced.stats.summary(), dealt.stats.summary()
    assert b["rank_cost_imbalance"]["mean"] <= d["rank_cost_imbalance"]["mean"]
    assert b["padding_fraction"] < 0.2


@pytest.mark.parametrize("on_exhausted", ["stop", "renormalize"])
@pytest.mark.parametrize("unit", ["tokens", "samples"])
def test_capped_sources_end_the_stream(tmp_path: Path, on_exhausted: str, unit: str) -> None:
    """Every source capped, equal weights: the stream ends (it once looped for ever)."""
    sources = _corpus(tmp_path)
    for s in sources.values():
        s["max_epochs"] = 0.2
    cfg = _cfg(tmp_path, sources=sources, mixture={
        "unit": unit, "weights": {"s0": 1, "s1": 1, "s2": 1}, "on_exhausted": on_exhausted})
    ld = MixedLoader(cfg)
    steps = list(ld.steps(10_000))
    caps = [o.cap for o in ld.feed.orders]
    assert ld.feed.ended and len(steps) < 10_000
    assert all(c <= cap for c, cap in zip(ld.feed.consumed, caps, strict=True))
    if on_exhausted == "renormalize":
        assert ld.feed.consumed.tolist() == caps  # every capped document was fed
    else:
        assert any(c == cap for c, cap in zip(ld.feed.consumed, caps, strict=True))
