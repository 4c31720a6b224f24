"""``mixbatch prepare``: tokenise every source into a token store, in parallel and resumably.

Work is cut into *units* (a file, or a newline-aligned byte range of a large plain file). Each
unit is tokenised by a worker process into a *part* under ``<store>/<source>/.parts/``; a part
is finished when its summary ``<key>.json`` exists (written last, by rename). A rerun skips the
finished parts, so an interrupted prepare resumes where it stopped. When every part of a source
is finished, the parts are concatenated in input order into ``tokens.bin`` and ``offsets.npy``
(and ``second_lengths.npy`` for a source with ``second_field``), and ``meta.json`` is written
last. The order of documents is the order of the input files and of the records inside them,
whatever the number of processes.

``shard=(i, n)`` prepares only every n-th unit starting at i (over all sources) and does not
merge: run n such jobs anywhere (Slurm arrays, Ray, Kubernetes) on a shared folder, then one
plain ``prepare`` merges.

This module is the command: it plans the units and runs them (a local process pool here, or Ray
tasks: :mod:`mixbatch.prepare_ray`). The rest lives beside it: the inputs and their identity
(:mod:`mixbatch.prepare_inputs`), one unit tokenised into a part
(:mod:`mixbatch.prepare_worker`), the merge, ``meta.json`` and the reports
(:mod:`mixbatch.prepare_manifest`), and token data read in place
(:mod:`mixbatch.prepare_token_data`).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import shutil
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from mixbatch.config import Config
from mixbatch.dedup import plan_drops
from mixbatch.errors import ConfigError, MixbatchError, StoreError
from mixbatch.io import Format, OnError, SkipCounter
from mixbatch.io.fs import RemotePath, storage_env
from mixbatch.lock import FolderLock, remove_leftovers
from mixbatch.prepare_inputs import (
    file_states,
    source_files,
    source_fingerprint,
    source_format,
    source_paths,
    store_up_to_date,
    unit_key,
)
from mixbatch.prepare_manifest import PrepareReport, SourceReport, merge_parts
from mixbatch.prepare_remote import publish, remote_up_to_date, staging_root
from mixbatch.prepare_token_data import prepare_token_data
from mixbatch.prepare_worker import PARTS, Job, init_worker, set_progress
from mixbatch.prepare_worker import run_unit as _run_unit  # patched by tests; mixbatch.prepare_ray
from mixbatch.progress import RateProgress
from mixbatch.series.config import is_series_config
from mixbatch.store import META
from mixbatch.tokenizer import load_tokenizer, token_dtype

__all__ = ["PrepareReport", "SourceReport", "check_source_name", "prepare", "source_format",
           "source_paths"]


def prepare(cfg: Config, *, workers: int | None = None, shard: tuple[int, int] | None = None,
            force: bool = False, on_error: OnError | None = None, progress: bool = False,
            chunk_bytes: int = 64 << 20, backend: str = "local",
            ray_address: str | None = None) -> PrepareReport:
    """Tokenise every source of ``cfg`` into ``cfg.store_dir``; see the module docstring.

    ``backend="ray"`` runs the work units as Ray tasks (:mod:`mixbatch.prepare_ray`), on a local
    Ray instance or the cluster at ``ray_address``.
    """
    if backend not in ("local", "ray"):
        raise ConfigError(f"backend: {backend!r} is not one of local, ray")
    for name in cfg.sources:
        check_source_name(name)
    if is_series_config(cfg):  # numeric series: float32 window stores (mixbatch.series)
        from mixbatch.series.prepare import prepare_series_sources

        return prepare_series_sources(cfg, force=force, on_error=on_error)
    root = cfg.store_dir
    remote = root if isinstance(root, RemotePath) else None
    if remote is not None:  # built in a local staging folder, then published
        root = staging_root(remote)
    if root.exists() and not root.is_dir():
        raise StoreError(f"{root}: the store path is a file, not a folder; set `store:` to a "
                         "folder (it is created if missing)")
    # one merging writer per store; shard jobs share it (each writes its own parts)
    with FolderLock(root, "store", shared=shard is not None):
        if shard is None:
            remove_leftovers(root)  # temporary files of a killed prepare
        return _prepare(cfg, root, remote, workers, shard, force, on_error, progress,
                        chunk_bytes, backend, ray_address)


def check_source_name(name: str) -> None:
    """A source's name is its store folder's name: refuse one no filesystem can hold."""
    if "\0" in name or len(name.encode("utf-8", "surrogatepass")) > 255:
        raise ConfigError(f"sources.{name[:40]!r}{'...' if len(name) > 40 else ''}: a source "
                          "name is a folder name: no NUL byte, at most 255 bytes")


def _prepare(cfg: Config, root: Path, remote: RemotePath | None, workers: int | None,
             shard: tuple[int, int] | None, force: bool, on_error: OnError | None,
             progress: bool, chunk_bytes: int, backend: str,
             ray_address: str | None) -> PrepareReport:
    t0 = time.perf_counter()
    tok = load_tokenizer(cfg.tokenizer, cfg.base_dir, cfg.eod_token)
    dtype = token_dtype(tok.vocab_size)
    reports: dict[str, SourceReport] = {}
    plans: dict[str, tuple[list[Job], list[dict[str, Any]], str, Format, SkipCounter]] = {}
    pending: list[Job] = []
    drops = plan_drops(cfg, on_error, chunk_bytes)  # None without `dedup:`

    for name, src in cfg.sources.items():
        folder = root / name
        if force and folder.exists():
            (folder / META).unlink(missing_ok=True)  # the commit point goes first
            shutil.rmtree(folder)
        if src.is_token_data:
            if shard is None:
                reports[name] = prepare_token_data(name, src, cfg, folder, tok)
            continue
        file_skips = SkipCounter()
        inputs = source_files(name, src, cfg, file_skips)
        fmt = inputs.fmt
        files = file_states(inputs.paths)
        fp = source_fingerprint(src, fmt, tok, dtype)
        fp = drops.fingerprint(name, fp) if drops is not None else fp
        there = None if remote is None or force else remote_up_to_date(remote / name, fp, files)
        if there is not None and not store_up_to_date(folder, fp, files):
            reports[name] = SourceReport(name, "up to date", len(files), there["documents"],
                                         there["tokens"], there["skipped"],
                                         there.get("skipped_examples", {}))
            continue
        if store_up_to_date(folder, fp, files):
            shutil.rmtree(folder / PARTS, ignore_errors=True)  # left by a kill after the commit
            meta = json.loads((folder / META).read_text())
            reports[name] = SourceReport(name, "up to date", len(files), meta["documents"],
                                         meta["tokens"], meta["skipped"],
                                         meta.get("skipped_examples", {}))
            continue
        part_dir = folder / PARTS
        part_dir.mkdir(parents=True, exist_ok=True)
        states = {f["path"]: f for f in files}
        jobs = []
        for unit in inputs.units(chunk_bytes):
            st = states[str(unit.path)]
            key = unit_key(unit, fp, st["size"], st["mtime_ns"], st.get("etag", ""),
                            st.get("ctime_ns", 0))
            jobs.append(Job(name, unit, key, part_dir, src.text_field, src.split.value,
                             (on_error or src.on_error).value, cfg.tokenizer, cfg.base_dir,
                             cfg.eod_token, dtype.name, src.second_field,
                             drops.unit_drops(name, unit) if drops is not None else ()))
        plans[name] = (jobs, files, fp, fmt, file_skips)
        if shard is None:
            _remove_stale_parts(part_dir, {j.key for j in jobs})
        pending.extend(j for j in jobs if not (part_dir / f"{j.key}.json").is_file())

    if shard is not None:
        index, count = shard
        pending = [j for k, j in enumerate(_all_jobs(plans)) if k % count == index
                   and not (j.part_dir / f"{j.key}.json").is_file()]

    if backend == "ray":
        from mixbatch.prepare_ray import run_jobs_ray

        run_jobs_ray(pending, workers, progress, remote, ray_address)
    else:
        _run_jobs(pending, workers, progress)

    for name, (jobs, files, fp, fmt, file_skips) in plans.items():
        done = sum((j.part_dir / f"{j.key}.json").is_file() for j in jobs)
        if shard is None and done == len(jobs):
            reports[name] = merge_parts(name, root / name, jobs, files, fp, tok, dtype,
                                   cfg.sources[name], fmt, file_skips)
        else:
            reports[name] = SourceReport(name, "partial", len(files), units_done=done,
                                         units_total=len(jobs))
    if remote is not None and shard is None:
        for name, rep in reports.items():
            if (root / name / META).is_file() and rep.status != "partial":
                publish(root / name, remote / name)
                if backend == "ray":
                    from mixbatch.prepare_ray import clean_remote_parts

                    clean_remote_parts(remote, name)
    ordered = {n: reports[n] for n in cfg.sources if n in reports}
    return PrepareReport(ordered, time.perf_counter() - t0, len(pending))


def _remove_stale_parts(part_dir: Path, keys: set[str]) -> None:
    """Delete the parts of work units this run does not have (inputs or settings changed)."""
    for p in part_dir.iterdir():
        if p.is_file() and p.name.split(".", 1)[0] not in keys and not p.name.startswith("."):
            p.unlink(missing_ok=True)


def _all_jobs(plans: dict[str, tuple[list[Job], Any, Any, Any, Any]]) -> list[Job]:
    return [j for jobs, *_ in plans.values() for j in jobs]


#: below this much input per extra process, starting processes costs more than it saves
_BYTES_PER_PROCESS = 8 << 20


def _run_jobs(jobs: list[Job], workers: int | None, show: bool) -> None:
    if not jobs:
        return
    if workers is None:
        size = sum(((j.unit.end if j.unit.end is not None else j.unit.path.stat().st_size)
                    - j.unit.start) for j in jobs)
        workers = min(os.cpu_count() or 1, max(1, size // _BYTES_PER_PROCESS))
    workers = max(1, min(workers, len(jobs)))
    with RateProgress("tokenising", total=len(jobs), enabled=show) as bar:
        if workers == 1:
            set_progress(bar.add)
            try:
                for job in jobs:
                    _run_unit(job)
                    bar.advance()
            finally:
                set_progress(None)
            return
        ctx = mp.get_context("forkserver")
        # workers fork with prepare imported; the forkserver dies with this process
        ctx.set_forkserver_preload(["mixbatch._die_with_parent", "mixbatch.prepare"])
        q = ctx.Queue()
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker,
                                 initargs=(q, storage_env())) as pool:
            futures: set[Future] = {pool.submit(_run_unit, j) for j in jobs}
            try:
                while futures:
                    done, futures = wait(futures, timeout=0.2, return_when=FIRST_EXCEPTION)
                    _drain(q, bar)
                    for f in done:
                        f.result()  # re-raises a worker's DataError with its own message
                        bar.advance()
            except BrokenProcessPool:
                raise MixbatchError(
                    "prepare: a worker process died (killed, out of memory, or a script that "
                    "calls prepare() without an `if __name__ == '__main__':` guard); rerun to "
                    "resume: finished work is kept") from None
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
            finally:
                _drain(q, bar)


def _drain(q: Any, bar: RateProgress) -> None:
    while True:
        try:
            docs, toks = q.get_nowait()
        except queue.Empty:
            return
        bar.add(docs, toks)
