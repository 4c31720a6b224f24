"""The one set of value checks for settings that do not go through pydantic.

Each check returns the value in its canonical type or raises :class:`ConfigError` whose message
starts with the setting's name, so the command line prints one line that says what to fix.
:func:`positive_int` is the ``argparse`` type for counts given as options.
"""

from __future__ import annotations

import argparse
import enum
import math
from typing import Any, TypeVar

import numpy as np

from mixbatch.errors import ConfigError

E = TypeVar("E", bound=enum.Enum)

__all__ = ["boolean", "choice", "integer", "positive_int", "real", "vector"]


def real(name: str, value: Any, *, lo: float | None = None, hi: float | None = None,
         lo_open: bool = False, hi_open: bool = False) -> float:
    """A finite number within ``[lo, hi]`` (``lo_open``/``hi_open`` exclude the bound)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ConfigError(f"{name}: must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ConfigError(f"{name}: must be {'<' if hi_open else '<='} {hi}, got {value!r}")
    return v


def integer(name: str, value: Any, *, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (not a bool) within ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if lo is not None and value < lo:
        raise ConfigError(f"{name}: must be >= {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ConfigError(f"{name}: must be <= {hi}, got {value!r}")
    return int(value)


def boolean(name: str, value: Any) -> bool:
    """``true`` or ``false`` (not 0/1, not a string)."""
    if not isinstance(value, bool | np.bool_):
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    return bool(value)


def choice(cls: type[E], name: str, value: Any) -> E:
    """A member of the enum ``cls``, given as the member or its value."""
    if isinstance(value, cls):
        return value
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in cls)
        raise ConfigError(f"{name}: got {value!r}, expected one of {choices}") from None


def vector(name: str, value: Any, length: int | None = None) -> tuple[float, ...] | None:
    """``None``, or a flat, non-empty list of finite numbers (of ``length`` when given)."""
    if value is None:
        return None
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a list of numbers, got {value!r}") from None
    if arr.ndim != 1 or arr.size == 0 or (length is not None and arr.size != length):
        want = f"{length} numbers (one per source)" if length is not None else "a flat list"
        raise ConfigError(f"{name}: expected {want}, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ConfigError(f"{name}: values must be finite, got {arr.tolist()}")
    return tuple(float(x) for x in arr)


def positive_int(value: str) -> int:
    """``argparse`` type: an integer >= 1."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n
