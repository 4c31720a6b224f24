"""Calibration and neural-collapse measures of a trained classifier, on any model's outputs.

- Expected calibration error ("On Calibration of Modern Neural Networks", Guo et al. 2017,
  eq. 3): ``ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|`` over equal-width confidence bins.
- Neural collapse ("Prevalence of Neural Collapse during the Terminal Phase of Deep Learning
  Training", Papyan, Han and Donoho 2020, section 3; the measures used by "Pushing Boundaries:
  Mixup's Influence on Neural Collapse"):
  NC1 ``tr(S_W S_B^+) / C`` (within-class variability against between-class spread);
  NC2 equinorm (coefficient of variation of the centred class-mean norms) and equiangularity
  (mean ``|cos(mu_c, mu_c') + 1/(C-1)|`` over class pairs, 0 for a simplex ETF);
  NC3 self-duality ``|| W/||W|| - M/||M|| ||_F^2`` between classifier rows and centred means;
  NC4 the share of samples whose prediction differs from the nearest class mean.
"""

from __future__ import annotations

import torch

from mixbatch.errors import ConfigError, DataError

__all__ = ["expected_calibration_error", "neural_collapse"]


def expected_calibration_error(scores: torch.Tensor, labels: torch.Tensor, n_bins: int = 15,
                               from_logits: bool = True) -> float:
    """ECE of ``scores`` (logits, or probabilities with ``from_logits=False``) against labels."""
    if n_bins < 1:
        raise ConfigError(f"n_bins: must be >= 1, got {n_bins}")
    if scores.ndim != 2 or labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise DataError(f"labels: expected ({scores.shape[0]},) class ids for scores "
                        f"{tuple(scores.shape)}, got {tuple(labels.shape)}")
    if labels.numel() == 0:
        raise DataError("labels: empty")
    if int(labels.min()) < 0 or int(labels.max()) >= scores.shape[1]:
        raise DataError(f"labels: out of range [0, {scores.shape[1]})")
    probs = scores.detach().double().softmax(1) if from_logits else scores.detach().double()
    conf, pred = probs.max(1)
    correct = (pred == labels.to(pred.device)).double()
    # bin b holds confidences in (b/n, (b+1)/n]; confidence 0 joins bin 0
    bins = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)
    acc_sum = torch.bincount(bins, weights=correct, minlength=n_bins)
    conf_sum = torch.bincount(bins, weights=conf, minlength=n_bins)
    return float((acc_sum - conf_sum).abs().sum() / conf.shape[0])


def neural_collapse(features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None,
                    logits: torch.Tensor | None = None) -> dict[str, float]:
    """NC1-NC4 of penultimate ``features`` (N, D) with class ids; ``weight`` is the (C, D)
    classifier (needed for NC3); NC4 uses ``logits`` if given, else ``features @ weight.T``."""
    if features.ndim != 2 or labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise DataError(f"labels: expected ({features.shape[0]},) class ids for features "
                        f"{tuple(features.shape)}, got {tuple(labels.shape)}")
    h = features.detach().double()
    y = labels.detach().long().to(h.device)
    classes = torch.unique(y)
    c = classes.numel()
    if c < 2:
        raise DataError("labels: neural collapse needs at least 2 classes")
    remap = torch.full((int(y.max()) + 1,), -1, dtype=torch.long, device=h.device)
    remap[classes] = torch.arange(c, device=h.device)
    yi = remap[y]
    counts = torch.bincount(yi, minlength=c).double()
    means = torch.zeros(c, h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, yi, h) / counts[:, None]
    g = h.mean(0)
    centred = means - g
    within = h - means[yi]
    s_w = within.T @ within / h.shape[0]
    s_b = centred.T @ centred / c
    nc1 = float(torch.trace(s_w @ torch.linalg.pinv(s_b)) / c)
    norms = centred.norm(dim=1)
    cos = (centred / norms[:, None]) @ (centred / norms[:, None]).T
    off = ~torch.eye(c, dtype=torch.bool, device=h.device)
    out = {
        "nc1": nc1,
        "nc2_equinorm": float(norms.std() / norms.mean()),
        "nc2_equiangular": float((cos[off] + 1.0 / (c - 1)).abs().mean()),
    }
    if weight is not None:
        w = weight.detach().double().to(h.device)
        if w.ndim != 2 or w.shape[1] != h.shape[1]:
            raise DataError(f"weight: expected (C, {h.shape[1]}), got {tuple(w.shape)}")
        w = w[classes] if w.shape[0] > c else w
        out["nc3"] = float(((w / w.norm()) - (centred / centred.norm())).pow(2).sum())
    if logits is None and weight is not None:
        logits = features.detach().double() @ weight.detach().double().T
    if logits is not None:
        pred = logits.detach().argmax(1).to(h.device)
        nearest = classes[torch.cdist(h, means).argmin(1)]
        out["nc4"] = float((pred != nearest).double().mean())
    return out
