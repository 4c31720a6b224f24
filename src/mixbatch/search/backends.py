"""Where proxy runs execute: this process, a local process pool, or Ray tasks.

:func:`run_proxy_tasks` runs :class:`ProxyTask` s (one :func:`~mixbatch.proxy.train_proxy` call
each) and yields each one's result or its one-line error as it ends.

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
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from mixbatch.checks import choice
from mixbatch.errors import ConfigError

__all__ = ["Backend", "ProxyTask", "check_ray", "run_proxy_tasks"]


class Backend(str, Enum):
    LOCAL = "local"
    RAY = "ray"


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


def check_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("backend ray needs the 'ray' package: pip install ray (or use "
                          "--backend local)") from None
    return ray


def _run_ray(cfg: Any, tasks: Sequence[ProxyTask], workers: int,
             address: str | None) -> Iterator[_Outcome]:
    ray = check_ray()
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
    backend = choice(Backend, "backend", backend)
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
