"""Worker processes that read tokens for steps the main process plans.

The main process plans the global stream once (the planner is compiled and plans in blocks, so
this is cheap) and sends each step's plan for this rank's rows, a few small arrays, to worker
``i mod n``. A worker reads the tokens (:func:`~mixbatch.shape.materialize.materialize_compact`),
applies the user's ``transform`` if any, and sends the compact batch back through its pipe: the
arrays are pickled by value (tens of kB for a uint16 batch), so no shared-memory segment exists
that a crash could leave behind. Results come back in step order.

Failure: an exception in a worker comes back as a :class:`~mixbatch.errors.MixbatchError` naming
the worker and the step; a worker that dies (killed, out of memory) is noticed within
``poll_interval`` seconds and reported with its exit code; the other workers are then stopped.
A worker whose parent dies sees its pipe close and exits.
"""

from __future__ import annotations

import contextlib
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


def _worker_main(conn: Any, reader: Callable[[StepPlan], dict[str, Any]],
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the main process is gone
            return
        if task is None:
            return
        seq, indices, wires = task
        try:
            batches = []  # one read per run of steps of one width
            for wire in wires:
                batches += split_compact(reader(_plan_from_wire(wire)), wire["rows"])
            for b, index in zip(batches, indices, strict=True):
                b["step"] = index
            if transform is not None:
                batches = [transform(b) for b in batches]
            conn.send((seq, "ok", batches))
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

    def __init__(self, n: int, reader: Callable[[StepPlan], dict[str, Any]],
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 prefetch: int = 2, poll_interval: float = 0.5) -> None:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self.n = n
        self.prefetch = max(1, prefetch)
        self.poll_interval = poll_interval
        self.conns: list[Any] = []
        self.procs: list[Any] = []
        try:
            for _ in range(n):
                parent, child = ctx.Pipe(duplex=True)
                p = ctx.Process(target=_worker_main, args=(child, reader, transform), daemon=True)
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
                try:
                    self.conns[w].send((seq, [g[0] for g in group], [_stack(r) for r in runs]))
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

    def pids(self) -> list[int]:
        return [int(p.pid) for p in self.procs]

