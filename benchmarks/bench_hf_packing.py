"""Packed vs unpacked loss of a Hugging Face causal LM on mixbatch batches (not a speed figure).

Corpus: the paragraphs (split at blank lines) of the demo's domains
(``mixbatch.demo.build_corpus``, real text of this machine), so rows hold several documents; byte
tokenizer, equal weights, ``seq_len`` ``--seq-len``, 4 rows per step. A tiny random
``LlamaForCausalLM`` (2 layers, width 64, built from a config: nothing downloaded, every default
a user would leave, float32, SDPA) is trained ``--steps`` AdamW steps three times from the same
initialisation, on the same documents:

- **packed**: ``model(**to_hf(batch))``, mixbatch's ``"hf"`` format;
- **unpacked**: every document of the batch its own padded row (``unpack``, with an
  ``attention_mask``): the reference;
- **default use_cache**: the packed rows without the format's ``use_cache=False`` (what
  ``model(**batch)`` computed before the format existed: attention across documents).

Reported per packing mode and seed: the largest |loss gap| to the reference over the steps, in
absolute terms and relative to the loss.

Run ``.venv/bin/python benchmarks/bench_hf_packing.py --help`` (transformers is in the dev extra
and in the benchmark venv).
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import header, table

MODES = {"bfd": {"packing": "bfd", "pack_window": 8}, "concat": {"packing": "concat"}}


def losses(model: Any, batches: list[dict[str, Any]]) -> np.ndarray:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    out = []
    for b in batches:
        loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        out.append(loss.item())
    return np.array(out)


def paragraphs(sources: dict, work: Path) -> dict:
    """Each source's paragraphs (blank-line separated, 20 bytes or more) as documents."""
    out = {}
    for name, src in sources.items():
        path = work / f"paragraphs_{name}.jsonl"
        if not path.exists():
            opener = gzip.open if src["path"].endswith(".gz") else open
            with opener(src["path"], "rt", encoding="utf-8") as f, path.open("w") as w:
                for line in f:
                    for par in json.loads(line)["text"].split("\n\n"):
                        if len(par.strip().encode()) >= 20:
                            w.write(json.dumps({"text": par.strip()}) + "\n")
        out[name] = {"path": str(path), "format": "jsonl"}
    return out


def run(mode: str, seed: int, args: argparse.Namespace, sources: dict) -> list[Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from mixbatch.config import config_from_dict
    from mixbatch.integrations.hf import HF_FIELDS, to_hf, unpack
    from mixbatch.prepare import prepare
    from mixbatch.torch import MixbatchDataLoader

    cfg = config_from_dict({
        "seed": seed, "tokenizer": "byte", "store": str(args.work / "store"), "sources": sources,
        "mixture": {"unit": "tokens", "weights": {n: 1.0 for n in sources}},
        "batch": {"seq_len": args.seq_len, "batch_size": 4, **MODES[mode]}}, base_dir=args.work)
    prepare(cfg, workers=1)
    hf = [to_hf(b) for b in MixbatchDataLoader(cfg, max_steps=args.steps, fields=HF_FIELDS)]

    def model() -> Any:
        torch.manual_seed(seed)
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=args.seq_len))

    ref = losses(model(), [unpack(b) for b in hf])
    packed = losses(model(), hf)
    trap = losses(model(), [{k: v for k, v in b.items() if k != "use_cache"} for b in hf])
    docs = sum(int((b["labels"] != -100).sum()) for b in hf)
    gap, tgap = np.abs(packed - ref), np.abs(trap - ref)
    return [mode, seed, args.steps, f"{docs:,}", f"{ref[0]:.4f} → {ref[-1]:.4f}",
            f"{gap.max():.1e}", f"{(gap / ref).max():.1e}",
            f"{tgap.max():.4f}", f"{100 * (tgap / ref).max():.2f} %"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/mixbatch-bench-hf-packing"))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--max-bytes", type=int, default=1 << 20, help="text per domain")
    args = ap.parse_args()
    from bench_mixup import import_anchor  # a torchvision wheel that does not match torch
    from bench_step_mixture import corpus

    import_anchor("torchvision")  # transformers imports it for image models

    args.work.mkdir(parents=True, exist_ok=True)
    sources = paragraphs(corpus(args.work, args.max_bytes), args.work)
    print(header("bench_hf_packing: packed vs unpacked loss, LlamaForCausalLM",
                 ["torch", "transformers"]))
    rows = [run(m, int(s), args, sources) for m in MODES for s in args.seeds.split(",")]
    print()
    print(table(["mode", "seed", "steps", "trained tokens", "reference loss (first → last)",
                 "packed max gap", "packed max rel. gap", "default use_cache max gap",
                 "default use_cache max rel. gap"], rows))


if __name__ == "__main__":
    main()
