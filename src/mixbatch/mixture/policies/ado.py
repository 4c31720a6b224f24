"""ADO: per-domain scaling laws fitted online steer the mixture towards the fastest learners.

Paper: Jiang, Zhou, Feng, Ghosh, Kolter, "Adaptive Data Optimization: Dynamic Sample Selection
with Scaling Laws" (ICLR 2025); code ``yidingjiang/ado:src/data_selectors/ado.py``
(``AdoSelector``), whose rules this follows.

**Law.** Each domain ``k`` has a power law in ``n``, the number of units trained so far (all
domains together: the code's default ``use_same_step_size``)::

    L̂_k(n) = e^{E_k} + e^{A_k} · n^{−α_k}

fitted on log-losses, ``log L̂ = logsumexp(A − α·log n, E)``, with a Huber loss (``δ = 10⁻³``)
by L-BFGS from the authors' 8 × 8 × 8 grid of starting points. The code's soft bounds
``0 ≤ α ≤ 0.8``, ``E ≥ 0.5``, ``A ≤ 6.5`` are hard bounds here (settings ``alpha_max``,
``log_irreducible_min``, ``log_scale_max``).

**Sampling rule** (``AdoSelector.curr_dist``), every step from ``start`` once a fit exists::

    ρ_k ∝ μ_k · √(h_k (1 − h_k)) · max(α_k, 0.05) · (L̂_k(n) − e^{E_k}) / n
    ρ   ← clip_min_probability(ρ, min_prob)
    π_t = 0.9 · π̄_{t−1} + 0.1 · ρ,      π̄_t = (1 − 1/(t+1)) · π̄_{t−1} + ρ / (t+1)

with ``μ`` the prior (``initial``, the natural shares; default uniform), ``h`` an exponential
average (``γ = 0.9``) of the realised sampling fractions (from ``counts``), ``π̄`` the running
average of ``ρ`` (starting at ``μ``) and ``t`` the step. Before the first fit ``π = μ``.

**Bounded sufficient statistics (a deviation from the code).** The code keeps every step's
loss, smooths the whole history with a Savitzky–Golay filter (window 101, order 3) and fits every
10th point after the first ``ignore`` steps, so its memory and refit cost grow with the run. The
fit only needs the loss as a function of ``log n``, and the law is smooth in ``log n``; so each
domain keeps, per log-spaced bin of ``n`` (``bins_per_decade`` bins per factor of 10), the
number of steps, the sum of ``log n`` and the sum of ``log L`` seen in it (:class:`LogBins`).
The fit uses the bin means weighted by their step counts, which weights the curve uniformly in
``n`` as the code's every-10th-step points do; averaging within a bin replaces the filter. The
state is ``3·K·bins_per_decade·log₁₀(n_last / n_first)`` numbers (360 per domain for ``n``
growing a millionfold at 20 bins per decade), whatever the run length. ``tests/test_policy_ado.py`` and
``benchmarks/bench_ado_fit.py`` measure how close it stays to the full-history fit on
simulated noisy power-law runs (record in ``benchmarks/RESULTS.md``).

Absent domains: a domain with no tokens in a step (``NaN`` loss, ``observed`` false or zero
count) adds no point to its bins (the code imputes its last loss instead, which would add points
the model never measured). A domain needs points in at least three bins before it can be
fitted; until every domain can, the weights stay at ``μ``.

Defaults from the code's configs: refit every 1000 steps (``update_interval``), weights from step
500 (``start_step``), the first 1000 steps left out of the fit (``ignore_steps``),
``min_prob = 0.01``. ``mixture.policy`` scales the step counts to short runs (see
:mod:`~mixbatch.mixture.policies.spec`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import minimize

from mixbatch.checks import integer, real, vector
from mixbatch.errors import ConfigError
from mixbatch.mixture.policies.base import Feedback, Policy, PolicySettings, _simplex

__all__ = [
    "ADO",
    "ADOSettings",
    "LawBounds",
    "LogBins",
    "clip_min_probability",
    "fit_power_law",
    "power_law",
]

HUBER_DELTA = 1e-3
HISTORY_GAMMA = 0.9  # the code's EMA of realised sampling fractions
AVERAGE_MIX = 0.9  # π = 0.9·π̄ + 0.1·ρ
MIN_EXPONENT = 0.05  # the code bounds α from below when it computes the slope
MIN_BINS = 3  # a domain needs points in this many bins before it is fitted
FIT_METHOD = "TNC"  # bounded truncated Newton: no BLAS calls, so no thread contention
FIT_OPTIONS = {"maxfun": 300, "ftol": 1e-15, "xtol": 1e-12, "gtol": 1e-12}


def power_law(params: np.ndarray, n: np.ndarray | float) -> np.ndarray:
    """``e^E + e^A · n^{−α}`` for ``params = (A, E, α)`` (rows of a ``[K, 3]`` array too)."""
    p = np.asarray(params, dtype=np.float64)
    a, e, alpha = p[..., 0], p[..., 1], p[..., 2]
    return np.exp(e) + np.exp(a - alpha * np.log(n))


@dataclass(frozen=True)
class LawBounds:
    """Hard bounds of the fit: ``0 ≤ α ≤ alpha_max``, ``E ≥ log_irreducible_min``,
    ``A ≤ log_scale_max`` (the code's soft bounds)."""

    alpha_max: float = 0.8
    log_irreducible_min: float = 0.5
    log_scale_max: float = 6.5

    def box(self) -> list[tuple[float | None, float | None]]:
        return [(None, self.log_scale_max), (self.log_irreducible_min, None),
                (0.0, self.alpha_max)]

    def grid(self) -> np.ndarray:
        """The code's 512 starting points, moved inside the bounds, ``[G, 3]``."""
        a, e, al = np.meshgrid(np.arange(-2.0, 6.0, 1.0), np.arange(-2.0, 2.0, 0.5),
                               np.arange(0.0, 0.8, 0.1), indexing="ij")
        g = np.stack([a.ravel(), e.ravel(), al.ravel()], axis=1)
        g[:, 0] = np.minimum(g[:, 0], self.log_scale_max)
        g[:, 1] = np.maximum(g[:, 1], self.log_irreducible_min)
        g[:, 2] = np.clip(g[:, 2], 0.0, self.alpha_max)
        return np.unique(g, axis=0)


def _objective(params: np.ndarray, x: np.ndarray, y: np.ndarray, w: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Weighted Huber loss of ``logsumexp(A − α·x, E)`` against ``y`` and its gradient.
    ``params`` is ``[..., 3]``; the result is ``[...]`` and ``[..., 3]``."""
    a, e, alpha = params[..., 0:1], params[..., 1:2], params[..., 2:3]
    u = a - alpha * x
    pred = np.logaddexp(u, e)
    r = pred - y
    ar = np.abs(r)
    # Huber / δ: the same minimiser, with gradients of order 1 for L-BFGS's tolerances
    huber = np.where(ar > HUBER_DELTA, ar - 0.5 * HUBER_DELTA, 0.5 * r * r / HUBER_DELTA)
    psi = w * np.clip(r / HUBER_DELTA, -1.0, 1.0)
    sig = np.exp(u - pred)
    grad = np.stack([(psi * sig).sum(-1), (psi * (1.0 - sig)).sum(-1),
                     -(psi * sig * x).sum(-1)], axis=-1)
    return (w * huber).sum(-1), grad


def fit_power_law(log_n: Any, log_loss: Any, weight: Any = None,
                  bounds: LawBounds | None = None, starts: int = 4) -> np.ndarray:
    """Fit ``log L = logsumexp(A − α·log n, E)`` by weighted Huber loss; returns ``(A, E, α)``.

    The objective is evaluated at the whole starting grid at once; L-BFGS-B (analytic
    gradient, at most 200 iterations, within the bounds) runs from the ``starts`` best grid
    points and the best result is kept. ``weight`` defaults to one per point."""
    x = np.asarray(log_n, dtype=np.float64)
    y = np.asarray(log_loss, dtype=np.float64)
    w = np.ones_like(x) if weight is None else np.asarray(weight, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.shape != w.shape or x.size < MIN_BINS:
        raise ConfigError(f"fit_power_law: expected {MIN_BINS} or more points in equal-length "
                          f"flat arrays, got shapes {x.shape}, {y.shape}, {w.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all() and np.isfinite(w).all()):
        raise ConfigError("fit_power_law: points and weights must be finite")
    w = w / w.sum()
    b = bounds or LawBounds()
    grid = b.grid()
    values, _ = _objective(grid, x, y, w)
    best_x, best_v = grid[int(np.argmin(values))], float(values.min())
    for start in grid[np.argsort(values)[:starts]]:
        res = minimize(lambda p: _objective(p, x, y, w), start, jac=True, method=FIT_METHOD,
                       bounds=b.box(),
                       options=FIT_OPTIONS)
        if np.isfinite(res.fun) and res.fun < best_v:
            best_x, best_v = res.x, float(res.fun)
    return np.asarray(best_x, dtype=np.float64)


class LogBins:
    """Per-domain sums over log-spaced bins of ``n``: steps, ``Σ log n`` and ``Σ log L``.

    Bin ``b`` holds ``n`` with ``⌊bins_per_decade · log₁₀ n⌋ = b``; the arrays cover the bins
    from the first one used (``first``) to the highest, so their size is logarithmic in the
    ratio of the last ``n`` to the first."""

    def __init__(self, num_sources: int, bins_per_decade: int) -> None:
        self.k = num_sources
        self.per_decade = bins_per_decade
        self.first = 0
        self.count = np.zeros((num_sources, 0))
        self.sum_x = np.zeros((num_sources, 0))
        self.sum_y = np.zeros((num_sources, 0))

    def _cover(self, b: int) -> int:
        """Grow the arrays to hold bin ``b``; its column."""
        width = self.count.shape[1]
        if width == 0:
            self.first = b
        lo, hi = min(self.first, b), max(self.first + width - 1, b)
        if (lo, hi - lo + 1) != (self.first, width):
            left, right = self.first - lo, hi - lo + 1 - width - (self.first - lo)
            self.count, self.sum_x, self.sum_y = (
                np.pad(m, ((0, 0), (left, right))) for m in (self.count, self.sum_x, self.sum_y))
            self.first = lo
        return b - self.first

    def add(self, n: float, loss: np.ndarray, seen: np.ndarray) -> None:
        """One step: total units ``n >= 1``, losses ``[K]`` (> 0 where ``seen``)."""
        col = self._cover(math.floor(self.per_decade * math.log10(n)))
        self.count[seen, col] += 1.0
        self.sum_x[seen, col] += math.log(n)
        self.sum_y[seen, col] += np.log(loss[seen])

    def points(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Domain ``i``'s non-empty bins: mean ``log n``, mean ``log L``, step count."""
        c = self.count[i]
        nz = c > 0
        return self.sum_x[i, nz] / c[nz], self.sum_y[i, nz] / c[nz], c[nz]

    def filled(self) -> np.ndarray:
        """Non-empty bins per domain ``[K]``."""
        return (self.count > 0).sum(axis=1)

    def state(self) -> dict[str, Any]:
        return {"first": self.first, "count": self.count.tolist(), "sum_x": self.sum_x.tolist(),
                "sum_y": self.sum_y.tolist()}

    def load(self, state: Mapping[str, Any]) -> None:
        mats = [np.array(state[key], dtype=np.float64).reshape(self.k, -1)
                for key in ("count", "sum_x", "sum_y")]
        if len({m.shape for m in mats}) != 1:
            raise ValueError("bins have different shapes")
        self.first = int(state["first"])
        self.count, self.sum_x, self.sum_y = mats


def clip_min_probability(probs: np.ndarray, min_prob: float) -> np.ndarray:
    """The code's ``clip_min_probability``: raise entries to ``min_prob`` and renormalise
    (which leaves the raised entries slightly below ``min_prob``, as in the code)."""
    deficit = max(min_prob * probs.shape[0] - probs.sum(), 0.0)
    scaled = probs * (1.0 - deficit) / probs.sum()
    clipped = np.maximum(scaled, min_prob)
    return clipped / clipped.sum()


@dataclass(frozen=True)
class ADOSettings(PolicySettings):
    """ADO settings.

    Attributes:
        refit_every: steps between scaling-law refits (the code's ``update_interval``).
        start: first step at which the fitted laws set the weights (``start_step``).
        ignore: the first steps, left out of the fit (``ignore_steps``).
        min_prob: every domain's probability in ``ρ`` is at least this.
        bins_per_decade: resolution of the log-spaced bins of ``n`` (module docstring).
        alpha_max, log_irreducible_min, log_scale_max: bounds of the fit (:class:`LawBounds`).
        initial: the prior ``μ`` (natural shares; default uniform), also the weights before
            the first fit.
    """

    every: int = 1
    refit_every: int = 1000
    start: int = 500
    ignore: int = 1000
    min_prob: float = 0.01
    bins_per_decade: int = 20
    alpha_max: float = 0.8
    log_irreducible_min: float = 0.5
    log_scale_max: float = 6.5
    initial: tuple[float, ...] | None = None

    def check(self) -> None:
        super().check()
        if self.every != 1:
            raise ConfigError(f"every: ADO observes every step (its laws need every step's "
                              f"loss; refit_every sets the refit cadence), got {self.every!r}")
        integer("refit_every", self.refit_every, lo=1)
        integer("start", self.start, lo=0)
        integer("ignore", self.ignore, lo=0)
        real("min_prob", self.min_prob, lo=0.0, hi=1.0, hi_open=True)
        integer("bins_per_decade", self.bins_per_decade, lo=1, hi=1000)
        real("alpha_max", self.alpha_max, lo=0.0, lo_open=True)
        real("log_irreducible_min", self.log_irreducible_min)
        real("log_scale_max", self.log_scale_max)
        object.__setattr__(self, "initial", vector("initial", self.initial))

    @property
    def bounds(self) -> LawBounds:
        return LawBounds(self.alpha_max, self.log_irreducible_min, self.log_scale_max)


class ADO(Policy):
    """Adaptive Data Optimization (see the module docstring)."""

    name: ClassVar[str] = "ado"
    Settings: ClassVar[type[PolicySettings]] = ADOSettings
    settings: ADOSettings

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"train_loss", "counts"})

    def _check_settings(self, settings: ADOSettings) -> None:  # type: ignore[override]
        if settings.min_prob * self.num_sources > 1.0:
            raise ConfigError(f"min_prob: {settings.min_prob} is too large for "
                              f"{self.num_sources} sources (K·min_prob must be <= 1)")

    def _setup(self) -> None:
        k = self.num_sources
        self.prior = _simplex("initial", self.settings.initial, k)
        self.p = self.prior.copy()
        self.p_avg = self.prior.copy()
        self.history = self.prior.copy()
        self.total = 0.0
        self.params: np.ndarray | None = None
        self.fits = 0
        self.bins = LogBins(k, self.settings.bins_per_decade)

    def _update(self, fb: Feedback) -> None:
        s = self.settings
        assert fb.counts is not None and fb.train_loss is not None
        counts, loss = fb.counts, fb.train_loss
        if counts.sum() > 0:
            self.total += float(counts.sum())
            self.history = HISTORY_GAMMA * self.history + (1 - HISTORY_GAMMA) * counts / counts.sum()
        seen = fb.mask(self.num_sources) & np.isfinite(loss) & (counts > 0)
        bad = seen & (loss <= 0)
        if bad.any():
            raise ConfigError(f"policy 'ado': feedback.train_loss[{int(np.argmax(bad))}] is "
                              f"{loss[bad][0]}; the power law needs losses > 0")
        if fb.step > s.ignore and self.total >= 1 and seen.any():
            self.bins.add(self.total, loss, seen)
        if fb.step >= s.start and fb.step % s.refit_every == 0:
            self._refit()
        if fb.step >= s.start and self.params is not None:
            self._mix(fb.step)
            self.updates += 1

    def _refit(self) -> None:
        if (self.bins.filled() < MIN_BINS).any():
            return
        params = np.stack([fit_power_law(*self.bins.points(i), bounds=self.settings.bounds)
                           for i in range(self.num_sources)])
        if np.isfinite(params).all():
            self.params = params
            self.fits += 1

    def _mix(self, step: int) -> None:
        assert self.params is not None
        irreducible = np.exp(self.params[:, 1])
        exponent = np.maximum(self.params[:, 2], MIN_EXPONENT)
        reducible = power_law(self.params, self.total) - irreducible
        slope = exponent * reducible / self.total
        rho = slope * self.prior * np.sqrt(self.history * (1.0 - self.history))
        if not (rho.sum() > 0):  # every domain at its floor of the law: keep the mixture
            return
        rho = clip_min_probability(rho / rho.sum(), self.settings.min_prob)
        self.p = AVERAGE_MIX * self.p_avg + (1 - AVERAGE_MIX) * rho
        self.p_avg = (1 - 1 / (step + 1)) * self.p_avg + rho / (step + 1)

    def laws(self) -> np.ndarray | None:
        """The fitted ``(A, E, α)`` per domain ``[K, 3]``, or ``None`` before the first fit."""
        return None if self.params is None else self.params.copy()

    def _raw_weights(self) -> np.ndarray:
        return self.p / self.p.sum()

    def _state(self) -> dict[str, Any]:
        return {"p": self.p.tolist(), "p_avg": self.p_avg.tolist(),
                "history": self.history.tolist(), "total": self.total, "fits": self.fits,
                "params": None if self.params is None else self.params.tolist(),
                "bins": self.bins.state()}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.p = self._vec(state, "p")
        self.p_avg = self._vec(state, "p_avg")
        self.history = self._vec(state, "history")
        self.total = float(state["total"])
        self.fits = int(state["fits"])
        if state["params"] is None:
            self.params = None
        else:
            params = np.array(state["params"], dtype=np.float64)
            if params.shape != (self.num_sources, 3):
                raise ValueError(f"params has shape {params.shape}")
            self.params = params
        self.bins.load(state["bins"])
