"""The gradient noise scale, a measure of the critical batch size ("An Empirical Model of
Large-Batch Training", McCandlish et al.; used for the batch in "Unraveling the Mystery of
Scaling Laws: Part I").

``B_simple = tr(Σ)/|G|²`` (Σ the per-example gradient covariance, G the true gradient). Since
``E|G_B|² = |G|² + tr(Σ)/B``, two batch sizes give unbiased estimates of both terms; in data
parallelism they come free: ``B_small`` the local batch (the gradient before the all-reduce),
``B_big`` the global batch (after it):

    |G|² ≈ (B_big·|G_big|² − B_small·|G_small|²) / (B_big − B_small)
    tr Σ ≈ (|G_small|² − |G_big|²) / (1/B_small − 1/B_big)

Each estimate is smoothed by its own bias-corrected EMA before the ratio is taken
(:class:`NoiseScale`). :func:`noise_scale_hook` is a DDP communication hook that measures both
norms while it averages the gradient buckets (:class:`NoiseHookState` adds them up per step).
"""


from typing import Any

import torch
import torch.distributed as dist

from mixbatch.checks import integer, real
from mixbatch.errors import StateError

__all__ = ["NoiseHookState", "NoiseScale", "noise_scale_hook"]


class NoiseScale:
    """EMA-smoothed ``|G|²`` and ``tr Σ`` estimates and their ratio ``B_simple``.

    Args:
        beta: the EMA's decay per step (0 keeps only the last step).
    """

    def __init__(self, beta: float = 0.99) -> None:
        self.beta = real("noise.beta", beta, lo=0, hi=1, hi_open=True)
        self.g2 = 0.0  # EMA of the |G|² estimates (biased towards 0 at the start)
        self.trace = 0.0  # EMA of the tr Σ estimates
        self.steps = 0

    def update(self, small_sq: float, big_sq: float, b_small: int, b_big: int) -> float:
        """Add one step's squared norms (``small_sq``: of a ``b_small``-example gradient, mean
        over the small batches measured; ``big_sq``: of the ``b_big``-example one). Returns
        :attr:`b_simple` after it."""
        b_small = integer("noise.b_small", b_small, lo=1)
        b_big = integer("noise.b_big", b_big, lo=b_small + 1)
        g2 = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
        trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
        self.g2 = self.beta * self.g2 + (1 - self.beta) * g2
        self.trace = self.beta * self.trace + (1 - self.beta) * trace
        self.steps += 1
        return self.b_simple

    @property
    def b_simple(self) -> float:
        """``tr Σ / |G|²`` from the smoothed estimates (NaN before the first step or while the
        smoothed ``|G|²`` is not positive). The EMAs' start bias cancels in the ratio."""
        if self.steps == 0 or self.g2 <= 0:
            return float("nan")
        return self.trace / self.g2

    def state_dict(self) -> dict[str, Any]:
        return {"beta": self.beta, "g2": self.g2, "trace": self.trace, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["beta"] != self.beta:
            raise StateError(f"noise scale: saved with beta {state['beta']}, this monitor has "
                             f"{self.beta}")
        self.g2, self.trace, self.steps = float(state["g2"]), float(state["trace"]), \
            int(state["steps"])


class NoiseHookState:
    """What :func:`noise_scale_hook` adds up over one step's buckets.

    Args:
        monitor: the :class:`NoiseScale` to update at :meth:`finish_step`.
        local_batch: examples (or tokens: the unit of B) behind each rank's gradient.
        group: the data-parallel process group (None: the default one).
    """

    def __init__(self, monitor: NoiseScale, local_batch: int, group: Any = None) -> None:
        self.monitor = monitor
        self.local_batch = integer("noise.local_batch", local_batch, lo=1)
        self.group = group
        self.small_sq = torch.zeros((), dtype=torch.float64)  # this rank's, before averaging
        self.big_sq = torch.zeros((), dtype=torch.float64)

    def finish_step(self) -> float:
        """After ``backward``: average the local squared norms over the ranks, update the
        monitor, start the next step's sums. Returns ``B_simple``."""
        world = dist.get_world_size(self.group)
        small = self.small_sq.clone()
        dist.all_reduce(small, group=self.group)
        b = self.monitor.update(float(small) / world, float(self.big_sq), self.local_batch,
                                self.local_batch * world)
        self.small_sq.zero_()
        self.big_sq.zero_()
        return b


def noise_scale_hook(state: NoiseHookState, bucket: dist.GradBucket
                     ) -> torch.futures.Future[torch.Tensor]:
    """A DDP communication hook: the average all-reduce of DDP, with the bucket's squared norm
    before it (local gradient) and after it (global gradient) added to ``state``.

    ``model.register_comm_hook(NoiseHookState(monitor, local_batch), noise_scale_hook)``; call
    ``state.finish_step()`` after each backward."""
    buf = bucket.buffer()
    state.small_sq += buf.detach().to(torch.float64).pow(2).sum().cpu()
    world = dist.get_world_size(state.group)
    fut = dist.all_reduce(buf.div_(world), group=state.group, async_op=True).get_future()

    def done(f: torch.futures.Future) -> torch.Tensor:
        out = f.value()[0]
        state.big_sq += out.detach().to(torch.float64).pow(2).sum().cpu()
        return out

    return fut.then(done)
