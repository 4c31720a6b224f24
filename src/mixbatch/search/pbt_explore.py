"""PBT's *explore* step for mixture weights, on the probability simplex.

"Population Based Training of Neural Networks" (Jaderberg et al. 2017, section 3.2) explores by
*perturb* (each hyperparameter times a factor drawn from {0.8, 1.2}) or *resample* (a fresh draw
from the prior). Mixture weights live on the simplex, so here

- perturb: ``w'_i = f_i w_i / sum_j f_j w_j`` with ``f_i`` drawn uniformly from
  :data:`PERTURB_FACTORS` for every source independently (multiplicative, then renormalised);
  where every source drew the same factor (the renormalised vector would be unchanged), one
  source, drawn at random, takes another factor, so a perturb always moves the weights;
- resample (with probability ``resample``): a draw from the flat Dirichlet(1, ..., 1).

Every vector PBT hands to a member then goes through :func:`snap`: each weight at least
:data:`MIN_WEIGHT` (a source multiplied towards 0 could never come back: 0.8 * 0 = 0) and
rounded to :data:`DIGITS` decimals that still sum to 1, so that the ``schedule:`` written at
the end holds exactly the numbers the member trained on (a YAML float round-trips exactly).
"""

from __future__ import annotations

import numpy as np

from mixbatch.checks import real
from mixbatch.search.optimize import mixture_block

__all__ = ["DIGITS", "MIN_WEIGHT", "PERTURB_FACTORS", "initial_population", "perturb", "snap"]

PERTURB_FACTORS = (0.8, 1.2)
MIN_WEIGHT = 1e-3
DIGITS = 6


def snap(names: list[str], weights: np.ndarray) -> dict[str, float]:
    """``weights`` floored at :data:`MIN_WEIGHT`, renormalised and rounded to :data:`DIGITS`
    decimals that sum to 1 (largest remainders), by source name."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(names),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"snap: expected {len(names)} non-negative weights with a positive sum, "
                         f"got {w.tolist()}")
    w = np.maximum(w / w.sum(), MIN_WEIGHT)
    return mixture_block(names, w / w.sum(), DIGITS)["mixture"]["weights"]


def perturb(weights: np.ndarray, rng: np.random.Generator, resample: float = 0.25,
            factors: tuple[float, ...] = PERTURB_FACTORS) -> np.ndarray:
    """One explore step of ``weights`` (see the module docstring); returns a vector on the
    simplex (not yet :func:`snap` ped)."""
    resample = real("resample", resample, lo=0.0, hi=1.0)
    w = np.asarray(weights, dtype=np.float64)
    if rng.random() < resample:
        return rng.dirichlet(np.ones(w.size))
    pick = rng.integers(0, len(factors), size=w.size)
    if w.size > 1 and len(set(factors)) > 1 and np.all(np.asarray(factors)[pick] == factors[pick[0]]):
        j = int(rng.integers(0, w.size))  # all alike: renormalising would undo the perturb
        others = [k for k, x in enumerate(factors) if x != factors[pick[j]]]
        pick[j] = others[int(rng.integers(0, len(others)))]
    f = np.asarray(factors, dtype=np.float64)[pick]
    w = w * f
    return w / w.sum()


def initial_population(names: list[str], first: np.ndarray, population: int,
                       rng: np.random.Generator) -> list[dict[str, float]]:
    """The members' starting weights: member 0 on ``first`` (the config's mixture), the others
    drawn from the flat Dirichlet, each :func:`snap` ped."""
    draws = [np.asarray(first, dtype=np.float64)]
    draws += [rng.dirichlet(np.ones(len(names))) for _ in range(population - 1)]
    return [snap(names, w) for w in draws]
