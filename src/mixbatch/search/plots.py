"""Plots of a mixture search: predicted vs actual loss, chosen weights vs prior (PNG, Agg)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_predicted_vs_actual", "plot_weights"]


def _pyplot():  # matplotlib.pyplot, imported late with the Agg backend
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_predicted_vs_actual(predicted: np.ndarray, actual: np.ndarray, out: str | Path,
                             spearman: float | None = None, pearson: float | None = None,
                             title: str = "predicted vs actual") -> Path:
    """Scatter of predicted against actual target, with ρ (and r) in the title."""
    from mixbatch.search.regress import correlations

    plt = _pyplot()
    pred = np.asarray(predicted, dtype=np.float64)
    act = np.asarray(actual, dtype=np.float64)
    if spearman is None or pearson is None:
        rho, r = correlations(pred, act)
        spearman = rho if spearman is None else spearman
        pearson = r if pearson is None else pearson
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=120)
    ax.scatter(pred, act, s=10, alpha=0.6, edgecolors="none")
    lo = float(np.nanmin([pred.min(), act.min()]))
    hi = float(np.nanmax([pred.max(), act.max()]))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="y = x")
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")

    def fmt(v: float | None) -> str:
        return "n/a" if v is None or not math.isfinite(v) else f"{v:.3f}"

    ax.set_title(f"{title}\nSpearman ρ = {fmt(spearman)}, Pearson r = {fmt(pearson)}, "
                 f"n = {pred.size}", fontsize=10)
    ax.legend(loc="upper left")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_weights(names: Sequence[str], chosen: np.ndarray, prior: np.ndarray | None,
                 out: str | Path, title: str = "chosen mixture vs prior",
                 prior_label: str = "prior (token share)") -> Path:
    """Side-by-side bars: the chosen weight and the prior (token share) per source."""
    plt = _pyplot()
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(names) + 2), 4.5), dpi=120)
    width = 0.4 if prior is not None else 0.8
    if prior is not None:
        ax.bar(x - width / 2, prior, width, label=prior_label, color="#8c9fd1")
        ax.bar(x + width / 2, chosen, width, label="chosen", color="#c3364a")
    else:
        ax.bar(x, chosen, width, label="chosen", color="#c3364a")
    ax.set_xticks(x, list(names), rotation=60, ha="right")
    ax.set_ylabel("weight")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
