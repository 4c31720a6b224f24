"""Cross-entropy losses of mixed classification batches.

- Soft-target cross-entropy (the loss timm pairs with ``Mixup``):
  ``L = -sum_c y_c log softmax(z)_c``; at a one-hot target it is plain cross-entropy.
- Mixed cross-entropy ("mixup: Beyond Empirical Risk Minimization", eq. 1 rewritten on the
  loss): ``L = lam CE(z, y_i) + (1 - lam) CE(z, y_j)``, equal to the soft-target loss of the
  mixed two-hot target.
- Decoupled Mixup ("Harnessing Hard Mixed Samples with Decoupled Regularizer", Liu et al.,
  NeurIPS 2023): ``L = L_MCE + eta L_DM`` with the decoupled softmax
  ``p~_i = exp(z_i) / (exp(z_i) + sum_{c not in K} exp(z_c))`` for each mixed class i in the set
  K of classes present in the mixed target (the other mixed classes leave the denominator) and
  ``L_DM = -sum_{i in K} w_i log p~_i``. ``mode`` chooses ``w_i`` as in openmixup's
  ``eta_weight``: ``all`` (every mixed class), ``less`` (classes with weight below ``thr``),
  ``more`` (above ``thr``). With ``mode="less"`` the loss is plain cross-entropy at lam = 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixbatch.errors import ConfigError, DataError
from mixbatch.mixup.losses._common import check_class_ids, check_lam, check_logits, reduce
from mixbatch.mixup.record import MixRecord

__all__ = ["decoupled_mixup_loss", "mixed_cross_entropy", "soft_target_cross_entropy"]


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                              reduction: str = "mean") -> torch.Tensor:
    """``-sum_c y_c log softmax(z)_c`` per row."""
    check_logits(logits)
    if target.shape != logits.shape:
        raise DataError(f"target: soft targets must have the logits' shape {tuple(logits.shape)}, "
                        f"got {tuple(target.shape)}")
    return reduce(-(target.to(logits.dtype) * F.log_softmax(logits, dim=1)).sum(1), reduction)


def mixed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, record: MixRecord,
                        label_smoothing: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """``lam CE(z, y) + (1 - lam) CE(z, y[index])`` from class ids and the batch's record."""
    check_logits(logits)
    check_class_ids(labels, logits.shape[0], logits.shape[1])
    if record.batch_size != logits.shape[0]:
        raise DataError(f"record: {record.batch_size} rows do not match the logits' {logits.shape[0]}")
    rec = record.to(logits.device)
    lam = rec.lam.to(logits.dtype)
    ce_a = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
    ce_b = F.cross_entropy(logits, labels[rec.index], reduction="none", label_smoothing=label_smoothing)
    return reduce(lam * ce_a + (1.0 - lam) * ce_b, reduction)


def decoupled_mixup_loss(logits: torch.Tensor, labels_a: torch.Tensor, labels_b: torch.Tensor,
                         lam: torch.Tensor | float, eta: float = 0.01, mode: str = "less",
                         thr: float = 0.5, reduction: str = "mean") -> torch.Tensor:
    """Decoupled Mixup: mixed cross-entropy plus ``eta`` times the decoupled regulariser.

    ``labels_a`` get weight ``lam``, ``labels_b`` weight ``1 - lam`` (use ``labels[index]`` and
    the record's ``lam``). Defaults are openmixup's CIFAR settings (eta 0.01, mode less, thr 0.5).
    """
    check_logits(logits)
    b, c = logits.shape
    check_class_ids(labels_a, b, c, "labels_a")
    check_class_ids(labels_b, b, c, "labels_b")
    if mode not in ("all", "less", "more"):
        raise ConfigError(f"mode: 'all', 'less' or 'more', got {mode!r}")
    if eta < 0:
        raise ConfigError(f"eta: must be >= 0, got {eta}")
    lam_t = check_lam(lam, b, logits)
    target = torch.zeros_like(logits)
    target = target.scatter_add(1, labels_a.view(-1, 1), lam_t.view(-1, 1))
    target = target.scatter_add(1, labels_b.view(-1, 1), (1.0 - lam_t).view(-1, 1))
    mce = -(target * F.log_softmax(logits, 1)).sum(1)
    in_k = target > 0
    # log-sum-exp over the classes outside K (-inf when K holds every class)
    lse_out = torch.logsumexp(logits.masked_fill(in_k, float("-inf")), dim=1, keepdim=True)
    log_pd = logits - torch.logaddexp(logits, lse_out)
    if mode == "all":
        w = in_k.to(logits.dtype)
    elif mode == "less":
        w = (in_k & (target < thr)).to(logits.dtype)
    else:
        w = (in_k & (target > thr)).to(logits.dtype)
    dm = -(w * torch.where(in_k, log_pd, torch.zeros_like(log_pd))).sum(1)
    return reduce(mce + eta * dm, reduction)
