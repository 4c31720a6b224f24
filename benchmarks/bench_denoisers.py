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
``x`` (``weights: {R: 1}`` etc.), and ``ul2_encdec`` / ``s_encdec`` (the same mixes in the
``encoder_decoder`` layout, trained by the encoder-decoder proxy: ``--d-model``, 2 encoder and
2 decoder layers, shared embeddings). The proxy: 2 layers, ``--d-model``, rotary, AdamW,
cosine.

Reported per seed (the config's seed and the proxy's), on the held-out documents:

- the causal LM loss (the trainer's validation: nats per byte, causal attention; for the
  encoder-decoder proxy the decoder over the same windows with ``[S2S]`` alone in the encoder,
  :mod:`mixbatch.proxy.encdec`: the same tokens scored);
- the S task's loss: windows of ``--seq-len`` bytes, predict the last 25% from the first 75%
  (a decoder-only denoiser model: ``[S2S]`` first and a bidirectional prefix, as trained; the
  encoder-decoder one: ``[S2S] prefix`` in the encoder, the target in the decoder after the
  start token; the causal model: the same bytes with causal attention and no mode token,
  which it never saw).

``--speed`` times the loader's objective stage instead (:mod:`mixbatch.objectives.stage`,
the rows of a step turned into examples) against the per-row construction it replaced
(:mod:`mixbatch.objectives.reference`), side by side on the same rows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
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
from mixbatch.proxy.encdec import EncDecLM
from mixbatch.proxy.model import IGNORE_INDEX

MIXES: dict[str, dict[str, Any] | None] = {
    "causal": None,
    "ul2": {"preset": "ul2"},
    "r": {"weights": {"R": 1}},
    "s": {"weights": {"S": 1}},
    "x": {"weights": {"X": 1}},
    "ul2_encdec": {"preset": "ul2", "layout": "encoder_decoder"},
    "s_encdec": {"weights": {"S": 1}, "layout": "encoder_decoder"},
}


def base_config(tmp: Path, max_bytes: int, seq_len: int, batch: int, seed: int) -> dict:
    corpus = build_corpus(tmp / "corpus", max_bytes=max_bytes)
    return {"seed": seed, "tokenizer": "byte", "store": str(tmp / "store"), "holdout": 0.05,
            "sources": {s.name: {"path": str(s.path), "format": "jsonl"} for s in corpus},
            "batch": {"seq_len": seq_len, "batch_size": batch, "packing": "concat"}}


def s_task_rows(cfg: Any, seq_len: int, per_source: int) -> tuple[np.ndarray, int, int, int]:
    """Held-out windows of ``seq_len`` tokens (up to ``per_source`` per source), the length
    of the S task's target (the last 25%), the tokenizer's vocabulary size and pad id."""
    loader = MixedLoader(cfg, 0, 1)
    rows = []
    for store, docs in zip(loader.stores, loader.heldout().values(), strict=True):
        toks = np.concatenate([np.asarray(store[int(d)], dtype=np.int64)
                               for d in docs])
        n = min(per_source, toks.size // seq_len)
        rows.append(toks[:n * seq_len].reshape(n, seq_len))
    return (np.concatenate(rows), round(seq_len * 0.25), loader.stores[0].vocab_size,
            loader.pad_id)


def s_task_loss(model: ProxyLM | EncDecLM, rows: np.ndarray, target: int, mode: int | None,
                pad_id: int) -> float:
    """Token-mean loss on the last ``target`` tokens of each row; with ``mode`` the row is
    ``[mode] prefix target`` with a bidirectional prefix (else causal, no mode token); an
    encoder-decoder model reads ``[mode] prefix`` in its encoder and ``[start] target`` in its
    decoder (start: the pad id, as the loader lays it out)."""
    ids = torch.from_numpy(rows)
    model.eval()
    with torch.no_grad():
        if isinstance(model, EncDecLM):
            enc = torch.cat([torch.full((ids.shape[0], 1), model.empty_id),
                             ids[:, :-target]], dim=1)
            dec = torch.cat([torch.full((ids.shape[0], 1), pad_id), ids[:, -target:]], dim=1)
            labels = dec.clone()
            labels[:, 0] = IGNORE_INDEX
            return float(model(dec, labels, encoder_ids=enc).loss)
        if mode is not None:
            ids = torch.cat([torch.full((ids.shape[0], 1), mode), ids], dim=1)
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[:, -target:] = ids[:, -target:]
        prefix = (torch.full((ids.shape[0],), ids.shape[1] - target) if mode is not None
                  else None)
        return float(model(ids, labels, prefix_len=prefix).loss)


def run(data: dict, mix: str, proxy: ProxyConfig, s_rows: np.ndarray, target: int,
        vocab: int, pad_id: int) -> tuple[float, float, int]:
    spec = MIXES[mix]
    cfg = config_from_dict({**data, **({} if spec is None else {"objectives": spec})})
    r = train_proxy(cfg, proxy)
    modes = token_ids(vocab, 100)[0]
    shape = proxy.model_for(r.state["tok_emb.weight"].shape[0], cfg.batch.seq_len)
    model: ProxyLM | EncDecLM = (EncDecLM(shape, modes["s"]) if mix.endswith("_encdec")
                                 else ProxyLM(shape))
    model.load_state_dict(r.state)
    s = s_task_loss(model, s_rows, target, None if spec is None else modes["s"], pad_id)
    return r.val_loss_mean, s, r.params


def speed(batch: int, seq_len: int, steps: int) -> None:
    """Milliseconds per step of the objective stage against the per-row reference."""
    from mixbatch.objectives.config import ObjectivesConfig
    from mixbatch.objectives.reference import reference_apply
    from mixbatch.objectives.stage import ObjectiveStage

    print("\n| layout | rows x seq_len | per-row reference (ms/step) | stage (ms/step) | "
          "speed-up |\n|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for layout in ("prefix_lm", "encoder_decoder"):
        for B, L in ((batch, seq_len), (64, 512)):
            spec = ObjectivesConfig(layout=layout)
            ids = rng.integers(1, 256, (B, L))
            batch_ = {"input_ids": ids, "source_ids": rng.integers(0, 3, (B, L))}
            ref, new = ObjectiveStage(spec, 0, 258, 0, L, 3), ObjectiveStage(spec, 0, 258, 0, L, 3)
            t_ref, t_new = [], []
            for _ in range(steps):  # alternate, so load changes hit both alike
                a, b = ref.assign(B), new.assign(B)
                t0 = time.perf_counter()
                reference_apply(ref, batch_, a, np.arange(B))
                t1 = time.perf_counter()
                new.apply(batch_, b, np.arange(B))
                t_ref.append(t1 - t0)
                t_new.append(time.perf_counter() - t1)
            r, n = np.median(t_ref) * 1e3, np.median(t_new) * 1e3
            print(f"| {layout} | {B} x {L} | {r:.2f} | {n:.2f} | {r / n:.1f}x |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=96)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--max-bytes", type=int, default=300_000)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--mixes", default=",".join(MIXES))
    ap.add_argument("--speed", action="store_true",
                    help="time the objective stage against the per-row reference instead")
    ap.add_argument("--speed-steps", type=int, default=200)
    args = ap.parse_args()
    if args.speed:
        print(header("bench_denoisers --speed: the objective stage per step (median)",
                     ["numpy"], {"settings": f"UL2's seven denoisers, {args.speed_steps} "
                                              "steps per shape"}))
        speed(args.batch, args.seq_len, args.speed_steps)
        return
    print(header("bench_denoisers: UL2 denoiser mixes vs causal LM through the loader's "
                 "objectives (equal document tokens)", ["numpy", "torch"],
                 {"settings": f"{args.steps} steps x {args.batch} rows of {args.seq_len} bytes "
                              f"(concat), d_model {args.d_model}, 2 layers"}))
    print("\n| seed | objective | non-embedding params | held-out causal LM loss | "
          "held-out S-task loss |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            data = base_config(Path(tmp), args.max_bytes, args.seq_len, args.batch, seed)
            prepare(config_from_dict(data))
            s_rows, target, vocab, pad_id = s_task_rows(config_from_dict(data), args.seq_len, 64)
            proxy = ProxyConfig(n_layer=2, d_model=args.d_model, n_head=4, steps=args.steps,
                                lr=3e-3, warmup=20, device="cpu", threads=1, seed=seed,
                                eval_tokens=16_384)
            for mix in args.mixes.split(","):
                lm, s, params = run(data, mix, proxy, s_rows, target, vocab, pad_id)
                print(f"| {seed} | {mix} | {params:,} | {lm:.4f} | {s:.4f} |", flush=True)


if __name__ == "__main__":
    main()
