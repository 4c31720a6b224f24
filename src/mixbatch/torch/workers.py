"""Worker processes that read tokens for steps the main process plans.

The main process plans the global stream once (the planner is compiled and plans in blocks, so
this is cheap) and sends each step's plan for this rank's rows, a few small arrays, to worker
``i mod n``. A worker reads the tokens (:func:`~mixbatch.shape.materialize.materialize_compact`),
applies the user's ``transform`` if any, and sends the compact batch back. The token arrays
(the bulk of a batch) come back through a ring of buffers in one anonymous shared mapping that
the main process makes before it forks the workers, one slot per task in flight; the pipe only
carries the small sequence tables and where in the slot the tokens lie. The main process copies
the tokens out of the slot when it receives the task (a few kB per step), so a slot is free for
the next task at once and no batch handed out refers to it. An anonymous mapping has no name:
it goes away with the last process that maps it, so no crash can leave a segment behind (in
``/dev/shm`` or elsewhere). Where processes are spawned rather than forked, or a batch does not
fit its slot (a ``transform`` that replaces the tokens), the arrays are pickled through the
pipe instead. Results come back in step order.

Failure: an exception in a worker comes back as a :class:`~mixbatch.errors.MixbatchError` naming
the worker and the step; a worker that dies (killed, out of memory) is noticed within
``poll_interval`` seconds and reported with its exit code; the other workers are then stopped.
A worker whose parent dies sees its pipe close and exits.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing as mp
import os
import signal
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from mixbatch.errors import MixbatchError
from mixbatch.shape.base import StepPlan
from mixbatch.shape.materialize import split_compact

_PLAN_KEYS = ("row", "col", "source", "doc", "start", "end", "eod", "pad")
TASK_BYTES = 1 << 18  # tokens a task reads at most (several steps per message when small)
_ALIGN = 64  # byte alignment of arrays in a slot

#: a reader: the compact batch of a plan, its tokens written into ``out`` when given
Reader = Callable[..., dict[str, Any]]


class _Ring:
    """``slots`` buffers of ``slot_bytes`` in one anonymous shared mapping (module docstring)."""

    def __init__(self, slots: int, slot_bytes: int) -> None:
        self.slots = slots
        self.slot_bytes = -(-slot_bytes // _ALIGN) * _ALIGN
        self.map = mmap.mmap(-1, self.slots * self.slot_bytes)  # MAP_SHARED | MAP_ANONYMOUS
        self.bytes = np.frombuffer(self.map, dtype=np.uint8)

    def array(self, slot: int, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        a = slot * self.slot_bytes + offset
        n = int(np.prod(shape)) * dtype.itemsize
        return self.bytes[a:a + n].view(dtype).reshape(shape)

    def where(self, slot: int, x: Any) -> int | None:
        """The offset of array ``x`` in ``slot`` when it lies there whole and contiguous."""
        if not isinstance(x, np.ndarray) or not x.flags.c_contiguous:
            return None
        a = slot * self.slot_bytes
        p = x.__array_interface__["data"][0] - self.bytes.__array_interface__["data"][0]
        return p - a if a <= p and p + x.nbytes <= a + self.slot_bytes else None


class _InRing:
    """Where a worker left an array in its task's slot (sent instead of the array)."""

    __slots__ = ("dtype", "offset", "shape")

    def __init__(self, offset: int, shape: tuple[int, ...], dtype: str) -> None:
        self.offset, self.shape, self.dtype = offset, shape, dtype

    def __reduce__(self) -> tuple:
        return (_InRing, (self.offset, self.shape, self.dtype))


def _stack(plans: list[StepPlan]) -> dict[str, Any]:
    """Several steps' plans (equal widths) as one plan of their rows, for the wire."""
    if len({p.seq_len for p in plans}) > 1:
        raise ValueError("plans of one task must have one width")
    offsets = np.cumsum([0] + [p.rows for p in plans[:-1]])
    d: dict[str, Any] = {k: np.concatenate([getattr(p, k) for p in plans]) for k in _PLAN_KEYS}
    d["row"] = np.concatenate([p.row + np.int32(o) for p, o in zip(plans, offsets, strict=True)])
    d["rows"] = [p.rows for p in plans]
    d["seq_len"] = plans[0].seq_len
    seconds = [p.second for p in plans]
    d["second"] = None if any(x is None for x in seconds) else np.concatenate(seconds)
    return d


def _plan_from_wire(d: dict[str, Any]) -> StepPlan:
    return StepPlan(int(sum(d["rows"])), d["seq_len"], *(d[k] for k in _PLAN_KEYS),
                    second=d["second"])


def _read_task(reader: Reader, wires: list[dict[str, Any]], ring: _Ring | None, slot: int,
               dtype: np.dtype) -> list[dict[str, Any]]:
    """The compact batches of a task's steps, one read per run of steps of one width; the
    tokens go into the task's slot while they fit."""
    batches = []
    used = 0
    for wire in wires:
        plan = _plan_from_wire(wire)
        n = plan.rows * plan.seq_len
        out = None
        if ring is not None and used + n * dtype.itemsize <= ring.slot_bytes:
            out = ring.array(slot, used, (n,), dtype)
            used += -(-n * dtype.itemsize // _ALIGN) * _ALIGN
        batches += split_compact(reader(plan, out=out), wire["rows"])
    return batches


def _to_wire(batches: list[dict[str, Any]], ring: _Ring | None, slot: int) -> list[dict[str, Any]]:
    """Token arrays that lie in the slot are sent as their place in it."""
    if ring is None:
        return batches
    for b in batches:
        x = b.get("input_ids")
        at = ring.where(slot, x)
        if at is not None:
            b["input_ids"] = _InRing(at, x.shape, x.dtype.str)
    return batches


def _worker_main(conn: Any, reader: Reader,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None,
                 ring: _Ring | None = None, dtype: np.dtype | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C
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
            batches = _read_task(reader, wires, ring if slot >= 0 else None, slot, dt)
            for b, index in zip(batches, indices, strict=True):
                b["step"] = index
            if transform is not None:
                batches = [transform(b) for b in batches]
            conn.send((seq, "ok", _to_wire(batches, ring if slot >= 0 else None, slot)))
        except Exception as e:  # report it to the main process, which raises it
            text = f"{type(e).__name__}: {e}"
            if not isinstance(e, MixbatchError):
                text += "\n" + traceback.format_exc()
            try:
                conn.send((seq, "error", text))
            except (OSError, EOFError):
                return


class StepReaders:
    """``n`` processes that turn step plans into compact batches, in order (module doc)."""

    def __init__(self, n: int, reader: Reader,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 prefetch: int = 2, poll_interval: float = 0.5, slot_bytes: int = 0,
                 dtype: np.dtype | None = None) -> None:
        fork = "fork" in mp.get_all_start_methods()
        ctx = mp.get_context("fork" if fork else "spawn")
        self.n = n
        self.prefetch = max(1, prefetch)
        self.poll_interval = poll_interval
        self.conns: list[Any] = []
        self.procs: list[Any] = []
        # a forked worker shares the ring; a spawned one could not (it gets pickled arrays)
        self.ring = _Ring(n * self.prefetch, slot_bytes) if fork and slot_bytes > 0 else None
        try:
            for _ in range(n):
                parent, child = ctx.Pipe(duplex=True)
                p = ctx.Process(target=_worker_main,
                                args=(child, reader, transform, self.ring, dtype), daemon=True)
                p.start()
                child.close()
                self.conns.append(parent)
                self.procs.append(p)
        except BaseException:
            self.close()
            raise

    def map(self, steps: Iterator[tuple[int, StepPlan, Any]], per_task: int = 1
            ) -> Iterator[tuple[dict[str, Any], Any]]:
        """For each ``(index, plan, tag)`` in order, yield ``(compact batch, tag)``; a task
        carries ``per_task`` consecutive steps (fewer messages), each run of steps of one width
        stacked into one plan (one read)."""
        in_flight: deque[tuple[int, list[Any]]] = deque()
        seq = 0
        done = False
        while True:
            while not done and len(in_flight) < self.n * self.prefetch:
                group: list[tuple[int, StepPlan, Any]] = []
                while len(group) < per_task:
                    item = next(steps, None)
                    if item is None:
                        done = True
                        break
                    group.append(item)
                if not group:
                    break
                runs: list[list[StepPlan]] = []
                for g in group:
                    if runs and runs[-1][-1].seq_len == g[1].seq_len:
                        runs[-1].append(g[1])
                    else:
                        runs.append([g[1]])
                w = seq % self.n
                # tasks come back in order and at most slots are in flight: seq's slot is free
                slot = -1 if self.ring is None else seq % self.ring.slots
                try:
                    self.conns[w].send((seq, slot, [g[0] for g in group],
                                        [_stack(r) for r in runs]))
                except OSError:  # a broken pipe: the worker is gone
                    self.procs[w].join(timeout=self.poll_interval)
                    raise self._died(w) from None
                in_flight.append((seq, [g[2] for g in group]))
                seq += 1
            if not in_flight:
                return
            want, tags = in_flight.popleft()
            yield from zip(self._receive(want), tags, strict=True)

    def _receive(self, seq: int) -> list[dict[str, Any]]:
        w = seq % self.n
        conn, proc = self.conns[w], self.procs[w]
        while not conn.poll(self.poll_interval):
            if not proc.is_alive():
                raise self._died(w)
        try:
            got, status, payload = conn.recv()
        except (EOFError, OSError):
            proc.join(timeout=self.poll_interval)
            raise self._died(w) from None
        if got != seq:
            raise MixbatchError(f"loader worker {w}: expected step {seq}, got {got}")
        if status != "ok":
            raise MixbatchError(f"loader worker {w} failed: {payload}")
        ring = self.ring
        if ring is not None:  # copy the tokens out: the slot is free for the next task
            slot = seq % ring.slots
            for b in payload:
                x = b.get("input_ids")
                if isinstance(x, _InRing):
                    b["input_ids"] = ring.array(slot, x.offset, x.shape, np.dtype(x.dtype)).copy()
        return payload

    def _died(self, w: int) -> MixbatchError:
        proc = self.procs[w]
        return MixbatchError(f"loader worker {w} (pid {proc.pid}) died with exit code "
                             f"{proc.exitcode} while reading a step (killed, or out of memory?); "
                             "the other workers were stopped")

    def close(self) -> None:
        for c in self.conns:
            with contextlib.suppress(OSError, ValueError):
                c.send(None)
        for p in self.procs:
            p.join(timeout=2)
            if p.is_alive():
                p.terminate()
                p.join(timeout=2)
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
                p.join()
        for c in self.conns:
            c.close()
        self.conns, self.procs = [], []
        self.ring = None  # unmapped when the last array made from it is gone

    def pids(self) -> list[int]:
        return [int(p.pid) for p in self.procs]

