"""PyTorch adapters: an ``IterableDataset`` of ready batches, and a loader that tracks state.

``MixbatchDataset`` yields whole micro-batches (use ``batch_size=None`` in the DataLoader): dicts
of tensors ``input_ids``, ``labels``, ``position_ids``, ``source_ids``, ``doc_ids`` (R, L),
``cu_seqlens`` (int32) and ``max_seqlen`` for varlen attention, plus ``step``.

With ``num_workers = n``, worker ``w`` reads the steps ``start + w, start + w + n, ...`` (every
worker plans the whole global stream, which is cheap, and reads tokens only for its own steps);
the DataLoader's round-robin over workers gives the steps back in order.

State, two ways:

- ``MixbatchDataLoader`` wraps ``torch.utils.data.DataLoader``; each batch carries the global
  stream's state after it, and ``state_dict()`` returns the state after the last batch handed
  out. That state resumes at any number of workers and any world size.
- ``torchdata.stateful_dataloader.StatefulDataLoader`` calls the dataset's ``state_dict`` in each
  worker; resuming it needs the same number of workers (its own rule).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mixbatch.config import Config
from mixbatch.loader.loader import MixedLoader

STATE_KEY = "_mixbatch_state"


def _as_is(batch: dict[str, Any]) -> dict[str, Any]:
    """Batches are built whole by the dataset: nothing to collate or convert."""
    return batch


def to_tensors(batch: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, np.ndarray):
            out[k] = torch.from_numpy(np.ascontiguousarray(v))
        else:
            out[k] = v
    return out


class MixbatchDataset(IterableDataset):
    """This rank's batches of the mixed stream; see the module docstring."""

    def __init__(self, cfg: Config, rank: int | None = None, world_size: int | None = None,
                 state: dict[str, Any] | None = None, carry_state: bool = False,
                 max_steps: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.max_steps = max_steps
        self.carry_state = carry_state
        self._start: dict[str, Any] | None = copy.deepcopy(state)
        self._lane_offset: int | None = None
        self._last: dict[str, Any] | None = None

    def _loader(self) -> MixedLoader:
        return MixedLoader(self.cfg, self.rank, self.world_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        loader = self._loader()
        if self._start is not None:
            loader.load_state_dict(self._start)
        info = get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        lane0 = loader.step if self._lane_offset is None else self._lane_offset
        self._lane_offset = lane0
        end = None if self.max_steps is None else lane0 + self.max_steps
        while end is None or loader.step < end:
            step = loader.next_step()
            if step is None:
                return
            if (step.index - lane0) % nw != wid:
                continue
            batch = to_tensors(loader.batch_of(step))
            self._last = loader.state_dict()
            if self.carry_state:
                batch[STATE_KEY] = self._last
            yield batch

    # torchdata's Stateful protocol (called inside each worker by StatefulDataLoader)
    def state_dict(self) -> dict[str, Any]:
        return {"loader": self._last if self._last is not None else self._start,
                "lane_offset": self._lane_offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._start = copy.deepcopy(state["loader"])
        self._lane_offset = state.get("lane_offset")
        self._last = None


class MixbatchDataLoader:
    """A ``DataLoader`` over :class:`MixbatchDataset` whose ``state_dict`` is the global stream's
    position after the last batch it handed out: resume with any ``num_workers``/world size."""

    def __init__(self, cfg: Config, rank: int | None = None, world_size: int | None = None,
                 num_workers: int = 0, state: dict[str, Any] | None = None,
                 max_steps: int | None = None, **loader_kwargs: Any) -> None:
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.num_workers = num_workers
        self.max_steps = max_steps
        self.loader_kwargs = loader_kwargs
        self._state = copy.deepcopy(state)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        ds = MixbatchDataset(self.cfg, self.rank, self.world_size, state=self._state,
                             carry_state=True, max_steps=self.max_steps)
        kwargs = {"persistent_workers": False, "collate_fn": _as_is, **self.loader_kwargs}
        dl = DataLoader(ds, batch_size=None, num_workers=self.num_workers, **kwargs)
        for batch in dl:
            self._state = batch.pop(STATE_KEY)
            yield batch

    def state_dict(self) -> dict[str, Any] | None:
        return copy.deepcopy(self._state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = copy.deepcopy(state)
