"""Learning rates by tokens and stage on the proxy model (Power vs cosine vs WSD, re-warming at
the mixture's stage change vs none), hard-batch replay, batch-size ramps vs a fixed batch and
bfloat16 mixed precision vs float32, at equal tokens (``mixbatch.training``).

The built-in corpus (``mixbatch.demo.corpus``: Python, C and man pages in three languages,
byte tokens, 5% held out) with the demo's two-stage schedule by tokens (code-heavy, then prose),
its switch moved to half of the tokens of ``--steps`` steps of 8 rows (``until_tokens``, so
that arms whose steps hold other row counts switch at the same tokens). Every arm trains the
same proxy (``ProxyConfig.demo`` shape, peak LR 3e-3, warm-up over the tokens of 10 steps of
8 x 256, ends at 0.1x) on the same stream of rows and the same tokens as ``--steps`` steps of
8 x 256, so the arms differ only in what they set. Reported per arm and seed: held-out loss
(mean over every source, and over the stage-2 prose sources), steps, training seconds (wall),
CPU seconds of the run (training and its validations: the figure to compare on a loaded
machine), and joules where RAPL/NVML read (``mixbatch.training.energy``), else why not.

Arms: ``cosine`` (by step, the proxy default), ``wsd`` (stable, then linear decay over the last
20% of tokens), ``power`` (``min(η_max, β·4·n^-0.51)``, the same decay), ``cosine+rewarm``
(cosine by tokens, re-warmed over 10 steps' tokens at the stage change), ``cosine+replay``
(every 4th step retrains the hardest of 8 batches kept by loss: equal tokens trained, 3/4 of
them fresh; ``tokens`` counts every token trained, replays included), ``ramp`` (the ``wsd``
arm's LR by tokens, with ``batch.batch_size`` a schedule by tokens: 4 rows for the first
quarter of the tokens, 8 for the second, 16 for the second half; the same tokens in the same
number of steps here, warm-up over the same tokens: the adaptive batch of "An Empirical Model
of Large-Batch Training", small while the gradient noise scale is small), ``const+ramp``
(constant LR after the warm-up, 8 rows, 16 from half of the tokens, 32 from three quarters:
"Don't Decay the Learning Rate, Increase the Batch Size", each growth of the batch in place of
an LR decay, fewer steps at equal tokens), ``cosine+bf16`` (the ``cosine`` arm under bfloat16
mixed precision, ``ProxyConfig.bf16``: torch CPU autocast; parameters, optimiser and loss in
float32). The runs go seed by seed, every arm of a seed one after the other, so that the
seconds of two arms are taken side by side; the summary gives each arm's mean over the seeds
and its difference from its baseline arm on the same seed.
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
import statistics
import time
from pathlib import Path
from typing import Any

from _common import background_summary, header, log, run_in_workdir, table

PACKAGES = ("mixbatch", "torch", "numpy")
STAGE2 = ("man_en", "man_de", "man_fr")
ROWS, SEQ, WARMUP = 8, 256, 10  # the fixed batch (rows of SEQ tokens), warm-up steps at ROWS
ARMS: dict[str, dict[str, Any]] = {
    "cosine": {"schedule": "cosine"},
    "wsd": {"schedule": "wsd", "decay_fraction": 0.2},
    "power": {"schedule": "power", "decay_fraction": 0.2},
    "cosine+rewarm": {"schedule": "cosine", "rewarm_tokens": WARMUP * ROWS * SEQ},
    "cosine+replay": {"schedule": "cosine", "replay_rate": 0.25, "replay_capacity": 8},
    "ramp": {"schedule": "wsd", "decay_fraction": 0.2},
    "const+ramp": {"schedule": "constant"},
    "cosine+bf16": {"schedule": "cosine", "bf16": True},
}
#: batch-size ramps: (share of the run's tokens where the stage ends, rows); the last is open
RAMPS: dict[str, list[tuple[float | None, int]]] = {
    "ramp": [(0.25, 4), (0.5, 8), (None, 16)],
    "const+ramp": [(0.5, 8), (0.75, 16), (None, 32)],
}
#: the arm each one is compared with, seed by seed, in the summary
BASELINE = {"wsd": "cosine", "power": "wsd", "cosine+rewarm": "cosine",
            "cosine+replay": "cosine", "ramp": "wsd", "const+ramp": "wsd",
            "cosine+bf16": "cosine"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--steps", type=int, default=64,
                   help="training steps per run of 8 rows (the ramps divide 64 exactly)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="model seeds")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-bytes", type=int, default=1 << 20, help="corpus bytes per domain")
    p.add_argument("--max-wait", type=float, default=0.0)
    p.add_argument("--sweep", type=int, nargs="+", default=None, help="batch sizes (rows)")
    p.add_argument("--target", type=float, default=3.0, help="held-out loss target (sweep)")
    p.add_argument("--eval-every-tokens", type=int, default=8 * 256 * 8)
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "lamb"])
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (sweep)")
    p.add_argument("--json", type=Path, default=None,
                   help="also write every run's figures here (one record per arm and seed)")
    return p.parse_args()


def corpus(workdir: Path, steps: int, staged: bool = True):
    from mixbatch.config import config_from_dict
    from mixbatch.demo.corpus import build_corpus, demo_config
    from mixbatch.prepare import prepare

    data = demo_config(build_corpus(workdir / "corpus", max_bytes=1 << 20), workdir / "store")
    first = data["mixture"]["schedule"][0]
    del first["until_step"]  # the switch at half of the tokens, whatever the rows per step
    first["until_tokens"] = steps // 2 * ROWS * SEQ
    if not staged:  # one mixture throughout (the sweep's sizes take different step counts)
        data["mixture"] = {"unit": "tokens", "weights": first["weights"]}
    data["batch"] = {"seq_len": SEQ, "batch_size": ROWS, "packing": "concat"}
    cfg = config_from_dict(data)
    prepare(cfg, workers=1, force=True)
    return cfg


def ramp_plan(ramp: list[tuple[float | None, int]], total: int) -> tuple[list[dict], int]:
    """The ``batch.batch_size`` schedule by tokens of ``ramp`` over ``total`` tokens, and the
    steps it takes to train them (rows of ``SEQ`` tokens, the loader's clock: concat rows)."""
    stages = [{"batch_size": rows} if end is None else
              {"until_tokens": round(end * total), "batch_size": rows} for end, rows in ramp]
    done = steps = 0
    while done < total:
        done += next(s["batch_size"] for s in stages
                     if s.get("until_tokens", total + 1) > done) * SEQ
        steps += 1
    return stages, steps


def run_arm(cfg, arm: str, seed: int, steps: int, threads: int) -> dict:
    from mixbatch.proxy import ProxyConfig
    from mixbatch.proxy.trainer import Trainer

    settings: dict[str, Any] = {"steps": steps, "warmup": WARMUP}
    if arm in RAMPS:  # the batch from the config's schedule, equal tokens and warm-up tokens
        stages, ramp_steps = ramp_plan(RAMPS[arm], steps * ROWS * SEQ)
        batch = type(cfg.batch).model_validate({**cfg.batch.model_dump(), "batch_size": stages})
        cfg = cfg.model_copy(update={"batch": batch})
        settings = {"steps": ramp_steps, "warmup": WARMUP * ROWS // RAMPS[arm][0][1],
                    "batch_size": None}
    proxy = ProxyConfig.demo(seed=seed, threads=threads, device="cpu", eval_tokens=8192,
                             **settings, **ARMS[arm])
    with Trainer(cfg, proxy) as t:
        t.eval_rows = t.heldout_rows()
        cpu = time.process_time()  # this process's CPU seconds: less at the mercy of the load
        done, _ = t.run()
        cpu = time.process_time() - cpu
        rec = t.history[-1]
        prose = [rec["val_loss"][n] for n in STAGE2 if n in rec["val_loss"]]
        return {"val": rec["val_loss_mean"], "prose": sum(prose) / len(prose), "steps": done,
                "tokens": rec["tokens"], "seconds": t.train_seconds, "cpu": cpu,
                "joules": t.joules, "why": "; ".join(t.energy_unavailable),
                "amp": str(t.amp or "float32").removeprefix("torch.")}


def summary(results: dict[tuple[str, int], dict], arms: list[str], seeds: list[int]) -> str:
    """Per arm: the mean over the seeds, and the mean difference from its baseline arm run
    on the same seeds (loss: arm − baseline; time: arm / baseline)."""
    rows = []
    for arm in arms:
        mine = [results[arm, s] for s in seeds]
        base = BASELINE.get(arm)
        pairs = ([(results[arm, s], results[base, s]) for s in seeds]
                 if base in arms else [])
        diff = [a["val"] - b["val"] for a, b in pairs]
        ratio = [a["seconds"] / b["seconds"] for a, b in pairs if b["seconds"] > 0]
        cpu = [a["cpu"] / b["cpu"] for a, b in pairs if a.get("cpu") and b.get("cpu")]
        rows.append([arm, len(seeds), f"{statistics.mean(r['val'] for r in mine):.4f}",
                     f"{statistics.mean(r['prose'] for r in mine):.4f}",
                     f"{statistics.mean(r['steps'] for r in mine):.0f}",
                     base if pairs else "-",
                     " / ".join(f"{d:+.4f}" for d in diff) if diff else "-",
                     f"{sum(d < 0 for d in diff)}/{len(diff)}" if diff else "-",
                     f"{statistics.mean(ratio):.2f}" if ratio else "-",
                     f"{statistics.mean(cpu):.2f}" if cpu else "-"])
    return table(["arm", "seeds", "mean val loss", "mean prose", "steps", "baseline",
                  "Δ val loss per seed", "seeds better", "train s ratio *", "CPU s ratio"],
                 rows, align="lrrrrlrrrr")


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
    rows, why, results = [], "", {}
    for seed in args.seeds:  # seed-major: the arms of a seed run side by side
        for arm in args.arms:
            r = results[arm, seed] = run_arm(cfg, arm, seed, args.steps, args.threads)
            log(f"{arm} seed {seed}: val {r['val']:.4f}, prose {r['prose']:.4f}, "
                f"{r['steps']} steps, {r['tokens']} tokens, {r['amp']}, {r['seconds']:.1f} s, "
                f"{r['cpu']:.1f} CPU s")
            why = r["why"] or why
            rows.append([arm, seed, r["amp"], r["steps"], r["tokens"], f"{r['val']:.4f}",
                         f"{r['prose']:.4f}", f"{r['seconds']:.1f}", f"{r['cpu']:.1f}",
                         "n/a: not readable" if r["joules"] is None else f"{r['joules']:.1f}"])
    if args.json is not None:
        from mixbatch.atomic import write_json

        write_json(args.json, [{"arm": a, "seed": sd, **r} for (a, sd), r in results.items()])
    half = args.steps // 2 * ROWS * SEQ
    extra = {"corpus": f"built-in demo corpus, byte tokens, stage switch at {half} tokens",
             "background load": background_summary(),
             "energy": why or "RAPL/NVML read"}
    return "\n".join([
        header("Equal tokens: LR by tokens and stage, replay, batch-size ramps, bf16 vs float32",
               PACKAGES, extra),
        "",
        table(["arm", "seed", "autocast", "steps", "tokens", "val loss (all)",
               "val loss (stage-2 prose)", "train s *", "CPU s (train+eval)", "joules"], rows,
              align="lrlrrrrrrr"),
        "",
        summary(results, args.arms, args.seeds),
    ])


def main() -> None:
    run_in_workdir(bench, parse_args(), "training")


if __name__ == "__main__":
    main()
