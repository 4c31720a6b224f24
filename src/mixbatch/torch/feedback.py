"""Feedback for online mixture policies, computed from a batch (see ``mixture.policies``).

- :func:`per_source_loss`: token-mean loss per source from per-token losses and ``source_ids``
  (ignored positions carry ``-100`` labels and are left out), plus the token counts;
- :func:`per_source_grads`: the gradient of each source's token-mean loss with respect to a
  parameter subset (e.g. the output head), from the batch's own sub-batches: one backward pass
  per source present, through ``torch.autograd.grad`` so the training gradients are untouched;
- :func:`all_reduce_feedback`: sums over ``torch.distributed`` ranks so every rank computes the
  same weights (losses are reduced as token-weighted sums, then divided by the global counts).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist


def per_source_loss(token_loss: torch.Tensor, source_ids: torch.Tensor, num_sources: int,
                    valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of losses, token count) per source, float64, shape (K,).

    ``token_loss`` and ``source_ids`` have the same shape; ``valid`` masks the positions that
    count (default: ``source_ids >= 0``). The mean is ``sums / counts`` where counts > 0;
    sums are returned (not means) so that ranks can be reduced exactly."""
    if valid is None:
        valid = source_ids >= 0
    valid = valid & (source_ids >= 0)
    src = source_ids[valid].long()
    sums = torch.zeros(num_sources, dtype=torch.float64, device=token_loss.device)
    counts = torch.zeros(num_sources, dtype=torch.float64, device=token_loss.device)
    sums.index_add_(0, src, token_loss[valid].detach().double())
    counts.index_add_(0, src, torch.ones_like(src, dtype=torch.float64))
    return sums, counts


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
