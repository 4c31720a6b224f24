"""Run one proxy per design row and append its losses to a results CSV (RegMix §3.1).

RegMix (Liu et al. 2024, arXiv 2407.01492) trains one small proxy per candidate mixture and
regresses the proxies' validation losses on the mixture weights. :func:`run_search` is that
loop: each row of a design CSV (``mixbatch search design``) becomes one
:func:`~mixbatch.proxy.train_proxy` call with the row's weights, and each finished run becomes
one line of the results CSV (its columns: :mod:`mixbatch.search.results_file`).

**Resumable.** The results file (:mod:`mixbatch.search.results_file`) gets one whole line per
finished run; a restart runs only the rows not in it, and refuses a file of another search.

**Backends** (:mod:`mixbatch.search.backends`): ``local`` (a process pool of ``workers``) or
``ray``. A row's losses do not depend on the backend, the worker count or the order of
completion.

**Failures.** A run that raises is reported as one line naming its design row, the other rows
go on, and :class:`SearchRunError` lists the failed rows at the end; running the same command
again retries exactly them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixbatch.checks import choice
from mixbatch.errors import ConfigError, MixbatchError
from mixbatch.progress import RunProgress
from mixbatch.search.backends import Backend, ProxyTask, check_ray, run_proxy_tasks
from mixbatch.search.results import read_design_csv
from mixbatch.search.results_file import (
    MEAN_COLUMN,
    ResultsFile,
    RowResult,
    check_settings,
    run_settings,
)

__all__ = ["ProxyTask", "SearchRun", "SearchRunError", "run_proxy_tasks", "run_search"]

class SearchRunError(MixbatchError):
    """Some proxy runs failed; the others are in the results file. ``run`` tells which."""

    exit_code = 1

    def __init__(self, message: str, run: SearchRun | None = None) -> None:
        super().__init__(message)
        self.run = run


# ---------------------------------------------------------------------------------------------
# the search
# ---------------------------------------------------------------------------------------------
@dataclass
class SearchRun:
    """What :func:`run_search` did. ``results`` holds every finished row, earlier ones too."""

    out: Path
    total: int  # design rows
    ran: list[int] = field(default_factory=list)  # indices run now, in order of completion
    skipped: list[int] = field(default_factory=list)  # already in the results file
    failed: dict[int, str] = field(default_factory=dict)
    results: dict[int, RowResult] = field(default_factory=dict)
    repaired: bool = False  # a line cut short by a kill was dropped
    seconds: float = 0.0
    workers: int = 1
    backend: str = "local"


def run_search(cfg: Any, design_csv: str | Path, out_csv: str | Path,
               backend: str | Backend = "local", workers: int = 1, proxy: Any = None,
               ray_address: str | None = None, progress: bool = True,
               log: Callable[[str], None] | None = None) -> SearchRun:
    """Train one proxy per design row and append each row's losses to ``out_csv``.

    Args:
        cfg: the mixbatch config (sources prepared, ``holdout`` > 0).
        design_csv: ``index`` + one weight column per source of ``cfg`` (``search design``).
        out_csv: the results CSV; rows already in it are skipped (resume).
        backend: ``local`` (process pool) or ``ray``.
        workers: runs at a time (local: processes; ray: CPUs of the local Ray it starts, or
            tasks in flight on the cluster at ``ray_address``).
        proxy: a :class:`~mixbatch.proxy.ProxyConfig` (default ``ProxyConfig.demo()``).
        ray_address: an existing Ray cluster (``ray://host:10001``, ``auto``, ...).
        progress: show a progress bar with ETA on stderr.
        log: where failure lines go (default: above the progress bar, on stderr).

    Returns the :class:`SearchRun`. Raises :class:`SearchRunError` (after every other row ran)
    when any run failed, :class:`ConfigError` for a bad design, results file or setting.
    """
    from mixbatch.proxy import ProxyConfig

    t0 = time.perf_counter()
    backend = choice(Backend, "backend", backend)
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    proxy = proxy if proxy is not None else ProxyConfig.demo()
    if cfg.holdout <= 0:
        raise ConfigError("holdout: proxy runs score held-out documents, but the config holds "
                          "none out (holdout is 0); set `holdout:` to a fraction, e.g. "
                          "`holdout: 0.05`")
    if backend is Backend.RAY:
        check_ray()  # a missing package is a one-line error before any work
    names = list(cfg.sources)
    rows = read_design_csv(design_csv, names)
    design = {r.index: r for r in rows}
    out = Path(out_csv)
    results = ResultsFile(out, names)
    run = SearchRun(out=out, total=len(rows), repaired=results.repaired, workers=workers,
                    backend=backend.value)
    try:
        run.results = results.finished(design)
        check_settings(out, run_settings(cfg, proxy), bool(run.results))
        run.skipped = [r.index for r in rows if r.index in run.results]
        todo = [r for r in rows if r.index not in run.results]
        tasks = [ProxyTask(key=r.index, label=f"design row {r.index}", proxy=proxy,
                           weights=r.weights) for r in todo]
        with RunProgress(len(tasks), progress) as bar:
            say = log or bar.say
            if run.skipped:
                say(f"{out}: {len(run.skipped)} of {len(rows)} design rows already done, "
                    f"running the other {len(todo)}"
                    + (" (dropped a last line cut short by a kill)" if run.repaired else ""))
            for task, res, error in run_proxy_tasks(cfg, tasks, backend, workers, ray_address):
                idx = int(task.key)
                if error is not None:
                    run.failed[idx] = error
                    say(f"design row {idx} failed: {error}")
                    bar.advance(f"row {idx} failed")
                    continue
                row = RowResult(idx, design[idx].weights, dict(res.val_loss),
                                float(res.val_loss_mean), int(res.train_tokens),
                                float(res.seconds))
                results.append(row)
                run.results[idx] = row
                run.ran.append(idx)
                bar.advance(f"row {idx}: {MEAN_COLUMN} {row.val_mean:.4f}")
    finally:
        results.close()
        run.seconds = time.perf_counter() - t0
    if run.failed:
        shown = "; ".join(f"index {i}: {m}" for i, m in list(run.failed.items())[:3])
        more = f"; ... ({len(run.failed)} in all)" if len(run.failed) > 3 else ""
        raise SearchRunError(
            f"{len(run.failed)} of {len(rows)} design rows failed ({shown}{more}); the "
            f"{len(run.results)} finished rows are in {out}; run the same command again to retry "
            "the failed rows", run)
    return run
