"""Blocks: consecutive steps planned with one shaper call and read with one gather.

Where a packing's step of ``n·R`` rows is exactly ``n`` steps of ``R`` rows (``concat`` cuts one
token line into rows; ``bfd`` hands out its windows' rows in an order that does not depend on
the step size), the loader plans several steps at once (:class:`Block`) and cuts the plan into
steps (:func:`split_rows`). A block keeps the feed's and shaper's state from before it, so the
loader can rewind to the end of any step handed out (a state inside a block is that start and
how many steps were used).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mixbatch.config import Packing
from mixbatch.loader.stats import StepCounts
from mixbatch.shape.base import StepPlan
from mixbatch.shape.materialize import materialize_compact, split_compact
from mixbatch.store import TokenStore

#: packing modes where one step of n·R rows is exactly n steps of R rows (planned in blocks):
#: concat cuts one token line into rows; bfd hands out the rows of its windows in an order that
#: does not depend on the step size
BLOCKABLE = (Packing.CONCAT, Packing.BFD)


class Block:
    """Steps planned together: the feed and shaper state before them (to rewind), their
    plans, and, once a batch is asked for, the compact batch of this rank's rows of all of them
    (one read), which each step slices."""

    def __init__(self, start: dict[str, Any], plan: StepPlan, plans: list[StepPlan],
                 weights: list[float], counts: list[StepCounts] | None = None) -> None:
        self.start = start
        self.counts = counts  # each step's counts for the run statistics (one pass)
        self.weights = weights
        self.plan = plan
        self.plans = plans
        self.used = 0  # steps handed out
        self.batches: list[dict[str, Any]] | None = None
        rows = plans[0].rows if plans else 0
        # segments of each step: step j holds segments cut[j]:cut[j + 1] of the block's plan
        self.cut = _cuts(plan, rows, len(plans)) if len(plans) > 1 else [0, len(plan.row)]

    def run(self, first: int, stop: int) -> tuple[StepPlan, list[int]]:
        """Steps ``first .. stop - 1`` of the block as one plan of their rows (a worker's read),
        and the rows of each: slices of the block's plan, no per-step copies."""
        R = self.plans[first].rows
        return _steps_of(self.plan, self.cut, R, first, stop), [R] * (stop - first)

    def read(self, stores: Sequence[TokenStore], eod_id: int, pad_id: int, dtype: np.dtype,
             rows_per_step: int) -> None:
        """Read the tokens of every step at once (all rows: one rank), then cut per step."""
        compact = materialize_compact(self.plan, stores, eod_id, pad_id, dtype)
        self.batches = split_compact(compact, [rows_per_step] * len(self.plans))


def split_rows(plan: StepPlan, rows: int) -> list[StepPlan]:
    """A plan of ``n·rows`` rows as ``n`` plans of ``rows`` rows (segments are ordered by row);
    steps that hold no segment (the stream ended before them) are dropped."""
    n = plan.rows // rows
    cut = _cuts(plan, rows, n)
    out = []
    for j in range(n):
        if cut[j] == cut[j + 1]:
            break
        out.append(_steps_of(plan, cut, rows, j, j + 1))
    return out


def _cuts(plan: StepPlan, rows: int, steps: int) -> list[int]:
    """Where each of ``steps`` steps of ``rows`` rows starts among the plan's segments (they
    are ordered by row): step j holds segments ``cut[j]:cut[j + 1]``."""
    return np.searchsorted(plan.row, np.arange(steps + 1) * rows).tolist()


def _steps_of(plan: StepPlan, cut: list[int], rows: int, first: int, stop: int) -> StepPlan:
    """Steps ``first .. stop - 1`` of ``rows`` rows each of a plan cut at ``cut``
    (:func:`_cuts`), as one plan of their rows: slices of the plan, no copies."""
    a, b = cut[first], cut[stop]
    return StepPlan((stop - first) * rows, plan.seq_len, plan.row[a:b] - np.int32(first * rows),
                    plan.col[a:b], plan.source[a:b], plan.doc[a:b], plan.start[a:b],
                    plan.end[a:b], plan.eod[a:b], plan.pad[first * rows:stop * rows],
                    second=None if plan.second is None else plan.second[a:b])
