"""The feedback signals a policy asks for, measured on the proxy model, summed over ranks.

Every signal is per-rank *sums* and *counts* reduced with
:func:`mixbatch.proxy.evaluate.global_means`, so the feedback (and the policy's weights) is the
same on every rank and equals, up to rounding, one process's on the whole global batch. At the
parameters before the step's update: ``train_loss`` (token-mean loss of each source in the
batch), ``excess_loss`` (DoReMi: token-mean of the per-token clipped excess
``max(ℓ_θ − ℓ_ref, 0)`` over a frozen reference model), ``grads`` (each source's gradient of its
token-mean loss in the batch: of the output head's use of its tied weight, hidden state
detached, :func:`head_grad_sums`; or over every parameter, :func:`full_grad_sums`) and
``target_grad`` (the same gradient of the target's development rows, :func:`target_grad_sums`:
one batch's worth, the same rows at every update). After it: Skill-It's ``eval_loss`` on each
evaluation group's development rows.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from mixbatch.proxy.evaluate import EvalRows, autocast, row_batches
from mixbatch.proxy.model import ProxyLM, shifted_token_losses
from mixbatch.torch.feedback import per_source_grads, per_source_mean

__all__ = ["HeadInput", "full_grad_sums", "head_grad_sums", "rank_rows", "source_sums",
           "target_grad_sums"]


class HeadInput:
    """Keeps the input of ``model.head`` (the final normed hidden state) of the last forward."""

    def __init__(self, model: ProxyLM) -> None:
        self.value: torch.Tensor | None = None
        self._handle = model.head.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor
              ) -> None:
        self.value = args[0].detach()

    def close(self) -> None:
        self._handle.remove()


def source_sums(values: torch.Tensor, source_ids: torch.Tensor, mask: torch.Tensor,
                num_sources: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-source sums of per-token ``values`` (float64) and token counts (float64)."""
    means, counts = per_source_mean(values.detach(), source_ids, num_sources, mask)
    sums = torch.nan_to_num(means.double()) * counts.double()
    return sums, counts.double()


def _head_losses(model: ProxyLM, hidden: torch.Tensor, labels: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token losses through the head only (hidden state detached), and their mask."""
    logits = F.linear(hidden.float(), model.head.weight.float())
    return shifted_token_losses(logits, labels)


def _grad_sums(losses: torch.Tensor, mask: torch.Tensor, source_ids: torch.Tensor,
               num_sources: int, params: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-source gradients of the token-mean loss over ``params`` times the token counts
    ``[K, P]``, and the counts ``[K]`` (float64)."""
    grads, _ = per_source_grads(losses, source_ids, num_sources, params, mask)
    _, counts = per_source_mean(losses.detach(), source_ids, num_sources, mask)
    return grads.double() * counts.double()[:, None], counts.double()


def head_grad_sums(model: ProxyLM, hidden: torch.Tensor, labels: torch.Tensor,
                   source_ids: torch.Tensor, num_sources: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-source sums of head gradients ``[K, P]`` and counts ``[K]`` from the batch's hidden
    states (see the module docstring)."""
    with torch.enable_grad():
        losses, mask = _head_losses(model, hidden, labels)
        return _grad_sums(losses, mask, source_ids, num_sources, [model.head.weight])


def full_grad_sums(model: ProxyLM, losses: torch.Tensor, mask: torch.Tensor,
                   source_ids: torch.Tensor, num_sources: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-source sums of gradients over every parameter ``[K, P]`` and counts ``[K]``, from
    the batch's per-token ``losses`` (still attached to the graph, which is kept for the
    training step's own backward)."""
    return _grad_sums(losses, mask, source_ids, num_sources, model.parameters())


def rank_rows(rows: EvalRows, rank: int, world_size: int) -> EvalRows:
    """This rank's share of evaluation rows (rows ``rank, rank + world, ...``)."""
    s = slice(rank, None, world_size)
    return EvalRows(rows.input_ids[s], rows.labels[s], rows.position_ids[s], rows.docs)


def target_grad_sums(model: ProxyLM, rows: EvalRows, device: torch.device, batch_rows: int,
                     amp: torch.dtype | None, full: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over ``rows``' predicted tokens of the head gradient ``[P]`` (every parameter's
    gradient when ``full``), float64, and the count (a one-element tensor), at the model's
    current parameters."""
    params = ([p for p in model.parameters() if p.requires_grad] if full
              else [model.head.weight])
    total = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64, device=device)
    count = torch.zeros(1, dtype=torch.float64, device=device)
    capture = HeadInput(model)
    was_training = model.training
    model.eval()
    try:
        for ids, lab, pos in row_batches(rows, device, batch_rows):
            with torch.set_grad_enabled(full), autocast(device, amp):
                out = model(ids, lab if full else None, pos)
            with torch.enable_grad():
                if full:
                    assert out.losses is not None and out.mask is not None
                    losses, mask = out.losses, out.mask
                else:
                    assert capture.value is not None
                    losses, mask = _head_losses(model, capture.value, lab)
                g = torch.autograd.grad(losses.sum(), params, allow_unused=True)
            total += torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1)
                                for x, p in zip(g, params, strict=True)]).double()
            count += mask.sum().double()
    finally:
        capture.close()
        model.train(was_training)
    return total, count
