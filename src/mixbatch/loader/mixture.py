"""The mixture a config asks for, as weight vectors over its sources (in config order).

- ``weights: {a: .7, b: .3}``: fixed; a source not named gets 0;
- ``temperature: τ``: ``p_i ∝ n_i^τ`` over the natural sizes, tokens or documents by ``unit``;
- ``schedule: [...]``: stages by ``until_step`` or ``until_tokens``
  (:class:`mixbatch.mixture.schedule.Schedule`), constant or linear;
- nothing: natural proportions (τ = 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mixbatch.config import Config, Unit
from mixbatch.errors import ConfigError
from mixbatch.mixture.schedule import Interpolation, Schedule, Stage
from mixbatch.mixture.weights import (
    normalize_weights,
    temperature_weights,
    validate_weights,
    weights_from_mapping,
)
from mixbatch.store import TokenStore


class MixtureSchedule:
    """Target weights at a step (or token count), normalised, one entry per source."""

    def __init__(self, names: Sequence[str], fixed: np.ndarray | None = None,
                 schedule: Schedule | None = None, by_tokens: bool = False) -> None:
        self.names = list(names)
        self.fixed = fixed
        self.schedule = schedule
        self.by_tokens = by_tokens

    def weights_at(self, step: int, tokens: int) -> np.ndarray:
        if self.schedule is not None:
            return self.schedule.weights_at(tokens if self.by_tokens else step)
        assert self.fixed is not None
        return self.fixed

    def steps_constant(self, step: int, tokens: int, limit: int,
                       tokens_per_step: int | None = None) -> int:
        """How many steps from ``step`` on (at most ``limit``, at least 1) keep today's weights.

        ``tokens_per_step``: the positions every step adds to the token clock, when that is
        fixed (``concat``); without it a schedule by tokens gives 1."""
        sched = self.schedule
        if sched is None:
            return max(limit, 1)
        by_tokens = self.by_tokens
        t = tokens if by_tokens else step
        bounds = sched.boundaries
        j = sched.stage_index(t)
        last = len(sched.stages) - 1
        ramp = sched.interpolation is Interpolation.LINEAR and j < min(last, len(bounds))
        if ramp:
            return 1
        if j >= len(bounds) or j >= last:  # the last stage: constant from here on
            return max(limit, 1)
        gap = bounds[j] - t
        if by_tokens:
            if not tokens_per_step:
                return 1
            gap = -(-gap // tokens_per_step)
        return int(max(1, min(limit, gap)))

    def vector(self, weights: Mapping[str, float] | Sequence[float] | np.ndarray) -> np.ndarray:
        """A user's weights (by name or in source order) as a normalised vector."""
        if isinstance(weights, Mapping):
            return normalize_weights(weights_from_mapping(weights, self.names))
        return normalize_weights(validate_weights(weights, self.names), names=self.names)


def build_mixture(cfg: Config, stores: Sequence[TokenStore]) -> MixtureSchedule:
    names = list(cfg.sources)
    m = cfg.mixture
    if m.schedule:
        clocks = {"tokens" if s.until_tokens is not None else "step"
                  for s in m.schedule if (s.until_tokens or s.until_step) is not None}
        if len(clocks) > 1:
            raise ConfigError("mixture.schedule: mix of until_step and until_tokens; use one")
        by = clocks.pop() if clocks else "step"
        stages = [Stage(dict(s.weights), s.until_tokens if by == "tokens" else s.until_step)
                  for s in m.schedule]
        try:
            sched = Schedule(names, stages, by=by, interpolation=m.interpolation)
        except ConfigError as e:
            raise ConfigError(f"mixture.{e}") from None
        return MixtureSchedule(names, schedule=sched, by_tokens=by == "tokens")
    if m.weights is not None:
        try:
            w = weights_from_mapping(dict(m.weights), names, field="mixture.weights")
        except ConfigError:
            raise
        return MixtureSchedule(names, fixed=w / w.sum())
    sizes = [s.num_tokens if m.unit == Unit.TOKENS else len(s) for s in stores]
    tau = 1.0 if m.temperature is None else m.temperature
    return MixtureSchedule(names, fixed=temperature_weights(sizes, tau, names,
                                                            field="source sizes"))
