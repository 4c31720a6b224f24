"""The interleaver's saved state (:meth:`mixbatch.plan.interleave.Interleaver.state_dict`): O(K)
numbers, written as JSON-ready lists (floats round-trip exactly) and checked field by field on
load, each problem one :class:`~mixbatch.errors.StateError` naming the field."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mixbatch.errors import StateError
from mixbatch.plan.state_checks import count, number, shown

__all__ = ["STATE_VERSION", "dump_state", "load_state"]

STATE_VERSION = 1

#: the planner's numbers: units and documents per source, the target when the current weights
#: were set, those weights (``None`` before any), and the units counted since
Numbers = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, int]


def dump_state(unit: str, counts: np.ndarray, documents: np.ndarray, base: np.ndarray,
               weights: np.ndarray | None, segment_units: int) -> dict[str, Any]:
    """The state of a planner counting ``unit`` (``"samples"`` or ``"tokens"``)."""
    return {
        "version": STATE_VERSION,
        "unit": unit,
        "num_sources": counts.size,
        "counts": counts.tolist(),
        "documents": documents.tolist(),
        "base": base.tolist(),
        "weights": None if weights is None else weights.tolist(),
        "segment_units": segment_units,
    }


def load_state(state: Any, unit: str, k: int) -> Numbers:
    """The numbers of a saved state, for a planner counting ``unit`` over ``k`` sources;
    refuse a malformed or foreign one."""
    if not isinstance(state, dict):
        raise StateError(f"interleave state: expected a dict, got {type(state).__name__}")
    needed = ("version", "unit", "num_sources", "counts", "documents", "base", "weights",
              "segment_units")
    for key in needed:
        if key not in state:
            raise StateError(f"interleave state.{key}: missing")
    if state["version"] != STATE_VERSION:
        raise StateError(
            f"interleave state.version: {shown(state['version'])} is not supported "
            f"(expected {STATE_VERSION})"
        )
    if state["unit"] != unit:
        raise StateError(
            f"interleave state.unit: saved in {shown(state['unit'])} mode, "
            f"this planner counts {unit!r}"
        )
    if state["num_sources"] != k:
        raise StateError(
            f"interleave state.num_sources: saved with {shown(state['num_sources'])} "
            f"sources, this planner has {k}"
        )
    counts = _int_vector(state["counts"], k, "counts")
    documents = _int_vector(state["documents"], k, "documents")
    # a target may be below 0: a source dropped to weight 0 hands over its lead (set_weights)
    base = _float_vector(state["base"], k, "base", negative=True)
    weights = state["weights"]
    if weights is not None:
        weights = _float_vector(weights, k, "weights")
        if not (weights > 0).any() or abs(math.fsum(weights.tolist()) - 1.0) > 1e-9:
            raise StateError("interleave state.weights: must sum to 1")
    units = count("interleave state.segment_units", state["segment_units"])
    if weights is None and units != 0:
        raise StateError("interleave state.segment_units: must be 0 when no weights are set")
    if unit == "samples" and not np.array_equal(counts, documents):
        raise StateError("interleave state.documents: must equal counts in sample mode")
    if unit == "tokens" and (documents > counts).any():
        raise StateError("interleave state.documents: more documents than tokens")
    total = sum(counts.tolist())  # Python integers: no wrap-around
    target = base if weights is None else base + weights * np.float64(units)
    if abs(math.fsum(target.tolist()) - total) > 1e-6 * max(1.0, total):
        raise StateError(
            f"interleave state.base: the target sums to {math.fsum(target.tolist())}, "
            f"but {total} units were counted"
        )
    return counts, documents, base, weights, units


def _vector(value, k: int, name: str) -> list:
    if not isinstance(value, list | tuple) or len(value) != k:
        got = f"{len(value)} values" if isinstance(value, list | tuple) else shown(value)
        raise StateError(f"interleave state.{name}: expected a list of {k} values, got {got}")
    return list(value)


def _int_vector(value, k: int, name: str) -> np.ndarray:
    return np.array([count(f"interleave state.{name}[{i}]", v)
                     for i, v in enumerate(_vector(value, k, name))], dtype=np.int64)


def _float_vector(value, k: int, name: str, negative: bool = False) -> np.ndarray:
    lo = None if negative else 0.0
    return np.array([number(f"interleave state.{name}[{i}]", v, lo=lo)
                     for i, v in enumerate(_vector(value, k, name))], dtype=np.float64)
