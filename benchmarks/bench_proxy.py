"""Training throughput of the proxy models (``mixbatch.proxy.train_proxy``) on CPU and GPU.

A generated corpus (three sources of random words over different vocabularies: lowercase
English-like words, code-like identifiers and operators, uppercase/digit tokens; byte
tokenizer, 5% of documents held out) is written as JSONL in a temp folder and prepared with
``mixbatch.prepare.prepare``. Each size is trained for ``--steps`` steps with ``train_proxy``
(AdamW, warm-up then cosine, one validation pass at the end) and the report gives its
``tokens_per_s``: real tokens trained on per second of training steps, which counts building
each batch (planning + reading tokens), forward, backward and the optimiser step, and
excludes setup and evaluation. The best of ``--repeat`` runs is reported; every run is listed.

Sizes:

| size | shape | batch |
|---|---|---|
| demo | 2 layers, d_model 128, 4 heads, SwiGLU 352 (``ProxyConfig.demo``) | 8 x 256 |
| regmix | 2 layers, d_model 256, 8 heads, SwiGLU 512 (RegMix ``tinyllama_1M``) | 8 x 256 |
| regmix-gpu (CUDA only) | the RegMix shape at a GPU batch | 64 x 1024 |

CPU runs use ``--threads`` torch threads (default 2). When ``torch.cuda.is_available()``,
every size is also trained on the GPU (bf16 autocast where supported) and the device name is
printed. Run with the project venv (torch is not in the benchmark venv):
``.venv/bin/python benchmarks/bench_proxy.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from _common import (
    Timing,
    background_summary,
    header,
    human,
    log,
    run_in_workdir,
    table,
    wait_until_quiet,
)

PACKAGES = ("mixbatch", "torch", "numpy")

VOCABS = {  # space-separated words of each source
    "prose": "the of and to in is was for that with on as by at from his her they which",
    "code": "def return self if else for in import class None x y = ( ) : [ ] + 0 1",
    "upper": "NASA USA 2024 ID42 OK HTTP GET POST 404 200 X11 UTF8 JSON API CPU GPU",
}

SIZES = {
    "demo": {"n_layer": 2, "d_model": 128, "n_head": 4, "seq_len": 256, "batch_size": 8},
    "regmix": {"n_layer": 2, "d_model": 256, "n_head": 8, "d_mlp": 512, "seq_len": 256,
               "batch_size": 8},
}
GPU_ONLY = {
    "regmix-gpu": {"n_layer": 2, "d_model": 256, "n_head": 8, "d_mlp": 512, "seq_len": 1024,
                   "batch_size": 64},
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the corpus and the store go (default: a temp folder, removed)")
    p.add_argument("--docs", type=int, default=1500, help="documents per source")
    p.add_argument("--steps", type=int, default=60, help="training steps per CPU run")
    p.add_argument("--gpu-steps", type=int, default=200, help="training steps per GPU run")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--repeat", type=int, default=2, help="runs per measurement")
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES),
                   help="CPU sizes to run")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU even if there is one")
    p.add_argument("--max-wait", type=float, default=120.0,
                   help="seconds the script may spend, in all, waiting for other processes to "
                        "leave the CPUs idle before timed runs")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def write_corpus(workdir: Path, docs: int, seed: int):
    """Three JSONL sources of random words; returns the prepared config."""
    from mixbatch.config import config_from_dict
    from mixbatch.prepare import prepare

    rng = np.random.default_rng(seed)
    sources = {}
    for name, vocab in VOCABS.items():
        words = vocab.split()
        path = workdir / f"{name}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for _ in range(docs):
                n = int(np.clip(rng.lognormal(4.5, 0.8), 5, 2000))  # words per document
                f.write('{"text": "' + " ".join(rng.choice(words, size=n)) + '"}\n')
        sources[name] = {"path": str(path), "format": "jsonl"}
    cfg = config_from_dict({
        "seed": seed, "tokenizer": "byte", "store": str(workdir / "store"), "holdout": 0.05,
        "sources": sources,
        "mixture": {"unit": "tokens", "weights": {n: 1.0 for n in VOCABS}},
        "batch": {"seq_len": 256, "batch_size": 8, "packing": "concat"},
    })
    report = prepare(cfg, workers=1, force=True)
    log(f"corpus: {report.documents} documents, {human(report.tokens)} tokens in {workdir}")
    return cfg


def run_size(cfg, name: str, shape: dict, device: str, steps: int, threads: int | None,
             repeat: int) -> tuple[Timing, dict]:
    from mixbatch.proxy import ProxyConfig, train_proxy

    proxy = ProxyConfig.from_dict({**shape, "steps": steps, "warmup": min(20, steps // 4),
                                   "device": device, "threads": threads, "eval_tokens": 4096})
    timing = Timing(key="per_token")
    last: dict = {}
    for k in range(repeat):
        bg = wait_until_quiet() if device == "cpu" else 0.0
        r = train_proxy(cfg, proxy)
        log(f"{name} on {r.device}, run {k + 1}: {r.tokens_per_s:,.0f} tokens/s, "
            f"val loss {r.val_loss_mean:.3f}")
        timing.add({"per_token": 1.0 / r.tokens_per_s, "train_seconds": r.train_seconds}, bg)
        if not last or r.tokens_per_s > last["tokens_per_s"]:
            last = {"tokens_per_s": r.tokens_per_s, "params": r.params, "device": r.device,
                    "tokens": r.train_tokens, "val": r.val_loss_mean, "seconds": r.seconds}
    return timing, last


def main() -> None:
    run_in_workdir(bench, parse_args(), "proxy")


def bench(args: argparse.Namespace, workdir: Path) -> str:
    import torch

    cfg = write_corpus(workdir, args.docs, args.seed)
    plans = [(n, SIZES[n], "cpu", args.steps, args.threads) for n in args.sizes]
    gpu = torch.cuda.is_available() and not args.no_gpu
    gpu_name = torch.cuda.get_device_name(0) if gpu else "none"
    if gpu:
        log(f"GPU: {gpu_name}")
        plans += [(n, s, "cuda", args.gpu_steps, None) for n, s in {**SIZES, **GPU_ONLY}.items()]
    rows = []
    for name, shape, device, steps, threads in plans:
        timing, best = run_size(cfg, name, shape, device, steps, threads, args.repeat)
        runs = ", ".join(f"{1 / r['per_token']:,.0f}" for r in timing.runs)
        rows.append([
            name + (" *" if device == "cpu" and timing.noisy() else ""),
            best["device"] + (f" ({threads} threads)" if device == "cpu" else ""),
            human(best["params"]),
            f"{shape['batch_size']} x {shape['seq_len']}",
            steps,
            f"{best['tokens_per_s']:,.0f}",
            runs,
            f"{best['val']:.3f}",
            f"{best['seconds']:.1f}",
        ])
    extra = {
        "torch": f"{torch.__version__} (CPU threads for CPU runs: {args.threads}, "
                 f"default {torch.get_num_threads()})",
        "GPU": gpu_name,
        "corpus": f"3 generated sources x {args.docs} documents, byte tokenizer, holdout 0.05",
        "background load": background_summary(),
    }
    lines = [
        header("Proxy training throughput", PACKAGES, extra),
        "",
        table(["size", "device", "params (non-emb.)", "batch (rows x len)", "steps",
               "tokens/s (best)", "tokens/s (runs)", "val loss", "run s"],
              rows, align="lllrrrrrr"),
        "",
        "tokens/s: real tokens trained on / seconds of training steps (batch building, forward, "
        "backward, AdamW); run s: the whole call, with setup and one validation pass. "
        "`*`: another process kept a core busy before a run.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
