"""Candidate mixtures for proxy runs: RegMix's Dirichlet design generator.

Implements the generator of RegMix (Liu et al. 2024, "RegMix: Data Mixture as Regression for
Language Model Pre-training"), as released in ``sail-sg/regmix:mixture_config/synthesize_mixture.py``
(``generate_weights_dirichlet``). With π the token shares of the sources (the *prior*):

1. temperature: ``π_T = π**τ / Σ π**τ`` (``TEMP = 0.5``);
2. each draw picks a concentration ``s`` uniformly from ``np.logspace(log10 0.1, log10 5, 15)``
   (``MIN_STRENGH = 0.1``, ``MAX_STRENGH = 5.0``; RegMix draws one Dirichlet sample per
   strength and keeps one at random, which is the same distribution) and draws
   ``w ~ Dir(s · π_T)``;
3. epoch caps: a draw is rejected when a weight exceeds ``min(E_i · n_i / T, 1)``, the share of
   a training budget of ``T`` tokens that source ``i`` can fill with ``n_i`` tokens repeated at
   most ``E_i`` times (``MAXIMUM_USAGE = 15``; RegMix writes ``min(15 · π_i, 1)``, which is our
   rule with ``T`` = all available tokens, our default);
4. minimum weight: entries below ``m`` become 0, the row is renormalised and rounded to
   multiples of ``m`` (``MINIMUM = 2e-4``; we round to the grid ``1 / round(1 / m)``);
5. ``100 · n`` draws (``SAMPLE_MULTIPLIER = 100``) are deduplicated (RegMix: L1 distance
   <= 1e-5) and ``n`` are chosen at random (``SEED = 42``).

Two deliberate differences, both so that every row of a design honours its promises exactly:
rounding uses largest remainders on the grid ``1 / round(1 / m)``, so each row sums to exactly 1
(RegMix's ``np.round(w / m) * m`` can leave a row at 0.9996 or 1.0004); and the caps are checked
on the final, rounded row (RegMix checks the raw draw, which renormalisation can push a hair
over the cap). Deduplication is exact on the grid, which equals RegMix's 1e-5 threshold because
two different grid rows differ by at least ``2 m`` in L1.

The generator is a pure function of its arguments: the same inputs give the same design.

[ours] The released 1M training mixtures (``sail-sg/regmix:data/train_mixture_1m.csv``) are
denser than the released script's defaults produce (``benchmarks/RESULTS.md``, "Figures that
were in source comments"); we keep the script's defaults, which is what RegMix documents, and
note that its runs were probably drawn with other settings.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mixbatch.errors import ConfigError
from mixbatch.mixture.weights import temperature_weights, validate_weights

__all__ = [
    "REGMIX_SEED",
    "Design",
    "DesignSettings",
    "config_token_counts",
    "design_mixtures",
    "epoch_caps",
    "prior_from_spec",
    "token_prior",
    "write_design_csv",
]

REGMIX_SEED = 42
_CHUNK = 200_000  # Dirichlet draws processed at a time


@dataclass(frozen=True)
class DesignSettings:
    """RegMix's defaults (``synthesize_mixture.py``); every field is documented there."""

    temperature: float = 0.5  # TEMP: exponent on the token prior
    min_strength: float = 0.1  # MIN_STRENGH: smallest Dirichlet concentration
    max_strength: float = 5.0  # MAX_STRENGH: largest Dirichlet concentration
    n_strengths: int = 15  # np.logspace(..., 15): how many concentrations between the two
    max_epochs: float = 15.0  # MAXIMUM_USAGE: default epoch cap per source
    min_weight: float = 2e-4  # MINIMUM: smaller weights become 0; rounding grid
    sample_multiplier: int = 100  # SAMPLE_MULTIPLIER: draws per requested mixture

    def strengths(self) -> np.ndarray:
        """The concentrations a draw chooses from, log-spaced as in RegMix."""
        if self.min_strength == self.max_strength:
            return np.array([float(self.min_strength)])
        return np.logspace(math.log10(self.min_strength), math.log10(self.max_strength),
                           self.n_strengths)

    def check(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ConfigError(f"design temperature must be a number >= 0, got {self.temperature}")
        if not (0 < self.min_strength <= self.max_strength < math.inf):
            raise ConfigError(
                "design strengths need 0 < min_strength <= max_strength, got "
                f"{self.min_strength}..{self.max_strength}")
        if self.n_strengths < 1:
            raise ConfigError(f"design n_strengths must be >= 1, got {self.n_strengths}")
        if not (self.max_epochs > 0):
            raise ConfigError(f"design max_epochs must be > 0, got {self.max_epochs}")
        if not (0 < self.min_weight < 0.5):
            raise ConfigError(f"design min_weight must be in (0, 0.5), got {self.min_weight}")
        if self.sample_multiplier < 1:
            raise ConfigError(
                f"design sample_multiplier must be >= 1, got {self.sample_multiplier}")


@dataclass(frozen=True)
class Design:
    """``n`` candidate mixtures over ``names`` (rows of ``weights`` sum to exactly 1).

    ``prior`` holds the token shares, ``caps`` the largest weight each source may take,
    ``draws``/``accepted``/``unique`` how many Dirichlet draws were made, passed the caps, and
    were distinct.
    """

    names: tuple[str, ...]
    weights: np.ndarray
    prior: np.ndarray
    caps: np.ndarray
    seed: int
    settings: DesignSettings = field(default_factory=DesignSettings)
    draws: int = 0
    accepted: int = 0
    unique: int = 0

    def __len__(self) -> int:
        return int(self.weights.shape[0])

    @property
    def index(self) -> np.ndarray:
        """Run indices, 1-based like RegMix's released files."""
        return np.arange(1, len(self) + 1)

    def rows(self) -> list[dict[str, Any]]:
        """One ``{"index": i, source: weight, ...}`` per mixture."""
        return [{"index": int(i), **{n: float(w) for n, w in zip(self.names, row, strict=True)}}
                for i, row in zip(self.index, self.weights, strict=True)]


def token_prior(tokens: Sequence[float] | np.ndarray, names: Sequence[str] | None = None) -> np.ndarray:
    """Token shares ``π_i = n_i / Σ n``; every source must have tokens."""
    n = validate_weights(tokens, names, field="tokens")
    empty = n <= 0
    if empty.any():
        which = names[int(np.argmax(empty))] if names is not None else f"#{int(np.argmax(empty))}"
        raise ConfigError(f"source {which} has no tokens: prepare it, or leave it out of the search")
    return n / math.fsum(n.tolist())


def epoch_caps(tokens: Sequence[float] | np.ndarray, train_tokens: float | None = None,
               max_epochs: float | Sequence[float] | np.ndarray = 15.0,
               names: Sequence[str] | None = None) -> np.ndarray:
    """Largest weight per source: ``min(E_i · n_i / T, 1)`` for a budget of ``T`` tokens.

    ``T`` defaults to all available tokens, which gives RegMix's ``min(15 · π_i, 1)``.
    """
    n = validate_weights(tokens, names, field="tokens")
    total = float(n.sum()) if train_tokens is None else float(train_tokens)
    if not (total > 0 and math.isfinite(total)):
        raise ConfigError(f"training tokens must be a positive number, got {train_tokens!r}")
    e = np.broadcast_to(np.asarray(max_epochs, dtype=np.float64), n.shape)
    if not (np.isfinite(e) & (e > 0)).all():
        raise ConfigError(f"max_epochs must be positive numbers, got {max_epochs!r}")
    return np.minimum(e * n / total, 1.0)


def _round_to_grid(w: np.ndarray, units: int) -> np.ndarray:
    """Largest-remainder rounding of each row to integers summing to ``units``."""
    scaled = w * units
    base = np.floor(scaled).astype(np.int64)
    short = units - base.sum(axis=1)
    # give the missing units to the largest remainders, ties to the lower index (stable sort)
    order = np.argsort(-(scaled - base), axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(w.shape[1])[None, :].repeat(w.shape[0], 0), axis=1)
    return base + (ranks < short[:, None])


def design_mixtures(names: Sequence[str], tokens: Sequence[float] | np.ndarray, n: int,
                    seed: int = REGMIX_SEED, *, train_tokens: float | None = None,
                    max_epochs: float | Sequence[float] | Mapping[str, float] | None = None,
                    settings: DesignSettings | None = None) -> Design:
    """Draw ``n`` distinct candidate mixtures around the token prior (RegMix's generator).

    ``tokens`` are the available tokens per source (the prior is their shares).
    ``train_tokens`` is the budget of the run the mixture is for (default: all available
    tokens, as RegMix assumes), ``max_epochs`` one cap for all sources or one per source
    (default ``settings.max_epochs`` = 15). Raises :class:`ConfigError` when the caps leave no
    room (they sum below 1) or when fewer than ``n`` distinct mixtures pass them.
    """
    settings = settings or DesignSettings()
    settings.check()
    names = tuple(names)
    if len(set(names)) != len(names):
        raise ConfigError(f"design: source names repeat: {', '.join(names)}")
    if len(names) < 2:
        raise ConfigError(f"design: a mixture needs at least 2 sources, got {len(names)}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ConfigError(f"design: n must be a positive integer, got {n!r}")
    prior = token_prior(tokens, names)
    if isinstance(max_epochs, Mapping):
        unknown = sorted(set(max_epochs) - set(names))
        if unknown:
            raise ConfigError(f"design: max_epochs for unknown sources: {', '.join(unknown)}")
        epochs: Any = [float(max_epochs.get(s, settings.max_epochs)) for s in names]
    else:
        epochs = settings.max_epochs if max_epochs is None else max_epochs
    caps = epoch_caps(tokens, train_tokens, epochs, names)
    if caps.sum() < 1.0:
        budget = float(np.sum(tokens)) if train_tokens is None else float(train_tokens)
        raise ConfigError(
            f"design: the sources cannot fill a budget of {budget:,.0f} training tokens: "
            f"repeated up to their max_epochs they give {caps.sum() * budget:,.0f} "
            f"({caps.sum():.3f} of it); raise max_epochs or lower the training tokens")
    units = max(1, round(1.0 / settings.min_weight))  # the grid is 1 / units
    alpha = temperature_weights(prior, settings.temperature, names)
    strengths = settings.strengths()
    capped = np.floor(caps * units + 1e-9).astype(np.int64)

    rng = np.random.default_rng(seed)
    n_draws = int(n) * settings.sample_multiplier
    kept = []
    for start in range(0, n_draws, _CHUNK):  # bounded memory for large designs
        size = min(_CHUNK, n_draws - start)
        which = rng.integers(0, len(strengths), size=size)
        w = np.empty((size, len(names)))
        for k, s in enumerate(strengths):
            rows = which == k
            if rows.any():
                w[rows] = rng.dirichlet(alpha * s, size=int(rows.sum()))
        sums = w.sum(axis=1)
        ok = np.isfinite(sums) & (sums > 0)
        w = w[ok] / sums[ok, None]
        # minimum weight: small entries become 0, the row is renormalised and put on the grid
        w = np.where(w < settings.min_weight, 0.0, w)
        w /= w.sum(axis=1, keepdims=True)
        grid = _round_to_grid(w, units)
        kept.append(grid[(grid <= capped[None, :]).all(axis=1)].astype(np.int32))
    grid = np.concatenate(kept)
    accepted = int(grid.shape[0])
    _, first = np.unique(grid, axis=0, return_index=True)
    unique = grid[np.sort(first)]
    if unique.shape[0] < n:
        raise ConfigError(
            f"design: only {unique.shape[0]} distinct mixtures out of {n_draws} draws "
            f"({accepted} within the epoch caps); ask for fewer than {n}, or loosen the caps "
            "(max_epochs, --tokens)")
    chosen = unique[rng.choice(unique.shape[0], size=int(n), replace=False)]
    return Design(names=names, weights=chosen / units, prior=prior, caps=caps, seed=int(seed),
                  settings=settings, draws=n_draws, accepted=accepted, unique=int(unique.shape[0]))


def write_design_csv(path: str | Path, design: Design) -> Path:
    """Write ``index`` plus one weight column per source (the runner's input)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    digits = max(6, len(str(round(1 / design.settings.min_weight))) + 1)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["index", *design.names])
        for i, row in zip(design.index, design.weights, strict=True):
            writer.writerow([int(i), *(f"{x:.{digits}f}".rstrip("0").rstrip(".") or "0"
                                       for x in row)])
    return path


def config_token_counts(path: str | Path) -> tuple[list[str], np.ndarray, Any]:
    """Source names, their prepared token counts, and the config at ``path``."""
    from mixbatch.config import load_config
    from mixbatch.stats import config_stats

    cfg = load_config(path)
    stats = config_stats(cfg)
    names = list(cfg.sources)
    return names, np.array([float(stats["sources"][n]["tokens"]) for n in names]), cfg


def prior_from_spec(spec: str, names: tuple[str, ...] | list[str]) -> np.ndarray:
    """The simulation prior over ``names`` from a config file (its sources' prepared token
    counts) or from ``name=count,name=count`` (token counts or shares; normalised)."""
    names = list(names)
    if "=" not in spec and (spec.endswith((".yaml", ".yml")) or Path(spec).is_file()):
        cfg_names, tokens, _ = config_token_counts(spec)
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
