"""Load balancing of a mixture-of-experts router over the global batch ("Demons in the Detail:
On Implementing Load Balancing Loss for Training Specialized Mixture-of-Expert Models").

``LBL = N_E · Σ_i f_i · p_i`` with ``f_i`` the share of the top-K selections that went to
expert ``i`` (``Σ f_i = 1``; uniform routing gives ``f_i = 1/N_E`` and ``LBL = 1``) and ``p_i``
the mean gate probability of expert ``i`` over the tokens. ``f_i`` carries no gradient; ``p_i``
carries it to the router.

* :func:`micro_balance_loss`: ``f_i`` and ``p_i`` from one micro-batch (what most code does: it
  pushes every few sequences to balance on their own, which blocks expert specialisation).
* :class:`GlobalBalanceLoss`: the selection counts are all-reduced over the data-parallel group
  and accumulated over the micro-batches of the step before ``f_i`` is formed (micro-batch
  ``j`` of a step sees the counts of micro-batches ``1..j``, each backward runs before the next
  micro-batch is routed; the last sees the whole global batch). Each rank's
  ``p_i`` term is its gate sum over the global token count times the world size, so the mean of
  the ranks' losses (what data-parallel gradient averaging optimises) equals the loss of one
  process on the concatenated batch, gradients included.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from mixbatch.errors import ConfigError, StateError

__all__ = ["GlobalBalanceLoss", "expert_counts", "micro_balance_loss"]


def _check(gates: torch.Tensor, topk: torch.Tensor, n_experts: int) -> None:
    if gates.dim() != 2 or gates.shape[1] != n_experts:
        raise ConfigError(f"balance loss: gates must be (tokens, {n_experts}), got "
                          f"{tuple(gates.shape)}")
    if topk.dim() != 2 or topk.shape[0] != gates.shape[0]:
        raise ConfigError(f"balance loss: expert indices must be (tokens, k) with {gates.shape[0]} "
                          f"tokens, got {tuple(topk.shape)}")
    if topk.numel() and (int(topk.min()) < 0 or int(topk.max()) >= n_experts):
        raise ConfigError(f"balance loss: expert indices must be in [0, {n_experts}), got "
                          f"{int(topk.min())}..{int(topk.max())}")


def expert_counts(topk: torch.Tensor, n_experts: int) -> torch.Tensor:
    """How many of the top-K selections went to each expert (float64, no gradient)."""
    return torch.bincount(topk.reshape(-1), minlength=n_experts).to(torch.float64)


def micro_balance_loss(gates: torch.Tensor, topk: torch.Tensor, n_experts: int) -> torch.Tensor:
    """``N_E · Σ f_i p_i`` over one micro-batch: ``gates`` (tokens, N_E) router probabilities,
    ``topk`` (tokens, K) the experts chosen."""
    _check(gates, topk, n_experts)
    counts = expert_counts(topk, n_experts)
    f = (counts / counts.sum().clamp(min=1)).to(gates.dtype)
    p = gates.mean(dim=0)
    return n_experts * (f * p).sum()


class GlobalBalanceLoss(torch.nn.Module):
    """The global-batch balance loss (module docstring). Call once per micro-batch; call
    :meth:`new_step` when the optimiser step is done (the counts start again).

    Args:
        n_experts: N_E; every rank of ``group`` must have the same (checked on the first call).
        group: the data-parallel process group (None: the default group when
            ``torch.distributed`` is initialised, else one process).
    """

    def __init__(self, n_experts: int, group: Any = None) -> None:
        super().__init__()
        if n_experts < 1:
            raise ConfigError(f"balance loss: n_experts must be >= 1, got {n_experts}")
        self.n_experts = n_experts
        self.group = group
        self.counts = torch.zeros(n_experts, dtype=torch.float64)  # this step's, all ranks
        self.tokens = 0.0  # tokens of this step's micro-batches, all ranks
        self._checked = False

    def _world(self) -> int:
        if not (dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.group)

    def _reduce(self, t: torch.Tensor, op: Any = None) -> torch.Tensor:
        if self._world() > 1:
            dist.all_reduce(t, op=op or dist.ReduceOp.SUM, group=self.group)
        return t

    def _check_ranks(self) -> None:
        if self._checked or self._world() == 1:
            self._checked = True
            return
        both = torch.tensor([self.n_experts, -self.n_experts], dtype=torch.int64)
        self._reduce(both, dist.ReduceOp.MAX)
        if int(both[0]) != self.n_experts or int(-both[1]) != self.n_experts:
            raise ConfigError(f"balance loss: the ranks disagree on the expert count (this rank "
                              f"{self.n_experts}, others between {int(-both[1])} and "
                              f"{int(both[0])})")
        self._checked = True

    def forward(self, gates: torch.Tensor, topk: torch.Tensor) -> torch.Tensor:
        self._check_ranks()  # first: every rank reaches the collective
        _check(gates, topk, self.n_experts)
        world = self._world()
        local = torch.cat([expert_counts(topk, self.n_experts),
                           torch.tensor([float(gates.shape[0])], dtype=torch.float64)])
        both = self._reduce(local.to(gates.device)).cpu()
        self.counts += both[:-1]
        self.tokens += float(both[-1])
        f = (self.counts / self.counts.sum().clamp(min=1)).to(gates.device, gates.dtype)
        p = gates.sum(dim=0) * (world / max(float(both[-1]), 1.0))
        return self.n_experts * (f * p).sum()

    def new_step(self) -> None:
        """The optimiser step is done: count the next one's selections from zero."""
        self.counts.zero_()
        self.tokens = 0.0

    def get_extra_state(self) -> dict[str, Any]:
        return {"counts": self.counts.tolist(), "tokens": self.tokens}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        counts = torch.tensor(state["counts"], dtype=torch.float64)
        if counts.shape != (self.n_experts,):
            raise StateError(f"balance loss: saved counts for {counts.numel()} experts, this "
                             f"module has {self.n_experts}")
        self.counts, self.tokens = counts, float(state["tokens"])
