"""The demo's mixture search (steps 7-11 of ``mixbatch demo``): RegMix on the built-in corpus.

A design around the token prior, one small proxy per mixture on the local process pool,
per-source LightGBM and linear fits, the optimiser, and a check: proxies trained on the fit's
mixture and on the prior, two initialisation seeds each. The demo's search is small so that
``make demo`` stays a few minutes on two cores; at that size the fit is often too weak to
choose a mixture. So the demo never prints a mixture without its evidence: the fit's
cross-validated Spearman, the check proxies against each other and the best design run, their
seed-to-seed spread, and a verdict (:func:`search_verdict`) that says plainly whether the
choice can be trusted at this size (also written to ``search/evidence.json``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from mixbatch.atomic import write_json, write_text
from mixbatch.errors import ConfigError

__all__ = ["DEMO_PROXY", "DEMO_SEARCH_RUNS", "TRUST_SPEARMAN", "demo_search", "search_verdict"]

out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)

# the demo's proxies: a few seconds each on one core, so that 24 of them on 2 workers take
# about a minute (the demo's time is in the README)
DEMO_SEARCH_RUNS = 24
DEMO_PROXY = {"n_layer": 1, "d_model": 64, "n_head": 2, "seq_len": 128, "batch_size": 8,
              "steps": 300, "lr": 3e-3, "warmup": 20, "eval_tokens": 8192, "device": "cpu"}
#: the out-of-fold Spearman of the mean loss below which a fit does not choose a mixture
TRUST_SPEARMAN = 0.6


def search_verdict(cv_spearman: float, chosen: list[float], prior: list[float],
                   best_run: float, runs: int) -> dict[str, Any]:
    """Whether a search's choice can be trusted, from its evidence.

    ``chosen`` and ``prior`` are the held-out mean losses of proxies trained on the chosen
    mixture and on the prior, one per initialisation seed; their spread is the noise any gap
    must exceed (``noise = max(range(chosen), range(prior))``). Trusted only when the fit ranks
    held-out runs well (out-of-fold Spearman of the mean loss >= :data:`TRUST_SPEARMAN`), the
    chosen mixture beats the prior by more than the noise, and it is no worse than the best of
    the design's runs (within the noise). Returns the evidence, the verdict and one line.
    """
    c, p = float(np.mean(chosen)), float(np.mean(prior))
    noise = max(float(np.ptp(chosen)), float(np.ptp(prior)))
    reasons = []
    if not math.isfinite(cv_spearman) or cv_spearman < TRUST_SPEARMAN:
        reasons.append(f"the fit's cross-validated Spearman is {cv_spearman:.2f} "
                       f"(< {TRUST_SPEARMAN})")
    if not p - c > noise:
        reasons.append(f"the chosen mixture's proxies ({c:.4f}) do not beat the prior's "
                       f"({p:.4f}) by more than the seed-to-seed spread ({noise:.4f})")
    if c > best_run + noise:
        reasons.append(f"they lost to the best of the {runs} design runs ({best_run:.4f})")
    trusted = not reasons
    if trusted:
        line = (f"trustworthy at this size: CV Spearman {cv_spearman:.2f}; the chosen mixture's "
                f"proxies {c:.4f} beat the prior's {p:.4f} by {p - c:.4f} (seed spread "
                f"{noise:.4f}) and match the best design run ({best_run:.4f})")
    else:
        line = ("NOT trustworthy at this size: " + "; ".join(reasons) + f". {runs} proxy runs "
                "only show the pipeline working; a real search needs hundreds "
                "(RegMix fits 512; `mixbatch search run` with a larger design)")
    return {"trusted": trusted, "cv_spearman": cv_spearman, "chosen_losses": list(chosen),
            "prior_losses": list(prior), "seed_spread": noise, "best_design_loss": best_run,
            "runs": runs, "verdict": line}


def _losses(values: list[float]) -> str:
    return " / ".join(f"{v:.4f}" for v in values) + " (seeds 0 / 1)"


def _fmt(v: Any, spec: str = ".4f") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def demo_search(cfg: Any, stats: dict, work: Path, config_path: Path,
                progress: bool = True) -> dict:
    """Steps 7-11 of ``mixbatch demo``: RegMix on the built-in corpus (design, proxy runs on
    the local backend, LightGBM and linear fits, optimisation, plots, and a proxy trained on
    the chosen mixture to check it). Writes the demo config with the chosen mixture and returns
    the paths written (``config``: that config)."""
    import yaml

    from mixbatch.proxy import ProxyConfig
    from mixbatch.search.backends import ProxyTask, run_proxy_tasks
    from mixbatch.search.design import design_mixtures, write_design_csv
    from mixbatch.search.optimize import mixture_block, optimize, write_mixture_yaml
    from mixbatch.search.plots import plot_predicted_vs_actual, plot_weights
    from mixbatch.search.regress import (
        MeanOfModels,
        correlations,
        cross_validate,
        fit,
        save_model,
    )
    from mixbatch.search.results import read_results_csv
    from mixbatch.search.results_file import LOSS_PREFIX, MEAN_COLUMN
    from mixbatch.search.runner import run_search

    folder = work / "search"
    folder.mkdir(parents=True, exist_ok=True)
    names = list(cfg.sources)
    tokens = np.array([float(stats["sources"][n]["tokens"]) for n in names])
    design = design_mixtures(names, tokens, DEMO_SEARCH_RUNS)
    design_csv = write_design_csv(folder / "design.csv", design)
    out.print(f"7. mixbatch search design: {len(design)} candidate mixtures around the token "
              f"prior (RegMix's Dirichlet generator) → {design_csv}")
    results_csv = folder / "results.csv"
    for stale in (results_csv, results_csv.with_name(results_csv.name + ".run.json")):
        stale.unlink(missing_ok=True)  # the demo starts its search afresh
    proxy = ProxyConfig.from_dict(DEMO_PROXY)
    out.print(f"8. mixbatch search run: one proxy per mixture ({proxy.n_layer} layer, width "
              f"{proxy.d_model}, {proxy.steps} steps x {proxy.batch_size} x {proxy.seq_len} "
              f"tokens), local process pool, 2 workers")
    run = run_search(cfg, design_csv, results_csv, backend="local", workers=2, proxy=proxy,
                     progress=progress)
    per_run = np.mean([r.seconds for r in run.results.values()])
    out.print(f"   {len(run.results)} proxies in {run.seconds:.1f}s ({per_run:.1f}s each) → "
              f"{results_csv}")

    table = read_results_csv(results_csv, names)
    x = table.weights
    y_mean = table.losses[MEAN_COLUMN]
    prior = design.prior
    kinds = ("lightgbm", "linear")
    models: dict[str, list[Any]] = {k: [] for k in kinds}
    oof: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    fits = Table(title=f"9. mixbatch search fit: one regressor per source's held-out loss, "
                       f"{len(table)} runs (5-fold CV Spearman)",
                 caption=f"{MEAN_COLUMN}: the mean of the per-source predictions against the "
                         "measured mean loss, out of fold")
    fits.add_column("target")
    for k in kinds:
        fits.add_column(k, justify="right")
    for n in names:
        target = f"{LOSS_PREFIX}{n}"
        y = table.losses[target]
        row = [target]
        for k in kinds:
            cv, pred = cross_validate(x, y, table.names, k, folds=5)
            model = fit(x, y, table.names, k, target, prior=prior)
            model.cv, model.prior_from = cv, "token share"
            save_model(model, folder / "models" / f"{k}_{n}.json")
            models[k].append(model)
            oof[k].append(pred)
            row.append(_fmt(cv and cv["spearman"], ".3f"))
        fits.add_row(*row)
    plots = folder / "plots"
    mean_cv = {}
    for k in kinds:
        pred = np.mean(oof[k], axis=0)
        mean_cv[k] = correlations(pred, y_mean)[0]
        plot_predicted_vs_actual(pred, y_mean, plots / f"cv_{k}.png",
                                 title=f"{k}, 5-fold CV: {MEAN_COLUMN} (mean of per-source models)")
    fits.add_row(MEAN_COLUMN, *(_fmt(mean_cv[k], ".3f") for k in kinds), style="bold")
    out.print(fits)

    optima = {k: optimize(MeanOfModels(models[k]), prior=prior) for k in kinds}
    best = max(kinds, key=lambda k: mean_cv[k] if math.isfinite(mean_cv[k]) else -math.inf)
    chosen = optima[best]
    mixture_yaml = write_mixture_yaml(folder / "mixture.yaml", chosen)
    plot_weights(chosen.names, chosen.weights, chosen.prior, plots / "chosen_vs_prior.png",
                 title=f"chosen mixture ({best}) vs prior", prior_label="prior (token share)")

    # check the choice: a proxy on the chosen mixture, one on the prior (same settings)
    checks = {"chosen": dict(zip(names, chosen.weights.tolist(), strict=True)),
              "prior": dict(zip(names, prior.tolist(), strict=True))}
    seeds = (0, 1)  # two initialisations each: the spread is the noise a gap must exceed
    measured: dict[str, list[float]] = {k: [math.nan] * len(seeds) for k in checks}
    tasks = [ProxyTask((k, i), f"{k} (seed {sd})", proxy.model_copy(update={"seed": sd}), w)
             for k, w in checks.items() for i, sd in enumerate(seeds)]
    for task, res, error in run_proxy_tasks(cfg, tasks, "local", 2):
        if error is not None:
            raise ConfigError(f"demo: the proxy on the {task.label} mixture failed: {error}")
        kind, i = task.key
        measured[kind][i] = float(res.val_loss_mean)
    best_run = int(np.argmin(y_mean))
    opt = Table(title=f"10. mixbatch search optimize: mean of the {chosen.top_k} best of "
                      f"{chosen.n_sim:,} simulated mixtures, minimising the predicted "
                      f"{MEAN_COLUMN}; chosen by {best} (higher CV Spearman on {MEAN_COLUMN})",
                caption=(f"{MEAN_COLUMN} of proxies trained on it: chosen "
                         f"{_losses(measured['chosen'])} (predicted {chosen.predicted:.4f}), "
                         f"prior {_losses(measured['prior'])}; the {len(table)} design runs: best "
                         f"{y_mean[best_run]:.4f} (index {table.index[best_run]}), median "
                         f"{np.median(y_mean):.4f}"))
    for c in ("source", "prior (token share)", "chosen (lightgbm)", "chosen (linear)",
              "chosen / prior"):
        opt.add_column(c, justify="left" if c == "source" else "right")
    for i, n in sorted(enumerate(chosen.names), key=lambda t: -chosen.weights[t[0]]):
        opt.add_row(n, f"{chosen.prior[i]:.4f}", f"{optima['lightgbm'].weights[i]:.4f}",
                    f"{optima['linear'].weights[i]:.4f}",
                    f"{chosen.weights[i] / chosen.prior[i]:.2f}x")
    out.print(opt)

    verdict = search_verdict(mean_cv[best], measured["chosen"], measured["prior"],
                             float(y_mean[best_run]), len(table))
    write_json(folder / "evidence.json", {**verdict, "fit": best,
                                          "mixture": checks["chosen"]})
    style = "bold green" if verdict["trusted"] else "bold yellow"
    out.print(f"   verdict: {verdict['verdict']}", style=style, markup=False)

    data = yaml.safe_load(config_path.read_text())
    data["mixture"] = {**mixture_block(chosen.names, chosen.weights)["mixture"]}
    chosen_config = work / "demo_chosen.yaml"
    write_text(chosen_config, yaml.safe_dump(data, sort_keys=False))
    return {"design": design_csv, "results": results_csv, "mixture": mixture_yaml,
            "config": chosen_config, "plots": plots, "chosen": checks["chosen"],
            "measured": measured, "best_run": float(y_mean[best_run]), "verdict": verdict,
            "evidence": folder / "evidence.json"}
