"""The encoder-decoder proxy (``objectives.layout: encoder_decoder``): the model's masks and
conventions, training and validation through the one trainer, ``mixbatch train`` and its exact
resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_PROXY, write_config, write_jsonl
from mixbatch.config import load_config
from mixbatch.loader.loader import MixedLoader
from mixbatch.objectives.config import token_ids
from mixbatch.prepare import prepare
from mixbatch.proxy.encdec import EncDecLM, decoder_rows
from mixbatch.proxy.model import IGNORE_INDEX, ModelConfig, ProxyLM


def _config(tmp: Path, objectives: dict | None = None, **extra: object):
    write_jsonl(tmp / "web.jsonl", [f"web doc {i} " * (i % 7 + 1) for i in range(40)])
    write_jsonl(tmp / "code.jsonl", [f"def f{i}():\n    return {i}\n" for i in range(30)])
    p = write_config(tmp / "cfg.yaml", {
        "seed": 3, "store": "store", "holdout": 0.1, **extra,
        "sources": {"web": {"path": "web.jsonl"}, "code": {"path": "code.jsonl"}},
        "mixture": {"weights": {"web": 0.6, "code": 0.4}},
        "batch": {"seq_len": 48, "batch_size": 4, "packing": "concat"},
        "objectives": {"layout": "encoder_decoder", **(objectives or {})}})
    cfg = load_config(p)
    prepare(cfg)
    return cfg


def _model(seed: int = 0, **kw: object) -> EncDecLM:
    torch.manual_seed(seed)
    return EncDecLM(ModelConfig(vocab_size=50, seq_len=32, n_layer=1, d_model=16, n_head=2,
                                **kw), empty_id=49)


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_decoder_is_causal_and_encoder_bidirectional(positions: str) -> None:
    m = _model(positions=positions).eval()
    enc = torch.randint(0, 49, (2, 7))
    dec = torch.randint(0, 49, (2, 9))
    mask = torch.ones(2, 7, dtype=torch.long)
    base = m(dec, encoder_ids=enc, encoder_mask=mask).logits
    later = dec.clone()
    later[:, 5:] = (later[:, 5:] + 1) % 49  # the future of the decoder: earlier logits stay
    out = m(later, encoder_ids=enc, encoder_mask=mask).logits
    assert torch.allclose(out[:, :5], base[:, :5], atol=1e-6)
    assert not torch.allclose(out[:, 5:], base[:, 5:])
    enc2 = enc.clone()
    enc2[:, -1] = (enc2[:, -1] + 1) % 49  # the encoder's last token reaches every position
    out = m(dec, encoder_ids=enc2, encoder_mask=mask).logits
    assert not torch.allclose(out[:, 0], base[:, 0])
    pad = mask.clone()
    pad[:, -1] = 0  # ... unless it is padding
    assert torch.allclose(m(dec, encoder_ids=enc, encoder_mask=pad).logits,
                          m(dec, encoder_ids=enc2, encoder_mask=pad).logits, atol=1e-6)
    empty = torch.zeros_like(mask)  # a row with no real encoder token stays finite
    assert torch.isfinite(m(dec, encoder_ids=enc, encoder_mask=empty).logits).all()


def test_shared_embeddings_and_the_empty_encoder() -> None:
    m = _model()
    assert m.head.weight is m.tok_emb.weight
    assert m.num_params(non_embedding=False) - m.num_params() == 50 * 16
    dec = torch.randint(0, 49, (3, 8))
    with torch.no_grad():
        a = m(dec).logits
        b = m(dec, encoder_ids=torch.full((3, 1), 49)).logits
    assert torch.equal(a, b)  # no encoder input: the encoder reads [empty_id] alone
    with pytest.raises(ValueError, match="prefix_len"):
        m(dec, prefix_len=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="empty_id"):
        EncDecLM(ModelConfig(vocab_size=10, seq_len=8, d_model=16, n_head=2), empty_id=10)


def test_decoder_rows_follow_the_proxys_label_shift() -> None:
    batch = {"decoder_input_ids": np.array([[0, 5, 6, 0], [0, 0, 0, 0]]),
             "labels": np.array([[5, 6, 7, -100], [-100] * 4]),
             "source_ids": np.array([[1, 1, 1, -1], [-1, -1, -1, -1]])}
    ids, labels, src = decoder_rows(batch)
    assert ids.tolist() == [[0, 5, 6, 7, 0], [0, 0, 0, 0, 0]]
    assert labels.tolist() == [[IGNORE_INDEX, 5, 6, 7, IGNORE_INDEX], [IGNORE_INDEX] * 5]
    assert src.tolist() == [[-1, 1, 1, 1, -1], [-1] * 5]


def test_train_proxy_on_encoder_decoder_rows(tmp_path: Path) -> None:
    from mixbatch.proxy import ProxyConfig, train_proxy
    from mixbatch.proxy.trainer import Trainer

    cfg = _config(tmp_path, {"weights": {"R": 1, "S": 1, "X": 1}})
    proxy = ProxyConfig(**{**TINY_PROXY, "steps": 6, "seq_len": 48, "lr": 3e-3})
    r = train_proxy(cfg, proxy)
    assert len(r.train_losses) == 6 and np.isfinite(r.train_losses).all()
    assert r.train_losses[-1] < r.train_losses[0]
    assert np.isfinite(r.val_loss_mean) and set(r.val_loss) == {"web", "code"}
    with Trainer(cfg, proxy) as t:
        assert isinstance(t.model, EncDecLM)
        assert t.model.empty_id == token_ids(t.loader.stores[0].vocab_size, 100)[0]["s"]
        # the held-out loss scores the decoder-only proxy's tokens: same rows, same counts
        rows = t.heldout_rows()
        m = ProxyLM(proxy.model_for(t.model_cfg.vocab_size, t.model_cfg.seq_len))
        assert m(torch.from_numpy(rows["web"].input_ids), torch.from_numpy(rows["web"].labels),
                 torch.from_numpy(rows["web"].position_ids)).mask.sum() == rows["web"].tokens
        # tokens trained: every encoder and decoder token of the examples
        step = t._read(0)
        assert step is not None and step.encoder is not None
        real = int((step.batch["attention_mask"] > 0).sum()
                   + (step.batch["labels"] != IGNORE_INDEX).sum())
        assert int(t.by_source.sum()) == real


def test_mixbatch_train_and_exact_resume(tmp_path: Path) -> None:
    from mixbatch.cli import main
    from mixbatch.online.loop import train_online
    from mixbatch.proxy import ProxyConfig

    cfg = _config(tmp_path, {"weights": {"R": 1, "X": 1, "S": 2}})
    flags = [f"--proxy={k}={v}" for k, v in (("n_layer", 1), ("d_model", 32), ("n_head", 2),
                                              ("threads", 1), ("device", "cpu"),
                                              ("eval_tokens", 256))]
    run = tmp_path / "cli"
    assert main(["train", str(tmp_path / "cfg.yaml"), "--steps", "3", "--policy", "none",
                 "--out", str(run), *flags]) == 0
    rows = [json.loads(x) for x in (run / "audit.jsonl").read_text().splitlines()]
    expect = [s.objective.name(r) for s in MixedLoader(cfg, 0, 1).steps(3)
              for r in s.rows.tolist()]
    assert [r["objective"] for r in rows if "row" in r] == expect

    proxy = ProxyConfig(**{**TINY_PROXY, "steps": 8, "seq_len": 48, "eval_every": 4})
    straight = train_online(cfg, proxy, "none", run_dir=tmp_path / "a")
    cut = tmp_path / "b"
    train_online(cfg, proxy, "none", run_dir=cut, stop_at=4)
    resumed = train_online(cfg, proxy, "none", run_dir=cut, resume=True)
    for f in ("losses.csv", "audit.jsonl"):
        assert (cut / f).read_text() == (tmp_path / "a" / f).read_text(), f
    assert resumed.history == straight.history
    for k in straight.state:
        assert torch.equal(resumed.state[k], straight.state[k]), k
