"""Learning rates by tokens and stage on the proxy model: Power vs cosine vs WSD, and
re-warming at the mixture's stage change vs none, at equal tokens (``mixbatch.training.lr``).

The built-in corpus (``mixbatch.demo.corpus``: Python, C and man pages in three languages,
byte tokens, 5% held out) with the demo's two-stage schedule by tokens (code-heavy, then prose),
its switch moved to half of ``--steps``. Every arm trains the same proxy (``ProxyConfig.demo``
shape, ``--steps`` steps of 8 x 256 tokens, peak LR 3e-3, warm-up 10 steps, ends at 0.1x) on
the same batches, so the arms differ only in the LR. Reported per arm and seed: held-out loss
(mean over every source, and over the stage-2 prose sources), training seconds, and joules
where RAPL/NVML read (``mixbatch.training.energy``), else why not.

Arms: ``cosine`` (by step, the proxy default), ``wsd`` (stable, then linear decay over the last
20% of tokens), ``power`` (``min(η_max, β·4·n^-0.51)``, the same decay), ``cosine+rewarm``
(cosine by tokens, re-warmed over 10 steps' tokens at the stage change), ``cosine+replay``
(every 4th step retrains the hardest of 8 batches kept by loss: equal tokens trained, 3/4 of
them fresh; ``tokens`` counts every token trained, replays included).
``--sweep 4 8 16 32`` instead trains one proxy per batch size (rows of 256 tokens) on the
same tokens of one mixture (the first stage's weights) and reports steps-to-target and
tokens-to-target (held-out loss <= ``--target``, scored every ``--eval-every-tokens``): the
steps/examples trade-off of "An Empirical Model of Large-Batch Training", in the
time-to-result style of "Benchmarking Neural Network Training Algorithms" (a size that never
reaches the target is reported as such).
Run with the project venv: ``nice -n 10 .venv/bin/python benchmarks/bench_training.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import background_summary, header, log, run_in_workdir, table

PACKAGES = ("mixbatch", "torch", "numpy")
STAGE2 = ("man_en", "man_de", "man_fr")
ARMS = {
    "cosine": {"schedule": "cosine"},
    "wsd": {"schedule": "wsd", "decay_fraction": 0.2},
    "power": {"schedule": "power", "decay_fraction": 0.2},
    "cosine+rewarm": {"schedule": "cosine", "rewarm_tokens": 10 * 8 * 256},
    "cosine+replay": {"schedule": "cosine", "replay_rate": 0.25, "replay_capacity": 8},
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--steps", type=int, default=120, help="training steps per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="model seeds")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-bytes", type=int, default=1 << 20, help="corpus bytes per domain")
    p.add_argument("--max-wait", type=float, default=0.0)
    p.add_argument("--sweep", type=int, nargs="+", default=None, help="batch sizes (rows)")
    p.add_argument("--target", type=float, default=3.0, help="held-out loss target (sweep)")
    p.add_argument("--eval-every-tokens", type=int, default=8 * 256 * 8)
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "lamb"])
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (sweep)")
    return p.parse_args()


def corpus(workdir: Path, steps: int, staged: bool = True):
    from mixbatch.config import config_from_dict
    from mixbatch.demo.corpus import build_corpus, demo_config
    from mixbatch.prepare import prepare

    data = demo_config(build_corpus(workdir / "corpus", max_bytes=1 << 20), workdir / "store")
    data["mixture"]["schedule"][0]["until_step"] = steps // 2
    if not staged:  # one mixture throughout (the sweep's sizes take different step counts)
        data["mixture"] = {"unit": "tokens", "weights": data["mixture"]["schedule"][0]["weights"]}
    data["batch"] = {"seq_len": 256, "batch_size": 8, "packing": "concat"}
    cfg = config_from_dict(data)
    prepare(cfg, workers=1, force=True)
    return cfg


def run_arm(cfg, arm: str, seed: int, steps: int, threads: int) -> dict:
    from mixbatch.proxy import ProxyConfig
    from mixbatch.proxy.trainer import Trainer

    proxy = ProxyConfig.demo(steps=steps, warmup=10, seed=seed, threads=threads, device="cpu",
                             eval_tokens=8192, **ARMS[arm])
    with Trainer(cfg, proxy) as t:
        t.eval_rows = t.heldout_rows()
        t.run()
        rec = t.history[-1]
        prose = [rec["val_loss"][n] for n in STAGE2 if n in rec["val_loss"]]
        return {"val": rec["val_loss_mean"], "prose": sum(prose) / len(prose),
                "tokens": rec["tokens"], "seconds": t.train_seconds, "joules": t.joules,
                "why": "; ".join(t.energy_unavailable)}


def sweep_one(cfg, rows: int, args: argparse.Namespace, seed: int) -> dict:
    from mixbatch.proxy import ProxyConfig
    from mixbatch.proxy.trainer import Trainer

    per_step = rows * 256
    steps = max(args.steps * 8 * 256 // per_step, 1)  # the tokens of --steps steps of 8 rows
    proxy = ProxyConfig.demo(batch_size=rows, steps=steps, warmup=max(steps // 8, 1),
                             seed=seed, threads=args.threads, device="cpu", eval_tokens=4096,
                             optimizer=args.optimizer, lr=args.lr)
    every = max(args.eval_every_tokens // per_step, 1)
    with Trainer(cfg, proxy) as t:
        t.eval_rows = t.heldout_rows()
        t.run(eval_every=every)
        hit = next((r for r in t.history if r["val_loss_mean"] <= args.target), None)
        return {"steps": steps, "hit": hit, "final": t.history[-1]["val_loss_mean"],
                "seconds": t.train_seconds}


def sweep(args: argparse.Namespace, cfg) -> str:
    rows = []
    for bs in args.sweep:
        for seed in args.seeds:
            r = sweep_one(cfg, bs, args, seed)
            hit = r["hit"]
            log(f"batch {bs} seed {seed}: final {r['final']:.4f}, "
                f"{'target at step ' + str(hit['step']) if hit else 'target not reached'}")
            rows.append([bs, seed, r["steps"], hit["step"] if hit else "not reached",
                         hit["tokens"] if hit else "-", f"{r['final']:.4f}",
                         f"{r['seconds']:.1f}"])
    return "\n".join([
        header(f"Batch-size sweep: steps and tokens to held-out loss {args.target}", PACKAGES,
               {"optimizer": f"{args.optimizer}, peak LR {args.lr}",
                "background load": background_summary()}),
        "",
        table(["rows x 256", "seed", "steps run", "steps to target", "tokens to target",
               "final val loss", "train s"], rows, align="rrrrrrr"),
    ])


def bench(args: argparse.Namespace, workdir: Path) -> str:
    cfg = corpus(workdir, args.steps, staged=not args.sweep)
    if args.sweep:
        return sweep(args, cfg)
    rows, why = [], ""
    for arm in args.arms:
        for seed in args.seeds:
            r = run_arm(cfg, arm, seed, args.steps, args.threads)
            log(f"{arm} seed {seed}: val {r['val']:.4f}, prose {r['prose']:.4f}, "
                f"{r['seconds']:.1f} s")
            why = r["why"] or why
            rows.append([arm, seed, r["tokens"], f"{r['val']:.4f}", f"{r['prose']:.4f}",
                         f"{r['seconds']:.1f}",
                         "n/a" if r["joules"] is None else f"{r['joules']:.1f}"])
    extra = {"corpus": "built-in demo corpus, byte tokens, stage switch at step "
                       f"{args.steps // 2}", "background load": background_summary(),
             "energy": why or "RAPL/NVML read"}
    return "\n".join([
        header("LR by tokens and stage: Power / WSD / cosine, re-warm vs none", PACKAGES, extra),
        "",
        table(["arm", "seed", "tokens", "val loss (all)", "val loss (stage-2 prose)",
               "train s", "joules"], rows, align="lrrrrrr"),
    ])


def main() -> None:
    run_in_workdir(bench, parse_args(), "training")


if __name__ == "__main__":
    main()
