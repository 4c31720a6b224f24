"""PyTorch adapters: a loader with its own token-reading workers, and an ``IterableDataset``.

``MixbatchDataLoader`` (the fast path). The main process plans the global stream (compiled, in
blocks) and hands each step's plan to one of ``num_workers`` processes that only read tokens
(:mod:`mixbatch.torch.workers`); with 0 workers it reads them itself. Batches cross processes
compact (tokens in the stores' dtype, a small sequence table) and the fields asked for are
derived after: on the CPU, or on ``device`` after a ``non_blocking`` copy
(:func:`mixbatch.torch.device.to_device`). ``fields`` (default: ``input_ids``, ``labels``,
``position_ids``, ``cu_seqlens``, ``max_seqlen``; ``"all"`` adds ``source_ids`` and
``doc_ids``) keeps the batch to what a trainer reads. ``transform`` runs on each compact batch
in the worker (on-the-fly work that should run in parallel). A ``mixup:`` section in the config
adds each step's mixing record (:class:`mixbatch.mixup.BatchMixer`, drawn from the seed and the
step, so resume is exact) to the batches. ``state_dict()`` is the global
stream's position after the last batch handed out: it resumes at any number of workers and any
world size.

``MixbatchDataset`` is for a plain ``torch.utils.data.DataLoader`` (``batch_size=None``) or
torchdata's ``StatefulDataLoader``: with ``num_workers = n`` every worker plans the stream
itself (cheap) and reads the steps ``start + w, start + w + n, ...``, which the DataLoader's
round-robin gives back in order. ``StatefulDataLoader`` resumes it with the same number of
workers (its own rule).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from mixbatch.checks import choice
from mixbatch.config import Config
from mixbatch.errors import ConfigError, StateError
from mixbatch.loader.loader import MixedLoader, Step
from mixbatch.plan.state_checks import count, mapping
from mixbatch.series.config import is_series_config
from mixbatch.shape.base import StepPlan
from mixbatch.shape.materialize import (
    materialize_compact,
    per_position_fields,
    resolve_fields,
)
from mixbatch.store import open_store
from mixbatch.torch.device import check_device, fields_on_cpu, to_device, to_tensors
from mixbatch.torch.workers import SLOT_BYTES, Run, StepReaders, Task, stack_runs

__all__ = ["MixbatchDataLoader", "MixbatchDataset", "to_tensors"]

Transform = Callable[[dict[str, Any]], dict[str, Any]]


class _Stream:
    """What both adapters share: the settings of this rank's stream, its length where known,
    the loader of the running iteration (resumed from a state) and the way out of a batch."""

    cfg: Config
    max_steps: int | None

    def _stream(self, cfg: Config, rank: int | None, world_size: int | None,
                max_steps: int | None, fields: str | Iterable[str] | None,
                batch_format: str) -> None:
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.max_steps = max_steps
        fields, self._convert = batch_formatter(batch_format, fields)
        self.fields = resolve_fields(fields)
        self._loader: MixedLoader | None = None
        self._last: tuple | None = None  # the loader's snapshot after the last batch handed out
        self._mixer = _mixer(cfg)

    def _open(self, state: dict[str, Any] | None) -> MixedLoader:
        """A fresh loader of the stream for an iteration, at ``state`` (None: step 0)."""
        loader = self._loader = MixedLoader(self.cfg, self.rank, self.world_size)
        if state is not None:
            loader.load_state_dict(state)
        return loader

    def _out(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A batch on its way out: its step's mixing record added, in the batch format."""
        return self._convert(_mix(self._mixer, batch))

    def __len__(self) -> int:
        """``max_steps`` where the stream cannot end first (:func:`stream_length`); else a
        ``TypeError`` (what ``len()`` of an unsized iterable raises)."""
        n = stream_length(self.cfg, self.max_steps)
        if n is None:
            raise TypeError(f"{type(self).__name__} has no known length: give max_steps, and "
                            "no source may end (max_epochs unset, on_exhausted: renormalize)")
        return n

    def __bool__(self) -> bool:  # truthiness never asks for a length that may be unknown
        return True


def _steps_until(loader: MixedLoader, end: int | None) -> Iterator[Step]:
    """The loader's steps until its step ``end`` (None: until the stream ends)."""
    while end is None or loader.step < end:
        step = loader.next_step()
        if step is None:
            return
        yield step


class MixbatchDataset(_Stream, IterableDataset):
    """This rank's batches of the mixed stream, as tensors; see the module docstring."""

    def __init__(self, cfg: Config, rank: int | None = None, world_size: int | None = None,
                 state: dict[str, Any] | None = None, max_steps: int | None = None,
                 fields: str | Iterable[str] | None = None,
                 batch_format: str = "mixbatch") -> None:
        super().__init__()
        self._stream(cfg, rank, world_size, max_steps, fields, batch_format)
        self._start: dict[str, Any] | None = copy.deepcopy(state)
        self._lane_offset: int | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        loader = self._open(self._start)
        info = get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        lane0 = loader.step if self._lane_offset is None else self._lane_offset
        self._lane_offset = lane0
        for step in _steps_until(loader, None if self.max_steps is None
                                 else lane0 + self.max_steps):
            if (step.index - lane0) % nw != wid:
                continue
            batch = (to_tensors(loader.batch_of(step)) if step.objective is not None  # examples
                     else fields_on_cpu(loader.compact_of(step), self.fields))
            self._last = loader.snapshot()
            yield self._out(batch)

    # torchdata's Stateful protocol (called inside each worker by StatefulDataLoader)
    def state_dict(self) -> dict[str, Any]:
        loader = self._loader
        state = (loader.state_from(self._last) if loader is not None and self._last is not None
                 else self._start)
        return {"loader": state, "lane_offset": self._lane_offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = mapping("dataset state", state)
        if "loader" not in state:
            raise StateError("dataset state.loader: missing")
        lane = state.get("lane_offset")
        self._start = copy.deepcopy(mapping("dataset state.loader", state["loader"]))
        self._lane_offset = None if lane is None else count("dataset state.lane_offset", lane)
        self._last = None


def _tasks(loader: MixedLoader, steps: Iterator[Step], size: Callable[[], int]) -> Iterator[Task]:
    """Workers' tasks: ``size()`` consecutive steps each (asked anew for each task), with the
    state after each step. Their plans are cut out only if the task goes to a worker
    (:func:`_runs`)."""
    while True:
        n = size()
        group: list[Step] = []
        snaps: list[tuple] = []
        for step in steps:
            group.append(step)
            snaps.append(loader.snapshot())
            if len(group) == n:
                break
        if not group:
            return
        yield [s.index for s in group], _runs(group, loader.world_size == 1), snaps, group
        if len(group) < n:
            return


def _runs(group: list[Step], whole: bool) -> Callable[[int, int], list[Run]]:
    """The runs of steps ``a .. b - 1`` of a task: steps of one block (one rank: all rows) as
    one slice of the block's plan, others stacked."""
    def runs(a: int, b: int) -> list[Run]:
        first, last = group[a], group[b - 1]
        if whole and first.block is not None and last.block is first.block \
                and last.offset - first.offset == b - 1 - a:
            return [first.block.run(first.offset, last.offset + 1)]
        return stack_runs([s.plan if whole else s.plan.select_rows(s.rows) for s in group[a:b]])
    return runs


def _mixer(cfg: Config) -> Any:
    """The config's in-batch sample mixing (``mixup:``), or None."""
    spec = getattr(cfg, "mixup", None)
    if spec is None:
        return None
    from mixbatch.mixup import BatchMixer

    return BatchMixer(spec, cfg.seed)


def stream_length(cfg: Config, max_steps: int | None) -> int | None:
    """Batches an iteration hands out, where that is known: ``max_steps`` when no source can run
    out (no ``max_epochs``, ``on_exhausted: renormalize``: sources restart their epochs), else
    None (the stream may end first)."""
    from mixbatch.config import OnExhausted

    if max_steps is None or cfg.mixture.on_exhausted != OnExhausted.RENORMALIZE:
        return None
    if any(s.max_epochs is not None for s in cfg.sources.values()):
        return None
    return max_steps


def _as_is(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


def batch_formatter(batch_format: str, fields: str | Iterable[str] | None
                    ) -> tuple[str | Iterable[str] | None, Callable[[dict[str, Any]], dict[str, Any]]]:
    """The fields to derive and the conversion of each batch for ``batch_format``:
    ``"mixbatch"`` (the fields as they are) or ``"hf"`` (Hugging Face's names,
    :func:`mixbatch.integrations.hf.to_hf`, from its own fields)."""
    from mixbatch.integrations.batches import BatchFormat

    if choice(BatchFormat, "batch_format", batch_format) is BatchFormat.MIXBATCH:
        return fields, _as_is
    from mixbatch.integrations.hf import HF_FIELDS, to_hf

    if fields is not None:
        raise ConfigError("fields: batch_format 'hf' derives its own fields "
                          f"({', '.join(HF_FIELDS)}); leave fields unset")
    return HF_FIELDS, to_hf


def _mix(mixer: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """The mixing record of the batch's step (a function of seed and step: resume is exact)."""
    return batch if mixer is None else mixer(batch, int(batch["step"]))


class _Reader:
    """Reads the compact batch of a plan (picklable: a worker opens its own stores)."""

    def __init__(self, loader: MixedLoader) -> None:
        self.stores = loader.stores
        self.paths = [s.path for s in loader.stores]
        self.eod_id, self.pad_id, self.dtype = loader.eod_id, loader.pad_id, loader.token_dtype

    def __getstate__(self) -> dict[str, Any]:  # a spawned worker maps the stores itself
        return {**self.__dict__, "stores": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.stores = [open_store(p) for p in self.paths]

    def __call__(self, plan: StepPlan, out: np.ndarray | None = None) -> dict[str, Any]:
        return materialize_compact(plan, self.stores, self.eod_id, self.pad_id, self.dtype, out)


_OPTIONS = ("pin_memory", "prefetch_factor", "device", "non_blocking", "adaptive")


class MixbatchDataLoader(_Stream):
    """Batches of this rank as tensors, with ``state_dict()`` after the last one handed out.

    Args:
        cfg, rank, world_size: as :class:`~mixbatch.loader.loader.MixedLoader`.
        num_workers: processes that read tokens (0: the main process does).
        state: a state to resume from (any worker count or world size).
        max_steps: stop after this many steps from where it starts (after a resume: from the
            resume point).
        fields: the batch's fields (module docstring).
        batch_format: ``"mixbatch"`` (the fields as named above) or ``"hf"``: Hugging Face's
            names, ready for ``model(**batch)`` (:mod:`mixbatch.integrations.hf`).
        transform: a function of the compact batch (NumPy arrays), run in the worker (or in
            the main process for the steps it reads itself: ``adaptive``).
        pin_memory: pin the compact tensors (for a fast ``non_blocking`` copy to a GPU).
        device: move each batch there and derive the fields there.
        prefetch_factor: tasks (of up to 16 steps) in flight per worker (2).
        adaptive: with workers, let the main process read steps itself in the stretches where
            it measures that faster than handing them to the workers (small work per batch on
            busy CPUs; :mod:`mixbatch.torch.pacing`). The batches are the same; ``transform``
            then runs in the main process for those steps. False: the workers read every step.
    """

    def __new__(cls, cfg: Config | None = None, *args: Any, **kwargs: Any) -> Any:
        if cfg is not None and is_series_config(cfg):  # series sources: (context, horizon)
            from mixbatch.series.loader import SeriesDataLoader

            return SeriesDataLoader(cfg, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, cfg: Config, rank: int | None = None, world_size: int | None = None,
                 num_workers: int = 0, state: dict[str, Any] | None = None,
                 max_steps: int | None = None, fields: str | Iterable[str] | None = None,
                 transform: Transform | None = None, batch_format: str = "mixbatch",
                 **options: Any) -> None:
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ConfigError(f"MixbatchDataLoader: unknown option(s) {', '.join(unknown)} "
                              f"(accepted: {', '.join(_OPTIONS)})")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"num_workers: must be an integer >= 0, got {num_workers!r}")
        if max_steps is not None and (isinstance(max_steps, bool) or max_steps < 0):
            raise ConfigError(f"max_steps: must be an integer >= 0, got {max_steps!r}")
        self._stream(cfg, rank, world_size, max_steps, fields, batch_format)
        self.num_workers = num_workers
        self.transform = transform
        self.pin_memory = bool(options.get("pin_memory", False))
        self._pin = False  # pin_memory, and CUDA is here (set when iteration starts)
        self.device = options.get("device")
        if self.device is not None:
            check_device(self.device)  # an unavailable device fails here, clearly
        self.non_blocking = bool(options.get("non_blocking", True))
        self.prefetch = int(options.get("prefetch_factor", 2))
        self.adaptive = bool(options.get("adaptive", True))
        self._state = copy.deepcopy(state)
        self._readers: StepReaders | None = None  # the workers of the running iteration

    @property
    def worker_pids(self) -> list[int]:
        """The running iteration's worker processes (none yet while the main process reads
        every task itself: ``adaptive`` starts them when it first sends them a task)."""
        return [] if self._readers is None else self._readers.pids()

    def _pinned(self, t: dict[str, Any]) -> dict[str, Any]:
        """The batch in pinned memory where that was asked for and CUDA is here (decided once
        per iteration: with no accelerator, ``pin_memory=True`` costs one attribute test)."""
        if self._pin:
            return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in t.items()}
        return t

    def _handed(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A batch whose fields a worker derived: as tensors (pinned when asked)."""
        return self._out(self._pinned(to_tensors(batch)))

    def _finish(self, compact: dict[str, Any]) -> dict[str, Any]:
        if self.device is not None:
            t = self._pinned(to_tensors(compact))
            batch = to_device(t, self.device, self.fields, self.non_blocking)
        else:
            batch = self._pinned(fields_on_cpu(compact, self.fields))
        return self._out(batch)

    def _steps(self, loader: MixedLoader) -> Iterator[Step]:
        """The steps of an iteration: ``max_steps`` from where the loader starts."""
        yield from _steps_until(loader, None if self.max_steps is None
                                else loader.step + self.max_steps)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._pin = self.pin_memory and torch.cuda.is_available()
        if self.pin_memory and not self._pin:
            warnings.warn("pin_memory: no CUDA device here, batches are not pinned",
                          stacklevel=2)
        loader = self._open(self._state)
        if loader.objectives is not None:  # objectives: rows become examples in this process
            if self.transform is not None:
                raise ConfigError("transform: runs on compact token rows; with `objectives:` "
                                  "the batches are examples: apply it to them after")
            for step in self._steps(loader):
                batch = self._pinned(to_tensors(loader.batch_of(step)))
                self._last = loader.snapshot()
                yield self._convert(batch if self.device is None else {
                    k: v.to(self.device, non_blocking=self.non_blocking)
                    if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
            return
        if self.num_workers == 0:
            for step in self._steps(loader):
                compact = loader.compact_of(step)
                if self.transform is not None:
                    compact = self.transform(compact)
                self._last = loader.snapshot()
                yield self._finish(compact)
            return
        positions = loader.cfg.batch.step_positions  # rows x seq_len, or a token budget
        # workers derive the fields on the CPU (their int64 arrays fill the slots); for a
        # device they send the compact batch, derived there after the copy
        fields = None if self.device is not None else self.fields
        step_bytes = positions * (8 * per_position_fields(fields) if fields
                                  else loader.token_dtype.itemsize) + 4096
        per_task = max(1, min(16, SLOT_BYTES // step_bytes))
        readers = StepReaders(self.num_workers, _Reader(loader), self.transform, self.prefetch,
                              slot_bytes=per_task * step_bytes, dtype=loader.token_dtype,
                              fields=fields, adaptive=self.adaptive,
                              here=lambda steps: (loader.compact_of(s) for s in steps),
                              task_steps=per_task)
        self._readers = readers
        try:
            for batch, snap in readers.map(_tasks(loader, self._steps(loader), readers.task_size)):
                self._last = snap
                yield self._finish(batch) if fields is None else self._handed(batch)
        finally:
            readers.close()

    def state_dict(self) -> dict[str, Any] | None:
        if self._loader is not None and self._last is not None:
            self._state = self._loader.state_from(self._last)
            self._last = None
        return copy.deepcopy(self._state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state`` (checked field by field when iteration starts)."""
        self._state = copy.deepcopy(mapping("loader state", state))
        self._last = None
