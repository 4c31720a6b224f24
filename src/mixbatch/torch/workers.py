"""Worker processes that read tokens and derive the batch fields for steps the main process plans.

The main process plans the global stream once (the planner is compiled and plans in blocks, so
this is cheap) and sends the plans of a few consecutive steps (this rank's rows), a few small
arrays, to worker ``i mod n``. A worker reads the tokens
(:func:`~mixbatch.shape.materialize.materialize_compact`), applies the user's ``transform`` if
any, and derives the fields asked for (:func:`~mixbatch.shape.materialize.expand`), so that the
main process only plans and hands batches out.

**Shared slots.** The per-position fields (the bulk of a batch: (R, L) int64 arrays) are written
into a ring of slots in one anonymous shared mapping that the main process makes before it forks
the workers; the pipe carries only the small arrays (``cu_seqlens``) and where in the slot the
rest lie. The main process hands out tensors that view the slot, without a copy. A slot is given
a new task only when no array made from it is alive any more (the arrays of one task all view
one NumPy array over the slot, which the main process follows by a weak reference), so a batch
a trainer keeps is never overwritten; when every slot is still held, the task's arrays come
through the pipe instead. An anonymous mapping has no name: it goes away with the last process
that maps it, so no crash can leave a segment behind (in ``/dev/shm`` or elsewhere). Where
processes are spawned rather than forked, the arrays are pickled through the pipe. With
``fields=None`` (batches derived on a device) workers send the compact batch, whose tokens the
main process copies out of the slot. Results come back in step order.

**Pacing.** With little work per batch, a batch handed to a worker costs more CPU than one
the main process reads itself, and on busy CPUs workers then make the loader slower. The main
process therefore reads tasks itself (``StepReaders._inline``, lazily: each batch's fields as it
hands the batch out) while :class:`~mixbatch.torch.pacing.Pacer` measures that faster, and hands
them to the workers while they are (much work per batch, a free core); the workers are started
when the first task is sent to them (forked then, from the process as it is at that point). A
task's plans are cut out of the planned block only when it is sent (the main process reads its
own tasks through the loader's blocks). When the pacer finds heavy work (a ``transform`` of more
than 1 ms a batch) in the first batches, the rest of the task the main process is reading and
every held task go to the workers at once, cut into tasks of about 10 ms of work (an even spread
to the last batch); where the workers leave a core over (fewer workers than cores), one task
more is kept for the main process, which computes its batches while it would otherwise wait for
a worker's and hands them out in their turn. ``adaptive=False`` starts the workers at once and
sends them every task.

Failure: an exception in a worker comes back as a :class:`~mixbatch.errors.MixbatchError` naming
the worker and the step; a worker that dies (killed, out of memory) is noticed within
``poll_interval`` seconds and reported with its exit code; the other workers are then stopped.
A worker whose parent dies sees its pipe close and exits (on Linux the kernel also kills it).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import signal
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from mixbatch.errors import MixbatchError
from mixbatch.torch.pacing import Pacer, RunQueueClock
from mixbatch.torch.worker_proc import (
    _DTYPES,
    _FIELDS_IN_SLOT,
    _TOKENS_IN_SLOT,
    SLOT_BYTES,
    Here,
    Reader,
    Run,
    Runs,
    Task,
    _derive,
    _read_task,
    _Ring,
    _wire,
    _worker_main,
    stack_runs,
)

__all__ = ["SLOT_BYTES", "Here", "Reader", "Run", "Runs", "StepReaders", "Task", "stack_runs"]


class _Entry:
    """A planned task: where it is read (``worker`` -1: here, when due) and its slot; ``first``:
    its first step's place in the task it was cut from (for ``runs``)."""

    __slots__ = ("counts", "done", "first", "gen", "here", "indices", "runs", "seq", "slot", "tags",
                 "worker")

    def __init__(self, indices: list[int], runs: Runs, tags: list[Any], here: Any = None,
                 first: int = 0) -> None:
        self.indices, self.runs, self.tags, self.here = indices, runs, tags, here
        self.first = first
        self.seq, self.worker, self.slot, self.counts = -1, -1, -1, False
        # the main process's own task with heavy work: its batches computed ahead (while it
        # waited for a worker), and the reading of the rest
        self.done: list[tuple[dict[str, Any], Any]] = []
        self.gen: Iterator[tuple[dict[str, Any], Any]] | None = None

    def wires(self) -> list[tuple]:
        return [_wire(r) for r in self.runs(self.first, self.first + len(self.indices))]

    def cut(self, size: int) -> list[_Entry]:
        """The task as tasks of at most ``size`` steps, in order."""
        if len(self.indices) <= size:
            return [self]
        return [_Entry(self.indices[a:a + size], self.runs, self.tags[a:a + size],
                       None if self.here is None else self.here[a:a + size], self.first + a)
                for a in range(0, len(self.indices), size)]

    def rest(self, k: int) -> _Entry:
        """Its steps from the ``k``-th on."""
        return _Entry(self.indices[k:], self.runs, self.tags[k:],
                      None if self.here is None else self.here[k:], self.first + k)


class StepReaders:
    """``n`` processes that turn step plans into batches, in order (module docstring).

    ``fields``: the fields the workers derive (None: they send compact batches);
    ``slot_bytes``: the size of a shared slot (0: everything through the pipe);
    ``adaptive``: let the main process read tasks itself where that measures faster
    (:mod:`mixbatch.torch.pacing`); ``here``: how it reads a task's compact batches then (from a
    task's last element; default: ``reader`` over its runs); ``task_steps``: the most steps a
    task holds (:meth:`task_size` may ask for fewer)."""

    def __init__(self, n: int, reader: Reader,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 prefetch: int = 2, poll_interval: float = 0.5, slot_bytes: int = 0,
                 dtype: np.dtype | None = None, fields: tuple[str, ...] | None = None,
                 adaptive: bool = True, here: Here | None = None, task_steps: int = 16) -> None:
        fork = "fork" in mp.get_all_start_methods()
        ctx = mp.get_context("fork" if fork else "spawn")
        self.n = n
        self.prefetch = max(1, prefetch)
        self.poll_interval = poll_interval
        self.reader, self.transform, self.here = reader, transform, here
        self.dtype = np.dtype(np.int64 if dtype is None else dtype)
        self.pacer = Pacer(n * self.prefetch, enabled=adaptive)
        self.most = max(1, task_steps)  # steps per task at most (what a slot holds)
        self.inline = 0  # tasks the main process read itself
        self.sent = 0  # tasks sent to the workers
        self.in_flight = 0  # tasks sent and not yet received
        self.mine: _Entry | None = None  # a held task the main process reads while it waits
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        # with heavy work the main process reads a task of its own while it would wait for a
        # worker, where a core is left for it (fewer workers than cores)
        self.can_help = adaptive and n < cores
        self.helped = 0  # batches the main process computed while it waited
        self.conns: list[Any] = []
        self.procs: list[Any] = []
        # a forked worker shares the ring; a spawned one could not (it gets pickled arrays).
        # Slots: one per task in flight, two more for the batches the trainer still holds
        self.ring = _Ring(n * self.prefetch + 2, slot_bytes) if fork and slot_bytes > 0 \
            else None
        # per slot, a weak reference to the array the handed-out batches view: it dies with
        # the last of them
        self.held: list[weakref.ref | None] = [None] * (0 if self.ring is None
                                                        else self.ring.slots)
        self.busy: set[int] = set()  # slots of tasks in flight
        self.piped = 0  # tasks sent without a slot (every slot busy or held)
        self.fields = fields
        self._spawn = (ctx, fork, dtype)
        self.started = False
        if not adaptive:
            self.start()

    def task_size(self) -> int:
        """Steps for the next task planned (fewer than ``task_steps`` with heavy work)."""
        return self.pacer.task_steps(self.most)

    def start(self) -> None:
        """Start the worker processes (with pacing: when the first task is sent to them; idle
        workers made the main process wait longer for a CPU on a busy box)."""
        if self.started:
            return
        self.started = True
        ctx, fork, dtype = self._spawn
        try:
            for _ in range(self.n):
                parent, child = ctx.Pipe(duplex=True)
                others = [*self.conns, parent] if fork else None
                p = ctx.Process(target=_worker_main,
                                args=(child, self.reader, self.transform, self.ring, dtype,
                                      self.fields, os.getpid(), others), daemon=True)
                p.start()
                child.close()
                self.conns.append(parent)
                self.procs.append(p)
        except BaseException:
            self.close()
            raise

    def map(self, tasks: Iterator[Task]) -> Iterator[tuple[dict[str, Any], Any]]:
        """For each task ``(indices, runs, tags, here)`` in order, yield ``(batch, tag)`` per
        step. A task goes to worker ``k mod n`` (``k`` counting the tasks sent) as it is
        planned, or, while the pacer says so, waits here and is read by the main process when
        it is due. With heavy work and a core left over, one task more than the workers hold is
        kept for the main process, which reads its batches while it would otherwise wait for a
        worker's (:meth:`_help`), and hands them out in their turn."""
        pending: deque[_Entry] = deque()
        depth = self.n * self.prefetch
        pacer = self.pacer
        pacer.clock = clock = RunQueueClock()
        sampler = RunQueueClock() if self.transform is not None and pacer.enabled else None
        self.mine = None
        last = time.perf_counter()
        try:
            while True:
                helping = self.can_help and not pacer.mode and pacer.heavy_work
                while len(pending) < depth + helping:
                    task = next(tasks, None)
                    if task is None:
                        break
                    pending.append(_Entry(*task))
                if not pacer.mode:
                    self._send_held(pending, depth, late=False, helping=helping)
                if not pending:
                    return
                e = pending.popleft()
                if e.worker < 0:
                    counts = self.in_flight == 0  # no worker computed beside it
                    if e.gen is None:
                        e.gen = self._inline(e, pending, sampler, depth)
                    if e is self.mine:
                        self.mine = None
                    yield from e.done
                    e.done = []
                    yield from e.gen
                else:
                    counts = e.counts
                    if self.mine is not None:
                        self._help(self.mine, e, sampler, depth)
                    got = self._receive(e.seq, e.worker, e.slot)
                    self.in_flight -= 1
                    self.busy.discard(e.slot)
                    yield from zip(got, e.tags, strict=True)
                    del got  # only the batches handed out may keep the slot now
                now = time.perf_counter()
                if pacer.measured(e.worker < 0, now - last, len(e.tags), counts):
                    self._send_held(pending, depth)
                last = now
        finally:
            clock.close()
            if sampler is not None:
                sampler.close()

    def _help(self, mine: _Entry, due: _Entry, sampler: RunQueueClock | None,
              depth: int) -> None:
        """While the worker of the task ``due`` has not answered, compute batches of the main
        process's own task (handed out in its turn, after ``due``)."""
        conn = self.conns[due.worker]
        while not conn.poll(0):
            if mine.gen is None:
                mine.gen = self._inline(mine, None, sampler, depth)
            item = next(mine.gen, None)
            if item is None:
                return
            mine.done.append(item)
            self.helped += 1

    def _inline(self, e: _Entry, pending: deque[_Entry] | None, sampler: RunQueueClock | None,
                depth: int) -> Iterator[tuple[dict[str, Any], Any]]:
        """Read a task here, each batch's fields derived as it is handed out (the memory of
        the batch before is then free again, and warm). While the pacer needs samples (and
        then once per task) the transform is timed; when that turns the mode to the workers,
        the task's remaining steps go to them at once (``pending``: the tasks after it; None
        for a task read ahead, :meth:`_help`, which stays the main process's)."""
        self._check_alive()
        self.inline += 1
        compacts = iter(self.here(e.here) if self.here is not None else _read_task(
            self.reader, e.runs(e.first, e.first + len(e.indices)), None, self.dtype,
            self.fields))
        transform, fields, pacer = self.transform, self.fields, self.pacer
        for k, index in enumerate(e.indices):
            b = next(compacts)
            b["step"] = index
            heavy = False
            if transform is not None:
                if sampler is None or not (k == 0 or pacer.sampling):
                    b = transform(b)
                else:
                    t0, w0 = time.process_time(), time.perf_counter()
                    sampler.waited()  # counts from here
                    b = transform(b)
                    heavy = pacer.computed(time.process_time() - t0, 1, sampler.waited(),
                                           time.perf_counter() - w0)
            if fields:
                b = _derive(b, fields, None)
            if heavy and pending is not None and k + 1 < len(e.indices):
                pending.appendleft(e.rest(k + 1))  # the workers take the rest of this task
                e.tags = e.tags[:k + 1]
                self._send_held(pending, depth)
                yield b, e.tags[k]
                return
            if heavy and pending is not None:
                self._send_held(pending, depth)
            yield b, e.tags[k]

    def _send(self, e: _Entry, depth: int, late: bool) -> None:
        """Send a task to the next worker; it counts for the pacer when the pipeline ahead of
        it was full of worker tasks and it was not ``late`` (held while the main process read,
        sent when the mode changed)."""
        self.start()
        e.counts = not late and self.in_flight == depth - 1
        w = self.sent % self.n
        slot = self._free_slot()
        try:
            self.conns[w].send((self.sent, slot, e.indices, e.wires()))
        except OSError:  # a broken pipe: the worker is gone
            self.procs[w].join(timeout=self.poll_interval)
            raise self._died(w) from None
        if slot >= 0:
            self.busy.add(slot)
        e.seq, e.worker, e.slot = self.sent, w, slot
        self.sent += 1
        self.in_flight += 1

    def _send_held(self, pending: deque[_Entry], depth: int, late: bool = True,
                   helping: bool = False) -> None:
        """The tasks waiting for the main process go to the workers (the mode is theirs), up to
        ``depth`` tasks in flight; with heavy work cut to the pacer's task size first.
        ``helping``: the first task left over is kept for the main process (:meth:`_help`)."""
        size = self.pacer.task_steps(self.most)
        def open_(x: _Entry) -> bool:  # held, not begun here, not the main process's own
            return x.worker < 0 and x.gen is None and x is not self.mine

        if size < self.most and any(len(x.indices) > size for x in pending if open_(x)):
            cut = [y for x in pending for y in (x.cut(size) if open_(x) else [x])]
            pending.clear()
            pending.extend(cut)
        for e in pending:
            if not open_(e):
                continue  # sent, begun here, or kept for the main process
            if self.in_flight < depth:
                self._send(e, depth, late)
            elif helping and self.mine is None:
                self.mine = e
            else:
                return

    def _check_alive(self) -> None:
        """A worker that died while the main process reads (nothing to receive from it)."""
        for w, p in enumerate(self.procs):
            if not p.is_alive():
                raise self._died(w)

    def _free_slot(self) -> int:
        """A slot no task in flight writes to and no batch handed out views, or -1."""
        if self.ring is None:
            return -1
        for s in range(self.ring.slots):
            held = self.held[s]
            if s not in self.busy and (held is None or held() is None):
                self.held[s] = None
                return s
        self.piped += 1
        return -1

    def _receive(self, seq: int, w: int, slot: int) -> list[dict[str, Any]]:
        conn, proc = self.conns[w], self.procs[w]
        while not conn.poll(self.poll_interval):
            if not proc.is_alive():
                raise self._died(w)
        try:
            got, status, payload, compute_seconds = conn.recv()
        except (EOFError, OSError):
            proc.join(timeout=self.poll_interval)
            raise self._died(w) from None
        if got != seq:
            raise MixbatchError(f"loader worker {w}: expected step {seq}, got {got}")
        if status != "ok":
            raise MixbatchError(f"loader worker {w} failed: {payload}")
        if self.transform is not None:
            self.pacer.computed(compute_seconds, len(payload))
        if slot < 0:
            return payload
        assert self.ring is not None
        view = self.ring.view(slot)
        for b in payload:
            placed = b.pop(_FIELDS_IN_SLOT, None)
            if placed is not None:  # viewed, not copied: the slot waits until they are gone
                at, names, R, L = placed
                block = view[at:at + len(names) * R * L * 8].view(np.int64)
                block = block.reshape(len(names), R, L)
                for i, k in enumerate(names):
                    b[k] = block[i]
            tokens = b.pop(_TOKENS_IN_SLOT, None)
            if tokens is not None:  # compact tokens (for a device): copied out
                at, shape, dtype = tokens
                dt = _DTYPES.get(dtype) or _DTYPES.setdefault(dtype, np.dtype(dtype))
                b["input_ids"] = view[at:at + math.prod(shape) * dt.itemsize].view(dt) \
                    .reshape(shape).copy()
        if self.fields:
            self.held[slot] = weakref.ref(view)
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
        self.held = []

    def pids(self) -> list[int]:
        return [int(p.pid) for p in self.procs]

