"""How big a loader step is: the batch size (fixed-row packings) or the token budget
(``buckets``, ``pad_buckets``), each a number or a schedule of stages, and their run-time changes.

Split from :mod:`mixbatch.loader.loader`: :class:`StepSizes` is the part of
:class:`~mixbatch.loader.loader.MixedLoader` that answers "how many rows / tokens has the next
step" and changes it (:meth:`StepSizes.set_batch_size`, :meth:`StepSizes.set_token_budget`),
and checks the changes a saved state carries (``batch_size_changes``, ``token_budget_changes``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mixbatch.config import Config
from mixbatch.errors import ConfigError, StateError
from mixbatch.plan.batch_schedule import RowsSchedule, rows_schedule_from
from mixbatch.plan.state_checks import count, shown

__all__ = ["StepSizes", "rows_schedule"]


class StepSizes:
    """Rows or token budget of each step (a mixin of the loader: it reads the loader's
    ``cfg``, schedules, changes, clock and shaper)."""

    cfg: Config
    world_size: int
    step: int
    tokens_planned: int
    rows_schedule: RowsSchedule | None
    budget_schedule: RowsSchedule | None
    changes: list[list[int]]
    budget_changes: list[list[int]]
    shaper: Any
    feed: Any

    def _drop_block(self) -> None:  # the loader's
        raise NotImplementedError

    def weight_path(self) -> Any:  # the loader's
        raise NotImplementedError

    # ---- the batch size ------------------------------------------------------------------
    @property
    def rows_per_step(self) -> int:
        """Global rows of the next step (a token-budget packing: the most a step has)."""
        if self.rows_schedule is None:
            return self.cfg.batch.step_positions // self.cfg.batch.seq_len
        if self.changes:
            return self.changes[-1][1]
        return self.rows_schedule.rows_at(self.step, self.tokens_planned)

    @property
    def max_rows_per_step(self) -> int | None:
        """The most global rows any step of this run can have: the largest of the schedule,
        or ``batch.max_batch_size`` (the bound of :meth:`set_batch_size`); a rank's rows are
        this over the world size, of ``seq_len`` positions each (what a buffer for one rank's
        step must hold). None for the token-budget packings: their rows vary with the
        lengths, a step holds at most ``batch.token_budget`` positions."""
        if self.rows_schedule is None:
            return None
        bound = (self.cfg.batch.max_batch_size or 0) // self.cfg.batch.grad_accum
        return max(self.rows_schedule.max_rows, bound)

    def _max_rows(self) -> int:
        largest = self.max_rows_per_step
        assert largest is not None  # fixed rows
        return largest

    @property
    def micro_batch_size(self) -> int:
        """This rank's rows of the next step (Hugging Face's and Lightning's batch size)."""
        return self.rows_per_step // self.world_size

    def set_batch_size(self, batch_size: int) -> None:
        """Change the global batch (rows per optimizer step, all ranks, as ``batch.batch_size``)
        from the next step on; it replaces the schedule from here, across resume too (the state
        keeps the last change). The mixture stays exact: the row stream does not depend on it."""
        b = self.cfg.batch
        if self.rows_schedule is None:
            raise ConfigError(f"set_batch_size: packing {b.packing.value!r} sets each step's rows "
                              "by batch.token_budget (tokens per step), not by a batch size")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ConfigError(f"set_batch_size: {batch_size!r} is not a positive whole number")
        rows = _split_rows(int(batch_size), b.grad_accum, self.world_size, "set_batch_size")
        largest = self._max_rows()
        if rows > largest:
            raise ConfigError(f"set_batch_size: {batch_size} is above the largest batch this run "
                              f"allows ({largest * b.grad_accum}); raise batch.max_batch_size")
        if self.changes and rows == self.changes[-1][1]:
            return  # pinned at this size already
        self._drop_block()
        self.changes = [[self.step, rows]]  # only the last change is read: state stays O(1)
        self.feed.path = self.weight_path()

    @property
    def token_budget(self) -> int | None:
        """Tokens of the next step's budget (the token-budget packings; None for the others):
        the last run-time change, else the schedule's stage at this step."""
        if self.budget_schedule is None:
            return None
        if self.budget_changes:
            return self.budget_changes[-1][1]
        return self.budget_schedule.rows_at(self.step, self.tokens_planned)

    def set_token_budget(self, token_budget: int) -> None:
        """Change the tokens per step (``batch.token_budget``) from the next step on; it
        replaces the schedule from here, across resume too (the state keeps the last change). The
        open window's steps not handed out yet are planned again with it, so the mixture stays
        exact at the window's end and every rank sees the same steps."""
        b = self.cfg.batch
        if self.budget_schedule is None:
            raise ConfigError(f"set_token_budget: packing {b.packing.value!r} has a batch size "
                              "(rows per step), not a token budget; use set_batch_size")
        if isinstance(token_budget, bool) or not isinstance(token_budget, (int, np.integer)) \
                or token_budget < 1:
            raise ConfigError(f"set_token_budget: {token_budget!r} is not a positive whole "
                              "number of tokens")
        budget = int(token_budget)
        if budget > b.largest_budget:
            raise ConfigError(f"set_token_budget: {budget} is above the largest budget this run "
                              f"allows ({b.largest_budget}); raise batch.max_token_budget")
        self.shaper.check_budget(budget, "set_token_budget")  # type: ignore[attr-defined]
        if self.budget_changes and budget == self.budget_changes[-1][1]:
            return
        self.budget_changes = [[self.step, budget]]  # the last change is all that is read

    def _state_pairs(self, raw: Any, step: int, key: str, value: str, what: str,
                     scheduled: bool) -> list[tuple[str, int, int]]:
        """The ``[step, value]`` pairs of ``loader state.<key>``, in step order up to ``step``,
        each with the name it is reported under (the checks both kinds of change share)."""
        if not isinstance(raw, list):
            raise StateError(f"loader state.{key}: not a list")
        if raw and not scheduled:
            raise StateError(f"loader state.{key}: given, but packing "
                             f"{self.cfg.batch.packing.value!r} has no {what}")
        out: list[tuple[str, int, int]] = []
        for j, pair in enumerate(raw):
            where = f"loader state.{key}.{j}"
            if not isinstance(pair, list) or len(pair) != 2:
                raise StateError(f"{where}: expected [step, {value}], got {shown(pair)}")
            at = count(f"{where}.step", pair[0])
            v = count(f"{where}.{value}", pair[1], lo=1)
            if (out and at <= out[-1][1]) or at > step:
                raise StateError(f"{where}.step: {at} is out of order (changes are by step, "
                                 f"up to the state's step {step})")
            out.append((f"{where}.{value}", at, v))
        return out

    def _checked_changes(self, raw: Any, step: int) -> list[list[int]]:
        """The run-time batch sizes of a state: ``[step, rows]`` pairs, in step order, each
        within this run's bound and divisible by this world size."""
        pairs = self._state_pairs(raw, step, "batch_size_changes", "rows", "batch size",
                                  self.rows_schedule is not None)
        for where, _, rows in pairs:
            if rows > self._max_rows():
                raise StateError(f"{where}: {rows} rows are above this run's largest step "
                                 f"({self._max_rows()}); raise batch.max_batch_size")
            if rows % self.world_size:
                raise StateError(f"{where}: {rows} global rows cannot be split over world "
                                 f"size {self.world_size}")
        return [[at, rows] for _, at, rows in pairs]

    def _checked_budgets(self, raw: Any, step: int) -> list[list[int]]:
        """The run-time token budgets of a state: ``[step, budget]`` pairs, in step order,
        each one this run's shaper can plan with."""
        pairs = self._state_pairs(raw, step, "token_budget_changes", "budget", "token budget",
                                  self.budget_schedule is not None)
        for where, _, budget in pairs:
            if budget > self.cfg.batch.largest_budget:
                raise StateError(f"{where}: {budget} is above this run's largest budget "
                                 f"({self.cfg.batch.largest_budget}); raise "
                                 "batch.max_token_budget")
            try:
                self.shaper.check_budget(budget, where)  # type: ignore[attr-defined]
            except ConfigError as e:
                raise StateError(str(e)) from None
        return [[at, budget] for _, at, budget in pairs]


def _split_rows(size: int, accum: int, world_size: int, where: str) -> int:
    """Rows of a loader step for a global batch of ``size``: ``size / accum``, a multiple of
    the world size (an error naming both otherwise)."""
    if size % (accum * world_size):
        raise ConfigError(f"{where}: global batch {size} cannot be split evenly over world size "
                          f"{world_size}" + (f" x batch.grad_accum {accum}" if accum > 1 else ""))
    return size // accum


def rows_schedule(cfg: Config, world_size: int) -> RowsSchedule:
    """The rows of each step at this world size; every size must split over the ranks, and an
    explicit ``micro_batch_size`` must agree with the global batch."""
    b = cfg.batch
    stages = b.stage_tuples(world_size)
    micro, size = b.micro_batch_size, b.global_size
    if micro is not None and isinstance(size, int) and micro * world_size * b.grad_accum != size:
        raise ConfigError(f"batch.micro_batch_size {micro} and batch.global_batch_size {size} "
                          f"disagree at world size {world_size} x grad_accum {b.grad_accum} "
                          f"(micro x world x grad_accum = {micro * world_size * b.grad_accum})")
    for j, (n, _, _) in enumerate(stages):
        where = "batch.batch_size" if len(stages) == 1 else f"batch.batch_size.{j}.batch_size"
        _split_rows(n, b.grad_accum, world_size, where)
    if b.max_batch_size is not None:
        _split_rows(b.max_batch_size, b.grad_accum, world_size, "batch.max_batch_size")
    if micro is not None and size is None and world_size > 1:  # the step grows with the world
        from mixbatch.limits import check_step_memory

        check_step_memory(cfg.model_copy(update={"batch": b.model_copy(
            update={"batch_size": micro * world_size})}))
    return rows_schedule_from(stages, b.grad_accum)
