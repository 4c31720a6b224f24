"""Semi-supervised mixing: MixMatch and FixMatch.

- MixMatch ("MixMatch: A Holistic Approach to Semi-Supervised Learning", Berthelot et al.
  2019, algorithm 1): guess labels of unlabelled data by averaging the predictions of K
  augmentations, sharpen ``Sharpen(p, T)_i = p_i^(1/T) / sum_j p_j^(1/T)`` (T = 0.5), shuffle the
  labelled and unlabelled rows together into W and mix every row with one of W using
  ``lam ~ Beta(a, a)``, ``lam' = max(lam, 1 - lam)`` (a = 0.75); the loss is
  ``L = CE(X') + lambda_U * mean ||q - softmax(z_U')||^2`` (lambda_U = 100 on CIFAR-10, ramped).
- FixMatch ("FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence",
  Sohn et al. 2020, eq. 2-4): pseudo-label = argmax of the weakly augmented prediction, kept
  when its probability is at least tau = 0.95; ``L = CE(x, y) + lambda_u mean 1[max p >= tau]
  CE(z_strong, argmax p)``.
Both appear in "Comparison of semi-supervised deep learning algorithms for audio
classification" (Grollmisch and Cano, 2022) alongside ReMixMatch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mixbatch.errors import ConfigError, DataError
from mixbatch.mixup.losses._common import check_class_ids, check_logits

__all__ = ["fixmatch_loss", "guess_labels", "mixmatch_loss", "mixmatch_mix", "sharpen"]


def sharpen(p: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """``p^(1/T)`` renormalised over the last axis."""
    if temperature <= 0:
        raise ConfigError(f"temperature: must be > 0, got {temperature}")
    pt = p.clamp_min(0).pow(1.0 / temperature)
    return pt / pt.sum(-1, keepdim=True).clamp_min(torch.finfo(pt.dtype).tiny)


def guess_labels(logits_per_aug: Sequence[torch.Tensor], temperature: float = 0.5) -> torch.Tensor:
    """Sharpened mean prediction over K augmentations of the unlabelled batch (no gradient)."""
    if not logits_per_aug:
        raise DataError("logits_per_aug: give the logits of at least one augmentation")
    with torch.no_grad():
        p = torch.stack([z.softmax(1) for z in logits_per_aug]).mean(0)
        return sharpen(p, temperature)


def mixmatch_mix(x: torch.Tensor, p: torch.Tensor, u: Sequence[torch.Tensor], q: torch.Tensor,
                 alpha: float = 0.75, rng: np.random.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MixUp of labelled ``(x, p)`` and unlabelled ``(u_k, q)`` rows; returns ``X', p', U', q'``."""
    if alpha <= 0:
        raise ConfigError(f"alpha: must be > 0, got {alpha}")
    if p.shape[0] != x.shape[0] or p.ndim != 2:
        raise DataError(f"p: expected ({x.shape[0]}, C) soft labels, got {tuple(p.shape)}")
    uu = torch.cat(list(u), 0)
    qq = q.repeat(len(u), 1)
    if q.shape[1] != p.shape[1] or q.shape[0] * len(u) != uu.shape[0]:
        raise DataError(f"q: expected ({uu.shape[0] // max(len(u), 1)}, {p.shape[1]}), got {tuple(q.shape)}")
    rng = rng or np.random.default_rng()
    all_x = torch.cat([x, uu], 0)
    all_p = torch.cat([p.to(qq.dtype), qq], 0)
    n = all_x.shape[0]
    perm = torch.from_numpy(rng.permutation(n)).to(all_x.device)
    lam = rng.beta(alpha, alpha, n)
    lam = torch.from_numpy(np.maximum(lam, 1 - lam)).to(all_x.device, all_x.dtype)
    wx = lam.view(-1, *([1] * (all_x.ndim - 1)))
    mixed_x = wx * all_x + (1 - wx) * all_x[perm]
    mixed_p = lam[:, None].to(all_p.dtype) * all_p + (1 - lam[:, None].to(all_p.dtype)) * all_p[perm]
    b = x.shape[0]
    return mixed_x[:b], mixed_p[:b], mixed_x[b:], mixed_p[b:]


def mixmatch_loss(logits_x: torch.Tensor, p_x: torch.Tensor, logits_u: torch.Tensor, q_u: torch.Tensor,
                  lambda_u: float = 100.0) -> torch.Tensor:
    """``CE(X') + lambda_U * mean squared error of softmax(U') against q``."""
    check_logits(logits_x, "logits_x")
    check_logits(logits_u, "logits_u")
    if p_x.shape != logits_x.shape or q_u.shape != logits_u.shape:
        raise DataError("p_x, q_u: must have the shapes of logits_x and logits_u")
    lx = -(p_x * F.log_softmax(logits_x, 1)).sum(1).mean()
    lu = (logits_u.softmax(1) - q_u).pow(2).mean()
    return lx + lambda_u * lu


def fixmatch_loss(logits_x: torch.Tensor, labels: torch.Tensor, logits_weak: torch.Tensor,
                  logits_strong: torch.Tensor, threshold: float = 0.95,
                  lambda_u: float = 1.0) -> torch.Tensor:
    """Supervised CE plus the confidence-masked pseudo-label CE of the strong views."""
    check_logits(logits_x, "logits_x")
    check_class_ids(labels, logits_x.shape[0], logits_x.shape[1])
    if logits_weak.shape != logits_strong.shape:
        raise DataError(f"logits_strong: expected the shape of logits_weak {tuple(logits_weak.shape)}, "
                        f"got {tuple(logits_strong.shape)}")
    if not 0 <= threshold <= 1:
        raise ConfigError(f"threshold: must be within [0, 1], got {threshold}")
    sup = F.cross_entropy(logits_x, labels)
    with torch.no_grad():
        conf, pseudo = logits_weak.softmax(1).max(1)
        mask = (conf >= threshold).to(logits_strong.dtype)
    unsup = (F.cross_entropy(logits_strong, pseudo, reduction="none") * mask).mean()
    return sup + lambda_u * unsup
