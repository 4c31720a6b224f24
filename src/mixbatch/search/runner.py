"""Run one proxy per design row and append its losses to a results CSV (RegMix §3.1).

RegMix (Liu et al. 2024, arXiv 2407.01492) trains one small proxy per candidate mixture and
regresses the proxies' validation losses on the mixture weights. :func:`run_search` is that
loop: each row of a design CSV (``mixbatch search design``) becomes one
:func:`~mixbatch.proxy.train_proxy` call with the row's weights, and each finished run becomes
one line of the results CSV::

    index, <source>..., val/<source>..., val/mean, tokens, seconds

(weights as in the design; ``val/<source>`` the token-mean held-out loss of each source;
``val/mean`` the mean over every scored token, which is the mean over sources when each scores
``eval_tokens``; ``tokens`` the tokens trained on; ``seconds`` the run's wall time). Loss
columns contain ``/``, so :func:`~mixbatch.search.results.read_results_csv` reads the file as it
grows and ``mixbatch search fit RESULTS.csv --target val/<source>`` fits on it.

**Resumable.** A line is appended with one ``write`` call as its run finishes (any order), so a
kill leaves whole lines, at worst one cut short, which the next start drops. A restart reads
the finished indices and runs only the others; a results file written for other sources, whose
rows carry other weights than the design, or whose runs used other proxy settings (recorded
beside it in ``<RESULTS>.run.json``), is refused rather than mixed. An exclusive lock keeps
two runners off one file.

**Backends.** ``local``: a process pool (``concurrent.futures.ProcessPoolExecutor``, forkserver
start, spawn where there is none) of ``workers`` processes; ``workers=1`` runs in this
process. ``ray``: the same function as Ray tasks of ``num_cpus=1`` on a local Ray started here
(``ray.init(num_cpus=workers)``), or on the cluster at ``ray_address`` (its nodes must see
the config's store at the same path). With more than one run at a time each proxy gets one
torch thread unless ``ProxyConfig.threads`` says otherwise: two-thread runs collapse when
another process holds a core. Worker processes import the calling script afresh (forkserver
and spawn do), so a script that calls :func:`run_search` with ``workers > 1`` keeps its work
under ``if __name__ == "__main__":``, as for any process pool.

**Deterministic.** A row's losses depend on the row, the config and the proxy settings, not on
the backend, the worker count or the order of completion: on CPU they are bit-identical
whenever the thread count per proxy is the same (1 in every parallel run; set
``ProxyConfig.threads=1`` to make a ``workers=1`` run match a parallel one).

**Failures.** A run that raises is reported as one line naming its design row, the other rows
go on, and :class:`SearchRunError` lists the failed rows at the end; running the same command
again retries exactly them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from mixbatch.errors import ConfigError, MixbatchError

__all__ = [
    "Backend",
    "DesignRow",
    "ProxyTask",
    "RowResult",
    "SearchRun",
    "SearchRunError",
    "read_design_csv",
    "result_columns",
    "run_proxy_tasks",
    "run_search",
    "run_settings",
]

LOSS_PREFIX = "val/"
MEAN_COLUMN = "val/mean"
_WEIGHT_TOLERANCE = 1e-9  # a finished row must carry the design row's weights to this
# proxy settings that do not change what a run measures (beyond float rounding)
_RUNTIME_FIELDS = ("threads", "device", "bf16", "eval_every", "eval_batch_rows")


class Backend(str, Enum):
    LOCAL = "local"
    RAY = "ray"


class SearchRunError(MixbatchError):
    """Some proxy runs failed; the others are in the results file. ``run`` tells which."""

    exit_code = 1

    def __init__(self, message: str, run: SearchRun | None = None) -> None:
        super().__init__(message)
        self.run = run


def _backend(value: str | Backend) -> Backend:
    try:
        return Backend(value)
    except ValueError:
        raise ConfigError(f"backend: unknown {value!r} (choose from "
                          f"{', '.join(b.value for b in Backend)})") from None


# ---------------------------------------------------------------------------------------------
# the design and the results file
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DesignRow:
    """One candidate mixture: its design index and ``{source: weight}`` (every source)."""

    index: int
    weights: dict[str, float]


def result_columns(names: Sequence[str]) -> list[str]:
    """The results CSV header for sources ``names``."""
    return ["index", *names, *(LOSS_PREFIX + n for n in names), MEAN_COLUMN, "tokens", "seconds"]


def read_design_csv(path: str | Path, sources: Sequence[str]) -> list[DesignRow]:
    """Rows of a design CSV (``index`` + one weight column per source), in file order.

    The weight columns must be exactly ``sources`` (any order). Weights are kept as written
    (a design from ``search design`` sums to exactly 1; the loader normalises anyway).
    """
    from mixbatch.search.results import _check_sources, _column, _index, _read_csv

    data = _read_csv(path)
    extra = [c for c in data.header if c != "index" and ("/" in c or c in ("tokens", "seconds"))]
    if extra:
        raise ConfigError(f"{data.path}: a design has only 'index' and weight columns, found "
                          f"{', '.join(extra)} (is this a results file?)")
    names = [c for c in data.header if c != "index"]
    _check_sources(str(data.path), names, list(sources))
    index = _index(data)
    cols = {n: _column(data, n, allow_nan=False) for n in names}
    rows = []
    for i, (idx, line) in enumerate(zip(index.tolist(), data.lines, strict=True)):
        w = {n: float(cols[n][i]) for n in sources}
        if any(v < 0 for v in w.values()) or not sum(w.values()) > 0:
            raise ConfigError(f"{data.path}:{line}: weights must be >= 0 and not all 0, got "
                              f"{w}")
        rows.append(DesignRow(int(idx), w))
    return rows


@dataclass(frozen=True)
class RowResult:
    """What one design row's proxy measured."""

    index: int
    weights: dict[str, float]
    val_loss: dict[str, float]
    val_mean: float
    tokens: int
    seconds: float

    def values(self, names: Sequence[str]) -> list[Any]:
        return [self.index, *(self.weights[n] for n in names),
                *(self.val_loss[n] for n in names), self.val_mean, self.tokens, self.seconds]


def _line(values: Sequence[Any]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(
        [repr(v) if isinstance(v, float) and math.isfinite(v) else
         ("nan" if isinstance(v, float) else v) for v in values])
    return buf.getvalue().encode("utf-8")


class _ResultsFile:
    """Append-only results CSV: header once, then one ``write`` per finished row."""

    def __init__(self, path: Path, names: Sequence[str]) -> None:
        self.path = path
        self.names = list(names)
        self.columns = result_columns(names)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self._lock()
            self.repaired = self._drop_partial_tail()
            if os.fstat(self.fd).st_size == 0:
                self._write(_line(self.columns))
        except BaseException:
            os.close(self.fd)
            raise

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError(f"{self.path}: another process is writing this results file "
                              "(a second `search run` on it?); wait for it or give another "
                              "--out") from None

    def _drop_partial_tail(self) -> bool:
        """Cut a last line left without its newline by a kill; True if one was cut."""
        size = os.fstat(self.fd).st_size
        if size == 0:
            return False
        os.lseek(self.fd, max(0, size - 1), os.SEEK_SET)
        if os.read(self.fd, 1) == b"\n":
            return False
        with open(self.path, "rb") as f:
            data = f.read()
        os.ftruncate(self.fd, data.rfind(b"\n") + 1)
        return True

    def finished(self, design: Mapping[int, DesignRow]) -> dict[int, RowResult]:
        """Rows already in the file, checked against this run's columns and design."""
        with open(self.path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if not rows:
            return {}
        header = [h.strip() for h in rows[0]]
        if header != self.columns:
            raise ConfigError(
                f"{self.path}: its columns ({', '.join(header[:8])}"
                f"{', ...' if len(header) > 8 else ''}) are not this run's "
                f"({', '.join(self.columns[:8])}{', ...' if len(self.columns) > 8 else ''}): it "
                "holds another search; give another --out, or delete it to start over")
        done: dict[int, RowResult] = {}
        k = len(self.names)
        for line_no, row in enumerate(rows[1:], start=2):
            if not row:
                continue
            where = f"{self.path}:{line_no}"
            if len(row) != len(header):
                raise ConfigError(f"{where}: {len(row)} fields, the header has {len(header)}")
            try:
                idx = int(row[0])
                nums = [float(x) for x in row[1:]]
            except ValueError:
                raise ConfigError(f"{where}: not a results row: {','.join(row)[:80]!r}") from None
            if idx in done:
                raise ConfigError(f"{where}: design row {idx} appears twice in the results")
            if idx not in design:
                raise ConfigError(f"{where}: row index {idx} is not in the design: the results "
                                  "file belongs to another design (give another --out)")
            weights = dict(zip(self.names, nums[:k], strict=True))
            want = design[idx].weights
            if any(abs(weights[n] - want[n]) > _WEIGHT_TOLERANCE for n in self.names):
                raise ConfigError(f"{where}: row index {idx} has other weights than design row "
                                  f"{idx}: the results file belongs to another design (give "
                                  "another --out)")
            done[idx] = RowResult(idx, weights, dict(zip(self.names, nums[k:2 * k], strict=True)),
                                  nums[2 * k], int(nums[2 * k + 1]), nums[2 * k + 2])
        return done

    def _write(self, data: bytes) -> None:
        n = os.write(self.fd, data)  # O_APPEND: one write lands whole at the end
        if n != len(data):  # pragma: no cover - regular files do not write short
            raise OSError(f"{self.path}: short write ({n} of {len(data)} bytes)")

    def append(self, result: RowResult) -> None:
        self._write(_line(result.values(self.names)))

    def close(self) -> None:
        os.close(self.fd)


def run_settings(cfg: Any, proxy: Any) -> dict[str, Any]:
    """What a results row depends on besides its weights: the proxy's settings and the parts
    of the config that change the data or the scores. Written to ``<RESULTS>.run.json``."""
    p = proxy.model_dump(mode="json")
    return {
        "proxy": {k: v for k, v in p.items() if k not in _RUNTIME_FIELDS},
        "config": {"seed": cfg.seed, "tokenizer": cfg.tokenizer, "holdout": cfg.holdout,
                   "holdout_max": cfg.holdout_max, "unit": cfg.mixture.unit.value,
                   "batch": cfg.batch.model_dump(mode="json")},
    }


def _settings_path(out: Path) -> Path:
    return out.with_name(out.name + ".run.json")


def _check_settings(out: Path, settings: dict[str, Any], has_rows: bool) -> None:
    """Refuse to add runs made with other settings to a results file; record ours otherwise.

    A file without rows takes the new settings whatever was recorded before."""
    path = _settings_path(out)
    if has_rows and path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read the settings of the earlier runs ({e}); "
                              "delete it to accept them as they are") from None
        diff = [f"{part}.{k}: {old.get(part, {}).get(k)!r} then, {v!r} now"
                for part in ("proxy", "config") for k, v in settings[part].items()
                if old.get(part, {}).get(k) != v]
        if diff:
            raise ConfigError(f"{out}: its runs were made with other settings "
                              f"({'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''}); give "
                              "another --out, or delete it and its .run.json to start over")
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# running proxies: in this process, in a process pool, or on Ray
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProxyTask:
    """One proxy run: ``train_proxy(cfg, proxy, weights, init_state)``.

    ``label`` names it in messages (e.g. ``design row 7``); ``keep_state`` returns the trained
    model's state (dropped otherwise, so that only losses cross process boundaries).
    """

    key: Any
    label: str
    proxy: Any  # ProxyConfig
    weights: dict[str, float] | None = None
    init_state: Any = None  # dict[str, torch.Tensor] | None
    keep_state: bool = False


@dataclass
class _Outcome:
    key: Any
    result: Any = None  # ProxyResult
    error: str | None = None


def _execute(cfg: Any, task: ProxyTask) -> _Outcome:
    """Run one task; an exception becomes its one-line message (never a traceback)."""
    from mixbatch.proxy import train_proxy

    try:
        r = train_proxy(cfg, task.proxy, weights=task.weights, init_state=task.init_state)
    except Exception as e:  # reported with the task's label by the caller
        text = " ".join(str(e).split()) or "(no message)"
        return _Outcome(task.key, error=f"{type(e).__name__}: {text}")
    if not task.keep_state:
        r.state = {}
    return _Outcome(task.key, result=r)


def _pool_context() -> mp.context.BaseContext:
    # forkserver: children fork from a clean server, never from a parent holding torch threads
    return mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now (runs may take minutes)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)


def _run_local(cfg: Any, tasks: Sequence[ProxyTask], workers: int) -> Iterator[_Outcome]:
    if workers <= 1:
        for t in tasks:
            yield _execute(cfg, t)
        return
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=_pool_context())
    clean = False
    try:
        futures: dict[Future, ProxyTask] = {pool.submit(_execute, cfg, t): t for t in tasks}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                try:
                    yield f.result()
                except Exception as e:  # the worker process died (killed, out of memory)
                    yield _Outcome(futures[f].key, error=f"worker process failed "
                                                         f"({type(e).__name__}: {e})")
        clean = True
    finally:
        if clean:
            pool.shutdown(wait=True)
        else:
            _stop_pool(pool)


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("backend ray needs the 'ray' package: pip install ray (or use "
                          "--backend local)") from None
    return ray


def _run_ray(cfg: Any, tasks: Sequence[ProxyTask], workers: int,
             address: str | None) -> Iterator[_Outcome]:
    ray = _ray()
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        started = True
    refs: dict[Any, ProxyTask] = {}
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(_execute)
        cfg_ref = ray.put(cfg)
        todo = list(tasks)
        # keep at most `workers` tasks in flight on a cluster too, so that a large design does
        # not queue every task (and its init_state) on the head node at once
        limit = max(1, workers) if address else len(todo)
        while todo or refs:
            while todo and len(refs) < limit:
                t = todo.pop(0)
                refs[remote.remote(cfg_ref, t)] = t
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                t = refs.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as e:  # the task's worker died
                    text = " ".join(str(e).split())[:300]
                    yield _Outcome(t.key, error=f"ray task failed ({type(e).__name__}: {text})")
    finally:
        for ref in refs:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


def run_proxy_tasks(cfg: Any, tasks: Sequence[ProxyTask], backend: str | Backend = "local",
                    workers: int = 1, ray_address: str | None = None
                    ) -> Iterator[tuple[ProxyTask, Any, str | None]]:
    """Run ``tasks`` and yield ``(task, ProxyResult or None, error or None)`` as each ends.

    With more than one run at a time, tasks whose proxy leaves ``threads`` unset get 1 thread.
    Closing the iterator early (or an exception in the consumer) stops the remaining runs.
    """
    backend = _backend(backend)
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    parallel = backend is Backend.RAY or workers > 1
    tasks = [replace(t, proxy=t.proxy.model_copy(update={"threads": 1}))
             if parallel and t.proxy.threads is None else t for t in tasks]
    by_key = {t.key: t for t in tasks}
    if len(by_key) != len(tasks):
        raise ConfigError("run_proxy_tasks: task keys must be distinct")
    if not tasks:
        return
    outcomes = (_run_local(cfg, tasks, workers) if backend is Backend.LOCAL
                else _run_ray(cfg, tasks, workers, ray_address))
    try:
        for o in outcomes:
            yield by_key[o.key], o.result, o.error
    finally:
        outcomes.close()


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


class _Progress:
    """A rich bar with ETA on stderr; failure lines print above it."""

    def __init__(self, total: int, enabled: bool) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True, highlight=False)
        self.enabled = enabled
        self.bar = Progress(TextColumn("[bold]proxy runs"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                            TextColumn("{task.fields[last]}"), console=self.console,
                            disable=not enabled)
        self.task = self.bar.add_task("runs", total=total, last="")

    def __enter__(self) -> _Progress:
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
    backend = _backend(backend)
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    proxy = proxy if proxy is not None else ProxyConfig.demo()
    if cfg.holdout <= 0:
        raise ConfigError("holdout: proxy runs score held-out documents, but the config holds "
                          "none out (holdout is 0); set `holdout:` to a fraction, e.g. "
                          "`holdout: 0.05`")
    if backend is Backend.RAY:
        _ray()  # a missing package is a one-line error before any work
    names = list(cfg.sources)
    rows = read_design_csv(design_csv, names)
    design = {r.index: r for r in rows}
    out = Path(out_csv)
    results = _ResultsFile(out, names)
    run = SearchRun(out=out, total=len(rows), repaired=results.repaired, workers=workers,
                    backend=backend.value)
    try:
        run.results = results.finished(design)
        _check_settings(out, run_settings(cfg, proxy), bool(run.results))
        run.skipped = [r.index for r in rows if r.index in run.results]
        todo = [r for r in rows if r.index not in run.results]
        tasks = [ProxyTask(key=r.index, label=f"design row {r.index}", proxy=proxy,
                           weights=r.weights) for r in todo]
        with _Progress(len(tasks), progress) as bar:
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
