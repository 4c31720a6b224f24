"""Mixing for contrastive and self-supervised objectives: MoCHi, SupReMix, Mixed Barlow Twins.

- MoCHi, "Hard Negative Mixing for Contrastive Learning" (Kalantidis et al., NeurIPS 2020),
  section 4: order the queue negatives by ``q . n``, keep the N hardest, and add ``s``
  synthetic negatives ``h = normalize(a n_i + (1 - a) n_j)``, ``a ~ U(0, 1)``, and ``s'`` harder
  ones ``h' = normalize(b q + (1 - b) n_j)``, ``b ~ U(0, 0.5)``, to the InfoNCE logits
  (gradients stopped through them). Written MoCHi(N, s, s'), e.g. (1024, 1024, 512).
- SupReMix, "Mixup Your Own Pairs" (Wu et al., 2023), for supervised contrastive regression:
  anchor-inclusive mixtures ``normalize(lam z_i + (1 - lam) z_k)`` with ``y_k != y_i`` (their
  label is not the anchor's) are hard negatives, and anchor-exclusive mixtures of the nearest
  labels below and above, ``normalize(lam z_j + (1 - lam) z_k)`` with
  ``lam = (y_k - y_i) / (y_k - y_j)`` (their label equals the anchor's), are hard positives;
  the loss is SupCon's ``-mean_p log(exp(s_ip / t) / sum_a exp(s_ia / t))``. With
  ``distance_weight=True`` each negative ``n`` of anchor ``i`` (real or mixed, label ``y_n``)
  enters the denominator as ``w_in exp(s_in / t)`` with ``w_in = |y_i - y_n| / mean_n' |y_i -
  y_n'|``: negatives far from the anchor in label space are pushed harder than near ones
  (mean weight 1 per anchor, so the loss keeps its scale). The paper weights negatives by
  their label distance for ordinality; its body could not be consulted here, so this form
  (weights in the denominator, normalised per anchor) is this library's, not a transcription
  of the paper's equation. A mixed negative's label is ``lam_neg y_i + (1 - lam_neg) y_k``, so
  its distance is ``(1 - lam_neg) |y_i - y_k|``. Positives (real and mixed, at label distance
  <= ``tol``) keep weight 1.
- Mixed Barlow Twins, "Guarding Barlow Twins Against Overfitting with Mixed Samples" (Bandara
  et al., 2023), with ``x_m = lam x_A + (1 - lam) x_B[perm]`` and batch-standardised
  embeddings: ``C_mA = z_m^T z_A / N`` should equal ``lam C_AA + (1 - lam) C_{B[perm]A}`` (same
  for B); ``L_reg = s * lambda_BT * (||C_mA - T_A||_F^2 + ||C_mB - T_B||_F^2)`` with the
  CIFAR-10 defaults lambda_BT = 1/128, s = 4. :func:`barlow_twins_loss` is the base loss
  ("Barlow Twins: Self-Supervised Learning via Redundancy Reduction", eq. 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixbatch.errors import ConfigError, DataError

__all__ = ["MoCoQueue", "barlow_twins_loss", "mixed_barlow_twins_regularizer", "mochi_logits",
           "mochi_loss", "mochi_synthesize", "supremix_loss"]


class MoCoQueue:
    """A ring buffer of ``size`` normalised keys (MoCo's negative queue), with a state dict."""

    def __init__(self, dim: int, size: int, seed: int = 0) -> None:
        if dim < 1 or size < 1:
            raise ConfigError(f"MoCoQueue: dim and size must be >= 1, got {dim} and {size}")
        g = torch.Generator().manual_seed(seed)
        self.keys = F.normalize(torch.randn(size, dim, generator=g), dim=1)
        self.ptr = 0

    def enqueue(self, keys: torch.Tensor) -> None:
        keys = keys.detach().to(self.keys)
        n, size = keys.shape[0], self.keys.shape[0]
        if keys.ndim != 2 or keys.shape[1] != self.keys.shape[1]:
            raise DataError(f"keys: expected (B, {self.keys.shape[1]}), got {tuple(keys.shape)}")
        idx = (self.ptr + torch.arange(min(n, size))) % size
        self.keys[idx] = F.normalize(keys[-size:], dim=1)
        self.ptr = int((self.ptr + n) % size)

    def state_dict(self) -> dict:
        return {"keys": self.keys.clone(), "ptr": self.ptr}

    def load_state_dict(self, state: dict) -> None:
        self.keys = state["keys"].clone()
        self.ptr = int(state["ptr"])


def mochi_synthesize(q: torch.Tensor, queue: torch.Tensor, n_hard: int = 1024, s: int = 1024,
                     s_prime: int = 512, generator: torch.Generator | None = None) -> torch.Tensor:
    """MoCHi's synthetic negatives ``(B, s + s', D)`` for queries ``q`` (no gradient)."""
    if q.ndim != 2 or queue.ndim != 2 or queue.shape[1] != q.shape[1]:
        raise DataError(f"q, queue: expected (B, D) and (K, D), got {tuple(q.shape)}, {tuple(queue.shape)}")
    if min(n_hard, s, s_prime) < 0:
        raise ConfigError(f"n_hard, s, s_prime: must be >= 0, got {n_hard}, {s}, {s_prime}")
    with torch.no_grad():
        q = F.normalize(q.detach(), dim=1)
        queue = F.normalize(queue.detach().to(q), dim=1)
        b, dev = q.shape[0], q.device
        n = min(n_hard, queue.shape[0])
        out = [q.new_zeros(b, 0, q.shape[1])]
        if n == 0:
            return out[0]
        hard = queue[(q @ queue.T).topk(n, dim=1).indices]                 # (B, N, D)
        if s > 0:
            i = torch.randint(n, (b, s), generator=generator).to(dev)
            j = torch.randint(n, (b, s), generator=generator).to(dev)
            a = torch.rand(b, s, 1, generator=generator, dtype=q.dtype).to(dev)
            out.append(F.normalize(a * _take(hard, i) + (1 - a) * _take(hard, j), dim=2))
        if s_prime > 0:
            j2 = torch.randint(n, (b, s_prime), generator=generator).to(dev)
            beta = 0.5 * torch.rand(b, s_prime, 1, generator=generator, dtype=q.dtype).to(dev)
            out.append(F.normalize(beta * q[:, None, :] + (1 - beta) * _take(hard, j2), dim=2))
        return torch.cat(out, dim=1)


def mochi_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, n_hard: int = 1024,
                 s: int = 1024, s_prime: int = 512, temperature: float = 0.2,
                 generator: torch.Generator | None = None,
                 synthetic: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE logits ``[q.k, q.queue, q.h, q.h'] / t``; the positive is column 0.

    ``synthetic`` takes negatives made beforehand by :func:`mochi_synthesize`."""
    if q.ndim != 2 or k.shape != q.shape or queue.ndim != 2 or queue.shape[1] != q.shape[1]:
        raise DataError(f"q, k, queue: expected (B, D), (B, D), (K, D); got {tuple(q.shape)}, "
                        f"{tuple(k.shape)}, {tuple(queue.shape)}")
    if temperature <= 0:
        raise ConfigError(f"temperature: must be > 0, got {temperature}")
    if synthetic is None:
        synthetic = mochi_synthesize(q, queue, n_hard, s, s_prime, generator)
    qn = F.normalize(q, dim=1)
    pos = (qn * F.normalize(k, dim=1)).sum(1, keepdim=True)
    neg = qn @ F.normalize(queue.to(q), dim=1).T
    syn = torch.einsum("bd,bsd->bs", qn, synthetic.to(q))
    return torch.cat([pos, neg, syn], dim=1) / temperature


def _take(hard: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.gather(hard, 1, idx[:, :, None].expand(-1, -1, hard.shape[2]))


def mochi_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, **kwargs: object) -> torch.Tensor:
    """Cross-entropy of :func:`mochi_logits` with the positive at column 0; with ``s = s' = 0``
    it is MoCo's InfoNCE loss."""
    logits = mochi_logits(q, k, queue, **kwargs)  # type: ignore[arg-type]
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def supremix_loss(z: torch.Tensor, y: torch.Tensor, temperature: float = 0.1, lam_neg: float = 0.5,
                  tol: float = 0.0, hard_pairs: bool = True, distance_weight: bool = False) -> torch.Tensor:
    """Supervised contrastive regression loss with SupReMix's mixed hard pairs.

    ``z`` (B, D) embeddings, ``y`` (B,) real labels; samples within ``tol`` of the anchor's label
    are positives. ``hard_pairs=False`` gives the plain supervised contrastive loss;
    ``distance_weight=True`` weights every negative by its label distance to the anchor
    (module docstring).
    """
    if z.ndim != 2 or y.shape != (z.shape[0],):
        raise DataError(f"y: expected ({z.shape[0]},) labels for embeddings {tuple(z.shape)}, "
                        f"got {tuple(y.shape)}")
    if temperature <= 0 or not 0 < lam_neg < 1:
        raise ConfigError(f"temperature > 0 and lam_neg in (0, 1) needed, got {temperature}, {lam_neg}")
    b = z.shape[0]
    z = F.normalize(z, dim=1)
    y = y.to(z.dtype)
    eye = torch.eye(b, dtype=torch.bool, device=z.device)
    same = ((y[:, None] - y[None, :]).abs() <= tol) & ~eye
    logits = [(z @ z.T).masked_fill(eye, float("-inf")) / temperature]
    pos_masks = [same]
    if hard_pairs:
        # anchor-inclusive negatives: mix the anchor with every sample of another label
        zi = F.normalize(lam_neg * z[:, None, :] + (1 - lam_neg) * z[None, :, :], dim=2)   # (B, B, D)
        neg_ok = ~same & ~eye
        s_neg = torch.einsum("bd,bkd->bk", z, zi).masked_fill(~neg_ok, float("-inf")) / temperature
        logits.append(s_neg)
        pos_masks.append(torch.zeros_like(neg_ok))
        # anchor-exclusive positives: nearest label below (j) and above (k) the anchor's
        diff = y[None, :] - y[:, None]                                  # y_other - y_anchor
        big = torch.finfo(z.dtype).max
        below = torch.where(diff < -tol, -diff, torch.full_like(diff, big))
        above = torch.where(diff > tol, diff, torch.full_like(diff, big))
        j = below.argmin(1)
        k = above.argmin(1)
        ok = (below.min(1).values < big) & (above.min(1).values < big)
        lam = ((y[k] - y) / (y[k] - y[j]).clamp_min(1e-12)).clamp(0, 1)
        zp = F.normalize(lam[:, None] * z[j] + (1 - lam[:, None]) * z[k], dim=1)
        s_pos = ((z * zp).sum(1, keepdim=True) / temperature).masked_fill(~ok[:, None], float("-inf"))
        logits.append(s_pos)
        pos_masks.append(ok[:, None])
    all_logits = torch.cat(logits, dim=1)
    pos = torch.cat(pos_masks, dim=1)
    if distance_weight:
        all_logits = all_logits + _negative_log_weights(y, same, eye, lam_neg if hard_pairs else None,
                                                        all_logits.shape[1])
    log_prob = all_logits - torch.logsumexp(all_logits, dim=1, keepdim=True)
    n_pos = pos.sum(1)
    has = n_pos > 0
    if not bool(has.any()):
        raise DataError("y: no anchor has a positive (every label is unique and hard_pairs is off)")
    per = -torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(1) / n_pos.clamp_min(1)
    return per[has].mean()


def _negative_log_weights(y: torch.Tensor, same: torch.Tensor, eye: torch.Tensor, lam_neg: float | None,
                          width: int) -> torch.Tensor:
    """``log w`` for every column of the SupReMix logits: ``w = d / mean(d)`` over the anchor's
    negatives (real: ``d = |y_i - y_k|``; mixed: ``(1 - lam_neg) |y_i - y_k|``), 0 elsewhere."""
    dist = (y[:, None] - y[None, :]).abs()
    neg = ~same & ~eye
    d = [torch.where(neg, dist, torch.zeros_like(dist))]
    masks = [neg]
    if lam_neg is not None:
        d.append(torch.where(neg, (1 - lam_neg) * dist, torch.zeros_like(dist)))
        masks.append(neg)
    d_all, m_all = torch.cat(d, dim=1), torch.cat(masks, dim=1)
    mean = d_all.sum(1, keepdim=True) / m_all.sum(1, keepdim=True).clamp_min(1)
    ratio = d_all.clamp_min(1e-12) / mean.clamp_min(1e-12)
    logw = torch.where(m_all, torch.log(ratio), torch.zeros_like(d_all))
    pad = width - logw.shape[1]
    return torch.cat([logw, logw.new_zeros(logw.shape[0], pad)], dim=1) if pad else logw


def _standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return (z - z.mean(0)) / (z.std(0) + eps)


def barlow_twins_loss(z_a: torch.Tensor, z_b: torch.Tensor, lambd: float = 0.0078125) -> torch.Tensor:
    """``sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2`` of the cross-correlation of two views."""
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise DataError(f"z_b: expected the shape of z_a {tuple(z_a.shape)}, got {tuple(z_b.shape)}")
    n = z_a.shape[0]
    c = _standardise(z_a).T @ _standardise(z_b) / n
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on + lambd * off


def mixed_barlow_twins_regularizer(z_a: torch.Tensor, z_b: torch.Tensor, z_m: torch.Tensor,
                                   perm: torch.Tensor, lam: float, lambd: float = 0.0078125,
                                   scale: float = 4.0) -> torch.Tensor:
    """Mixed Barlow Twins' ``L_reg`` for ``z_m``, the embeddings of ``lam x_A + (1 - lam) x_B[perm]``."""
    if not (z_a.shape == z_b.shape == z_m.shape) or z_a.ndim != 2:
        raise DataError(f"z_a, z_b, z_m: expected one (N, D) shape, got {tuple(z_a.shape)}, "
                        f"{tuple(z_b.shape)}, {tuple(z_m.shape)}")
    if perm.shape != (z_a.shape[0],):
        raise DataError(f"perm: expected ({z_a.shape[0]},), got {tuple(perm.shape)}")
    if not 0 <= lam <= 1:
        raise DataError(f"lam: must lie within [0, 1], got {lam}")
    n = z_a.shape[0]
    za, zb, zm = _standardise(z_a), _standardise(z_b), _standardise(z_m)
    zbp = zb[perm]
    c_ma, c_mb = zm.T @ za / n, zm.T @ zb / n
    t_a = lam * (za.T @ za / n) + (1 - lam) * (zbp.T @ za / n)
    t_b = lam * (za.T @ zb / n) + (1 - lam) * (zbp.T @ zb / n)
    return scale * lambd * ((c_ma - t_a).pow(2).sum() + (c_mb - t_b).pow(2).sum())
