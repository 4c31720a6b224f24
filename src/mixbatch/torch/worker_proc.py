"""The worker side of :mod:`mixbatch.torch.workers`: the shared ring of slots, the plans on the
wire, and the process that reads tokens, runs the transform and derives the fields.

A task's plans cross the pipe as one int64 matrix per run of steps (``_wire``); the worker
(``_worker_main``) reads the tokens (``_read_task``), applies the ``transform`` (its CPU time
reported back: the pacer's heavy test) and derives the fields into its slot of the ring
(``_Ring``, one anonymous shared mapping: no name, so no crash leaves a segment behind), and
sends where in the slot they lie with the small arrays.
"""

from __future__ import annotations

import mmap
import signal
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from mixbatch.errors import MixbatchError
from mixbatch.lock import exit_with_parent
from mixbatch.shape.base import StepPlan
from mixbatch.shape.materialize import PER_POSITION, expand, split_compact

_PLAN_KEYS = ("row", "col", "source", "doc", "start", "end", "eod", "pad")
_ALIGN = 64  # byte alignment of arrays in a slot
_INT64 = np.dtype(np.int64)
_DTYPES: dict[str, np.dtype] = {}
_FIELDS_IN_SLOT = "_fields_in_slot"  # keys of a sent batch: where its arrays lie in the slot
_TOKENS_IN_SLOT = "_tokens_in_slot"
SLOT_BYTES = 1 << 23  # what one task writes into its slot at most (up to 16 steps when small)

#: a reader: the compact batch of a plan, its tokens written into ``out`` when given
Reader = Callable[..., dict[str, Any]]


class _Ring:
    """``slots`` buffers of ``slot_bytes`` in one anonymous shared mapping (module docstring)."""

    def __init__(self, slots: int, slot_bytes: int) -> None:
        self.slots = slots
        self.slot_bytes = -(-slot_bytes // _ALIGN) * _ALIGN
        self.map = mmap.mmap(-1, self.slots * self.slot_bytes)  # MAP_SHARED | MAP_ANONYMOUS
        self.address = np.frombuffer(self.map, np.uint8).__array_interface__["data"][0]

    def view(self, slot: int) -> np.ndarray:
        """A new array over one slot; arrays cut from it keep it (and only it) alive."""
        return np.frombuffer(self.map, np.uint8, self.slot_bytes, slot * self.slot_bytes)

    def where(self, slot: int, x: Any) -> int | None:
        """The offset of array ``x`` in ``slot`` when it lies there whole and contiguous."""
        if not isinstance(x, np.ndarray) or not x.flags.c_contiguous:
            return None
        a = slot * self.slot_bytes
        p = x.__array_interface__["data"][0] - self.address
        return p - a if a <= p and p + x.nbytes <= a + self.slot_bytes else None


class _Arena:
    """A worker's allocator over one slot: arrays one after the other, None when it is full."""

    def __init__(self, view: np.ndarray) -> None:
        self.view, self.used = view, 0
        self.last: int | None = None  # offset of the last array handed out

    def __call__(self, n: int, dtype: np.dtype = _INT64) -> np.ndarray | None:
        nbytes = n * dtype.itemsize
        if self.used + nbytes > self.view.size:
            self.last = None
            return None
        a = self.view[self.used:self.used + nbytes].view(dtype)
        self.last = self.used
        self.used += -(-nbytes // _ALIGN) * _ALIGN
        return a


#: a plan of several consecutive steps' rows, and the rows of each step
Run = tuple[StepPlan, list[int]]
#: the runs of a task's steps ``a .. b - 1`` (one plan per run of one width), made only when
#: the steps go to a worker (the main process reads its own tasks through ``here``)
Runs = Callable[[int, int], list[Run]]
#: one task: the steps' indices, their runs, tags for the caller, and what ``StepReaders``'s
#: ``here`` reads the compact batches from in the main process (a sequence, one item per step)
Task = tuple[list[int], Runs, list[Any], Any]
#: the main process's reader of a task's compact batches (e.g. from the loader's planned blocks)
Here = Callable[[Any], Iterable[dict[str, Any]]]


def stack_runs(plans: list[StepPlan]) -> list[Run]:
    """Consecutive steps' plans as runs: each run of one width stacked into one plan."""
    runs: list[list[StepPlan]] = []
    for p in plans:
        if runs and runs[-1][-1].seq_len == p.seq_len:
            runs[-1].append(p)
        else:
            runs.append([p])
    out = []
    for group in runs:
        if len(group) == 1:
            out.append((group[0], [group[0].rows]))
            continue
        offsets = np.cumsum([0] + [p.rows for p in group[:-1]])
        cat = {k: np.concatenate([getattr(p, k) for p in group]) for k in _PLAN_KEYS[1:]}
        row = np.concatenate([p.row + np.int32(o) for p, o in zip(group, offsets, strict=True)])
        seconds = [p.second for p in group]
        second = None if any(x is None for x in seconds) else np.concatenate(seconds)
        rows = [p.rows for p in group]
        out.append((StepPlan(sum(rows), group[0].seq_len, row, *cat.values(), second=second),
                    rows))
    return out


def _wire(run: Run) -> tuple:
    """A run for the pipe: the segments as one int64 matrix (one array to pickle)."""
    p, rows = run
    seg = np.stack([p.row, p.col, p.source, p.doc, p.start, p.end, p.eod]).astype(np.int64)
    return seg, p.pad, rows, p.seq_len, p.second


def _plan_from_wire(wire: tuple) -> tuple[StepPlan, list[int]]:
    seg, pad, rows, seq_len, second = wire
    plan = StepPlan(sum(rows), seq_len, seg[0].astype(np.int32), seg[1],
                    seg[2].astype(np.int32), seg[3], seg[4], seg[5], seg[6].astype(bool), pad,
                    second=second)
    return plan, rows


def _read_task(reader: Reader, runs: list[Run], arena: _Arena | None, dtype: np.dtype,
               fields: tuple[str, ...] | None) -> list[dict[str, Any]]:
    """The compact batches of a task's steps (one read per run of steps of one width); the
    tokens go into the slot when they are what is sent (no ``fields``)."""
    batches = []
    for plan, rows in runs:
        out = None if arena is None or fields else arena(plan.rows * plan.seq_len, dtype)
        batches += split_compact(reader(plan, out=out), rows)
    return batches


def compute(compacts: Iterable[dict[str, Any]], indices: list[int],
            transform: Callable[[dict[str, Any]], dict[str, Any]] | None,
            fields: tuple[str, ...] | None, arena: _Arena | None = None,
            ring: _Ring | None = None, slot: int = -1,
            spent: list[float] | None = None) -> Iterator[dict[str, Any]]:
    """A task's batches one by one from its compact batches, as a worker sends them: ``step``
    set, the transform applied (its CPU seconds added to ``spent[0]``), the fields derived
    (into the slot where there is one). Lazily: a worker sends the list."""
    for b, index in zip(compacts, indices, strict=True):
        b["step"] = index
        if transform is not None:
            if spent is None:
                b = transform(b)
            else:
                t0 = time.process_time()
                b = transform(b)
                spent[0] += time.process_time() - t0
        if fields:
            b = _derive(b, fields, arena)
        elif arena is not None and ring is not None:
            _tokens_to_wire(b, ring, slot)
        yield b


def _tokens_to_wire(b: dict[str, Any], ring: _Ring, slot: int) -> None:
    """A compact batch whose tokens lie in the slot: sent as ``(offset, shape, dtype)``."""
    x = b["input_ids"]
    at = ring.where(slot, x)
    if at is not None:
        b[_TOKENS_IN_SLOT] = (at, x.shape, x.dtype.str)
        del b["input_ids"]


def _derive(b: dict[str, Any], fields: tuple[str, ...], arena: _Arena | None) -> dict[str, Any]:
    """The fields of a batch; those written into the slot are sent as
    ``(offset, names, R, L)``: one (len(names), R, L) int64 block."""
    if arena is not None:
        arena.last = None  # set again only if expand writes this batch's fields there
    e = expand(b, fields, into=arena)
    if arena is not None and arena.last is not None:
        names = [k for k in PER_POSITION if k in e]
        R, L = e[names[0]].shape
        for k in names:
            del e[k]
        e[_FIELDS_IN_SLOT] = (arena.last, names, R, L)
    return e


def _worker_main(conn: Any, reader: Reader,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None,
                 ring: _Ring | None = None, dtype: np.dtype | None = None,
                 fields: tuple[str, ...] | None = None, parent: int | None = None,
                 others: list[Any] | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C
    for c in others or []:  # the main process's ends, inherited by fork: only it may hold
        c.close()           # them, so that this pipe closes when it dies
    if parent is not None:
        exit_with_parent(parent)  # Linux: the kernel kills it when the main process dies
    dt = np.dtype(np.int64 if dtype is None else dtype)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the main process is gone
            return
        if task is None:
            return
        seq, slot, indices, wires = task
        try:
            arena = None if ring is None or slot < 0 else _Arena(ring.view(slot))
            compacts = _read_task(reader, [_plan_from_wire(w) for w in wires], arena, dt, fields)
            spent = [0.0]  # the transform's CPU seconds: the pacer's heavy test
            batches = list(compute(compacts, indices, transform, fields, arena, ring, slot,
                                   spent))
            conn.send((seq, "ok", batches, spent[0]))
        except Exception as e:  # report it to the main process, which raises it
            text = f"{type(e).__name__}: {e}"
            if not isinstance(e, MixbatchError):
                text += "\n" + traceback.format_exc()
            try:
                conn.send((seq, "error", text, 0.0))
            except (OSError, EOFError):
                return
