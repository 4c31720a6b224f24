"""Shared checks and reductions of the mixup losses."""

from __future__ import annotations

from typing import Literal

import torch

from mixbatch.errors import ConfigError, DataError

Reduction = Literal["mean", "sum", "none"]


def reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ConfigError(f"reduction: 'mean', 'sum' or 'none', got {reduction!r}")


def check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or not logits.is_floating_point():
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise DataError(f"{name}: expected float (B, C) scores, got {shape}")


def check_class_ids(labels: torch.Tensor, batch: int, num_classes: int, name: str = "labels") -> None:
    if labels.ndim != 1 or labels.shape[0] != batch:
        raise DataError(f"{name}: expected ({batch},) class ids, got {tuple(labels.shape)}")
    if labels.is_floating_point():
        raise DataError(f"{name}: class ids must be integers, got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(f"{name}: label out of range [0, {num_classes})")


def check_lam(lam: torch.Tensor | float, batch: int, ref: torch.Tensor) -> torch.Tensor:
    lam_t = torch.as_tensor(lam, dtype=ref.dtype, device=ref.device)
    if lam_t.ndim == 0:
        lam_t = lam_t.expand(batch)
    if lam_t.shape != (batch,):
        raise DataError(f"lam: expected a scalar or ({batch},), got {tuple(lam_t.shape)}")
    if bool(((lam_t < 0) | (lam_t > 1)).any()):
        raise DataError("lam: values must lie within [0, 1]")
    return lam_t


def check_same_rows(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise DataError(f"{name_b}: {b.shape[0]} rows do not match {name_a}'s {a.shape[0]}")
