"""One rank's batches for a training stack, with the loader state after each of the last few.

Trainers fetch batches ahead of the one the model is consuming (Lightning one, Accelerate's
loaders one, a ``DataLoader`` with workers many), so the state to save with a checkpoint is not
the dataset's latest position but the state after the last batch *consumed*.
:class:`StatefulBatches` keeps the states of its last ``keep`` batches by global step;
an integration counts the batches consumed and asks :meth:`StatefulBatches.state_after`.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Iterable, Iterator
from enum import Enum
from typing import Any

from torch.utils.data import IterableDataset

from mixbatch.config import Config
from mixbatch.errors import ConfigError, StateError


def per_device_rows(cfg: Config, world_size: int) -> int | None:
    """Rows of each rank's batch, ``global / (world_size · grad_accum)`` (Hugging Face's and
    Lightning's per-device batch size); None where it changes (a ``batch_size`` schedule, a
    token budget)."""
    from mixbatch.loader.loader import rows_schedule

    if cfg.batch.variable_rows:
        return None
    sched = rows_schedule(cfg, world_size)
    return sched.rows[0] // world_size if sched.constant else None


def check_stack_batch(cfg: Config, world_size: int, accum: int, per_device: int | None,
                      names: tuple[str, str]) -> None:
    """Refuse a training stack whose own batch settings disagree with ``batch`` (one error
    naming both): its gradient accumulation ``accum`` (named ``names[0]``) must be
    ``batch.grad_accum``, and its per-device batch ``per_device`` (``names[1]``; None: not
    checked) must be :func:`per_device_rows` where that is one number."""
    b = cfg.batch
    if b.variable_rows:  # rows follow the token budget: nothing to match
        return
    if accum != b.grad_accum:
        raise ConfigError(f"{names[0]} = {accum} and batch.grad_accum = {b.grad_accum} "
                          "disagree: set both to the loader steps per optimizer step")
    micro = per_device_rows(cfg, world_size)
    if per_device is not None and micro is not None and per_device != micro:
        raise ConfigError(f"{names[1]} = {per_device} and mixbatch's rows per device = {micro} "
                          f"(batch.global_batch_size {micro * world_size * b.grad_accum} / world "
                          f"size {world_size} / grad_accum {b.grad_accum}) disagree: set "
                          "batch.micro_batch_size or the global batch to match")


class BatchFormat(str, Enum):
    """``batch_format``: mixbatch's own fields, or Hugging Face's names."""

    MIXBATCH = "mixbatch"
    HF = "hf"


class StatefulBatches(IterableDataset):
    """:class:`mixbatch.torch.MixbatchDataset` (``fields``; ``batch_format="hf"``: the
    :func:`mixbatch.integrations.hf.to_hf` form), iterated in the training process, with the
    loader state after each of its last ``keep`` batches.

    ``state_dict()`` is the state after the last batch handed out (exact where nothing is fetched
    ahead: a plain loop, Accelerate with this dataset unprepared); :meth:`state_after` gives
    the state after any of the last ``keep`` steps. Iterate it with ``num_workers=0``: the
    states are kept in the process that iterates.
    """

    def __init__(self, cfg: Config, rank: int | None = None, world_size: int | None = None,
                 state: dict[str, Any] | None = None, max_steps: int | None = None,
                 fields: str | Iterable[str] | None = None, batch_format: str = "mixbatch",
                 keep: int = 64) -> None:
        from mixbatch.torch import MixbatchDataset
        from mixbatch.torch.data import batch_formatter

        super().__init__()
        fields, self._convert = batch_formatter(batch_format, fields)  # the step is read first
        self.inner = MixbatchDataset(cfg, rank, world_size, state=state, max_steps=max_steps,
                                     fields=fields)
        self.start = copy.deepcopy(state)
        self.states: deque[tuple[int, dict[str, Any]]] = deque(maxlen=keep)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.inner:
            self.states.append((int(batch["step"]), self.inner.state_dict()["loader"]))
            yield self._convert(batch)

    @property
    def start_step(self) -> int:
        """The global step the next iteration starts at."""
        return 0 if self.start is None else int(self.start["step"])

    def state_after(self, step: int) -> dict[str, Any] | None:
        """The loader state after the batch of global step ``step`` (``step`` below the start:
        the start state)."""
        if step < self.start_step:
            return copy.deepcopy(self.start)
        for s, state in reversed(self.states):
            if s == step:
                return copy.deepcopy(state)
        kept = f"{self.states[0][0]}..{self.states[-1][0]}" if self.states else "none"
        raise StateError(f"{type(self).__name__}: no state kept for step {step} (kept: {kept});"
                         " raise `keep` above the batches fetched ahead")

    def state_dict(self) -> dict[str, Any] | None:
        """The loader state after the last batch handed out."""
        return copy.deepcopy(self.states[-1][1]) if self.states else copy.deepcopy(self.start)

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Start the next iteration from ``state`` (a loader state; None: the beginning)."""
        self.start = copy.deepcopy(state)
        self.states.clear()
        self.inner.load_state_dict({"loader": state, "lane_offset": None})
