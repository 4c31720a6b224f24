"""Mixture schedules: weights that change with the training step or the token count.

A schedule is a list of stages. Stage ``j`` covers the clock interval ``[start_j, until_j)``
with ``start_0 = 0`` and ``start_j = until_{j-1}``; the clock ``t`` is the optimizer step
(``by="step"``) or the number of training tokens seen so far (``by="tokens"``). Every ``until``
but the last must be given and they must increase strictly; the last stage may be open-ended
(``until=None``), and if it has an ``until`` its weights simply continue after it.

Each stage's weights are normalised on their own (they sum to 1). A source the stage does not
name gets weight 0 in that stage; a name that is not a known source is an error.

Interpolation:

``constant``
    ``w(t) = p_j`` for ``t`` in stage ``j``: the mix jumps at each boundary.
``linear``
    In stage ``j`` the mix moves in a straight line from ``p_j`` (reached exactly at
    ``start_j``) to ``p_{j+1}`` (reached exactly at ``until_j``):
    ``w(t) = (1 - a) p_j + a p_{j+1}`` with ``a = (t - start_j) / (until_j - start_j)``.
    The last stage is constant. To hold a mix and then ramp, repeat it: stages
    ``A until 8000, A until 9000, B`` keep ``A`` until step 8000, ramp to ``B`` by step 9000,
    then keep ``B``.

Examples: a warm-up mix (``{web: 1} until 1000`` then ``{web: .7, code: .3}``), an annealing
stage at the end of pre-training (``{web: .7, code: .3} until 90000`` then
``{books: .5, code: .5}``), two-stage fine-tuning (``{general: 1} until 2000`` then
``{task: .8, general: .2}``).

The planner integrates ``w(t)`` over its units, so a weight change never restarts anything:
see :mod:`mixbatch.plan.interleave`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mixbatch.checks import choice
from mixbatch.errors import ConfigError
from mixbatch.mixture.weights import weights_from_mapping

__all__ = ["Interpolation", "Schedule", "ScheduleClock", "Stage"]


class ScheduleClock(enum.Enum):
    """What the stage boundaries count."""

    STEP = "step"
    TOKENS = "tokens"


class Interpolation(enum.Enum):
    """How the weights move inside a stage."""

    CONSTANT = "constant"
    LINEAR = "linear"


@dataclass(frozen=True)
class Stage:
    """One stage: its weights by source name and the clock value where it ends (exclusive)."""

    weights: Mapping[str, float]
    until: int | None = None


@dataclass(frozen=True)
class Schedule:
    """Piecewise (constant or linear) mixture weights over steps or tokens.

    ``weights_at(t)`` returns the normalised weight vector (order of ``sources``) at clock
    ``t >= 0``. All validation happens at construction and raises :class:`ConfigError` naming
    the stage and field.
    """

    sources: Sequence[str]
    stages: Sequence[Stage]
    by: ScheduleClock | str = ScheduleClock.STEP
    interpolation: Interpolation | str = Interpolation.CONSTANT
    _weights: np.ndarray = field(init=False, repr=False, compare=False)
    _bounds: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by", choice(ScheduleClock, "schedule.by", self.by))
        object.__setattr__(
            self,
            "interpolation",
            choice(Interpolation, "schedule.interpolation", self.interpolation),
        )
        sources = tuple(self.sources)
        if not sources:
            raise ConfigError("schedule.sources: no sources given")
        if len(set(sources)) != len(sources):
            raise ConfigError(f"schedule.sources: duplicate source names in {list(sources)}")
        object.__setattr__(self, "sources", sources)
        stages = tuple(self.stages)
        if not stages:
            raise ConfigError("schedule.stages: give at least one stage")
        object.__setattr__(self, "stages", stages)
        rows = []
        bounds = []
        previous = 0
        for j, stage in enumerate(stages):
            where = f"schedule.stages[{j}]"
            if not isinstance(stage, Stage):
                raise ConfigError(f"{where}: expected a Stage, got {stage!r}")
            w = weights_from_mapping(stage.weights, sources, field=f"{where}.weights")
            rows.append(w / w.sum())
            until = stage.until
            last = j == len(stages) - 1
            if until is None:
                if not last:
                    raise ConfigError(
                        f"{where}.until: only the last stage may be open-ended; "
                        "give this stage an end"
                    )
                continue
            if isinstance(until, bool) or not isinstance(until, int | np.integer):
                raise ConfigError(
                    f"{where}.until: must be an integer {self.by.value}, got {until!r}"
                )
            if until <= previous:
                raise ConfigError(
                    f"{where}.until: must be greater than {previous} (the stage's start); "
                    "stage ends must increase strictly"
                )
            bounds.append(int(until))
            previous = int(until)
        object.__setattr__(self, "_weights", np.array(rows, dtype=np.float64))
        object.__setattr__(self, "_bounds", np.array(bounds, dtype=np.float64))

    @property
    def num_sources(self) -> int:
        return len(self.sources)

    @property
    def boundaries(self) -> tuple[int, ...]:
        """The stage ends that are given, in order."""
        return tuple(int(b) for b in self._bounds)

    def stage_index(self, t: float) -> int:
        """Index of the stage containing clock ``t``."""
        t = self._check_t(t)
        return int(np.searchsorted(self._bounds, t, side="right"))

    def weights_at(self, t: float) -> np.ndarray:
        """Normalised weights at clock ``t`` (a step, or a token count), as a new array."""
        t = self._check_t(t)
        j = int(np.searchsorted(self._bounds, t, side="right"))
        last = len(self.stages) - 1
        if self.interpolation is Interpolation.CONSTANT or j >= min(last, len(self._bounds)):
            return self._weights[min(j, last)].copy()
        start = 0.0 if j == 0 else float(self._bounds[j - 1])
        a = (t - start) / (float(self._bounds[j]) - start)
        w = (1.0 - a) * self._weights[j] + a * self._weights[j + 1]
        # Keep the vector exactly on the simplex after rounding.
        return w / w.sum()

    @staticmethod
    def _check_t(t: float) -> float:
        if isinstance(t, bool) or not isinstance(t, int | float | np.integer | np.floating):
            raise ConfigError(f"t: expected a step or token count, got {t!r}")
        t = float(t)
        if not np.isfinite(t) or t < 0:
            raise ConfigError(f"t: must be a finite number >= 0, got {t}")
        return t
