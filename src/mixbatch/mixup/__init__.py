"""Sample mixing inside batches: MixUp, CutMix, Manifold Mixup, their losses and analysis.

One batch convention: every transform returns the mixed tensor and a :class:`MixRecord`
(lambda, partner index and CutMix box per row) that the losses read and the batch carries.

- transforms: :class:`Mixup` (timm's arguments and call), :class:`MixUp` / :class:`CutMix`
  (torchvision v2's behaviour), :func:`mixup`, :func:`cutmix`, :func:`mix_features`,
  :func:`apply_record`, :class:`ManifoldMixup`;
- batches from a config: :class:`BatchMixer` (``mixup:`` section, deterministic per step);
- losses: :mod:`mixbatch.mixup.losses`; schedules: :class:`MixupSchedule`;
- analysis: :func:`expected_calibration_error`, :func:`neural_collapse`.

Names load lazily, so ``mixbatch.mixup.spec`` (used by the config) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "BatchMixer",
    "BoxRule",
    "CutMix",
    "ManifoldMixup",
    "MixLevel",
    "MixMode",
    "MixRecord",
    "MixUp",
    "Mixup",
    "MixupSchedule",
    "MixupSpec",
    "Pairing",
    "apply_record",
    "cutmix",
    "draw_record",
    "expected_calibration_error",
    "mix_attention_mask",
    "mix_features",
    "mix_targets",
    "mixup",
    "neural_collapse",
    "rng_for",
    "smooth_one_hot",
]

_WHERE = {
    "BatchMixer": "batch",
    "BoxRule": "sampling",
    "CutMix": "transforms",
    "ManifoldMixup": "manifold",
    "MixLevel": "spec",
    "MixMode": "sampling",
    "MixRecord": "record",
    "MixUp": "transforms",
    "Mixup": "transforms",
    "MixupSchedule": "schedule",
    "MixupSpec": "spec",
    "Pairing": "sampling",
    "apply_record": "transforms",
    "cutmix": "transforms",
    "draw_record": "sampling",
    "expected_calibration_error": "metrics",
    "mix_attention_mask": "transforms",
    "mix_features": "transforms",
    "mix_targets": "targets",
    "mixup": "transforms",
    "neural_collapse": "metrics",
    "rng_for": "sampling",
    "smooth_one_hot": "targets",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"mixbatch.mixup.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mixbatch.mixup' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
