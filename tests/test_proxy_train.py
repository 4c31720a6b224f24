from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_config, write_jsonl
from mixbatch.config import load_config
from mixbatch.errors import ConfigError
from mixbatch.loader.loader import MixedLoader
from mixbatch.prepare import prepare
from mixbatch.proxy import Hooks, ProxyConfig, Step, lr_at, train_proxy
from mixbatch.proxy.evaluate import build_eval_rows
from mixbatch.proxy.model import IGNORE_INDEX

# Two sources with disjoint alphabets: what one teaches says little about the other.
ALPHABETS = {"lower": "abcdefghijklm ", "upper": "NOPQRSTUVWXYZ0123456789 "}


def _texts(alphabet: str, n: int, rng: np.random.Generator) -> list[str]:
    chars = np.array(list(alphabet))
    return ["".join(rng.choice(chars, size=int(rng.integers(20, 120)))) for _ in range(n)]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory):
    tmp: Path = tmp_path_factory.mktemp("proxy")
    rng = np.random.default_rng(0)
    sources = {}
    for name, alphabet in ALPHABETS.items():
        write_jsonl(tmp / f"{name}.jsonl", _texts(alphabet, 80, rng))
        sources[name] = {"path": f"{name}.jsonl"}
    data = {"seed": 1, "store": "store", "holdout": 0.1, "sources": sources,
            "mixture": {"weights": {"lower": 0.5, "upper": 0.5}},
            "batch": {"seq_len": 64, "batch_size": 4, "packing": "concat"}}
    config = load_config(write_config(tmp / "c.yaml", data))
    prepare(config, workers=1)
    return config


def _tiny(**kw) -> ProxyConfig:
    base = {"n_layer": 1, "d_model": 32, "n_head": 2, "steps": 50, "lr": 1e-2, "warmup": 5,
            "eval_tokens": 1024, "device": "cpu", "threads": 1}
    return ProxyConfig.from_dict({**base, **kw})


def test_loss_goes_down(cfg) -> None:
    r = train_proxy(cfg, _tiny(eval_every=25))
    assert r.steps == 50 and len(r.train_losses) == 50
    assert r.train_losses[0] == pytest.approx(math.log(258), abs=0.3)  # uniform over bytes
    assert r.train_loss < 0.6 * r.train_losses[0]
    assert r.val_loss_mean < 0.6 * r.train_losses[0]
    assert [h["step"] for h in r.history] == [25, 50]
    assert r.history[1]["val_loss_mean"] < r.history[0]["val_loss_mean"]
    assert r.train_tokens == 50 * 4 * 64  # concat packing: every position is a real token
    assert sum(r.train_tokens_by_source.values()) == r.train_tokens
    assert r.tokens_per_s > 0 and r.seconds >= r.train_seconds > 0
    scored = sum(r.val_tokens.values())
    assert r.val_loss_mean == pytest.approx(
        sum(r.val_loss[n] * r.val_tokens[n] for n in r.val_loss) / scored)
    assert set(r.to_dict()) >= {"val_loss", "val_loss_mean", "tokens_per_s", "train_loss"}
    assert "state" not in r.to_dict()


def test_same_seeds_same_losses(cfg) -> None:
    a = train_proxy(cfg, _tiny(steps=20))
    b = train_proxy(cfg, _tiny(steps=20))
    assert a.val_loss == b.val_loss
    assert a.train_losses == b.train_losses
    c = train_proxy(cfg, _tiny(steps=20, seed=1))
    assert c.val_loss != a.val_loss


def test_weights_steer_training(cfg) -> None:
    on_lower = train_proxy(cfg, _tiny(steps=40), weights={"lower": 1.0})
    on_upper = train_proxy(cfg, _tiny(steps=40), weights={"lower": 0.0, "upper": 1.0})
    assert on_lower.train_tokens_by_source["upper"] == 0
    assert on_upper.train_tokens_by_source["lower"] == 0
    assert on_lower.val_loss["lower"] < on_upper.val_loss["lower"] - 0.5
    assert on_upper.val_loss["upper"] < on_lower.val_loss["upper"] - 0.5
    assert on_lower.weights == {"lower": 1.0, "upper": 0.0}
    assert train_proxy(cfg, _tiny(steps=1), weights={"lower": 3, "upper": 1}).weights == {
        "lower": 0.75, "upper": 0.25}


def test_heldout_documents_are_never_trained_on(cfg) -> None:
    held = MixedLoader(cfg, rank=0, world_size=1).heldout()
    assert all(len(h) == 8 for h in held.values())  # 10% of 80 documents
    fed: dict[int, set[int]] = {0: set(), 1: set()}

    class Record(Hooks):
        def before_forward(self, step: Step) -> None:
            for s in (0, 1):
                fed[s].update(step.batch["doc_ids"][step.batch["source_ids"] == s].tolist())

    train_proxy(cfg, _tiny(steps=60), hooks=Record())
    for s, name in enumerate(cfg.sources):
        assert len(fed[s]) > 40  # most training documents were seen (several epochs)
        assert fed[s].isdisjoint(held[name].tolist())


def test_eval_rows_are_the_heldout_documents_cut_into_windows(cfg) -> None:
    loader = MixedLoader(cfg, rank=0, world_size=1)
    store, docs = loader.stores[0], loader.heldout()["lower"]
    rows = build_eval_rows(store, docs, 16, 10_000, loader.eod_id, loader.pad_id)
    assert rows.docs.tolist() == docs.tolist()
    # every document + EOD is cut into windows of <= 16 tokens, each scored but its first token
    lens = [len(store[int(d)]) + 1 for d in docs]
    windows = sum(-(-n // 16) - (n % 16 == 1) for n in lens)
    scored = sum(n - (-(-n // 16)) for n in lens)
    assert rows.tokens == scored
    pos = rows.position_ids
    assert int(((pos[:, :-1] == 0) & (pos[:, 1:] == 1)).sum()) == windows
    # labels are the inputs inside a window; nothing across a window boundary
    starts = rows.position_ids == 0
    assert np.all(rows.labels[starts] == IGNORE_INDEX)
    keep = rows.labels != IGNORE_INDEX
    assert np.array_equal(rows.labels[keep], rows.input_ids[keep])
    assert rows.position_ids.max() == 15
    # the cap counts tokens read; the last window is cut short
    capped = build_eval_rows(store, docs, 16, 100, loader.eod_id, loader.pad_id)
    assert capped.tokens + int(((capped.position_ids[:, :-1] == 0)
                                & (capped.position_ids[:, 1:] == 1)).sum()) == 100


def test_init_state_continues_from_a_checkpoint(cfg) -> None:
    first = train_proxy(cfg, _tiny(steps=30))
    # a near-zero learning rate: the continued model is the checkpoint
    same = train_proxy(cfg, _tiny(steps=1, lr=1e-12, warmup=0), init_state=first.state)
    for name in first.val_loss:
        assert same.val_loss[name] == pytest.approx(first.val_loss[name], abs=1e-4)
    fresh = train_proxy(cfg, _tiny(steps=1, lr=1e-12, warmup=0))
    assert fresh.val_loss_mean > first.val_loss_mean + 1.0
    with pytest.raises(ConfigError, match="init_state"):
        train_proxy(cfg, _tiny(steps=1, d_model=64), init_state=first.state)


def test_proxy_batch_overrides_the_config(cfg) -> None:
    shapes = []

    class Shapes(Hooks):
        def before_forward(self, step: Step) -> None:
            shapes.append(step.batch["input_ids"].shape)

    r = train_proxy(cfg, _tiny(steps=2, seq_len=32, batch_size=2), hooks=Shapes())
    assert shapes == [(2, 32), (2, 32)]
    assert r.train_tokens == 2 * 2 * 32


def test_holdout_zero_is_a_clear_error(cfg) -> None:
    with pytest.raises(ConfigError, match="set `holdout:`"):
        train_proxy(cfg.model_copy(update={"holdout": 0.0}), _tiny(steps=1))


def test_bad_inputs_are_config_errors(cfg) -> None:
    with pytest.raises(ConfigError, match="unknown source"):
        train_proxy(cfg, _tiny(steps=1), weights={"nope": 1.0})
    with pytest.raises(ConfigError, match=r"proxy: schedule"):
        ProxyConfig.from_dict({"schedule": "linear"})
    with pytest.raises(ConfigError, match="steps"):
        ProxyConfig.from_dict({"steps": 0})
    with pytest.raises(ConfigError, match="divisible"):
        train_proxy(cfg, _tiny(steps=1, d_model=30, n_head=4))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="cuda"):
            train_proxy(cfg, _tiny(steps=1, device="cuda"))


def test_lr_schedule() -> None:
    cos = ProxyConfig(steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert lr_at(0, cos) == pytest.approx(0.1)
    assert lr_at(9, cos) == pytest.approx(1.0)
    assert lr_at(10, cos) == pytest.approx(1.0)
    assert lr_at(99, cos) == pytest.approx(0.1)
    assert 0.1 < lr_at(50, cos) < 1.0
    const = ProxyConfig(steps=100, lr=1.0, warmup=10, schedule="constant")
    assert lr_at(99, const) == 1.0 and lr_at(4, const) == pytest.approx(0.5)
    assert lr_at(0, ProxyConfig(lr=2.0, warmup=0, schedule="constant")) == 2.0


def test_presets() -> None:
    demo = ProxyConfig.demo()
    assert (demo.n_layer, demo.d_model, demo.n_head, demo.seq_len, demo.batch_size) == (2, 128, 4, 256, 8)
    reg = ProxyConfig.regmix(steps=10)
    assert (reg.n_layer, reg.d_model, reg.n_head, reg.d_mlp, reg.lr) == (2, 256, 8, 512, 4e-4)
    assert reg.schedule.value == "constant" and reg.steps == 10
    assert reg.model_for(258, 2048).non_embedding_params() == 1_312_000
