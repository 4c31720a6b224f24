"""Metrix: mixup for deep metric learning.

"It Takes Two to Tango: Mixup for Deep Metric Learning" (Venkataramanan et al., ICLR 2022).
A metric loss is ``l(a) = tau(sigma+(a), sigma-(a))`` with ``sigma+- = sum rho+-(s(a, x))`` over
positives / negatives of anchor a. A mixed example x~ of x_i and x_j with weight lam is positive
to anchor a with soft weight ``p = lam 1[y_i = y_a] + (1 - lam) 1[y_j = y_a]`` and the mixed
loss is ``l~(a) = tau(sum p rho+(s(a, x~)), sum (1 - p) rho-(s(a, x~)))``; the total is
``l + w l~``. Here tau is the sum and rho are the contrastive loss's terms on cosine similarity,
``rho+(s) = 1 - s`` and ``rho-(s) = max(0, s - m)`` (the paper's contrastive baseline), each
averaged over the anchor's pairs. At lam = 1 the mixed term equals the clean one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixbatch.errors import DataError
from mixbatch.mixup.losses._common import check_lam

__all__ = ["contrastive_pair_loss", "metrix_contrastive_loss"]


def _pair_terms(anchor: torch.Tensor, cand: torch.Tensor, pos: torch.Tensor, margin: float,
                valid: torch.Tensor) -> torch.Tensor:
    s = F.normalize(anchor, dim=1) @ F.normalize(cand, dim=1).T
    terms = pos * (1.0 - s) + (1.0 - pos) * F.relu(s - margin)
    valid = valid.to(s.dtype)
    return (terms * valid).sum() / valid.sum().clamp_min(1.0)


def contrastive_pair_loss(emb: torch.Tensor, labels: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """The clean contrastive loss ``mean_{a != x} [1[y_a = y_x](1 - s) + 1[y_a != y_x] max(0, s - m)]``."""
    if emb.ndim != 2 or labels.shape != (emb.shape[0],):
        raise DataError(f"labels: expected ({emb.shape[0]},) for embeddings {tuple(emb.shape)}, "
                        f"got {tuple(labels.shape)}")
    pos = (labels[:, None] == labels[None, :]).to(emb.dtype)
    valid = ~torch.eye(emb.shape[0], dtype=torch.bool, device=emb.device)
    return _pair_terms(emb, emb, pos, margin, valid)


def metrix_contrastive_loss(emb: torch.Tensor, labels: torch.Tensor, mixed_emb: torch.Tensor,
                            labels_a: torch.Tensor, labels_b: torch.Tensor, lam: torch.Tensor | float,
                            margin: float = 0.5, weight: float = 1.0) -> torch.Tensor:
    """``l + w l~``: clean contrastive loss of ``emb`` plus the Metrix term of ``mixed_emb``
    (rows mixed from samples of class ``labels_a`` (weight lam) and ``labels_b``)."""
    if mixed_emb.ndim != 2 or mixed_emb.shape[1] != emb.shape[1]:
        raise DataError(f"mixed_emb: expected (M, {emb.shape[1]}), got {tuple(mixed_emb.shape)}")
    m = mixed_emb.shape[0]
    for name, t in (("labels_a", labels_a), ("labels_b", labels_b)):
        if t.shape != (m,):
            raise DataError(f"{name}: expected ({m},) for {m} mixed rows, got {tuple(t.shape)}")
    lam_t = check_lam(lam, m, mixed_emb)
    clean = contrastive_pair_loss(emb, labels, margin)
    pos = (lam_t[None, :] * (labels[:, None] == labels_a[None, :]).to(emb.dtype)
           + (1.0 - lam_t[None, :]) * (labels[:, None] == labels_b[None, :]).to(emb.dtype))
    valid = torch.ones(emb.shape[0], m, dtype=torch.bool, device=emb.device)
    return clean + weight * _pair_terms(emb, mixed_emb, pos, margin, valid)
