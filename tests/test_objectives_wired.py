"""Objectives wired into the loader, the audit log and the proxy: the `objectives:` section,
exact shares over every prefix of rows, resume, ranks, the layouts' batches, bad settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TINY_PROXY, write_config, write_jsonl
from mixbatch.config import config_from_dict, load_config
from mixbatch.errors import ConfigError, StateError
from mixbatch.loader.loader import MixedLoader
from mixbatch.objectives import UL2_DENOISERS, Paradigm, corrupt
from mixbatch.objectives.config import token_ids
from mixbatch.objectives.stage import example_lengths
from mixbatch.prepare import prepare

BASE = {"sources": {"a": {"path": "a.jsonl"}}}


def _config(tmp: Path, objectives: dict, packing: str = "pad", batch_size: int = 4,
            **extra: object) -> object:
    write_jsonl(tmp / "web.jsonl", [f"web doc {i} " * (i % 7 + 1) for i in range(40)])
    write_jsonl(tmp / "code.jsonl", [f"def f{i}():\n    return {i}\n" for i in range(30)])
    p = write_config(tmp / "cfg.yaml", {
        "seed": 3, "store": "store", **extra,
        "sources": {"web": {"path": "web.jsonl"}, "code": {"path": "code.jsonl"}},
        "mixture": {"weights": {"web": 0.6, "code": 0.4}},
        "batch": {"seq_len": 48, "batch_size": batch_size, "packing": packing},
        "objectives": objectives})
    cfg = load_config(p)
    prepare(cfg)
    return cfg


@pytest.mark.parametrize(("objectives", "needle"), [
    ({"denoisers": [{"name": "r", "paradigm": "r", "rate": 1.5}]},
     "objectives.denoisers.0.rate: Input should be less than 1"),
    ({"denoisers": [{"name": "r", "paradigm": "r", "rate": 0.2, "mean_span": 0.5}]},
     "objectives.denoisers.0.mean_span"),
    ({"denoisers": [{"name": "q", "paradigm": "q", "rate": 0.2}]},
     "objectives.denoisers.0.paradigm"),
    ({"weights": {"Q": 1}}, "weights.Q: not a denoiser name"),
    ({"weights": {"R": -1, "S": 2}}, "weights must be finite and >= 0"),
    ({"weights": {"R": 0, "S": 0, "X": 0}}, "weights are all 0"),
    ({"preset": "ul2", "denoisers": [{"name": "s", "paradigm": "s", "rate": 0.25}]},
     "`preset` or `denoisers`, not both"),
    ({"layout": "seq2seq"}, "objectives.layout"),
    ({"sentinels": 0}, "objectives.sentinels"),
])
def test_bad_settings_are_one_line(objectives: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        config_from_dict({**BASE, "objectives": objectives}, "c.yaml")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_paradigm_weights_are_shared_by_their_denoisers() -> None:
    cfg = config_from_dict({**BASE, "objectives": {"weights": {"R": 2, "S": 1, "X": 1}}})
    w = cfg.objectives.weight_vector()
    names = [d.name for d in cfg.objectives.build()]
    assert w[names.index("r3")] == pytest.approx(0.25) and w[names.index("s")] == 0.25
    assert w[names.index("x64")] == pytest.approx(0.0625) and w.sum() == pytest.approx(1)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 600), st.integers(0, 6), st.integers(1, 40))
def test_example_lengths_match_corrupt(n: int, which: int, sentinels: int) -> None:
    d = UL2_DENOISERS[which]
    rng = np.random.default_rng(n)
    ex = corrupt(np.arange(n), d, 999, np.arange(1000, 1000 + sentinels), rng)
    i, t = example_lengths(d, np.array([n]), sentinels)
    assert (int(i[0]), int(t[0])) == (ex.inputs.size, ex.targets.size)


def _assignments(loader: MixedLoader, steps: int) -> np.ndarray:
    return np.concatenate([s.objective.ids for s in loader.steps(steps)])


@pytest.mark.parametrize("packing", ["pad", "concat"])
def test_exact_shares_over_every_prefix(tmp_path: Path, packing: str) -> None:
    cfg = _config(tmp_path, {"weights": {"R": 1, "S": 2, "X": 1}}, packing=packing)
    loader = MixedLoader(cfg, 0, 1)
    ids = _assignments(loader, 30)
    w = cfg.objectives.weight_vector()
    counts = np.cumsum(np.eye(len(w))[ids], axis=0)
    n = np.arange(1, ids.size + 1)[:, None]
    assert np.abs(counts - n * w).max() <= 1.0
    assert ids.size == 120


def _batches(loader: MixedLoader, steps: int) -> list[dict]:
    return [loader.batch_of(s) for s in loader.steps(steps)]


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("layout", ["prefix_lm", "encoder_decoder"])
def test_resume_gives_the_same_batches(tmp_path: Path, layout: str) -> None:
    cfg = _config(tmp_path, {"layout": layout}, packing="concat")
    whole = _batches(MixedLoader(cfg, 0, 1), 12)
    first = MixedLoader(cfg, 0, 1)
    _batches(first, 5)
    state = json.loads(json.dumps(first.state_dict()))  # through JSON, as saved
    resumed = MixedLoader(cfg, 0, 1)
    resumed.load_state_dict(state)
    _same(whole[5:], _batches(resumed, 7))


def test_state_without_objectives_is_refused(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {})
    plain = cfg.model_copy(update={"objectives": None})
    state = MixedLoader(plain, 0, 1).state_dict()
    with pytest.raises(StateError, match="objectives"):
        MixedLoader(cfg, 0, 1).load_state_dict(state)
    with pytest.raises(StateError, match="this config has no `objectives:`"):
        MixedLoader(plain, 0, 1).load_state_dict(MixedLoader(cfg, 0, 1).state_dict())


def test_ranks_split_rows_of_one_global_stream(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {}, batch_size=4)
    one = MixedLoader(cfg, 0, 1)
    whole = [(s.objective.ids.copy(), one.batch_of(s)) for s in one.steps(6)]
    ranks = [MixedLoader(cfg, r, 2) for r in range(2)]
    for ids, batch in whole:
        seen = []
        for loader in ranks:
            step = loader.next_step()
            np.testing.assert_array_equal(step.objective.ids, ids)
            mine = loader.batch_of(step)
            for i, r in enumerate(step.rows.tolist()):
                np.testing.assert_array_equal(mine["input_ids"][i], batch["input_ids"][r])
                np.testing.assert_array_equal(mine["labels"][i], batch["labels"][r])
                assert mine["prefix_len"][i] == batch["prefix_len"][r]
            seen += step.rows.tolist()
        assert sorted(seen) == list(range(len(ids)))


def _restore(inputs: np.ndarray, targets: np.ndarray, first_sentinel: int) -> np.ndarray:
    """Undo span corruption: each sentinel of ``inputs`` gets its span back from ``targets``."""
    spans: dict[int, list[int]] = {}
    for t in targets.tolist():
        if t >= first_sentinel:
            current = spans.setdefault(t, [])
        else:
            current.append(t)
    out: list[int] = []
    for t in inputs.tolist():
        out += spans[t] if t >= first_sentinel else [t]
    return np.array(out)


def test_prefix_lm_rows(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {"weights": {"S": 1, "R": 1, "X": 1}})
    loader = MixedLoader(cfg, 0, 1)
    modes, sentinels, _ = token_ids(loader.stores[0].vocab_size, 100)
    for step in loader.steps(5):
        plain = loader.batch_of(step.__class__(**{**step.__dict__, "objective": None}),
                                fields="all")
        b = loader.batch_of(step)
        assert b["input_ids"].shape[1] == loader.objectives.width
        for i in range(len(step.rows)):
            orig = plain["input_ids"][i][plain["source_ids"][i] >= 0]
            d = loader.objectives.mixer.denoisers[b["objective_ids"][i]]
            p, row = int(b["prefix_len"][i]), b["input_ids"][i]
            T = int((b["source_ids"][i] >= 0).sum())
            assert row[0] == modes[d.paradigm.value]
            assert (b["labels"][i, :p] == -100).all() and (b["labels"][i, T:] == -100).all()
            np.testing.assert_array_equal(b["labels"][i, p:T], row[p:T])
            np.testing.assert_array_equal(b["position_ids"][i, :T], np.arange(T))
            if d.paradigm is Paradigm.S:  # the document itself, cut at prefix_len
                np.testing.assert_array_equal(row[1:T], orig)
            else:  # every corrupted span comes back from the targets
                np.testing.assert_array_equal(_restore(row[1:p], row[p:T], sentinels[0]), orig)


def test_encoder_decoder_rows(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {"layout": "encoder_decoder"})
    loader = MixedLoader(cfg, 0, 1)
    b = loader.batch_of(loader.next_step())
    assert {"input_ids", "attention_mask", "decoder_input_ids", "labels"} <= b.keys()
    for i in range(b["labels"].shape[0]):
        t = int((b["labels"][i] != -100).sum())
        np.testing.assert_array_equal(b["decoder_input_ids"][i, 1:t], b["labels"][i, :t - 1])
        assert b["decoder_input_ids"][i, 0] == loader.pad_id
        a = int(b["attention_mask"][i].sum())
        assert (b["input_ids"][i, a:] == loader.pad_id).all()


def test_audit_log_records_each_rows_objective(tmp_path: Path) -> None:
    from mixbatch.audit.stream import run_stream

    cfg = _config(tmp_path, {})
    run_stream(cfg, 4, 0, 2, None, None, str(tmp_path / "log.jsonl"), False)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "row" in r]
    assert len(rows) == 8  # 4 steps, 2 of the 4 rows each on rank 0
    loader = MixedLoader(cfg, 0, 2)
    expect = [s.objective.name(r) for s in loader.steps(4) for r in s.rows.tolist()]
    assert [r["objective"] for r in rows] == expect


def test_proxy_trains_prefix_lm_rows(tmp_path: Path) -> None:
    from mixbatch.proxy import ProxyConfig, train_proxy

    cfg = _config(tmp_path, {"weights": {"S": 1, "X": 1}}, holdout=0.1)
    proxy = ProxyConfig(**{**TINY_PROXY, "steps": 4, "seq_len": 48})
    r = train_proxy(cfg, proxy)
    assert np.isfinite(r.train_losses).all() and len(r.train_losses) == 4
    with pytest.raises(ConfigError, match=r"proxy\.replay_rate"):
        train_proxy(cfg, proxy.model_copy(update={"replay_rate": 0.2}))


def test_proxy_prefix_len_is_bidirectional_over_the_prefix() -> None:
    import torch

    from mixbatch.objectives import prefix_lm_mask
    from mixbatch.proxy.model import ModelConfig, ProxyLM, attention_mask

    torch.manual_seed(0)
    model = ProxyLM(ModelConfig(vocab_size=50, seq_len=12, n_layer=1, d_model=16, n_head=2))
    ids = torch.randint(0, 50, (2, 12))
    prefix = torch.tensor([5, 0])
    mask = attention_mask(torch.zeros(2, 12, dtype=torch.long), prefix)[:, 0]
    np.testing.assert_array_equal(mask[0].numpy(), prefix_lm_mask(12, 5))
    np.testing.assert_array_equal(mask[1].numpy(), prefix_lm_mask(12, 0))
    base = model(ids, prefix_len=prefix).logits
    assert torch.allclose(model(ids[1:]).logits, base[1:], atol=1e-5)  # 0: causal
    changed = ids.clone()
    changed[:, 3] = (changed[:, 3] + 1) % 50  # a token inside row 0's prefix
    out = model(changed, prefix_len=prefix).logits
    assert not torch.allclose(out[0, 1], base[0, 1])  # seen from before it: bidirectional
    assert torch.allclose(out[1, :3], base[1, :3], atol=1e-6)  # causal row: not seen before
    later = ids.clone()
    later[0, 8] = (later[0, 8] + 1) % 50  # after the prefix: causal there
    assert torch.allclose(model(later, prefix_len=prefix).logits[0, :8], base[0, :8],
                          atol=1e-6)
    with pytest.raises(ValueError, match="prefix_len"):
        model(ids, prefix_len=torch.tensor([1, 2, 3]))


def test_torch_adapters_give_the_loaders_examples_and_resume(tmp_path: Path) -> None:
    import torch

    from mixbatch.torch import MixbatchDataLoader, MixbatchDataset

    cfg = _config(tmp_path, {})
    want = _batches(MixedLoader(cfg, 1, 2), 6)
    dl = MixbatchDataLoader(cfg, rank=1, world_size=2, num_workers=2, max_steps=3)
    got = list(dl)
    rest = list(MixbatchDataLoader(cfg, rank=1, world_size=2, max_steps=3,
                                   state=dl.state_dict()))
    ds = list(MixbatchDataset(cfg, rank=1, world_size=2, max_steps=6))
    for a, b, c in zip(want, got + rest, ds, strict=True):
        for k in ("input_ids", "labels", "prefix_len", "objective_ids"):
            assert torch.equal(torch.from_numpy(a[k]), b[k]) and torch.equal(b[k], c[k])
    with pytest.raises(ConfigError, match="transform"):
        list(MixbatchDataLoader(cfg, rank=0, world_size=1, transform=lambda b: b))
    with pytest.raises(ConfigError, match="mixup: mixes token rows"):
        config_from_dict({**BASE, "objectives": {}, "mixup": {"mixup_alpha": 0.4}})


def test_train_audit_records_objectives(tmp_path: Path) -> None:
    from mixbatch.cli import main

    cfg = _config(tmp_path, {"weights": {"R": 1, "X": 1}}, holdout=0.1)
    proxy = [f"--proxy={k}={v}" for k, v in (("n_layer", 1), ("d_model", 32), ("n_head", 2),
                                              ("threads", 1), ("device", "cpu"),
                                              ("eval_tokens", 256))]
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "cfg.yaml"), "--steps", "3", "--policy", "none",
                 "--out", str(run), *proxy]) == 0
    rows = [json.loads(x) for x in (run / "audit.jsonl").read_text().splitlines()]
    expect = [s.objective.name(r) for s in MixedLoader(cfg, 0, 1).steps(3)
              for r in s.rows.tolist()]
    assert [r["objective"] for r in rows if "row" in r] == expect


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=12), st.data())
def test_stage_resumes_at_any_cut(rows: list[int], data: st.DataObject) -> None:
    from mixbatch.objectives.config import ObjectivesConfig
    from mixbatch.objectives.stage import ObjectiveStage

    spec = ObjectivesConfig(weights={"R": 1, "S": 3, "X": 2})

    def stage() -> ObjectiveStage:
        return ObjectiveStage(spec, 4, 258, 257, 32, 2)

    whole = stage()
    want = [(a.first, a.ids.tolist()) for a in map(whole.assign, rows)]
    cut = data.draw(st.integers(0, len(rows)))
    first = stage()
    for r in rows[:cut]:
        first.assign(r)
    resumed = stage()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert [(a.first, a.ids.tolist()) for a in map(resumed.assign, rows[cut:])] == want[cut:]
