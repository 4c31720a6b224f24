"""Feedback for online mixture policies, computed from a batch (see ``mixture.policies``).

- :func:`per_source_mean`: token-mean loss per source from per-token losses and ``source_ids``
  (masked positions are left out), plus the token counts; differentiable, no host sync;
- :func:`per_source_grads`: the gradient of each source's token-mean loss with respect to a
  parameter subset (e.g. the output head), from the batch's own sub-batches: one backward pass
  per source present, through ``torch.autograd.grad`` so the training gradients are untouched;
- :func:`all_reduce_feedback`: sums over ``torch.distributed`` ranks so every rank computes the
  same weights (reduce ``means * counts`` and ``counts``, then divide: the global token mean).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist


def per_source_mean(losses: torch.Tensor, source_ids: torch.Tensor, num_sources: int,
                    mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-mean loss of each source, and how many tokens each mean is over.

    Args:
        losses: per-token losses, any shape (e.g. (B, L) from :class:`ProxyLM` aligned with
            ``labels``).
        source_ids: the source of each token, same shape; tokens with an id outside
            ``[0, num_sources)`` (padding is -1) are not counted.
        num_sources: K, the length of the results.
        mask: optional, same shape: only tokens where it is True count. With the model's
            shifted losses pass its ``mask`` (``labels != -100``, never a row's first column),
            else each document's unpredicted first token counts as a zero loss.

    Returns:
        ``(means, counts)``, both (K,): ``means`` in float32 (NaN for a source without counted
        tokens), ``counts`` int64. Differentiable in ``losses``; no host synchronisation.
    """
    if losses.shape != source_ids.shape:
        raise ValueError(f"losses {tuple(losses.shape)} and source_ids {tuple(source_ids.shape)} "
                         "must have the same shape")
    if mask is not None and mask.shape != losses.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must have the shape of losses "
                         f"{tuple(losses.shape)}")
    src = source_ids.reshape(-1).long()
    keep = (src >= 0) & (src < num_sources)
    if mask is not None:
        keep &= mask.reshape(-1).bool()
    idx = torch.where(keep, src, torch.full_like(src, num_sources))  # dropped: an extra bin
    vals = losses.reshape(-1).float() * keep
    sums = torch.zeros(num_sources + 1, dtype=torch.float32, device=losses.device)
    sums = sums.index_add(0, idx, vals)[:num_sources]
    counts = torch.bincount(idx, minlength=num_sources + 1)[:num_sources]
    means = sums / counts.clamp(min=1)
    means = torch.where(counts > 0, means, torch.full_like(means, float("nan")))
    return means, counts


def per_source_grads(token_loss: torch.Tensor, source_ids: torch.Tensor, num_sources: int,
                     params: Iterable[torch.Tensor], valid: torch.Tensor | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened gradient of each source's token-mean loss w.r.t. ``params``: (K, P), and the
    mask of sources present. ``token_loss`` must still be attached to the graph."""
    params = [p for p in params if p.requires_grad]
    if valid is None:
        valid = source_ids >= 0
    valid = valid & (source_ids >= 0)
    size = sum(p.numel() for p in params)
    grads = torch.zeros(num_sources, size, dtype=torch.float32, device=token_loss.device)
    present = torch.zeros(num_sources, dtype=torch.bool, device=token_loss.device)
    for k in range(num_sources):
        m = valid & (source_ids == k)
        if not bool(m.any()):
            continue
        g = torch.autograd.grad(token_loss[m].mean(), params, retain_graph=True,
                                allow_unused=True)
        grads[k] = torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1).float()
                              for x, p in zip(g, params, strict=True)])
        present[k] = True
    return grads, present


def all_reduce_feedback(*tensors: torch.Tensor) -> None:
    """Sum each tensor over all ranks in place (no-op without an initialised process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
