"""Progress on stderr (rich): units done with documents/s and tokens/s (:class:`RateProgress`),
runs done (:class:`RunProgress`), training steps with tokens, loss, tokens/s and ETA
(:class:`StepProgress`)."""

from __future__ import annotations

import datetime
import logging
import sys
import time
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.2f}"


class _Bar:
    """A rich bar on a terminal; elsewhere (a log file, a pipe) the same facts as a plain line
    on stderr at most every ``every`` seconds, and the last one, since a bar cannot redraw
    there."""

    def __init__(self, enabled: bool, every: float, *columns: Any) -> None:
        self.console = Console(stderr=True, highlight=False)
        self.enabled = enabled
        self.plain = enabled and not self.console.is_terminal
        self.every = every
        self._shown = -float("inf")
        self.bar = Progress(*columns, console=self.console, disable=not enabled or self.plain,
                            transient=False)

    def _plain_line(self, task_id: Any, label: str, extra: str, force: bool = False) -> None:
        now = time.perf_counter()
        if not self.plain or (now - self._shown < self.every and not force):
            return
        self._shown = now
        task = self.bar.tasks[task_id]
        done, total, elapsed = task.completed, task.total, task.elapsed or 0.0
        # the mean rate so far: runs of minutes leave rich's 30 s speed window empty
        left = elapsed * (total - done) / done if done and total is not None else None
        parts = [f"{label}: {done:,.0f}/{'?' if total is None else f'{total:,.0f}'}",
                 f"elapsed {_eta(elapsed)}", "ETA " + ("?" if left is None else _eta(left))]
        print(" · ".join([*parts, extra] if extra else parts), file=sys.stderr, flush=True)


class RateProgress(_Bar):
    """Counts finished work items and the documents and tokens they produced."""

    def __init__(self, description: str, total: int | None, enabled: bool = True) -> None:
        super().__init__(enabled, 10.0, TextColumn("[bold]{task.description}"), BarColumn(),
                         MofNCompleteColumn(), TextColumn("{task.fields[rates]}"),
                         TimeElapsedColumn(), TimeRemainingColumn())
        self.description = description
        self.docs = 0
        self.tokens = 0
        self._t0 = time.perf_counter()
        self._progress = self.bar
        self._task = self._progress.add_task(description, total=total, rates="")

    def __enter__(self) -> RateProgress:
        self._progress.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._refresh(force=True)
        self._progress.stop()

    def add(self, docs: int, tokens: int) -> None:
        self.docs += docs
        self.tokens += tokens
        self._refresh()

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)
        self._refresh()

    def _refresh(self, force: bool = False) -> None:
        dt = max(time.perf_counter() - self._t0, 1e-9)
        rates = f"{human(self.docs / dt)} docs/s {human(self.tokens / dt)} tok/s"
        self._progress.update(self._task, rates=rates)
        self._plain_line(self._task, self.description, rates, force)


class RunProgress(_Bar):
    """Runs done of a known total (proxy runs), with ETA and the last run's result, on stderr
    (a plain line per run where the bar cannot redraw); :meth:`say` prints a line (a failure)
    above the bar."""

    def __init__(self, total: int, enabled: bool) -> None:
        super().__init__(enabled, 0.0, TextColumn("[bold]proxy runs"), BarColumn(),
                         MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                         TimeRemainingColumn(), TextColumn("{task.fields[last]}"))
        self.task = self.bar.add_task("runs", total=total, last="")

    def __enter__(self) -> RunProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def advance(self, last: str) -> None:
        self.bar.update(self.task, advance=1, last=last)
        self._plain_line(self.task, "proxy runs", last)

    def say(self, line: str) -> None:
        if self.enabled and not self.plain:
            self.bar.console.print(line, markup=False, soft_wrap=True)
        else:
            print(line, file=sys.stderr, flush=True)


def _eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds))) if seconds == seconds else "?"


class StepProgress:
    """Training steps of a known total: ``step 120/300 · ETA 0:00:14 · 491.52k tokens ·
    12.30k tok/s · loss 2.8312`` (and ``val``, the last validation loss), most urgent first so a
    narrow terminal cuts the least useful.

    ``mode`` is ``"live"`` (one line updated in place: a terminal), ``"lines"``
    (that text as a plain line on ``stream`` at most every ``every`` seconds, and the last
    step's: a log file), or ``"off"`` (the same plain lines at most every ``every`` seconds, as
    INFO records of the ``mixbatch.progress`` logger: shown with ``-v``). Rates and the ETA count
    the steps and tokens of this call only (after a resume: from the resume point). ``loss``
    may be a 0-d tensor: it is read (a device sync) only when a line is drawn, at most a few
    times a second, never every step.
    """

    LIVE_EVERY = 0.25  # seconds between redraws of the live line

    def __init__(self, total: int, mode: str = "live", *, start: int = 0, every: float = 10.0,
                 label: str = "train", stream: TextIO | None = None) -> None:
        if mode not in ("live", "lines", "off"):
            raise ValueError(f"mode: expected live, lines or off, got {mode!r}")
        self.total, self.mode, self.start, self.label = total, mode, start, label
        self.every = self.LIVE_EVERY if mode == "live" else every
        self.stream = stream
        self.done, self.tokens = start, 0
        self.loss: Any = None
        self.val: float | None = None
        self._t0 = time.perf_counter()
        self._last = -float("inf")
        self._shown = -1  # the step of the last line drawn
        self._log = logging.getLogger("mixbatch.progress")
        self.console = Console(stderr=stream is None, file=stream, highlight=False)
        self._bar = Progress(TextColumn("{task.fields[line]}", markup=False),
                             console=self.console, disable=mode != "live", transient=False,
                             auto_refresh=False)
        self._task = self._bar.add_task(label, total=total, completed=start, line="")

    def __enter__(self) -> StepProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.done > self._shown:
            self._draw()
        self._bar.stop()

    def begin(self, start: int) -> None:
        """The run starts (or resumes) at step ``start`` now: rates and the ETA count from
        here, not from the setup before it."""
        self.start = self.done = start
        self._t0 = time.perf_counter()
        self._bar.update(self._task, completed=start)

    def update(self, done: int, tokens: int, loss: Any = None, val: float | None = None) -> None:
        """``done`` steps done, ``tokens`` trained by this call, the last step's ``loss``, the
        validation loss when one was computed after this step."""
        self.done, self.tokens = done, tokens
        if loss is not None:
            self.loss = loss
        if val is not None:
            self.val = val
        now = time.perf_counter()
        if now - self._last >= self.every or done >= self.total or val is not None:
            self._draw(now)

    def line(self, now: float | None = None) -> str:
        """The text of the line as of now."""
        dt = max((time.perf_counter() if now is None else now) - self._t0, 1e-9)
        steps = self.done - self.start
        rate = steps / dt
        parts = [f"step {self.done:,}/{self.total:,}",
                 "ETA " + (_eta((self.total - self.done) / rate) if rate > 0 else "?"),
                 f"{human(self.tokens)} tokens", f"{human(self.tokens / dt)} tok/s"]
        if self.loss is not None:
            parts.append(f"loss {float(self.loss):.4f}")
        if self.val is not None:
            parts.append(f"val {self.val:.4f}")
        return " · ".join(parts)

    def _draw(self, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        self._last, self._shown = now, self.done
        text = self.line(now)
        if self.mode == "live":
            self._bar.update(self._task, completed=self.done, line=f"{self.label} {text}")
            self._bar.refresh()
        elif self.mode == "lines":
            self.say(f"{self.label}: {text}")
        else:
            self._log.info("%s: %s", self.label, text)

    def say(self, line: str) -> None:
        """Print ``line`` on the progress's stream (above the live line when there is one)."""
        if self.mode == "live":
            self._bar.console.print(line, markup=False, soft_wrap=True)
        else:
            print(line, file=self.stream or sys.stderr, flush=True)
