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

:class:`BatchSizeController` grows the loader's batch while the smoothed ``B_simple`` is above
it. In the paper's model the steps and examples to a given loss trade off as
``(S/S_min − 1)(E/E_min − 1) = 1`` with the critical batch ``B_crit = E_min/S_min ≈ B_simple``:
well below ``B_crit`` a larger batch cuts the steps almost in proportion at little cost in
examples, so the batch may follow the noise scale up as it grows during training.
"""

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from mixbatch.checks import integer, real
from mixbatch.errors import ConfigError, StateError
from mixbatch.plan.state_checks import count

if TYPE_CHECKING:
    from mixbatch.loader.loader import MixedLoader

__all__ = ["BatchSizeController", "NoiseHookState", "NoiseScale", "noise_scale_hook"]


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


class BatchSizeController:
    """Grows the loader's global batch (:meth:`MixedLoader.set_batch_size`) when the smoothed
    noise scale passes it.

    At most once per ``every`` steps (and not before ``warmup`` steps), if ``B_simple`` (in
    units of ``per_row`` per row: 1 for examples, ``seq_len`` for tokens) is above the current
    global batch ``B``, the batch becomes ``min(B_simple, growth · B, max_batch_size)`` rounded
    down to a multiple of ``world size · grad_accum`` (no change when that is not above ``B``).
    It never shrinks. With ``hook`` given, the hook's ``local_batch`` follows the new batch
    (the local gradient covers ``micro · grad_accum`` rows). The loader's state records every
    change; :meth:`state_dict` holds the controller's own clock.

    Args:
        loader: the :class:`~mixbatch.loader.loader.MixedLoader` whose batch grows.
        growth: the largest factor of one change (> 1).
        max_batch_size: the largest global batch (default and upper bound: the loader's
            ``max_rows_per_step · grad_accum``, i.e. ``batch.max_batch_size``).
    """

    # no `from __future__ import annotations` here: DDP checks the hook's annotations
    def __init__(self, loader: "MixedLoader", growth: float = 2.0,
                 max_batch_size: int | None = None, every: int = 100, warmup: int = 0,
                 per_row: int = 1, hook: "NoiseHookState | None" = None) -> None:
        self.loader = loader
        self.growth = real("noise.growth", growth, lo=1, lo_open=True)
        largest = loader.max_rows_per_step
        if largest is None:
            raise ConfigError(f"noise controller: packing {loader.cfg.batch.packing.value!r} "
                              "sets each step's rows by batch.token_budget; there is no batch "
                              "size to grow")
        self.accum = loader.cfg.batch.grad_accum
        bound = largest * self.accum
        self.max_batch_size = bound if max_batch_size is None else integer(
            "noise.max_batch_size", max_batch_size, lo=1)
        if self.max_batch_size > bound:
            raise ConfigError(f"noise.max_batch_size: {self.max_batch_size} is above the "
                              f"loader's largest batch {bound}; raise batch.max_batch_size")
        self.every = integer("noise.every", every, lo=1)
        self.warmup = integer("noise.warmup", warmup, lo=0)
        self.per_row = integer("noise.per_row", per_row, lo=1)
        self.hook = hook
        self.last_change: int | None = None  # the loader step of the last growth

    @property
    def batch_size(self) -> int:
        """The current global batch (rows per optimizer step)."""
        return self.loader.rows_per_step * self.accum

    def update(self, b_simple: float) -> int | None:
        """Call once per optimizer step with the monitor's ``B_simple``, before the next
        batch is drawn; returns the new global batch when it grew, else None."""
        step = self.loader.step
        if not math.isfinite(b_simple) or step < self.warmup:
            return None
        if self.last_change is not None and step - self.last_change < self.every:
            return None
        now = self.batch_size
        target = min(b_simple / self.per_row, self.growth * now, self.max_batch_size)
        multiple = self.loader.world_size * self.accum
        new = int(target // multiple) * multiple
        if new <= now:
            return None
        self.loader.set_batch_size(new)
        self.last_change = step
        if self.hook is not None:
            self.hook.local_batch = self.loader.micro_batch_size * self.accum * self.per_row
        return new

    def state_dict(self) -> dict[str, Any]:
        return {"last_change": self.last_change, "growth": self.growth,
                "max_batch_size": self.max_batch_size, "every": self.every}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("growth", "max_batch_size", "every"):
            if state.get(key) != getattr(self, key):
                raise StateError(f"batch-size controller: saved with {key} {state.get(key)!r}, "
                                 f"this one has {getattr(self, key)!r}")
        last = state.get("last_change")
        self.last_change = None if last is None else count(
            "batch-size controller state.last_change", last)
        if self.hook is not None:
            self.hook.local_batch = self.loader.micro_batch_size * self.accum * self.per_row
