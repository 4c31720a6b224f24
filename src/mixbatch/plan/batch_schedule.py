"""The rows of a global step as a schedule: stages by step or by tokens, and run-time changes.

A stage ``j`` covers the clock interval ``[until_{j-1}, until_j)`` (the first starts at 0); the
clock is the loader's step or its planned tokens (tokens plus end-of-document tokens, no
padding: the clock of the mixture's ``until_tokens``). Every ``until`` but the last must be
given and they must increase strictly; the last stage may be open, and if it has an ``until``
its size continues after it (the rule of :mod:`mixbatch.mixture.schedule`). A ramp is a list
of stages.

The schedule is a pure function of the clock; a run-time change (:meth:`RowsSchedule.rows_at`
with an ``override``) replaces it from the step it is made on, and the loader keeps the
last change in its state (one pair). Packings whose step of ``n·R`` rows is ``n`` steps
of ``R`` rows make the row stream independent of the step size, so the mixture stays exact
across a change and the rank split only has to divide each step's rows.

The same schedule, with its values read as tokens per step, is ``batch.token_budget`` of the
token-budget packings (``buckets``, ``pad_buckets``; :func:`budget_schedule_from`): there a
change re-plans the rest of the open window with the new budget
(:class:`mixbatch.shape.window.WindowReplay`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mixbatch.errors import ConfigError

__all__ = ["RowsSchedule", "budget_schedule_from", "rows_schedule_from"]


@dataclass(frozen=True)
class RowsSchedule:
    """Global rows of a loader step, stage by stage.

    Args:
        rows: the rows of each stage.
        until: where each stage ends on the clock (the last may be None: open).
        by_tokens: the clock counts planned tokens, not steps.
        key: the config key of each stage's value (for messages): ``batch_size``, or
            ``token_budget`` (then ``rows`` are tokens per step).
    """

    rows: tuple[int, ...]
    until: tuple[int | None, ...]
    by_tokens: bool = False
    key: str = "batch_size"

    def __post_init__(self) -> None:
        where = f"batch.{self.key}"
        if not self.rows or len(self.rows) != len(self.until):
            raise ConfigError(f"{where}: a schedule needs at least one stage")
        clock = "until_tokens" if self.by_tokens else "until_step"
        last = None
        for j, (r, u) in enumerate(zip(self.rows, self.until, strict=True)):
            if r < 1:
                raise ConfigError(f"{where}.{j}.{self.key}: must be >= 1, got {r}")
            if u is None and j < len(self.rows) - 1:
                raise ConfigError(f"{where}.{j}: only the last stage may be open; "
                                  f"give `{clock}` (stages may not skip a bound)")
            if u is not None and last is not None and u <= last:
                raise ConfigError(f"{where}.{j}.{clock}: {u} is not after the "
                                  f"previous stage's {last} (stages may not go backwards)")
            last = u if u is not None else last

    @property
    def max_rows(self) -> int:
        return max(self.rows)

    @property
    def constant(self) -> bool:
        return len(set(self.rows)) == 1

    def stage_index(self, clock: int) -> int:
        for j, u in enumerate(self.until):
            if u is None or clock < u:
                return j
        return len(self.rows) - 1

    def rows_at(self, step: int, tokens: int) -> int:
        return self.rows[self.stage_index(tokens if self.by_tokens else step)]

    def steps_constant(self, step: int, tokens: int, limit: int,
                       tokens_per_step: int | None = None) -> int:
        """How many steps from ``step`` on (at least 1, at most ``limit``) keep today's rows;
        ``tokens_per_step``: the planned tokens each step adds when that is fixed (a token
        clock without it gives 1 while a boundary is ahead)."""
        t = tokens if self.by_tokens else step
        j = self.stage_index(t)
        change = next((k for k in range(j + 1, len(self.rows)) if self.rows[k] != self.rows[j]),
                      None)
        if change is None:  # the same rows to the end
            return max(limit, 1)
        bound = self.until[change - 1]
        assert bound is not None  # only the last stage is open
        gap = bound - t
        if self.by_tokens:
            if not tokens_per_step:
                return 1
            gap = -(-gap // tokens_per_step)
        return int(max(1, min(limit, gap)))


def rows_schedule_from(stages: Sequence[tuple[int, int | None, int | None]], divisor: int = 1,
                       where: str = "batch.batch_size") -> RowsSchedule:
    """A :class:`RowsSchedule` from config stages ``(size, until_step, until_tokens)``; each
    size is divided by ``divisor`` (gradient accumulation: loader steps per optimizer step)."""
    by_tokens = any(t is not None for _, _, t in stages)
    if by_tokens and any(s is not None for _, s, _ in stages):
        raise ConfigError(f"{where}: mix of until_step and until_tokens; use one")
    rows = []
    for j, (size, _, _) in enumerate(stages):
        if size % divisor:
            raise ConfigError(f"{where}.{j}.batch_size: {size} rows cannot be split into "
                              f"batch.grad_accum = {divisor} equal steps")
        rows.append(size // divisor)
    until = tuple(t if by_tokens else s for _, s, t in stages)
    return RowsSchedule(tuple(rows), until, by_tokens)


def budget_schedule_from(stages: Sequence[tuple[int, int | None, int | None]]
                         ) -> RowsSchedule:
    """The ``batch.token_budget`` schedule (tokens per step) from config stages
    ``(budget, until_step, until_tokens)``."""
    by_tokens = any(t is not None for _, _, t in stages)
    if by_tokens and any(s is not None for _, s, _ in stages):
        raise ConfigError("batch.token_budget: mix of until_step and until_tokens; use one")
    until = tuple(t if by_tokens else s for _, s, t in stages)
    return RowsSchedule(tuple(int(b) for b, _, _ in stages), until, by_tokens, "token_budget")
