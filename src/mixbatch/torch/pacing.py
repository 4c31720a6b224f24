"""Who reads a task: the worker processes or the main process itself, chosen by measuring both.

Workers add speed only where they get CPU time that the main process could not have used: a
core free for them, or much work per batch (a ``transform``). Where the work per batch is small
and the CPUs are busy (or where the processes of one session share one CPU share, as under
Linux's autogroup scheduling), a batch handed to a worker costs more CPU than one the main
process reads itself (messages, waking the other process, writing the fields to shared memory
that no cache holds: about 200 µs against 130 µs per 8x2048 batch on the 2-core test box), and
workers make the loader slower. :class:`Pacer` says, task by task, whether the main process
hands the next task to the workers or reads it itself when it is due (``inline``). The batches,
their order and the state after each are the same either way; only which process computes
them changes.

**Heavy work.** Where the user's ``transform`` took more than ``heavy`` seconds of CPU per batch
in each of the last ``SAMPLES`` samples (timed by the process that ran it: every batch of the
first tasks, then one per task; only the transform is timed, so that one-time costs of a read,
e.g. the first read of a store block, are no sample), the hand-off is a small part of the work:
every task goes to the workers, the task the main process is reading included (its remaining
steps are handed over at once), unless the main process waited for a CPU for more than
``BUSY_SHARE`` of those batches' wall time (no core is free for a worker: the main process
keeps reading, and checks again at the next sample). Tasks then hold about ``TASK_SECONDS`` of
work (:meth:`Pacer.task_steps`), so that the work is spread evenly over the workers to the last
batch.

**Light work: measured.** Otherwise the loader runs in periods (at least ``2 · depth`` tasks
and ``period_seconds`` of wall time, so that the load's noise averages out), each in one mode,
and picks each period's mode from the wall time per batch it measured in both: for each task,
the time from the hand-out of the task before it to the hand-out of its own last batch
(planning, reading or waiting, and whatever the trainer did with the batches in between). A
task counts only where the pipeline around it ran in its own mode: a worker task sent while
only worker tasks were ahead of it in a full pipeline (not one computed while the main process
read the tasks before it), an inline task read while no worker task was in flight. The main
process reads first (the first batch waits for no worker), and the mode that measured slower
is probed for one period after ``gap`` periods of the other: 4 at first, doubling (up to 32)
each time the probe loses, back to 2 when it wins. Where the main process waited for a CPU
for more than ``BUSY_SHARE`` of the period before (its run-queue wait, which Linux reports, read
once per period), no core is free for a worker: the probe of the workers is left out (and the
gap doubles), since it could only lose. The bookkeeping per task is a few additions; the clocks
are read once per task (wall) and once per period (run-queue wait).
"""

from __future__ import annotations

import os
from collections import deque

HEAVY_SECONDS = 1e-3  # transform CPU per batch above which workers always pay for themselves
SAMPLES = 2  # transform samples the heavy test looks at (one slow first call is no sign)
TASK_SECONDS = 0.01  # heavy work: the work a task holds (even spread over the workers)
BUSY_SHARE = 0.25  # waiting this share of the wall time for a CPU: no core is free
PERIOD_SECONDS = 0.2  # a period lasts at least this long (the load's noise averages out)
MAX_GAP = 32


class Pacer:
    """The mode of the next tasks (``inline``: the main process reads them).

    ``depth``: tasks in flight on the workers; ``enabled=False``: every task goes to them."""

    def __init__(self, depth: int, enabled: bool = True, heavy: float = HEAVY_SECONDS,
                 period_seconds: float = PERIOD_SECONDS, clock: RunQueueClock | None = None
                 ) -> None:
        self.depth = max(1, depth)
        self.clock = clock  # the main process's run-queue wait, read once per period
        self.enabled = enabled
        self.heavy = heavy
        self.period = 2 * self.depth  # tasks per period, at least
        self.period_seconds = period_seconds
        self.elapsed = 0.0  # wall seconds of the current period
        self.in_period = 0  # tasks of the current period
        self.mode = enabled  # the current mode (True: inline)
        self.samples: deque[float] = deque(maxlen=SAMPLES)  # transform seconds per batch
        # (run-queue wait, wall) of the batches timed here: whether a core was free then
        self.cpu_waits: deque[tuple[float, float]] = deque(maxlen=SAMPLES)
        self.gap = 4  # periods of the best mode before the other is probed
        self.since = 0  # periods since the last probe
        self.probing = False
        self.done = 0  # tasks handed out
        # per mode: seconds and batches of the counted tasks of its latest period
        self.sums: dict[bool, list[float]] = {False: [0.0, 0], True: [0.0, 0]}
        self.fresh: dict[bool, bool] = {False: True, True: True}  # next count starts a period
        self.figure: dict[bool, float | None] = {False: None, True: None}
        self.waited = 0.0  # seconds the main process waited for a CPU in this period
        self.skipped = 0  # probes of the workers left out: no core was free

    def waited_for_cpu(self, seconds: float) -> None:
        """Seconds the main process was ready to run but waited for a CPU (run-queue wait,
        where the platform tells it: :class:`RunQueueClock`)."""
        self.waited += seconds

    @property
    def heavy_work(self) -> bool:
        """The last ``SAMPLES`` transform times per batch were all above ``heavy`` (a one-time
        cost, e.g. a first call that loads something, makes a single sample heavy)."""
        return len(self.samples) == SAMPLES and min(self.samples) > self.heavy

    def task_steps(self, most: int) -> int:
        """Steps per task: ``most``, or with heavy work as many as hold about ``TASK_SECONDS``
        of it (at least one)."""
        if not self.heavy_work:
            return most
        per_batch = sum(self.samples) / len(self.samples)
        return max(1, min(most, round(TASK_SECONDS / per_batch)))

    @property
    def sampling(self) -> bool:
        """Whether every batch should be timed (too few samples yet), not one per task."""
        return len(self.samples) < SAMPLES

    def computed(self, seconds: float, batches: int, waited: float = 0.0,
                 wall: float = 0.0) -> bool:
        """Transform seconds of ``batches`` batches (a worker's task, or one batch here, with the
        main process's run-queue wait and wall time over it); True when the mode turned to the
        workers because of it: heavy work, and no sign that every core is busy (then workers
        cannot add speed, and the main process keeps reading)."""
        self.samples.append(seconds / max(batches, 1))
        if wall > 0:
            self.cpu_waits.append((waited, wall))
        busy = sum(w for w, _ in self.cpu_waits) > BUSY_SHARE * sum(t for _, t in self.cpu_waits)
        if self.mode and self.heavy_work and not busy:
            self.mode = False
            return True
        return False

    def measured(self, inline: bool, seconds: float, batches: int, counts: bool) -> bool:
        """A task was handed out (its mode, wall time, batches, and whether the pipeline ran
        in its mode); True when the mode changed to the workers (send the held tasks)."""
        if counts:
            sums = self.sums[inline]
            if self.fresh[inline]:
                sums[:] = [0.0, 0]
                self.fresh[inline] = False
            sums[0] += seconds
            sums[1] += batches
            self.figure[inline] = sums[0] / sums[1]
        self.done += 1
        self.in_period += 1
        self.elapsed += seconds
        if self.in_period < self.period or self.elapsed < self.period_seconds \
                or not self.enabled or self.heavy_work:
            return False
        if self.clock is not None:
            self.waited += self.clock.waited()
        busy = self.waited > BUSY_SHARE * self.elapsed
        self.in_period, self.elapsed, self.waited = 0, 0.0, 0.0
        before = self.mode
        self.mode = self._next(busy)
        self.fresh[self.mode] = True
        return before and not self.mode

    def _next(self, busy: bool = False) -> bool:
        """The next period's mode (module docstring); ``busy``: the main process waited for a
        CPU in the period that ended (the workers are not probed then)."""
        w, i = self.figure[False], self.figure[True]
        if w is None or i is None:  # one mode not measured yet: probe it after the gap
            return self._after(self.mode if w is None and i is None else i is not None, busy)
        best = i < w
        if self.probing:  # judge the probe that just ended
            self.gap = 2 if self.mode == best else min(2 * self.gap, MAX_GAP)
            self.probing, self.since = False, 0
        return self._after(best, busy)

    def _after(self, best: bool, busy: bool) -> bool:
        """One more period of ``best``, or a probe of the other mode once the gap is over."""
        self.since += 1
        if self.since <= self.gap:
            return best
        if busy and best:  # no core free: a probe of the workers would only lose
            self.skipped += 1
            self.since, self.gap = 0, min(2 * self.gap, MAX_GAP)
            return best
        self.since, self.probing = 0, True
        return not best


class RunQueueClock:
    """Seconds this thread has waited for a CPU while ready to run, from
    ``/proc/thread-self/schedstat`` (Linux; elsewhere it reads 0 and the pacer probes as
    usual)."""

    def __init__(self) -> None:
        try:
            self.fd: int | None = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self.fd = None
        self.last = self._read()

    def _read(self) -> float:
        if self.fd is None:
            return 0.0
        try:
            return int(os.pread(self.fd, 64, 0).split()[1]) * 1e-9
        except (OSError, IndexError, ValueError):
            return 0.0

    def waited(self) -> float:
        """Seconds waited since the last call."""
        now = self._read()
        out, self.last = max(now - self.last, 0.0), now
        return out

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
