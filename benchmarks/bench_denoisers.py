"""UL2 denoiser mixes against plain causal LM on the built-in corpus, at equal document tokens.

The built-in corpus (``mixbatch.demo.build_corpus``, ``--max-bytes`` per domain) in bytes, 90%
of each domain's byte stream for training and the last 10% held out. Every run trains the proxy
model (:class:`mixbatch.proxy.ProxyLM`, ``--d-model``, 2 layers, rotary positions; vocabulary:
bytes, 3 paradigm tokens, 100 sentinels) for ``--steps`` steps of ``--batch`` documents of
``--doc-len`` bytes each (cut at seeded random offsets), so every run reads the same document
tokens. A causal run predicts every token; a denoiser run turns each document into its
objective's example (:class:`mixbatch.objectives.ObjectiveMixer`, exact per-sample weights) in
the prefix-LM layout: bidirectional attention over ``[mode] inputs``, loss on the targets.
Mixes: ``ul2`` (the seven denoisers, equal weights), ``r`` (R only), ``s`` (S only), ``x`` (X
only). Reported per seed, on held-out documents: the causal LM loss (nats per byte, causal
attention) and the S task's loss (predict the last 25% of a document from its first 75%, with
the ``[S2S]`` token and a bidirectional prefix).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header
from mixbatch.demo.corpus import build_corpus
from mixbatch.objectives import UL2_DENOISERS, ObjectiveMixer, Paradigm, prefix_lm, prefix_lm_mask
from mixbatch.objectives.denoisers import Denoiser, Example
from mixbatch.proxy import ModelConfig, ProxyLM

MODES = {"r": 258, "s": 259, "x": 260}
SENTINELS = np.arange(261, 361)
PAD = 361
MIXES = {
    "ul2": UL2_DENOISERS,
    "r": tuple(d for d in UL2_DENOISERS if d.paradigm is Paradigm.R),
    "s": tuple(d for d in UL2_DENOISERS if d.paradigm is Paradigm.S),
    "x": tuple(d for d in UL2_DENOISERS if d.paradigm is Paradigm.X),
}


def corpus(max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    train, held = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for s in build_corpus(Path(tmp), max_bytes=max_bytes):
            opener = gzip.open if s.path.name.endswith(".gz") else open
            with opener(s.path, "rt", encoding="utf-8") as f:
                text = "".join(json.loads(line)["text"] for line in f)
            b = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
            cut = int(b.size * 0.9)
            train.append(b[:cut])
            held.append(b[cut:])
    return np.concatenate(train), np.concatenate(held)


def forward(model: ProxyLM, ids: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """The proxy's blocks with a prefix-LM mask per row (``prefix`` 0: causal)."""
    L = ids.shape[1]
    mask = torch.stack([torch.from_numpy(prefix_lm_mask(L, int(p))) for p in prefix])[:, None]
    angles = torch.arange(L)[None, None, :, None].float() * model.inv_freq
    rope = (angles.cos(), angles.sin())
    x = model.tok_emb(ids)
    for block in model.blocks:
        x = block(x, rope, mask)
    return model.head(model.norm(x))


def batch(examples: list[tuple[np.ndarray, int, np.ndarray]]
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    L = max(t.size for t, _, _ in examples)
    ids = np.full((len(examples), L), PAD, dtype=np.int64)
    loss = np.zeros((len(examples), L), dtype=bool)
    for r, (t, _, m) in enumerate(examples):
        ids[r, :t.size] = t
        loss[r, :m.size] = m
    prefix = torch.tensor([p for _, p, _ in examples])
    return torch.from_numpy(ids), prefix, torch.from_numpy(loss)


def loss_of(model: ProxyLM, ids: torch.Tensor, prefix: torch.Tensor, mask: torch.Tensor
            ) -> torch.Tensor:
    logits = forward(model, ids, prefix)[:, :-1]
    tok = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                          reduction="none").view(ids.shape[0], -1)
    m = mask[:, :-1].float()
    return (tok * m).sum() / m.sum()


def causal(doc: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    m = np.ones(doc.size, dtype=bool)
    m[-1] = False
    return doc, 0, m


def run(mix: str, train: np.ndarray, held: np.ndarray, args: argparse.Namespace, seed: int
        ) -> tuple[float, float]:
    torch.manual_seed(seed)
    model = ProxyLM(ModelConfig(vocab_size=384, seq_len=2 * args.doc_len, n_layer=2,
                                d_model=args.d_model, n_head=4))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    mixer = None if mix == "causal" else ObjectiveMixer(MIXES[mix], [1.0] * len(MIXES[mix]),
                                                        seed, MODES, SENTINELS)
    for _ in range(args.steps):
        starts = rng.integers(0, train.size - args.doc_len, args.batch)
        docs = [train[s:s + args.doc_len] for s in starts]
        examples = ([causal(d) for d in docs] if mixer is None
                    else [prefix_lm(e) for e in mixer.next(docs)[1]])
        loss = loss_of(model, *batch(examples))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    erng = np.random.default_rng(10_000 + seed)
    starts = erng.integers(0, held.size - args.doc_len, 256)
    docs = [held[s:s + args.doc_len] for s in starts]
    s_task = Denoiser("s", Paradigm.S, 0.25)
    with torch.no_grad():
        lm = float(loss_of(model, *batch([causal(d) for d in docs])))
        s_ex = [prefix_lm(_s_example(d, s_task)) for d in docs]
        s = float(loss_of(model, *batch(s_ex)))
    return lm, s


def _s_example(doc: np.ndarray, d: Denoiser) -> Example:
    cut = doc.size - round(doc.size * d.rate)
    return Example(np.concatenate([[MODES["s"]], doc[:cut]]), doc[cut:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--doc-len", type=int, default=96)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--max-bytes", type=int, default=300_000)
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(header("bench_denoisers: UL2 denoiser mixes vs causal LM (equal document tokens)",
                 ["numpy", "torch"], {"settings": f"{args.steps} steps x {args.batch} documents "
                                      f"of {args.doc_len} bytes, d_model {args.d_model}, "
                                      "2 layers"}))
    train, held = corpus(args.max_bytes)
    print(f"\ncorpus: {train.size} training bytes, {held.size} held out\n")
    print("| seed | objective | held-out causal LM loss | held-out S-task loss |")
    print("|---|---|---|---|")
    for seed in range(args.seeds):
        for mix in ("causal", *MIXES):
            lm, s = run(mix, train, held, args, seed)
            print(f"| {seed} | {mix} | {lm:.4f} | {s:.4f} |", flush=True)


if __name__ == "__main__":
    main()
