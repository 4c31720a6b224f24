"""Choose a mixture from a fitted regressor: simulate, predict, average the best (RegMix §3.3).

As in ``sail-sg/regmix:regression_fitting/regression.ipynb`` ("simulate for Pile-CC"):
``n_sim = 100,000`` mixtures ``w ~ Dir(π)`` with π the *raw* token prior (concentration 1, no
temperature, ``np.random.seed(42)``), predict each, and average the ``k = 128`` with the lowest
predicted loss. The average of the top k, rather than the single best, smooths the regressor's
noise; it is also why the chosen mixture can sit off the simulated points.

The prior comes from the model file (set at ``fit`` time from the sources' token counts), or is
given here; without either, the mean training mixture stands in for it (for a RegMix design that
is about the prior at temperature 0.5, and gives about the same choice: pile_cc 0.87 either way
on RegMix's data [ours]). Optional ``caps`` (largest weight per source, e.g.
:func:`mixbatch.search.design.epoch_caps`) drop simulated mixtures that exceed them before
ranking; RegMix does not cap here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mixbatch.errors import ConfigError
from mixbatch.search.regress import FittedModel, correlations
from mixbatch.search.results import Target, parse_target

__all__ = [
    "N_SIM",
    "SIM_SEED",
    "TOP_K",
    "Optimum",
    "evaluate",
    "mixture_block",
    "optimize",
    "simulate",
    "write_mixture_yaml",
]

N_SIM = 100_000
TOP_K = 128
SIM_SEED = 42
_CHUNK = 50_000  # rows predicted at a time (bounds memory for large n_sim)


@dataclass(frozen=True)
class Optimum:
    """The chosen mixture and how it was found."""

    names: tuple[str, ...]
    weights: np.ndarray  # the mean of the top_k simulated mixtures
    prior: np.ndarray
    predicted: float  # the model's prediction at ``weights``
    top_k_predicted: tuple[float, float]  # best and worst prediction among the top k
    n_sim: int
    top_k: int
    seed: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "weights": {n: float(w) for n, w in zip(self.names, self.weights, strict=True)},
            "prior": {n: float(p) for n, p in zip(self.names, self.prior, strict=True)},
            "predicted": self.predicted, "top_k_predicted": list(self.top_k_predicted),
            "n_sim": self.n_sim, "top_k": self.top_k, "seed": self.seed,
        }


def _check_prior(prior: np.ndarray | Sequence[float], k: int) -> np.ndarray:
    p = np.asarray(prior, dtype=np.float64)
    if p.shape != (k,) or not np.isfinite(p).all() or (p <= 0).any():
        raise ConfigError(f"simulation prior: expected {k} positive numbers, got {p.tolist()}")
    return p / p.sum()


def simulate(prior: np.ndarray | Sequence[float], n: int = N_SIM, seed: int = SIM_SEED,
             strength: float = 1.0) -> np.ndarray:
    """``n`` mixtures ``Dir(strength · π)``, one per row (RegMix: strength 1)."""
    p = _check_prior(prior, len(prior))
    if n < 1:
        raise ConfigError(f"n_sim must be >= 1, got {n}")
    if not strength > 0:
        raise ConfigError(f"simulation strength must be > 0, got {strength}")
    w = np.random.default_rng(seed).dirichlet(p * strength, size=int(n))
    sums = w.sum(axis=1)
    ok = np.isfinite(sums) & (sums > 0)
    return w[ok] / sums[ok, None]


def optimize(model: FittedModel, n_sim: int = N_SIM, top_k: int = TOP_K, seed: int = SIM_SEED,
             prior: np.ndarray | Sequence[float] | None = None,
             caps: np.ndarray | Sequence[float] | None = None, threads: int = 0) -> Optimum:
    """Average the ``top_k`` simulated mixtures with the lowest predicted target."""
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    if prior is None:
        prior = model.prior
    if prior is None:
        raise ConfigError("optimize: the model has no simulation prior; give one (--prior)")
    p = _check_prior(prior, len(model.names))
    sims = simulate(p, n_sim, seed)
    if caps is not None:
        c = np.asarray(caps, dtype=np.float64)
        if c.shape != p.shape:
            raise ConfigError(f"caps: expected {p.size} numbers, got {c.tolist()}")
        sims = sims[(sims <= c[None, :] + 1e-12).all(axis=1)]
    if sims.shape[0] < top_k:
        raise ConfigError(f"optimize: only {sims.shape[0]} simulated mixtures (after caps) for "
                          f"top_k={top_k}; raise n_sim or lower top_k")
    pred = np.concatenate([model.predict(sims[i:i + _CHUNK], threads=threads)
                           for i in range(0, sims.shape[0], _CHUNK)])
    # stable sort: ties keep simulation order, so the choice is a function of the seed
    best = np.argsort(pred, kind="stable")[:top_k]
    chosen = sims[best].mean(axis=0)
    chosen /= chosen.sum()
    return Optimum(names=model.names, weights=chosen, prior=p,
                   predicted=float(model.predict(chosen)[0]),
                   top_k_predicted=(float(pred[best[0]]), float(pred[best[-1]])),
                   n_sim=int(n_sim), top_k=int(top_k), seed=int(seed))


def mixture_block(names: Sequence[str], weights: np.ndarray | Sequence[float],
                  digits: int = 6) -> dict[str, Any]:
    """``{"mixture": {"unit": "tokens", "weights": {...}}}`` for a mixbatch config.

    Weights are rounded to ``digits`` decimals with largest remainders, so they still sum to 1.
    """
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    units = 10 ** digits
    scaled = w * units
    base = np.floor(scaled).astype(np.int64)
    order = np.argsort(-(scaled - base), kind="stable")
    base[order[: units - int(base.sum())]] += 1
    return {"mixture": {"unit": "tokens",
                        "weights": {str(n): round(int(b) / units, digits)
                                    for n, b in zip(names, base, strict=True)}}}


def write_mixture_yaml(path: str | Path, optimum: Optimum, comment: str | None = None) -> Path:
    """Write the ``mixture:`` block (with a comment saying how it was chosen)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = comment or (f"chosen by mixbatch search optimize: mean of the {optimum.top_k} best of "
                       f"{optimum.n_sim:,} simulated mixtures (seed {optimum.seed}); "
                       f"predicted target {optimum.predicted:.6g}")
    body = yaml.safe_dump(mixture_block(optimum.names, optimum.weights), sort_keys=False)
    path.write_text("".join(f"# {line}\n" for line in head.splitlines()) + body, encoding="utf-8")
    return path


def evaluate(model: FittedModel, mixtures: np.ndarray,
             losses: np.ndarray | Mapping[str, np.ndarray],
             target: str | Target | None = None) -> dict[str, Any]:
    """How well ``model`` ranks held-out runs.

    ``mixtures`` is ``[n, K]`` in the model's source order; ``losses`` is the target per run, or
    a mapping of loss columns from which ``target`` (default: the model's) is computed. Runs
    with a NaN target are left out. Returns ``{"spearman", "pearson", "best_true_rank", "n",
    "rmse"}``; ``best_true_rank`` is the true rank (1 = lowest loss) of the run the model
    predicts best.
    """
    x = np.asarray(mixtures, dtype=np.float64)
    if isinstance(losses, Mapping):
        t = parse_target(target if target is not None else model.target)
        t = t.resolve(list(losses), "losses")
        y = t.values(losses)
    else:
        y = np.asarray(losses, dtype=np.float64)
    if y.shape != (x.shape[0],):
        raise ConfigError(f"evaluate: {x.shape[0]} mixtures but {y.size} losses")
    keep = np.isfinite(y)
    if not keep.any():
        raise ConfigError("evaluate: the target is NaN in every run")
    x, y = x[keep], y[keep]
    pred = model.predict(x)
    rho, r = correlations(pred, y)
    best = int(np.argmin(pred))
    return {"spearman": rho, "pearson": r,
            "best_true_rank": int(1 + np.sum(y < y[best])), "n": int(y.size),
            "rmse": float(math.sqrt(float(np.mean((pred - y) ** 2))))}
