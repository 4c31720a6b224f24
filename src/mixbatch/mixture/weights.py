"""Mixture weight vectors: validation, normalisation, temperature sampling.

A weight vector has one entry per source, in the order of the source list. Entries are finite
and non-negative, and at least one is positive. A zero weight is allowed: that source is never
chosen. The sum must be finite too (``1e308`` twice overflows it), since every share is a
division by it. Normalisation divides by the sum over the *available* sources, so that marking a
source as exhausted (``on_exhausted: renormalize``) spreads its share over the others in
proportion to their weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from mixbatch.errors import ConfigError

__all__ = [
    "normalize_weights",
    "temperature_weights",
    "validate_weights",
    "weights_from_mapping",
]


def _label(field: str, names: Sequence[str] | None, i: int) -> str:
    if names is not None and i < len(names):
        return f"{field}.{names[i]}"
    return f"{field}[{i}]"


def validate_weights(
    weights: Sequence[float] | np.ndarray,
    names: Sequence[str] | None = None,
    *,
    field: str = "weights",
    allow_all_zero: bool = False,
) -> np.ndarray:
    """Check a weight vector and return it as a new float64 array (not normalised).

    Raises :class:`ConfigError` naming the first bad entry (``weights.web``, or ``weights[3]``
    without names) when an entry is negative, NaN or infinite, and when every entry is zero
    (unless ``allow_all_zero``).
    """
    try:
        arr = np.array(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{field}: expected a list of numbers, got {weights!r}") from exc
    if arr.ndim != 1:
        raise ConfigError(f"{field}: expected a flat list of numbers, got shape {arr.shape}")
    if names is not None and len(names) != arr.size:
        raise ConfigError(
            f"{field}: expected {len(names)} weights (one per source), got {arr.size}"
        )
    if arr.size == 0:
        raise ConfigError(f"{field}: no sources given")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.argmax(bad))
        raise ConfigError(
            f"{_label(field, names, i)}: weight must be a finite number, got {arr[i]}"
        )
    neg = arr < 0
    if neg.any():
        i = int(np.argmax(neg))
        raise ConfigError(f"{_label(field, names, i)}: weight must be >= 0, got {arr[i]}")
    if not allow_all_zero and not (arr > 0).any():
        raise ConfigError(f"{field}: all weights are 0; give at least one source a positive weight")
    with np.errstate(over="ignore"):
        total = arr.sum()
    if not np.isfinite(total):
        # every consumer divides by the sum: an infinite one would turn every share into 0
        raise ConfigError(f"{field}: the weights sum to more than the largest float "
                          f"(largest {arr.max():g}); give relative weights such as 0.7 and 0.3")
    return arr


def weights_from_mapping(
    weights: Mapping[str, float], names: Sequence[str], *, field: str = "weights"
) -> np.ndarray:
    """Turn ``{source: weight}`` into a vector in the order of ``names``.

    Sources missing from the mapping get weight 0 (so a stage can leave a source out); a name
    that is not a known source is an error, since it is almost always a typo.
    """
    if not isinstance(weights, Mapping):
        raise ConfigError(f"{field}: expected a mapping of source name to weight, got {weights!r}")
    index = {name: i for i, name in enumerate(names)}
    vec = [0.0] * len(names)
    for key, value in weights.items():
        if key not in index:
            known = ", ".join(names)
            raise ConfigError(f"{field}.{key}: unknown source (known sources: {known})")
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise ConfigError(f"{field}.{key}: weight must be a number, got {value!r}")
        vec[index[key]] = float(value)
    return validate_weights(vec, names, field=field)


def normalize_weights(
    weights: Sequence[float] | np.ndarray,
    available: Sequence[bool] | np.ndarray | None = None,
    names: Sequence[str] | None = None,
    *,
    field: str = "weights",
) -> np.ndarray:
    """Validate ``weights`` and scale them to sum to 1 over the available sources.

    ``available`` is a boolean mask (default: all available). Unavailable sources get weight 0
    and the others keep their ratios: this is what ``on_exhausted: renormalize`` means. Whether to
    stop instead (``on_exhausted: stop``) is the caller's decision. Raises :class:`ConfigError`
    when no available source has a positive weight.
    """
    arr = validate_weights(weights, names, field=field)
    if available is not None:
        mask = np.asarray(available)
        if mask.shape != arr.shape or mask.dtype != np.bool_:
            raise ConfigError(
                f"available: expected {arr.size} booleans (one per source), got {mask!r}"
            )
        arr = np.where(mask, arr, 0.0)
    total = math.fsum(arr.tolist())
    if total <= 0:
        raise ConfigError(
            f"{field}: no available source has a positive weight (every such source is "
            "exhausted or masked); stop, or give an available source a positive weight"
        )
    out = arr / total
    # A positive weight stays positive (never chosen and rarely chosen are different promises),
    # even when it is too small to survive the division.
    return np.where((arr > 0) & (out == 0), np.finfo(np.float64).tiny, out)


def temperature_weights(
    sizes: Sequence[float] | np.ndarray,
    tau: float,
    names: Sequence[str] | None = None,
    *,
    field: str = "sizes",
) -> np.ndarray:
    """Temperature sampling over natural sizes: ``p_i ∝ n_i ** tau``, normalised.

    ``tau = 1`` keeps the natural proportions, ``tau = 0`` gives every non-empty source the
    same weight, values in between flatten the mixture (XLM-R and mT5 use ``tau = 0.3``; some
    papers write ``T = 1 / tau``). A source of size 0 gets weight 0 for every ``tau``. Computed
    in log space, so huge token counts do not overflow.
    """
    if isinstance(tau, bool) or not isinstance(tau, int | float) or not math.isfinite(tau):
        raise ConfigError(f"temperature: must be a finite number >= 0, got {tau!r}")
    if tau < 0:
        raise ConfigError(f"temperature: must be >= 0 (it is the exponent in n_i**tau), got {tau}")
    n = validate_weights(sizes, names, field=field)
    pos = n > 0
    logp = np.full(n.shape, -np.inf)
    logp[pos] = float(tau) * np.log(n[pos])
    logp -= logp[pos].max()
    p = np.where(pos, np.exp(logp), 0.0)
    return p / math.fsum(p.tolist())
