"""Soft targets of a mixed batch: one-hot with label smoothing, mixed by the record.

``y_i = lam_i * s(t_i) + (1 - lam_i) * s(t_index[i])`` with the smoothed one-hot
``s(t) = (1 - eps) * onehot(t) + eps / K`` ("Rethinking the Inception Architecture for Computer
Vision", section 7), the target rule of timm's ``mixup_target``. Multi-label targets are
smoothed towards 0.5 instead (timm's ``multi_label``).
"""

from __future__ import annotations

import torch

from mixbatch.errors import ConfigError, DataError
from mixbatch.mixup.record import MixRecord

__all__ = ["check_labels", "mix_targets", "smooth_one_hot"]


def check_labels(target: torch.Tensor, batch_size: int, num_classes: int | None,
                 name: str = "target") -> None:
    """Raise a :class:`DataError` naming ``name`` if the labels do not fit the batch."""
    if not isinstance(target, torch.Tensor):
        raise DataError(f"{name}: expected a tensor, got {type(target).__name__}")
    if target.ndim not in (1, 2) or target.shape[0] != batch_size:
        raise DataError(f"{name}: expected shape ({batch_size},) of class ids or ({batch_size}, K) of "
                        f"probabilities for a batch of {batch_size}, got {tuple(target.shape)}")
    if target.ndim == 1:
        if target.is_floating_point() or target.dtype == torch.bool:
            raise DataError(f"{name}: class ids must be integers, got {target.dtype}")
        if num_classes is None or num_classes < 1:
            raise ConfigError(f"num_classes: needed to one-hot class ids, got {num_classes}")
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
            bad = target[(target < 0) | (target >= num_classes)][0]
            raise DataError(f"{name}: label {int(bad)} is out of range [0, {num_classes})")
    elif num_classes is not None and target.shape[1] != num_classes:
        raise DataError(f"{name}: {target.shape[1]} columns do not match num_classes={num_classes}")


def smooth_one_hot(target: torch.Tensor, num_classes: int, smoothing: float = 0.0,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(1 - eps) * onehot + eps / K`` for class ids; soft targets are smoothed the same way."""
    if not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"label_smoothing: must be within [0, 1), got {smoothing}")
    off = smoothing / num_classes
    if target.ndim == 2:
        return target.to(dtype) * (1.0 - smoothing) + off
    out = torch.full((target.shape[0], num_classes), off, dtype=dtype, device=target.device)
    return out.scatter_(1, target.long().view(-1, 1), 1.0 - smoothing + off)


def mix_targets(target: torch.Tensor, record: MixRecord, num_classes: int | None = None,
                smoothing: float = 0.0, multi_label: bool = False,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Mixed soft targets ``(B, K)`` of a batch mixed by ``record``."""
    b = record.batch_size
    check_labels(target, b, num_classes)
    k = int(num_classes if num_classes is not None else target.shape[1])
    if multi_label:
        if target.ndim != 2:
            raise DataError(f"target: multi-label mixing needs dense targets (B, {k}), "
                            f"got {tuple(target.shape)}")
        y = target.to(dtype) * (1.0 - smoothing) + 0.5 * smoothing
    else:
        y = smooth_one_hot(target, k, smoothing, dtype)
    rec = record.to(y.device)
    lam = rec.lam.to(dtype).unsqueeze(1)
    return y * lam + y.index_select(0, rec.index) * (1.0 - lam)
