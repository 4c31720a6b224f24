"""Mixup probability and alpha over training steps, including stopping mixup early.

"The Benefits of Mixup for Feature Learning" (Zou et al., ICML 2023) shows that mixup helps by
making the network learn rare features early, and that switching mixup off for the last part of
training keeps that benefit (their "early-stopped mixup", section 5): ``stop_step`` does that.
Between ``start_step`` and ``end_step`` the probability and alpha move from their start to their
end values (``linear`` or ``cosine``); outside they hold. Pure Python: the config uses it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from mixbatch.errors import ConfigError

__all__ = ["MixupSchedule"]


@dataclass(frozen=True)
class MixupSchedule:
    """``prob(step)`` and ``alpha_scale(step)``; at and after ``stop_step`` both are 0."""

    start_prob: float = 1.0
    end_prob: float | None = None
    start_alpha_scale: float = 1.0
    end_alpha_scale: float | None = None
    start_step: int = 0
    end_step: int | None = None
    shape: Literal["linear", "cosine"] = "linear"
    stop_step: int | None = None

    def __post_init__(self) -> None:
        for name in ("start_prob", "end_prob"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ConfigError(f"schedule.{name}: must be within [0, 1], got {v}")
        for name in ("start_alpha_scale", "end_alpha_scale"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ConfigError(f"schedule.{name}: must be > 0, got {v}")
        if self.end_step is not None and self.end_step <= self.start_step:
            raise ConfigError(f"schedule.end_step: must be > start_step ({self.start_step}), "
                              f"got {self.end_step}")
        if self.stop_step is not None and self.stop_step < 0:
            raise ConfigError(f"schedule.stop_step: must be >= 0, got {self.stop_step}")
        if self.shape not in ("linear", "cosine"):
            raise ConfigError(f"schedule.shape: 'linear' or 'cosine', got {self.shape!r}")

    def _progress(self, step: int) -> float:
        if self.end_step is None or step <= self.start_step:
            return 0.0
        t = min(1.0, (step - self.start_step) / (self.end_step - self.start_step))
        return t if self.shape == "linear" else 0.5 * (1.0 - math.cos(math.pi * t))

    def active(self, step: int) -> bool:
        return self.stop_step is None or step < self.stop_step

    def prob(self, step: int) -> float:
        if not self.active(step):
            return 0.0
        end = self.start_prob if self.end_prob is None else self.end_prob
        return self.start_prob + (end - self.start_prob) * self._progress(step)

    def alpha_scale(self, step: int) -> float:
        end = self.start_alpha_scale if self.end_alpha_scale is None else self.end_alpha_scale
        return self.start_alpha_scale + (end - self.start_alpha_scale) * self._progress(step)
