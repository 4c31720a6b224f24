"""Weights known in advance, in the planner's clock: a schedule's stages, for the interleaving
rule (:mod:`mixbatch.plan.interleave`) to read ahead and stay within its bound across changes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixbatch.errors import ConfigError

__all__ = ["WeightPath"]


@dataclass(frozen=True)
class WeightPath:
    """Weights known in advance, in the planner's clock (units since the stream began:
    decisions, or tokens): ``weights[s]`` apply from clock ``starts[s]`` (``starts[0] == 0``)
    until the next start. A schedule's stages, for the rule to read ahead."""

    starts: np.ndarray  # int64 (S,), 0 then increasing
    weights: np.ndarray  # float64 (S, K)

    def __post_init__(self) -> None:
        b = np.asarray(self.starts, dtype=np.int64).reshape(-1)
        w = np.asarray(self.weights, dtype=np.float64)
        if w.ndim != 2 or w.shape[0] != b.size or b.size == 0:
            raise ConfigError("path: one weight vector per stage, at least one stage")
        if b[0] != 0 or np.any(np.diff(b) <= 0):
            raise ConfigError("path: stages must start at 0 and increase strictly")
        object.__setattr__(self, "starts", b)
        object.__setattr__(self, "weights", w)

    def at(self, clock: int) -> np.ndarray:
        """The weights in force at ``clock``."""
        return self.weights[int(np.searchsorted(self.starts, clock, side="right")) - 1]

    def integral(self, clocks: np.ndarray, available=None) -> np.ndarray:
        """``∫_0^u w(t) dt`` at each clock ``u`` (rows renormalised over ``available``)."""
        rows = self.weights
        if available is not None:
            rows = np.where(np.asarray(available, dtype=bool), rows, 0.0)
            total = rows.sum(axis=1, keepdims=True)
            rows = np.divide(rows, total, out=np.zeros_like(rows), where=total > 0)
        length = np.diff(self.starts).astype(np.float64)
        at_start = np.concatenate([np.zeros((1, rows.shape[1])),
                                   np.cumsum(rows[:-1] * length[:, None], axis=0)])
        clocks = np.asarray(clocks, dtype=np.int64)
        s = np.searchsorted(self.starts, clocks, side="right") - 1
        return at_start[s] + rows[s] * (clocks - self.starts[s]).astype(np.float64)[:, None]
