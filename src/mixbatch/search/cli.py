"""``mixbatch search``: design proxy-run mixtures, fit a regressor, choose a mixture, evaluate.

The main command registers these with :func:`add_search_parsers`; each ``cmd_*`` takes the
parsed arguments and returns the exit code. Errors are :class:`~mixbatch.errors.ConfigError`
(exit code 2), printed as one line by the main command.

::

    mixbatch search design CONFIG --n 512 --out design.csv [--seed 42] [--tokens T]
    mixbatch search fit RESULTS.csv --target loss/all --out model.json [--model lightgbm|linear]
    mixbatch search fit --mixtures M.csv --losses L.csv --target COL --out model.json
    mixbatch search optimize model.json --out mixture.yaml [--n-sim 100000] [--top-k 128]
    mixbatch search evaluate model.json --mixtures M.csv --losses L.csv [--target COL] [--json]
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

from mixbatch.errors import ConfigError

__all__ = [
    "add_search_parsers",
    "cmd_design",
    "cmd_evaluate",
    "cmd_fit",
    "cmd_optimize",
    "parse_prior",
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


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def _notes(notes: Any) -> None:
    for note in notes:
        err.print(f"note: {note}", markup=False, soft_wrap=True)


def _config_tokens(path: str | Path) -> tuple[list[str], np.ndarray, Any]:
    """Source names, their prepared token counts, and the config."""
    from mixbatch.config import load_config
    from mixbatch.stats import config_stats

    cfg = load_config(path)
    stats = config_stats(cfg)
    names = list(cfg.sources)
    return names, np.array([float(stats["sources"][n]["tokens"]) for n in names]), cfg


def parse_prior(spec: str, names: tuple[str, ...] | list[str]) -> np.ndarray:
    """The simulation prior over ``names`` from a config file (its sources' prepared token
    counts) or from ``name=count,name=count`` (token counts or shares; normalised)."""
    names = list(names)
    if "=" not in spec and (spec.endswith((".yaml", ".yml")) or Path(spec).is_file()):
        cfg_names, tokens, _ = _config_tokens(spec)
        counts = dict(zip(cfg_names, tokens, strict=True))
        origin = spec
    else:
        counts, origin = {}, "--prior"
        for part in spec.split(","):
            name, eq, value = part.strip().rpartition("=")
            try:
                counts[name.strip()] = float(value)
            except ValueError:
                raise ConfigError(f"--prior: expected name=tokens,name=tokens,... or a config "
                                  f"file, got {part.strip()!r}") from None
            if not eq or not name.strip():
                raise ConfigError(f"--prior: expected name=tokens, got {part.strip()!r}")
    missing = [n for n in names if n not in counts]
    extra = [n for n in counts if n not in names]
    if missing or extra:
        raise ConfigError(f"{origin}: prior sources do not match the model's: "
                          + "; ".join(([f"missing {', '.join(missing)}"] if missing else [])
                                      + ([f"unexpected {', '.join(extra)}"] if extra else [])))
    p = np.array([counts[n] for n in names], dtype=np.float64)
    if not (np.isfinite(p).all() and (p > 0).all()):
        raise ConfigError(f"{origin}: every source needs a positive token count for the prior")
    return p / p.sum()


# ---------------------------------------------------------------------------------------------
# design
# ---------------------------------------------------------------------------------------------
def cmd_design(args: argparse.Namespace) -> int:
    from mixbatch.search.design import DesignSettings, design_mixtures, write_design_csv

    names, tokens, cfg = _config_tokens(args.config)
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
        prior, prior_from = parse_prior(args.prior, table.names), args.prior
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
    prior = parse_prior(args.prior, model.names) if args.prior else None
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
# parsers
# ---------------------------------------------------------------------------------------------
def add_search_parsers(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``search design|fit|optimize|evaluate`` on the main command's subparsers."""
    from mixbatch.search.design import REGMIX_SEED
    from mixbatch.search.optimize import N_SIM, SIM_SEED, TOP_K
    from mixbatch.search.regress import ModelKind

    p = subparsers.add_parser("search", help="offline mixture search (RegMix): design proxy-run "
                                             "mixtures, fit a regressor, choose a mixture")
    sub = p.add_subparsers(dest="search_command", required=True, metavar="ACTION")

    sp = sub.add_parser("design", help="draw candidate mixtures around the token prior (RegMix)")
    sp.add_argument("config", help="config whose sources (prepared) give the token prior")
    sp.add_argument("--n", type=_positive_int, required=True, help="number of mixtures")
    sp.add_argument("--out", required=True, metavar="DESIGN.csv")
    sp.add_argument("--seed", type=int, default=REGMIX_SEED, help="default %(default)s (RegMix)")
    sp.add_argument("--tokens", type=_tokens, default=None, metavar="T",
                    help="training tokens of the run the mixture is for (e.g. 25B); the epoch "
                         "caps are max_epochs x available / T (default: all available tokens)")
    sp.add_argument("--max-epochs", type=float, default=None, metavar="E",
                    help="epoch cap for sources without max_epochs in the config (default 15)")
    sp.set_defaults(func=cmd_design)

    sp = sub.add_parser("fit", help="fit a regressor from mixture weights to a loss")
    sp.add_argument("results", nargs="?", default=None,
                    help="results CSV: index, a weight column per source, loss columns "
                         "(names with '/'), tokens, seconds")
    sp.add_argument("--mixtures", metavar="M.csv", help="mixtures file (with --losses)")
    sp.add_argument("--losses", metavar="L.csv", help="losses file, joined on index")
    sp.add_argument("--target", required=True,
                    help="loss column, or a weighted sum: 'COL=0.5,COL=0.5'")
    sp.add_argument("--model", choices=[k.value for k in ModelKind], default="lightgbm")
    sp.add_argument("--out", required=True, metavar="MODEL.json")
    sp.add_argument("--folds", type=int, default=5, help="cross-validation folds (0: none)")
    sp.add_argument("--ridge", type=float, default=0.0, help="L2 penalty for --model linear")
    sp.add_argument("--prior", metavar="CONFIG|name=tokens,...",
                    help="token prior for optimize (default: the mean training mixture)")
    sp.add_argument("--seed", type=int, default=42)
    sp.add_argument("--plot", metavar="P.png", help="cross-validated predicted vs actual")
    sp.set_defaults(func=cmd_fit)

    sp = sub.add_parser("optimize", help="simulate mixtures, average the predicted best")
    sp.add_argument("model", metavar="MODEL.json")
    sp.add_argument("--n-sim", type=_positive_int, default=N_SIM)
    sp.add_argument("--top-k", type=_positive_int, default=TOP_K)
    sp.add_argument("--out", required=True, metavar="MIXTURE.yaml")
    sp.add_argument("--seed", type=int, default=SIM_SEED)
    sp.add_argument("--prior", metavar="CONFIG|name=tokens,...",
                    help="simulation prior (default: the one saved in the model)")
    sp.add_argument("--plot", metavar="P.png", help="chosen weights vs prior")
    sp.set_defaults(func=cmd_optimize)

    sp = sub.add_parser("evaluate", help="rank correlation of a model on held-out runs")
    sp.add_argument("model", metavar="MODEL.json")
    sp.add_argument("results", nargs="?", default=None, help="results CSV (or --mixtures/--losses)")
    sp.add_argument("--mixtures", metavar="M.csv")
    sp.add_argument("--losses", metavar="L.csv")
    sp.add_argument("--target", default=None, help="default: the model's target")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.set_defaults(func=cmd_evaluate)
    return p
