"""Learning rates that move with the data: schedules driven by tokens trained and by the
mixture's stages, as a torch LR scheduler with ``state_dict``.

Shapes (``u`` = tokens since the current stage's origin, ``H`` = the run's tokens left from that
origin, ``w`` = warm-up tokens, ``D = H·(1 − decay_fraction)``, ``η`` = the group's base LR):

* ``cosine``: ``η_min + ½(η − η_min)(1 + cos(π·(u − w)/(H − w)))``.
* ``wsd`` (warmup-stable-decay, as in "MiniCPM: Unveiling the Potential of Small Language Models
  with Scalable Training Strategies"): ``η`` until ``D``, then linear to ``η_min`` at ``H``.
* ``power`` ("Power Scheduler: A Batch Size and Token Number Agnostic Learning Rate
  Scheduler"): ``η(n) = min(η_max, β·a·n^b)`` with ``n`` the tokens trained, ``β`` the batch
  size in sequences, ``a = 4``, ``b = −0.51`` by default; the same final decay as ``wsd``.
* ``constant``.

Every shape starts with a linear warm-up over ``w`` tokens to its own value at ``w``.

Re-warming ("Continual Pre-Training of Large Language Models: How to (re)warm your model?"):
with ``rewarm_tokens`` set, a change of the mixture's stage restarts the clock at the tokens
trained so far: the LR rises linearly from where it was to the shape's value ``rewarm_tokens``
later, then follows the shape over the tokens left. Without it the stage changes nothing.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from mixbatch.checks import choice, integer, real
from mixbatch.errors import ConfigError, StateError

__all__ = ["LRShape", "TokenLR", "TokenSchedule", "loader_stage"]


class LRShape(str, enum.Enum):
    CONSTANT = "constant"
    COSINE = "cosine"
    WSD = "wsd"
    POWER = "power"


@dataclass(frozen=True)
class TokenSchedule:
    """The shape of a token-driven schedule (see the module docstring)."""

    shape: LRShape
    total_tokens: int
    warmup_tokens: int = 0
    decay_fraction: float = 0.1  # wsd / power: the final decay's share of the tokens left
    min_ratio: float = 0.0  # η_min = η · min_ratio
    batch_size: int = 1  # power: β, sequences per step
    power_a: float = 4.0
    power_b: float = -0.51
    rewarm_tokens: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", choice(LRShape, "lr.shape", self.shape))
        integer("lr.total_tokens", self.total_tokens, lo=1)
        integer("lr.warmup_tokens", self.warmup_tokens, lo=0, hi=self.total_tokens - 1)
        real("lr.decay_fraction", self.decay_fraction, lo=0, hi=1)
        real("lr.min_ratio", self.min_ratio, lo=0, hi=1)
        integer("lr.batch_size", self.batch_size, lo=1)
        real("lr.power_a", self.power_a, lo=0, lo_open=True)
        real("lr.power_b", self.power_b, hi=0)
        if self.rewarm_tokens is not None:
            integer("lr.rewarm_tokens", self.rewarm_tokens, lo=1)

    def as_dict(self) -> dict[str, Any]:
        """The settings in plain types (the shape by its name)."""
        return {**asdict(self), "shape": self.shape.value}

    def main(self, u: float, horizon: float, warmup: float, peak: float) -> float:
        """The shape after its warm-up, ``u`` tokens past the origin."""
        low = peak * self.min_ratio
        if self.shape is LRShape.CONSTANT:
            return peak
        if self.shape is LRShape.COSINE:
            p = min(max((u - warmup) / max(horizon - warmup, 1.0), 0.0), 1.0)
            return low + 0.5 * (peak - low) * (1.0 + math.cos(math.pi * p))
        stable = peak
        if self.shape is LRShape.POWER:
            stable = min(peak, self.batch_size * self.power_a * max(u, 1.0) ** self.power_b)
        start = horizon * (1.0 - self.decay_fraction)
        if u <= start or horizon <= start:
            return stable
        p = min((u - start) / (horizon - start), 1.0)
        return stable + (low * stable / peak - stable) * p  # to η_min·(stable/η) at the end

    def at(self, u: float, horizon: float, warmup: float, peak: float, start_lr: float) -> float:
        """The LR ``u`` tokens past an origin with ``horizon`` tokens left, warming up over
        ``warmup`` tokens from ``start_lr``."""
        if u < warmup:
            return start_lr + (self.main(warmup, horizon, warmup, peak) - start_lr) * u / warmup
        return self.main(u, horizon, warmup, peak)


def loader_stage(loader: Any) -> int:
    """The index of the mixture schedule's stage the loader is in (0 without a schedule)."""
    sched = getattr(getattr(loader, "mixture", None), "schedule", None)
    if sched is None:
        return 0
    clock = loader.tokens_planned if loader.mixture.by_tokens else loader.step
    return sched.stage_index(clock)


class TokenLR(torch.optim.lr_scheduler.LRScheduler):
    """A torch LR scheduler whose clock is the tokens trained (and the mixture's stage).

    Call :meth:`step` once per optimiser step with the tokens trained so far, counting the
    step's batch (``step(tokens, stage)``), or with no arguments when a ``loader`` (anything
    with ``fed_tokens``, e.g. :class:`~mixbatch.loader.loader.MixedLoader`) was given: its fed
    tokens and its mixture stage are read. The group's base LR (``initial_lr``) is the peak.
    ``state_dict`` holds the clock: a resumed scheduler continues exactly.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: TokenSchedule,
                 loader: Any = None) -> None:
        if loader is not None and not hasattr(loader, "fed_tokens"):
            raise ConfigError(f"lr schedule {schedule.shape.value!r} counts tokens, but the "
                              f"loader given ({type(loader).__name__}) has no token counts "
                              "(fed_tokens): attach a MixedLoader, or attach none and call "
                              "step(tokens) with the tokens trained")
        self.schedule = schedule
        self._loader = loader
        self.tokens = 0  # tokens trained at the last step
        self.stage = 0
        self.origin = 0  # tokens at the current stage's start (0 without re-warming)
        self.start_lrs: list[float] = [0.0] * len(optimizer.param_groups)
        super().__init__(optimizer)

    def state_dict(self) -> dict[str, Any]:
        """The clock and the schedule, in plain types only (numbers, strings, lists, dicts):
        a checkpoint loads with ``torch.load(weights_only=True)``."""
        state = {k: v for k, v in super().state_dict().items() if k != "_loader"}
        state["schedule"] = self.schedule.as_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("schedule")
        if isinstance(saved, TokenSchedule):  # a state from before plain-type states
            saved = saved.as_dict()
        if saved != self.schedule.as_dict():
            raise StateError(f"lr schedule: the saved schedule {saved!r} differs from this "
                             f"run's {self.schedule.as_dict()!r}")
        super().load_state_dict({**state_dict, "schedule": self.schedule})

    def get_lr(self) -> list[float]:
        s = self.schedule
        warmup = s.warmup_tokens if self.stage == 0 or s.rewarm_tokens is None else s.rewarm_tokens
        u, horizon = self.tokens - self.origin, s.total_tokens - self.origin
        return [s.at(u, horizon, warmup, float(base), start)
                for base, start in zip(self.base_lrs, self.start_lrs, strict=True)]

    def step(self, tokens: int | None = None, stage: int | None = None) -> None:  # type: ignore[override]
        if self._is_initial:  # torch's first call from __init__: the LR at 0 tokens
            tokens = 0
        elif tokens is None:
            if self._loader is None:
                raise ConfigError(f"lr schedule {self.schedule.shape.value!r} counts tokens: "
                                  "call step(tokens) or attach a loader with token counts")
            tokens = int(self._loader.fed_tokens.sum())
            stage = loader_stage(self._loader) if stage is None else stage
        tokens = integer("lr step tokens", tokens, lo=0)
        if tokens < self.tokens:
            raise ConfigError(f"lr schedule: tokens went backwards ({self.tokens} -> {tokens})")
        if stage is not None and stage != self.stage:
            if stage < self.stage:
                raise ConfigError(f"lr schedule: stage went backwards ({self.stage} -> {stage})")
            if self.schedule.rewarm_tokens is not None:
                self.origin = self.tokens  # the new stage began where the last step ended
                self.start_lrs = [float(v) for v in self._last_lr]
            self.stage = stage
        self.tokens = tokens
        self.last_epoch += 1
        self._step_count += 1
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self._last_lr = lrs
