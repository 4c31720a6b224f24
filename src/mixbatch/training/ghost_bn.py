"""Ghost Batch Normalization ("Train longer, generalize better: closing the generalization gap
in large batch training of neural networks", Hoffer et al.): in training, each chunk of
``ghost_batch_size`` examples is normalised by its own statistics,

    y = γ · (x − μ_c) / sqrt(σ²_c + ε) + β     (μ_c, σ²_c over chunk c and the spatial axes)

so a large batch sees the noise of small ones; the running statistics move once per forward by
the mean of the chunks' (unbiased) statistics; evaluation uses them as ordinary BatchNorm does.
All chunks are normalised at once (one reshape, no loop over chunks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixbatch.errors import ConfigError

__all__ = ["GhostBatchNorm"]


class GhostBatchNorm(torch.nn.BatchNorm1d):
    """BatchNorm over ``(N, C)`` or ``(N, C, L...)`` inputs with ghost batches of
    ``ghost_batch_size`` examples (``N`` must be a multiple of it in training)."""

    def __init__(self, num_features: int, ghost_batch_size: int, eps: float = 1e-5,
                 momentum: float = 0.1) -> None:
        if ghost_batch_size < 1:
            raise ConfigError(f"ghost_batch_size must be >= 1, got {ghost_batch_size}")
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.ghost_batch_size = ghost_batch_size

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ConfigError(f"GhostBatchNorm: expected (N, C, ...) input, got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        n, g = x.shape[0], self.ghost_batch_size
        if n % g:
            raise ConfigError(f"GhostBatchNorm: a batch of {n} examples does not split into ghost "
                              f"batches of {g}")
        c = x.shape[1]
        chunks = x.reshape(n // g, g, c, -1)  # (chunks, g, C, positions)
        dims = (1, 3)
        mean = chunks.mean(dim=dims, keepdim=True)
        var = chunks.var(dim=dims, unbiased=False, keepdim=True)
        y = (chunks - mean) / torch.sqrt(var + self.eps)
        y = y * self.weight.view(1, 1, c, 1) + self.bias.view(1, 1, c, 1)
        with torch.no_grad():
            count = g * chunks.shape[3]
            unbiased = var * (count / max(count - 1, 1))
            m = self.momentum if self.momentum is not None else 0.1
            self.running_mean.mul_(1 - m).add_(mean.mean(dim=0).reshape(c), alpha=m)
            self.running_var.mul_(1 - m).add_(unbiased.mean(dim=0).reshape(c), alpha=m)
            self.num_batches_tracked.add_(1)
        return y.reshape(x.shape)
