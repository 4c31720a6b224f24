"""Progress bars on stderr (rich): units done with documents/s and tokens/s, or runs done."""

from __future__ import annotations

import sys
import time
from types import TracebackType

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


class RateProgress:
    """Counts finished work items and the documents and tokens they produced."""

    def __init__(self, description: str, total: int | None, enabled: bool = True) -> None:
        self.enabled = enabled
        self.docs = 0
        self.tokens = 0
        self._t0 = time.perf_counter()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rates]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), disable=not enabled, transient=False,
        )
        self._task = self._progress.add_task(description, total=total, rates="")

    def __enter__(self) -> RateProgress:
        self._progress.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._refresh()
        self._progress.stop()

    def add(self, docs: int, tokens: int) -> None:
        self.docs += docs
        self.tokens += tokens
        self._refresh()

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)
        self._refresh()

    def _refresh(self) -> None:
        dt = max(time.perf_counter() - self._t0, 1e-9)
        rates = f"{human(self.docs / dt)} docs/s {human(self.tokens / dt)} tok/s"
        self._progress.update(self._task, rates=rates)


class RunProgress:
    """Runs done of a known total (proxy runs), with ETA and the last run's result, on stderr;
    :meth:`say` prints a line (a failure) above the bar."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.console = Console(stderr=True, highlight=False)
        self.enabled = enabled
        self.bar = Progress(TextColumn("[bold]proxy runs"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                            TextColumn("{task.fields[last]}"), console=self.console,
                            disable=not enabled)
        self.task = self.bar.add_task("runs", total=total, last="")

    def __enter__(self) -> RunProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def advance(self, last: str) -> None:
        self.bar.update(self.task, advance=1, last=last)

    def say(self, line: str) -> None:
        if self.enabled:
            self.bar.console.print(line, markup=False, soft_wrap=True)
        else:
            print(line, file=sys.stderr, flush=True)
