"""RankMixup: mixup as a ranking signal for calibration.

"RankMixup: Ranking-Based Mixup Training for Network Calibration" (Noh et al., ICCV 2023).

- MRL (mixup-based ranking loss): a mixed sample should not be more confident than the raw one,
  ``L = CE(z, y) + alpha * mean_i 1[mixed_i] max(0, g(z~_i) - g(z_i) + m)`` with the
  confidence ``g`` the max softmax probability (the paper) or the max logit (the authors' code,
  the default here); rows whose mixed target still has a class at weight 1 (same-class pairs,
  lam = 1) are masked out, so at lam = 1 the loss is plain cross-entropy.
- M-NDCG: with M mixed versions of each sample of relevance ``r_j`` (its own weight lam_j; the
  raw sample has r = 1) and gain ``g_j`` (max softmax), ranked by relevance,
  ``DCG = sum_j g_j / log2(j + 1)``, ``IDCG = sum_j r_j / log2(j + 1)``,
  ``NDCG = DCG / IDCG`` (inverted when above 1), ``L = CE + alpha (1 - NDCG)``.
  Defaults: alpha = 0.1, margin 1.0 (Tiny-ImageNet; 2.0 on CIFAR), Beta(2, 2) mixing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixbatch.errors import ConfigError, DataError
from mixbatch.mixup.losses._common import check_class_ids, check_logits, reduce

__all__ = ["rankmixup_mndcg_loss", "rankmixup_mrl_loss"]


def _conf(logits: torch.Tensor, confidence: str) -> torch.Tensor:
    if confidence == "logit":
        return logits.max(dim=-1).values
    if confidence == "prob":
        return logits.softmax(-1).max(dim=-1).values
    raise ConfigError(f"confidence: 'logit' or 'prob', got {confidence!r}")


def rankmixup_mrl_loss(logits: torch.Tensor, labels: torch.Tensor, mixed_logits: torch.Tensor,
                       mixed_target: torch.Tensor, margin: float = 1.0, alpha: float = 0.1,
                       confidence: str = "logit") -> torch.Tensor:
    """MRL: cross-entropy on raw samples plus the hinge on confidence of mixed vs raw rows."""
    check_logits(logits)
    check_logits(mixed_logits, "mixed_logits")
    check_class_ids(labels, logits.shape[0], logits.shape[1])
    if mixed_logits.shape != logits.shape or mixed_target.shape != logits.shape:
        raise DataError(f"mixed_logits, mixed_target: expected shape {tuple(logits.shape)}, got "
                        f"{tuple(mixed_logits.shape)} and {tuple(mixed_target.shape)}")
    ce = F.cross_entropy(logits, labels)
    mask = ~(mixed_target >= 1.0 - 1e-6).any(dim=1)
    hinge = F.relu(_conf(mixed_logits, confidence) - _conf(logits, confidence) + margin)
    return ce + alpha * (mask.to(logits.dtype) * hinge).mean()


def rankmixup_mndcg_loss(logits: torch.Tensor, labels: torch.Tensor, mixed_logits: torch.Tensor,
                         relevance: torch.Tensor, alpha: float = 0.1,
                         reduction: str = "mean") -> torch.Tensor:
    """M-NDCG: ``mixed_logits`` (M, B, C) of M mixed versions, ``relevance`` (M, B) their
    own-sample weights (the largest weight of each mixed target)."""
    check_logits(logits)
    check_class_ids(labels, logits.shape[0], logits.shape[1])
    if mixed_logits.ndim != 3 or mixed_logits.shape[1:] != logits.shape:
        raise DataError(f"mixed_logits: expected (M, {logits.shape[0]}, {logits.shape[1]}), "
                        f"got {tuple(mixed_logits.shape)}")
    if relevance.shape != mixed_logits.shape[:2]:
        raise DataError(f"relevance: expected {tuple(mixed_logits.shape[:2])}, got {tuple(relevance.shape)}")
    ce = F.cross_entropy(logits, labels, reduction="none")
    g_raw = logits.softmax(1).max(1, keepdim=True).values                  # (B, 1)
    g_mix = mixed_logits.softmax(2).max(2).values.T                         # (B, M)
    rel = relevance.to(logits.dtype).T                                      # (B, M)
    order = torch.argsort(rel, dim=1, descending=True)
    gains = torch.cat([g_raw, torch.gather(g_mix, 1, order)], dim=1)
    rels = torch.cat([torch.ones_like(g_raw), torch.gather(rel, 1, order)], dim=1)
    disc = torch.log2(torch.arange(2, gains.shape[1] + 2, dtype=logits.dtype, device=logits.device))
    dcg = (gains / disc).sum(1)
    idcg = (rels / disc).sum(1)
    ndcg = torch.where(idcg > dcg, dcg / idcg, idcg / dcg)
    return reduce(ce + alpha * (1.0 - ndcg), reduction)
