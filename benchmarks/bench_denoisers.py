"""UL2 denoiser mixes against plain causal LM on the built-in corpus, through the wired path.

The built-in corpus (``mixbatch.demo.build_corpus``, ``--max-bytes`` per domain) is prepared
once with the byte tokenizer (5% of each domain's documents held out). Every run is
:func:`mixbatch.proxy.train_proxy` on one config that differs only in its ``objectives:``
section: the loader feeds the same rows (``packing: concat``, ``--seq-len`` bytes, ``--batch``
rows, ``--steps`` steps, the domains in natural proportions), so every run reads the same
document tokens; with objectives each row is turned into its objective's example by the loader
(``ObjectiveMixer``'s exact per-row weights) in the prefix-LM layout, and the proxy trains with
per-row ``prefix_len`` (bidirectional over ``[mode] inputs``, loss on the targets). Mixes:
``causal`` (no ``objectives:``), ``ul2`` (the seven denoisers, equal weights), ``r``, ``s``,
``x`` (``weights: {R: 1}`` etc.). The proxy: 2 layers, ``--d-model``, rotary, AdamW, cosine.

Reported per seed (the config's seed and the proxy's), on the held-out documents:

- the causal LM loss (the trainer's validation: nats per byte, causal attention);
- the S task's loss: windows of ``--seq-len`` bytes, predict the last 25% from the first 75%
  (a denoiser model: ``[S2S]`` first and a bidirectional prefix, as trained; the causal model:
  the same bytes with causal attention and no mode token, which it never saw).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header
from mixbatch.config import config_from_dict
from mixbatch.demo.corpus import build_corpus
from mixbatch.loader.loader import MixedLoader
from mixbatch.objectives.config import token_ids
from mixbatch.prepare import prepare
from mixbatch.proxy import ProxyConfig, ProxyLM, train_proxy
from mixbatch.proxy.model import IGNORE_INDEX

MIXES: dict[str, dict[str, Any] | None] = {
    "causal": None,
    "ul2": {"preset": "ul2"},
    "r": {"weights": {"R": 1}},
    "s": {"weights": {"S": 1}},
    "x": {"weights": {"X": 1}},
}


def base_config(tmp: Path, max_bytes: int, seq_len: int, batch: int, seed: int) -> dict:
    corpus = build_corpus(tmp / "corpus", max_bytes=max_bytes)
    return {"seed": seed, "tokenizer": "byte", "store": str(tmp / "store"), "holdout": 0.05,
            "sources": {s.name: {"path": str(s.path), "format": "jsonl"} for s in corpus},
            "batch": {"seq_len": seq_len, "batch_size": batch, "packing": "concat"}}


def s_task_rows(cfg: Any, seq_len: int, per_source: int) -> tuple[np.ndarray, int, int]:
    """Held-out windows of ``seq_len`` tokens (up to ``per_source`` per source), the length
    of the S task's target (the last 25%) and the tokenizer's vocabulary size."""
    loader = MixedLoader(cfg, 0, 1)
    rows = []
    for store, docs in zip(loader.stores, loader.heldout().values(), strict=True):
        toks = np.concatenate([np.asarray(store[int(d)], dtype=np.int64)
                               for d in docs])
        n = min(per_source, toks.size // seq_len)
        rows.append(toks[:n * seq_len].reshape(n, seq_len))
    return np.concatenate(rows), round(seq_len * 0.25), loader.stores[0].vocab_size


def s_task_loss(model: ProxyLM, rows: np.ndarray, target: int, mode: int | None) -> float:
    """Token-mean loss on the last ``target`` tokens of each row; with ``mode`` the row is
    ``[mode] prefix target`` with a bidirectional prefix (else causal, no mode token)."""
    ids = torch.from_numpy(rows)
    if mode is not None:
        ids = torch.cat([torch.full((ids.shape[0], 1), mode), ids], dim=1)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, -target:] = ids[:, -target:]
    prefix = (torch.full((ids.shape[0],), ids.shape[1] - target) if mode is not None
              else None)
    model.eval()
    with torch.no_grad():
        return float(model(ids, labels, prefix_len=prefix).loss)


def run(data: dict, mix: str, proxy: ProxyConfig, s_rows: np.ndarray, target: int,
        vocab: int) -> tuple[float, float]:
    spec = MIXES[mix]
    cfg = config_from_dict({**data, **({} if spec is None else {"objectives": spec})})
    r = train_proxy(cfg, proxy)
    model = ProxyLM(proxy.model_for(r.state["tok_emb.weight"].shape[0], cfg.batch.seq_len))
    model.load_state_dict(r.state)
    modes = token_ids(vocab, 100)[0]
    s = s_task_loss(model, s_rows, target, None if spec is None else modes["s"])
    return r.val_loss_mean, s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=96)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--max-bytes", type=int, default=300_000)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--mixes", default=",".join(MIXES))
    args = ap.parse_args()
    print(header("bench_denoisers: UL2 denoiser mixes vs causal LM through the loader's "
                 "objectives (equal document tokens)", ["numpy", "torch"],
                 {"settings": f"{args.steps} steps x {args.batch} rows of {args.seq_len} bytes "
                              f"(concat), d_model {args.d_model}, 2 layers"}))
    print("\n| seed | objective | held-out causal LM loss | held-out S-task loss |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            data = base_config(Path(tmp), args.max_bytes, args.seq_len, args.batch, seed)
            prepare(config_from_dict(data))
            s_rows, target, vocab = s_task_rows(config_from_dict(data), args.seq_len, 64)
            proxy = ProxyConfig(n_layer=2, d_model=args.d_model, n_head=4, steps=args.steps,
                                lr=3e-3, warmup=20, device="cpu", threads=1, seed=seed,
                                eval_tokens=16_384)
            for mix in args.mixes.split(","):
                lm, s = run(data, mix, proxy, s_rows, target, vocab)
                print(f"| {seed} | {mix} | {lm:.4f} | {s:.4f} |", flush=True)


if __name__ == "__main__":
    main()
