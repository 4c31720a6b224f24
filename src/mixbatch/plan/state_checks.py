"""Checks for saved states (loader, interleaver, shapers): every field, one clear line each.

A state may come from a damaged or crafted file: a negative step, a counter of 5,000 digits, a
string where a number belongs, NaN weights, lists of the wrong length. :func:`screen` walks a
whole state once and refuses any integer beyond 64 bits and any number that is not finite,
naming its place (``loader state.feed.planner.counts[2]``); after it, NumPy conversions cannot
overflow and values print safely. The field checks reuse :mod:`mixbatch.checks` and turn its
:class:`~mixbatch.errors.ConfigError` into a :class:`~mixbatch.errors.StateError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from mixbatch import checks
from mixbatch.errors import ConfigError, StateError

T = TypeVar("T")

INT64_MAX = (1 << 63) - 1
_MAX_ITEMS = 1 << 20  # a state is O(K) numbers: anything near this is not a state


def shown(value: Any) -> str:
    """``repr`` of a state value, safe for integers of any size and short."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        digits = int(value.bit_length() * math.log10(2)) + 1
        return f"an integer of about {digits} digits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def screen(state: Any, where: str) -> None:
    """Every integer in ``state`` fits 64 bits and every float is finite; else one
    :class:`StateError` naming where (module docstring)."""
    stack: list[tuple[Any, str]] = [(state, where)]
    seen = 0
    while stack:
        value, at = stack.pop()
        seen += 1
        if seen > _MAX_ITEMS:
            raise StateError(f"{where}: more than {_MAX_ITEMS} values; not a saved state")
        if isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        if isinstance(value, int | np.integer):
            if not -INT64_MAX - 1 <= value <= INT64_MAX:
                raise StateError(f"{at}: {shown(int(value))} does not fit 64 bits")
        elif isinstance(value, float | np.floating):
            if not math.isfinite(value):
                raise StateError(f"{at}: {value!r} is not a finite number")
        elif isinstance(value, dict):
            stack.extend((v, f"{at}.{k}") for k, v in value.items())
        elif isinstance(value, list | tuple):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(value))


def check(fn: Callable[..., T], name: str, value: Any, **kw: Any) -> T:
    """A :mod:`mixbatch.checks` check of a state field, its error as a :class:`StateError`."""
    try:
        return fn(name, value, **kw)
    except ConfigError as e:
        raise StateError(str(e)) from None
    except (ValueError, OverflowError):  # a value too large to print or convert
        raise StateError(f"{name}: {shown(value)} is out of range") from None


def count(name: str, value: Any, lo: int = 0) -> int:
    """An integer counter within ``[lo, 2**63 - 1]``."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        raise StateError(f"{name}: {shown(value)} does not fit 64 bits")
    return check(checks.integer, name, value, lo=lo, hi=INT64_MAX)


def number(name: str, value: Any, lo: float | None = None) -> float:
    """A finite number (not a bool) >= ``lo``."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 1000:
        raise StateError(f"{name}: {shown(value)} is not a finite number")
    return check(checks.real, name, value, lo=lo)


def mapping(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StateError(f"{name}: expected a mapping, got {type(value).__name__}")
    return value


def weights(name: str, value: Any, k: int, unit_sum: bool = False) -> np.ndarray:
    """``k`` finite weights >= 0 with a positive, finite sum (``unit_sum``: summing to 1)."""
    if not isinstance(value, list | tuple | np.ndarray) or len(value) != k:
        got = f"{len(value)} values" if isinstance(value, list | tuple | np.ndarray) \
            else shown(value)
        raise StateError(f"{name}: expected a list of {k} weights (one per source), got {got}")
    w = np.array([number(f"{name}[{i}]", v, lo=0.0) for i, v in enumerate(value)], np.float64)
    try:
        total = math.fsum(w.tolist())
    except OverflowError:  # e.g. 1e308 + 1e308
        total = math.inf
    if not 0 < total < math.inf:
        raise StateError(f"{name}: the weights must have a positive, finite sum, got {total!r}")
    if unit_sum and abs(total - 1.0) > 1e-9:
        raise StateError(f"{name}: the weights must sum to 1, got {total!r}")
    return w
