"""The ``mixup:`` section of the YAML config (pure Python: no torch import).

::

    mixup:
      mixup_alpha: 0.8          # 0 switches MixUp off
      cutmix_alpha: 1.0         # 0 switches CutMix off
      prob: 1.0
      switch_prob: 0.5
      mode: batch               # batch | pair | elem
      pairing: flip             # flip (timm) | roll (torchvision) | random
      label_smoothing: 0.1
      num_classes: 10
      target: label             # batch key of the class ids (soft targets go to `mix_target`)
      keys: [image]             # float tensors mixed in place (default: every float tensor)
      level: input              # input | embedding (only the record is added; the model mixes)
      schedule: {stop_step: 9000}   # stop mixup early; also start/end prob and alpha scale

Checked by pydantic like the rest of the config; :class:`mixbatch.mixup.BatchMixer` applies it.
"""

from __future__ import annotations

import enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mixbatch.mixup.schedule import MixupSchedule

__all__ = ["MixLevel", "MixupScheduleSpec", "MixupSpec"]


class MixLevel(str, enum.Enum):
    INPUT = "input"
    EMBEDDING = "embedding"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MixupScheduleSpec(_Strict):
    start_prob: float = Field(default=1.0, ge=0, le=1)
    end_prob: float | None = Field(default=None, ge=0, le=1)
    start_alpha_scale: float = Field(default=1.0, gt=0)
    end_alpha_scale: float | None = Field(default=None, gt=0)
    start_step: int = Field(default=0, ge=0)
    end_step: int | None = Field(default=None, ge=1)
    shape: Literal["linear", "cosine"] = "linear"
    stop_step: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _order(self) -> MixupScheduleSpec:
        if self.end_step is not None and self.end_step <= self.start_step:
            raise ValueError(f"end_step ({self.end_step}) must be after start_step ({self.start_step})")
        return self

    def build(self) -> MixupSchedule:
        return MixupSchedule(**self.model_dump())


class MixupSpec(_Strict):
    """Sample mixing inside each batch: timm's options plus where the record goes."""

    mixup_alpha: float = Field(default=1.0, ge=0)
    cutmix_alpha: float = Field(default=0.0, ge=0)
    cutmix_minmax: tuple[float, float] | None = None
    prob: float = Field(default=1.0, ge=0, le=1)
    switch_prob: float = Field(default=0.5, ge=0, le=1)
    mode: Literal["batch", "pair", "elem"] = "batch"
    correct_lam: bool = True
    pairing: Literal["flip", "roll", "random"] = "flip"
    box_rule: Literal["timm", "torchvision"] = "timm"
    spatial_dims: int = Field(default=2, ge=0, le=2)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    num_classes: int | None = Field(default=None, ge=1)
    target: str | None = None
    keys: list[str] | None = None
    level: MixLevel = MixLevel.INPUT
    schedule: MixupScheduleSpec = MixupScheduleSpec()

    @model_validator(mode="after")
    def _consistent(self) -> MixupSpec:
        if self.mixup_alpha <= 0 and self.cutmix_alpha <= 0 and self.cutmix_minmax is None:
            raise ValueError("mixup_alpha and cutmix_alpha are both 0: nothing would be mixed "
                             "(set one > 0, or remove the mixup section)")
        if self.cutmix_minmax is not None:
            lo, hi = self.cutmix_minmax
            if not 0 <= lo < hi <= 1:
                raise ValueError(f"cutmix_minmax: expected 0 <= min < max <= 1, got {self.cutmix_minmax}")
        if self.target is not None and self.num_classes is None:
            raise ValueError(f"num_classes is needed to turn `{self.target}` into soft targets")
        if self.mode == "pair" and self.pairing == "roll":
            raise ValueError("mode 'pair' needs a symmetric pairing: 'flip' or 'random', not 'roll'")
        if (self.cutmix_alpha > 0 or self.cutmix_minmax is not None) and self.spatial_dims == 0:
            raise ValueError("CutMix needs spatial axes: set spatial_dims to 1 or 2, or cutmix_alpha to 0")
        return self
