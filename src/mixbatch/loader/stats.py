"""Running totals of what the stream fed: O(K) counters, saved with the loader's state.

They feed the ``stream`` report and the audit summary: tokens and documents per source, padding,
truncation, pieces per document, tokens per step (min/mean/max), the per-rank cost imbalance
(largest rank cost over the mean, per step), documents skipped by the shaper, and in 2-D
bucketing the padding of the second lengths.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
from numba import njit

from mixbatch.errors import StateError
from mixbatch.plan.state_checks import count, mapping, number, shown
from mixbatch.shape.base import StepPlan


@njit(cache=True, nogil=True)
def _block_counts(row: np.ndarray, source: np.ndarray, start: np.ndarray, end: np.ndarray,
                  eod: np.ndarray, rows_per_step: int, steps: int, k: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The counts of every step of a block at once (step of a segment: its row //
    ``rows_per_step``): per step and source the real tokens and documents started (a segment
    that starts its document, with tokens or an end token); per step the segments holding
    tokens and the positions taken (tokens plus end tokens). One step: ``steps = 1``."""
    tok = np.zeros((steps, k), np.int64)
    started = np.zeros((steps, k), np.int64)
    pieces = np.zeros(steps, np.int64)
    width = np.zeros(steps, np.int64)
    for j in range(source.size):
        t = row[j] // rows_per_step
        n = end[j] - start[j]
        s = source[j]
        tok[t, s] += n
        width[t] += n + eod[j]
        if start[j] == 0 and (n > 0 or eod[j]):
            started[t, s] += 1
        if n > 0:
            pieces[t] += 1
    return tok, started, pieces, width


#: one step's counts, precomputed for a block: tokens and documents per source, pieces,
#: positions taken by segments, padding
StepCounts = tuple[list[int], list[int], int, int, int]


def block_counts(plan: StepPlan, rows_per_step: int, steps: int, k: int) -> list[StepCounts]:
    """The counts :meth:`RunStats.add` needs for each of ``steps`` steps of ``rows_per_step``
    rows planned as one plan (one compiled pass instead of one per step)."""
    tok, started, pieces, width = _block_counts(plan.row, plan.source, plan.start, plan.end,
                                                plan.eod, rows_per_step, steps, k)
    pad = plan.pad[:steps * rows_per_step].reshape(steps, rows_per_step).sum(axis=1)
    return list(zip(tok.tolist(), started.tolist(), pieces.tolist(), width.tolist(),
                    pad.tolist(), strict=True))


@dataclass
class RunStats:
    k: int
    tokens: list[int] = field(default_factory=list)  # real tokens fed per source
    docs: list[int] = field(default_factory=list)  # documents started per source
    pieces: int = 0  # segments holding tokens
    padding: int = 0
    positions: int = 0  # row positions, padding included
    truncated: int = 0
    steps: int = 0
    step_tokens_min: int | None = None
    step_tokens_max: int = 0
    imbalance_max: float = 1.0
    imbalance_sum: float = 0.0
    skipped_docs: int = 0  # documents a shaper skipped (pad_buckets: second length too long)
    second_padding: int = 0  # 2-D bucketing: padding of the second lengths
    second_positions: int = 0

    def __post_init__(self) -> None:
        self.tokens = self.tokens or [0] * self.k
        self.docs = self.docs or [0] * self.k

    def __copy__(self) -> RunStats:
        """A shallow copy (the loader keeps one per batch handed out): :meth:`add` replaces the
        lists, never changes them in place."""
        new = object.__new__(RunStats)
        new.__dict__.update(self.__dict__)
        return new

    def add(self, plan: StepPlan, rank_costs: np.ndarray | None = None,
            counts: StepCounts | None = None) -> int:
        """Count one step; ``counts``: its :func:`block_counts` when its block computed them.
        Returns the positions its segments take (tokens plus end tokens)."""
        if counts is None:  # the step as a block of one
            t, d, p, w = _block_counts(plan.row, plan.source, plan.start, plan.end, plan.eod,
                                       max(plan.rows, 1), 1, self.k)
            tok, started, pieces, width = t[0].tolist(), d[0].tolist(), int(p[0]), int(w[0])
            pad = int(plan.pad.sum())
        else:
            tok, started, pieces, width, pad = counts
        real = sum(tok)
        self.tokens = [a + b for a, b in zip(self.tokens, tok, strict=True)]
        self.docs = [a + b for a, b in zip(self.docs, started, strict=True)]
        self.pieces += int(pieces)
        self.padding += pad
        self.positions += plan.rows * plan.seq_len
        self.truncated += int(plan.truncated)
        self.skipped_docs += int(plan.stats.get("skipped_docs", 0))
        self.second_padding += int(plan.stats.get("second_padding", 0))
        self.second_positions += int(plan.stats.get("second_positions", 0))
        real = int(real)
        self.steps += 1
        self.step_tokens_min = real if self.step_tokens_min is None else min(
            self.step_tokens_min, real)
        self.step_tokens_max = max(self.step_tokens_max, real)
        ratio = 1.0
        if rank_costs is not None and len(rank_costs) and rank_costs.mean() > 0:
            ratio = float(rank_costs.max() / rank_costs.mean())
        self.imbalance_max = max(self.imbalance_max, ratio)
        self.imbalance_sum += ratio
        return width

    def summary(self) -> dict[str, Any]:
        total_tok = sum(self.tokens)
        return {
            "padding_fraction": self.padding / self.positions if self.positions else 0.0,
            "truncated_tokens": self.truncated,
            "truncated_fraction": (self.truncated / (total_tok + self.truncated)
                                   if total_tok + self.truncated else 0.0),
            "pieces_per_document": self.pieces / max(sum(self.docs), 1),
            "tokens_per_step": {"min": self.step_tokens_min or 0,
                                "mean": total_tok / self.steps if self.steps else 0.0,
                                "max": self.step_tokens_max},
            "rank_cost_imbalance": {"max": self.imbalance_max,
                                    "mean": self.imbalance_sum / self.steps if self.steps
                                    else 1.0},
            "skipped_documents": self.skipped_docs,
            **({"second_padding_fraction": self.second_padding / self.second_positions}
               if self.second_positions else {}),
        }

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore saved totals; every field is checked (one StateError line naming it)."""
        where = "loader state.stats"
        state = mapping(where, state)
        names = {f.name for f in fields(self)} - {"k"}
        for key in state:
            if key not in names and key != "k":
                raise StateError(f"{where}.{key}: unknown field")
        for key in names:
            if key not in state:
                raise StateError(f"{where}.{key}: missing")
        values: dict[str, Any] = {"k": self.k}
        for key in names:
            v, name = state[key], f"{where}.{key}"
            if key in ("tokens", "docs"):
                if not isinstance(v, list) or len(v) != self.k:
                    raise StateError(f"{name}: expected a list of {self.k} counts (one per "
                                     f"source), got {shown(v)}")
                values[key] = [count(f"{name}[{i}]", x) for i, x in enumerate(v)]
            elif key in ("imbalance_max", "imbalance_sum"):
                values[key] = number(name, v, lo=1.0 if key == "imbalance_max" else 0.0)
            elif key == "step_tokens_min" and v is None:
                values[key] = None
            else:
                values[key] = count(name, v)
        self.__dict__.update(RunStats(**values).__dict__)
