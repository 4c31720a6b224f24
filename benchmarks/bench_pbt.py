"""PBT of mixtures (``mixbatch search pbt``) vs the best static mixture of ``search`` vs uniform,
at the same total proxy budget (issue 18, item 2).

The built-in corpus (``mixbatch.demo.corpus``: Python, C and man pages in three languages,
byte tokens, 5% held out) and the demo's tiny proxies (``DEMO_PROXY``: 1 layer, width 64,
8 x 128 tokens per step, one thread each). For every seed (the proxies' initialisation, the
design and PBT's draws):

- ``uniform``: one proxy of ``--steps`` steps on the uniform mixture;
- ``search best``: RegMix's design of ``--population`` mixtures around the token prior
  (``search design``), one proxy of ``--steps`` steps each (``search run``, local pool), the
  lowest held-out loss among them: ``population x steps`` proxy steps;
- ``pbt``: ``search pbt`` with ``--population`` members of ``--steps`` steps, exploit/explore
  every ``--interval`` steps (member 0 starts uniform, the others on flat Dirichlet draws):
  the same ``population x steps`` proxy steps; the winner's loss is that of one run from
  scratch under its schedule (``stream`` replays it exactly).

Both ``search best`` and ``pbt`` report the best of ``population`` runs scored on the held-out
documents they were chosen on (the same selection effect, PBT's at every interval); ``uniform``
is a single run. So each seed then retrains the three choices from scratch with another
initialisation (``fresh init``: model seed + 1000, the same batches): uniform, the search's
best mixture and PBT's winning schedule, one run each.
Reported: held-out mean loss (nats/byte over every scored token) per arm and seed, the
winner's mixture, wall seconds. Run with the project venv (it has Ray):
``PYTHONPATH=src nice -n 10 .venv/bin/python benchmarks/bench_pbt.py``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from _common import header, log, run_in_workdir, table

PACKAGES = ("mixbatch", "torch", "numpy", "ray")
FRESH = 1000  # model seed offset of the retraining check


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--population", type=int, default=4)
    p.add_argument("--steps", type=int, default=160, help="proxy steps per member / run")
    p.add_argument("--interval", type=int, default=40, help="PBT exploit/explore interval")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--workers", type=int, default=2, help="proxies at a time")
    p.add_argument("--max-bytes", type=int, default=1 << 19, help="corpus bytes per domain")
    p.add_argument("--max-wait", type=float, default=0.0)
    return p.parse_args()


def corpus(workdir: Path, max_bytes: int) -> tuple[Path, object]:
    import yaml

    from mixbatch.config import load_config
    from mixbatch.demo.corpus import build_corpus, demo_config
    from mixbatch.prepare import prepare

    data = demo_config(build_corpus(workdir / "corpus", max_bytes=max_bytes),
                       workdir / "store")
    data["mixture"] = {"unit": "tokens", "weights": {n: 1.0 for n in data["sources"]}}
    data["batch"] = {"seq_len": 128, "batch_size": 8, "packing": "concat"}
    path = workdir / "bench_pbt.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    cfg = load_config(path)
    prepare(cfg, workers=1)
    return path, cfg


def _short(weights: dict[str, float]) -> str:
    return " ".join(f"{n} {w:.2f}" for n, w in weights.items())


def one_seed(path: Path, cfg, seed: int, args: argparse.Namespace, workdir: Path) -> list[list]:
    from mixbatch.demo.search import DEMO_PROXY
    from mixbatch.proxy import ProxyConfig, train_proxy
    from mixbatch.search.design import config_token_counts, design_mixtures, write_design_csv
    from mixbatch.search.pbt import PBTSettings, run_pbt_search
    from mixbatch.search.pbt_lineage import with_schedule
    from mixbatch.search.pbt_state import RoundLog
    from mixbatch.search.runner import run_search

    proxy = ProxyConfig.from_dict({**DEMO_PROXY, "steps": args.steps, "seed": seed,
                                   "threads": 1})
    names = list(cfg.sources)
    budget = args.population * args.steps
    rows = []

    t0 = time.perf_counter()
    uni = train_proxy(cfg, proxy, weights={n: 1.0 for n in names})
    rows.append([seed, "uniform", args.steps, f"{uni.val_loss_mean:.4f}",
                 _short(uni.weights or {}), f"{time.perf_counter() - t0:.0f}"])
    log(f"seed {seed} uniform: {uni.val_loss_mean:.4f}")

    t0 = time.perf_counter()
    names_t, tokens, _ = config_token_counts(path)
    design = design_mixtures(names_t, tokens, args.population, seed)
    csv = write_design_csv(workdir / f"design{seed}.csv", design)
    run = run_search(cfg, csv, workdir / f"results{seed}.csv", workers=args.workers,
                     proxy=proxy, progress=False)
    best = min(run.results.values(), key=lambda r: r.val_mean)
    rows.append([seed, "search best", budget, f"{best.val_mean:.4f}", _short(best.weights),
                 f"{time.perf_counter() - t0:.0f}"])
    log(f"seed {seed} search best of {len(run.results)}: {best.val_mean:.4f}")

    t0 = time.perf_counter()
    settings = PBTSettings(population=args.population, interval=args.interval,
                           steps=args.steps, seed=seed, workers=args.workers)
    record = RoundLog.read(workdir / f"pbt{seed}")  # a search interrupted here: resume it
    res = run_pbt_search(cfg, proxy, settings, workdir / f"pbt{seed}",
                         resume=record is not None and not record.data.get("finished"))
    stages = " | ".join(f"<{s.get('until_step', args.steps)}: {_short(s['weights'])}"
                        for s in res.schedule)
    rows.append([seed, f"pbt (member {res.winner}, {res.exploits} exploits)", budget,
                 f"{res.val_loss:.4f}", stages, f"{time.perf_counter() - t0:.0f}"])
    log(f"seed {seed} pbt: {res.val_loss:.4f} ({res.exploits} exploits)")

    # the choices retrained from scratch with another initialisation (seed + FRESH): each arm's
    # loss without the selection on its own runs' held-out scores
    fresh = proxy.model_copy(update={"seed": seed + FRESH})
    for arm, run_cfg, weights in (
            ("uniform, fresh init", cfg, {n: 1.0 for n in names}),
            ("search best, fresh init", cfg, best.weights),
            ("pbt schedule, fresh init", with_schedule(cfg, res.schedule), None)):
        t0 = time.perf_counter()
        r = train_proxy(run_cfg, fresh, weights=weights)
        rows.append([seed, arm, args.steps, f"{r.val_loss_mean:.4f}", "as above",
                     f"{time.perf_counter() - t0:.0f}"])
        log(f"seed {seed} {arm}: {r.val_loss_mean:.4f}")
    return rows


def bench(args: argparse.Namespace, workdir: Path) -> str:
    path, cfg = corpus(workdir, args.max_bytes)
    rows = []
    for seed in args.seeds:
        rows += one_seed(path, cfg, seed, args, workdir)
    by_arm: dict[str, list[float]] = {}
    for r in rows:
        by_arm.setdefault(r[1].split(" (")[0], []).append(float(r[3]))
    summary = [[arm, len(v), f"{np.mean(v):.4f}", f"{np.min(v):.4f}", f"{np.max(v):.4f}"]
               for arm, v in by_arm.items()]
    per = len(rows) // len(args.seeds)  # rows per seed: uniform, search, pbt, 3 fresh
    gaps = [float(rows[k + 2][3]) - float(rows[k + 1][3]) for k in range(0, len(rows), per)]
    fresh_gaps = [float(rows[k + 5][3]) - float(rows[k + 4][3]) for k in range(0, len(rows), per)]
    extra = {"corpus": f"built-in demo corpus, {args.max_bytes} bytes per domain, byte tokens",
             "proxy": f"DEMO_PROXY, {args.steps} steps, one thread, {args.workers} at a time",
             "pbt": f"population {args.population}, interval {args.interval}, quantile 0.25, "
                    "resample 0.25",
             "pbt - search best per seed": ", ".join(f"{g:+.4f}" for g in gaps),
             "same, retrained with a fresh init": ", ".join(f"{g:+.4f}" for g in fresh_gaps)}
    return "\n".join([
        header("PBT of mixtures vs the best static mixture of search vs uniform", PACKAGES,
               extra),
        "",
        table(["seed", "arm", "proxy steps", "held-out mean loss", "mixture", "wall s"], rows,
              align="rlrrlr"),
        "",
        table(["arm", "seeds", "mean", "min", "max"], summary, align="lrrrr"),
    ])


def main() -> None:
    run_in_workdir(bench, parse_args(), "pbt")


if __name__ == "__main__":
    main()
