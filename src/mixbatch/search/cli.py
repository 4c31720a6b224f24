"""``mixbatch search``: design mixtures, run proxies, fit a regressor, choose a mixture, merge.

The main command registers these with :func:`add_search_parsers`; each ``cmd_*`` takes the
parsed arguments and returns the exit code. Errors are :class:`~mixbatch.errors.ConfigError`
(exit code 2), printed as one line by the main command.

::

    mixbatch search design CONFIG --n 512 --out design.csv [--seed 42] [--tokens T]
    mixbatch search run CONFIG --design design.csv --out results.csv [--backend local|ray]
        [--workers N] [--ray-address ADDR] [--steps N] [--proxy PROXY.yaml|KEY=VALUE ...]
        [--layers N] [--d-model D] ...
    mixbatch search fit RESULTS.csv --target loss/all --out model.json [--model lightgbm|linear]
    mixbatch search fit --mixtures M.csv --losses L.csv --target COL --out model.json
    mixbatch search optimize model.json --out mixture.yaml [--n-sim 100000] [--top-k 128]
    mixbatch search evaluate model.json --mixtures M.csv --losses L.csv [--target COL] [--json]
    mixbatch search merge CONFIG --out merge.json [--steps N] [--seed-steps N] [--subsets N]
    mixbatch search pbt CONFIG --population N --interval STEPS --out DIR [--steps T] [--seed S]
    mixbatch search pbt CONFIG --out DIR --resume
    mixbatch search sweep CONFIG --batch-sizes 4 8 16 32 --tokens T --target LOSS [--seeds ..]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from mixbatch.atomic import write_json
from mixbatch.checks import positive_int
from mixbatch.cli_common import add_common, progress_enabled
from mixbatch.proxy_args import add_proxy_arguments
from mixbatch.search.design import prior_from_spec

__all__ = [
    "add_search_parsers",
    "cmd_design",
    "cmd_evaluate",
    "cmd_fit",
    "cmd_merge",
    "cmd_optimize",
    "cmd_run",
]

out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)


def _fmt(v: Any, spec: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def _tokens(value: str) -> float:
    """A token count: ``25e9``, ``25000000000``, or with a suffix ``25B``, ``300M``, ``4k``."""
    text = value.strip().replace("_", "").replace(",", "")
    mult = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}.get(text[-1:].lower(), 1.0)
    if mult != 1.0:
        text = text[:-1]
    try:
        n = float(text) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a token count like 25e9 or 25B, got {value!r}") \
            from None
    if not (n > 0 and math.isfinite(n)):
        raise argparse.ArgumentTypeError(f"token count must be positive, got {value!r}")
    return n


def _notes(notes: Any) -> None:
    for note in notes:
        err.print(f"note: {note}", markup=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------------
# design
# ---------------------------------------------------------------------------------------------
def cmd_design(args: argparse.Namespace) -> int:
    from mixbatch.search.design import (
        DesignSettings,
        config_token_counts,
        design_mixtures,
        write_design_csv,
    )

    names, tokens, cfg = config_token_counts(args.config)
    settings = DesignSettings()
    default_epochs = args.max_epochs if args.max_epochs is not None else settings.max_epochs
    epochs = {n: (cfg.sources[n].max_epochs if cfg.sources[n].max_epochs is not None
                  else default_epochs) for n in names}
    t0 = time.perf_counter()
    design = design_mixtures(names, tokens, args.n, args.seed, train_tokens=args.tokens,
                             max_epochs=epochs, settings=settings)
    path = write_design_csv(args.out, design)
    budget = args.tokens if args.tokens is not None else float(tokens.sum())
    from mixbatch.mixture.weights import temperature_weights

    tempered = temperature_weights(design.prior, settings.temperature, names)
    w = design.weights
    table = Table(title=f"search design: {len(design)} mixtures → {path}",
                  caption=(f"{design.draws:,} Dirichlet draws, {design.accepted:,} within the "
                           f"epoch caps, {design.unique:,} distinct; seed {design.seed}; "
                           f"caps for a budget of {budget:,.0f} tokens; "
                           f"{time.perf_counter() - t0:.1f}s"))
    for c in ("source", "tokens", "prior", f"prior^{settings.temperature:g}", "max epochs",
              "cap", "mean", "max", "non-zero"):
        table.add_column(c, justify="left" if c == "source" else "right")
    for i, n in enumerate(names):
        table.add_row(n, f"{tokens[i]:,.0f}", f"{design.prior[i]:.4f}", f"{tempered[i]:.4f}",
                      f"{epochs[n]:g}", f"{design.caps[i]:.4f}", f"{w[:, i].mean():.4f}",
                      f"{w[:, i].max():.4f}", f"{(w[:, i] > 0).mean():.0%}")
    out.print(table)
    return 0


# ---------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------
def cmd_fit(args: argparse.Namespace) -> int:
    from mixbatch.search.regress import cross_validate, fit, save_model
    from mixbatch.search.results import read_results

    table = read_results(args.results, mixtures=args.mixtures, losses=args.losses)
    target = table.resolve_target(args.target)
    x, y, table = table.xy(target)
    if args.prior:
        prior, prior_from = prior_from_spec(args.prior, table.names), args.prior
    else:
        prior, prior_from = x.mean(axis=0), "mean training mixture"
        table = table.select(np.ones(len(table), dtype=bool),
                             note="no --prior: optimize will simulate around the mean training "
                                  "mixture (give --prior CONFIG for the token prior)")
    kwargs: dict[str, Any] = {"ridge": args.ridge} if args.model == "linear" else {}
    t0 = time.perf_counter()
    cv, oof = (cross_validate(x, y, table.names, args.model, folds=args.folds, seed=args.seed,
                              **kwargs) if args.folds >= 2 else (None, None))
    model = fit(x, y, table.names, args.model, target.label, seed=args.seed, prior=prior,
                **kwargs)
    model.cv = cv
    model.prior_from = prior_from
    path = save_model(model, args.out)
    seconds = time.perf_counter() - t0
    _notes(table.notes)
    if args.plot:
        from mixbatch.search.plots import plot_predicted_vs_actual

        if oof is not None:
            plot_predicted_vs_actual(oof, y, args.plot, title=f"{args.model}, {cv['folds']}-fold "
                                     f"CV: {target.label}")
        else:
            plot_predicted_vs_actual(model.predict(x), y, args.plot,
                                     title=f"{args.model}, in-sample (too few runs for CV): "
                                           f"{target.label}")
    t = Table(title=f"search fit: {args.model} → {path}",
              caption=f"{len(y)} runs from {table.origin}; {seconds:.1f}s"
                      + (f"; plot {args.plot}" if args.plot else ""))
    for c in ("target", "runs", "CV folds", "Spearman", "Pearson", "RMSE"):
        t.add_column(c, justify="left" if c == "target" else "right")
    t.add_row(target.label, str(len(y)), str(cv["folds"]) if cv else "-",
              _fmt(cv and cv["spearman"]), _fmt(cv and cv["pearson"]),
              _fmt(cv and cv["rmse"], ".4g"))
    out.print(t)
    return 0


# ---------------------------------------------------------------------------------------------
# optimize
# ---------------------------------------------------------------------------------------------
def cmd_optimize(args: argparse.Namespace) -> int:
    from mixbatch.search.optimize import optimize, write_mixture_yaml
    from mixbatch.search.regress import load_model

    model = load_model(args.model)
    prior = prior_from_spec(args.prior, model.names) if args.prior else None
    t0 = time.perf_counter()
    opt = optimize(model, n_sim=args.n_sim, top_k=args.top_k, seed=args.seed, prior=prior)
    path = write_mixture_yaml(args.out, opt)
    if args.plot:
        from mixbatch.search.plots import plot_weights

        source = args.prior or model.prior_from or "token share"
        plot_weights(opt.names, opt.weights, opt.prior, args.plot,
                     title=f"chosen mixture vs prior ({model.target})",
                     prior_label=f"prior ({source})" if len(source) <= 40 else "prior")
    table = Table(title=f"search optimize → {path}",
                  caption=(f"mean of the {opt.top_k} best of {opt.n_sim:,} simulated mixtures "
                           f"(seed {opt.seed}); predicted {model.target}: "
                           f"{opt.predicted:.5g} at the chosen mixture, "
                           f"{opt.top_k_predicted[0]:.5g}..{opt.top_k_predicted[1]:.5g} over the "
                           f"top {opt.top_k}; {time.perf_counter() - t0:.1f}s"
                           + (f"; plot {args.plot}" if args.plot else "")))
    for c in ("source", "prior", "chosen", "chosen / prior"):
        table.add_column(c, justify="left" if c == "source" else "right")
    for n, p, w in sorted(zip(opt.names, opt.prior, opt.weights, strict=True),
                          key=lambda r: -r[2]):
        table.add_row(n, f"{p:.4f}", f"{w:.4f}", f"{w / p:.2f}x")
    out.print(table)
    return 0


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from mixbatch.search.optimize import evaluate
    from mixbatch.search.regress import load_model
    from mixbatch.search.results import read_results

    model = load_model(args.model)
    table = read_results(args.results, mixtures=args.mixtures, losses=args.losses,
                         sources=model.names)
    target = table.resolve_target(args.target or model.target)
    if target.label != model.target:
        table = table.select(np.ones(len(table), dtype=bool),
                             note=f"evaluating on {target.label}; the model was fitted on "
                                  f"{model.target}")
    res = evaluate(model, table.weights, table.losses, target)
    res = {"model": str(args.model), "kind": model.kind.value, "target": target.label, **res}
    _notes(table.notes)
    if args.json:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in res.items()}
        sys.stdout.write(json.dumps(clean, indent=1) + "\n")
        return 0
    t = Table(title=f"search evaluate: {model.kind.value} on {table.origin}")
    for c in ("target", "runs", "Spearman", "Pearson", "RMSE", "true rank of predicted best"):
        t.add_column(c, justify="left" if c == "target" else "right")
    t.add_row(target.label, str(res["n"]), _fmt(res["spearman"]), _fmt(res["pearson"]),
              _fmt(res["rmse"], ".4g"), f"{res['best_true_rank']} of {res['n']}")
    out.print(t)
    return 0


# ---------------------------------------------------------------------------------------------
# proxy settings shared by run and merge
# ---------------------------------------------------------------------------------------------
#: what the proxy settings of run and merge start from
PROXY_BASE = ("the demo proxy (ProxyConfig.demo: 256 x 8 tokens per step), or ProxyConfig's "
              "defaults when a --proxy file is given")


def proxy_of_args(args: argparse.Namespace) -> Any:
    """The demo proxy (or a ``--proxy`` file's), then ``--proxy KEY=VALUE`` and the shortcuts."""
    from mixbatch.proxy import ProxyConfig
    from mixbatch.proxy_args import proxy_from_args

    return proxy_from_args(args, ProxyConfig.demo().model_dump(exclude_unset=True),
                           file_replaces_defaults=True)


def _load_search_config(path: str) -> Any:
    from mixbatch.config import load_config

    return load_config(path)


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from mixbatch.search.results_file import MEAN_COLUMN
    from mixbatch.search.runner import run_search

    cfg = _load_search_config(args.config)
    proxy = proxy_of_args(args)
    run = run_search(cfg, args.design, args.out, backend=args.backend, workers=args.workers,
                     proxy=proxy, ray_address=args.ray_address, progress=progress_enabled(args))
    done = sorted(run.results.values(), key=lambda r: r.val_mean)
    per_run = [run.results[i].seconds for i in run.ran]
    table = Table(title=f"search run: {len(run.results)} of {run.total} design rows in {run.out}",
                  caption=(f"ran {len(run.ran)} now ({run.backend}, {run.workers} worker"
                           f"{'s' if run.workers != 1 else ''}), {len(run.skipped)} done before; "
                           f"{run.seconds:.1f}s"
                           + (f", {np.mean(per_run):.1f}s per proxy" if per_run else "")
                           + f"; next: mixbatch search fit {run.out} --target {MEAN_COLUMN}"
                             " --out model.json"))
    table.add_column("best by " + MEAN_COLUMN)
    table.add_column("index", justify="right")
    table.add_column(MEAN_COLUMN, justify="right")
    table.add_column("weights")
    for rank, r in enumerate(done[:5], start=1):
        w = ", ".join(f"{n} {v:.3f}" for n, v in sorted(r.weights.items(), key=lambda x: -x[1])
                      if v > 0)
        table.add_row(str(rank), str(r.index), _fmt(r.val_mean), w)
    out.print(table)
    return 0


# ---------------------------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------------------------
def merge_tables(report: Any) -> tuple[Table, Table]:
    """The per-subset table and the correlation table of a :class:`MergeReport`."""
    subsets = Table(title=f"search merge: {len(report.subsets)} subsets of "
                          f"{len(report.names)} sources (Na et al. 2024)",
                    caption=(f"seed {report.seed_steps} steps on the uniform mixture (mean "
                             f"{_fmt(report.seed['mean'])}); one unit model per source, "
                             f"{report.steps} steps from the seed; trained = from the seed on "
                             f"the subset's uniform mixture for steps x |S|"))
    for c in ("subset", "merged mean", "trained mean", "trained - merged"):
        subsets.add_column(c, justify="left" if c == "subset" else "right")
    for s in sorted(report.subsets, key=lambda s: s.trained_mean):
        subsets.add_row("+".join(s.members), _fmt(s.merged_mean), _fmt(s.trained_mean),
                        _fmt(s.trained_mean - s.merged_mean, "+.4f"))
    corr = Table(title="merged-model loss vs trained-model loss over the subsets",
                 caption=f"{report.seconds:.1f}s in all ({report.train_seconds:.1f}s of proxy "
                         "training)")
    for c in ("held-out loss", "n", "Pearson", "Spearman"):
        corr.add_column(c, justify="left" if c == "held-out loss" else "right")
    for target, v in report.correlations.items():
        corr.add_row(target if target == "mean" else f"val/{target}", str(v["n"]),
                     _fmt(v["pearson"]), _fmt(v["spearman"]))
    return subsets, corr


def cmd_merge(args: argparse.Namespace) -> int:
    from mixbatch.search.merge import merge_ablation

    cfg = _load_search_config(args.config)
    proxy = proxy_of_args(args)
    steps = args.steps if args.steps is not None else proxy.steps
    report = merge_ablation(cfg, proxy, steps=steps, seed_steps=args.seed_steps,
                            subsets=args.subsets, subset_seed=args.subset_seed,
                            backend=args.backend, workers=args.workers,
                            ray_address=args.ray_address, progress=progress_enabled(args))
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, report.to_dict())
    _notes(report.notes)
    for t in merge_tables(report):
        out.print(t)
    out.print(f"report: {path}")
    return 0


# ---------------------------------------------------------------------------------------------
# parsers
# ---------------------------------------------------------------------------------------------
def _add_backend_flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--backend", choices=("local", "ray"), default="local",
                    help="local: a process pool here; ray: Ray tasks (default %(default)s)")
    sp.add_argument("--workers", type=positive_int, default=1,
                    help="proxies at a time (default %(default)s)")
    sp.add_argument("--ray-address", metavar="ADDR", default=None,
                    help="an existing Ray cluster (default: start a local one)")
    add_common(sp)


def add_search_parsers(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``search design|run|fit|optimize|evaluate|merge`` on the main command."""
    from mixbatch.search.design import REGMIX_SEED
    from mixbatch.search.optimize import N_SIM, SIM_SEED, TOP_K
    from mixbatch.search.regress import ModelKind

    p = subparsers.add_parser("search", help="offline mixture search (RegMix): design proxy-run "
                                             "mixtures, fit a regressor, choose a mixture")
    sub = p.add_subparsers(dest="search_command", required=True, metavar="ACTION")

    sp = sub.add_parser("design", help="draw candidate mixtures around the token prior (RegMix)")
    sp.add_argument("config", help="config whose sources (prepared) give the token prior")
    sp.add_argument("--n", type=positive_int, required=True, help="number of mixtures")
    sp.add_argument("--out", required=True, metavar="DESIGN.csv",
                    help="where to write the mixtures: index + one weight column per source")
    sp.add_argument("--seed", type=int, default=REGMIX_SEED, help="default %(default)s (RegMix)")
    sp.add_argument("--tokens", type=_tokens, default=None, metavar="T",
                    help="training tokens of the run the mixture is for (e.g. 25B); the epoch "
                         "caps are max_epochs x available / T (default: all available tokens)")
    sp.add_argument("--max-epochs", type=float, default=None, metavar="E",
                    help="epoch cap for sources without max_epochs in the config (default 15)")
    add_common(sp, progress=False)
    sp.set_defaults(func=cmd_design)

    sp = sub.add_parser("fit", help="fit a regressor from mixture weights to a loss")
    sp.add_argument("results", nargs="?", default=None,
                    help="results CSV: index, a weight column per source, loss columns "
                         "(names with '/'), tokens, seconds")
    sp.add_argument("--mixtures", metavar="M.csv", help="mixtures file (with --losses)")
    sp.add_argument("--losses", metavar="L.csv", help="losses file, joined on index")
    sp.add_argument("--target", required=True,
                    help="loss column, or a weighted sum: 'COL=0.5,COL=0.5'")
    sp.add_argument("--model", choices=[k.value for k in ModelKind], default="lightgbm",
                    help="the regressor: LightGBM (RegMix's settings) or linear "
                         "(default %(default)s)")
    sp.add_argument("--out", required=True, metavar="MODEL.json",
                    help="where to save the fitted model (JSON, never pickled)")
    sp.add_argument("--folds", type=int, default=5, help="cross-validation folds (0: none)")
    sp.add_argument("--ridge", type=float, default=0.0, help="L2 penalty for --model linear")
    sp.add_argument("--prior", metavar="CONFIG|name=tokens,...",
                    help="token prior for optimize (default: the mean training mixture)")
    sp.add_argument("--seed", type=int, default=42,
                    help="seed of the folds and the regressor (default %(default)s)")
    sp.add_argument("--plot", metavar="P.png", help="cross-validated predicted vs actual")
    add_common(sp, progress=False)
    sp.set_defaults(func=cmd_fit)

    sp = sub.add_parser("optimize", help="simulate mixtures, average the predicted best")
    sp.add_argument("model", metavar="MODEL.json", help="a model written by search fit")
    sp.add_argument("--n-sim", type=positive_int, default=N_SIM,
                    help="mixtures to simulate around the prior (default %(default)s)")
    sp.add_argument("--top-k", type=positive_int, default=TOP_K,
                    help="average the K predicted best (default %(default)s)")
    sp.add_argument("--out", required=True, metavar="MIXTURE.yaml",
                    help="where to write the chosen mixture (a mixture: block for the config)")
    sp.add_argument("--seed", type=int, default=SIM_SEED,
                    help="seed of the simulation (default %(default)s)")
    sp.add_argument("--prior", metavar="CONFIG|name=tokens,...",
                    help="simulation prior (default: the one saved in the model)")
    sp.add_argument("--plot", metavar="P.png", help="chosen weights vs prior")
    add_common(sp, progress=False)
    sp.set_defaults(func=cmd_optimize)

    sp = sub.add_parser("evaluate", help="rank correlation of a model on held-out runs")
    sp.add_argument("model", metavar="MODEL.json", help="a model written by search fit")
    sp.add_argument("results", nargs="?", default=None, help="results CSV (or --mixtures/--losses)")
    sp.add_argument("--mixtures", metavar="M.csv", help="mixtures file (with --losses)")
    sp.add_argument("--losses", metavar="L.csv", help="losses file, joined on index")
    sp.add_argument("--target", default=None, help="default: the model's target")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    add_common(sp, progress=False)
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("run", help="train one proxy per design row; append losses to a "
                                    "results CSV (resumable)")
    sp.add_argument("config", help="config whose sources (prepared, holdout > 0) the proxies "
                                   "train on")
    sp.add_argument("--design", required=True, metavar="DESIGN.csv",
                    help="index + one weight column per source (search design)")
    sp.add_argument("--out", required=True, metavar="RESULTS.csv",
                    help="results CSV; rows already in it are skipped")
    _add_backend_flags(sp)
    add_proxy_arguments(sp, base=PROXY_BASE)
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("merge", help="data ablations by merging per-source models vs training "
                                      "on the union (Na et al. 2024)")
    sp.add_argument("config", help="config whose sources (prepared, holdout > 0) are the units")
    sp.add_argument("--out", required=True, metavar="MERGE.json",
                    help="where to write every subset's losses and the correlations")
    sp.add_argument("--seed-steps", type=positive_int, default=None,
                    help="steps of the seed model on the uniform mixture (default: --steps)")
    sp.add_argument("--subsets", type=positive_int, default=None, metavar="N",
                    help="N random subsets (default: every pair and a few triples)")
    sp.add_argument("--subset-seed", type=int, default=0,
                    help="seed of the random subsets (default %(default)s)")
    _add_backend_flags(sp)
    add_proxy_arguments(sp, base=PROXY_BASE)
    sp.set_defaults(func=cmd_merge)

    from mixbatch.search.pbt import add_pbt_parser

    add_pbt_parser(sub)
    from mixbatch.search.batch_sweep import add_sweep_parser

    add_sweep_parser(sub)
    return p
