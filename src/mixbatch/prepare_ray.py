"""``mixbatch prepare CONFIG --backend ray``: the work units of prepare as Ray tasks.

The units, their keys and the merge are those of :mod:`mixbatch.prepare`, so the store is byte
for byte the one the local process pool builds. Where a task writes its part:

- store on object storage (``store: s3://...``): the task tokenises into a temporary folder on
  its node and uploads the part to ``<store URL>/<source>/.parts/`` (``<key>.json`` last, the
  commit point); the driver downloads finished parts into its staging folder and merges. A
  killed driver loses nothing: the next run finds the uploaded parts and does not run them
  again; a killed task is run again by Ray (``max_retries``), and its half-written part never
  had a ``.json``.
- local store: the task writes into the store's ``.parts/`` folder itself, so on a cluster
  every node must see the store at the same path (a shared filesystem), as for ``--shard``.

Credentials for object storage come from each node's own environment and files (the backends'
usual ones); the driver sends none.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from mixbatch.errors import ConfigError, MixbatchError
from mixbatch.io.fs import RemotePath, download_file, remove, upload_file
from mixbatch.progress import RateProgress

#: part files in the order they are uploaded or downloaded: the summary last
PART_SUFFIXES = (".tokens", ".lengths.npy", ".second.npy", ".json")


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("backend ray needs the 'ray' package: pip install 'mixbatch[ray]' (or "
                          "use --backend local)") from None
    return ray


def parts_url(remote_root: RemotePath | None, source: str) -> RemotePath | None:
    return None if remote_root is None else remote_root / source / ".parts"


def run_unit_task(job: Any, parts: str | None) -> dict[str, Any]:
    """One unit on a Ray worker (see the module docstring); returns the part's summary."""
    from mixbatch.prepare import _run_unit

    if parts is None:
        return _run_unit(job)
    with tempfile.TemporaryDirectory(prefix="mixbatch-part-") as tmp:
        summary = _run_unit(replace(job, part_dir=Path(tmp)))
        dest = RemotePath(parts)
        for suffix in PART_SUFFIXES:
            p = Path(tmp) / f"{job.key}{suffix}"
            if p.is_file():
                upload_file(p, dest / p.name)
    return summary


def fetch_part(job: Any, parts: RemotePath) -> bool:
    """Download a finished remote part into the job's local part folder (summary last);
    ``False`` when the part is not finished there."""
    if not (parts / f"{job.key}.json").is_file():
        return False
    job.part_dir.mkdir(parents=True, exist_ok=True)
    for suffix in PART_SUFFIXES:
        src = parts / f"{job.key}{suffix}"
        if suffix == ".second.npy" and job.second_field is None:
            continue
        download_file(src, job.part_dir / f"{job.key}{suffix}")
    return True


def run_jobs_ray(jobs: list[Any], workers: int | None, show: bool,
                 remote_root: RemotePath | None, address: str | None = None,
                 max_retries: int = 2) -> int:
    """Run ``jobs`` as Ray tasks (parts finished remotely by an earlier driver are downloaded,
    not run again); return the number of tasks run."""
    todo = []
    for job in jobs:
        parts = parts_url(remote_root, job.source)
        if parts is not None and fetch_part(job, parts):
            continue
        todo.append(job)
    if not todo:
        return 0
    ray = _ray()
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers or None, include_dashboard=False, log_to_driver=False)
        started = True
    task = ray.remote(num_cpus=1, max_retries=max_retries)(run_unit_task)
    refs: dict[Any, Any] = {}
    try:
        with RateProgress("tokenising (ray)", total=len(todo), enabled=show) as bar:
            for job in todo:
                parts = parts_url(remote_root, job.source)
                refs[task.remote(job, None if parts is None else parts.url)] = job
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                for ref in ready:
                    job = refs.pop(ref)
                    try:
                        summary = ray.get(ref)
                    except ray.exceptions.RayTaskError as e:
                        cause = e.cause if isinstance(getattr(e, "cause", None), Exception) else e
                        if isinstance(cause, MixbatchError):
                            raise cause from None
                        raise MixbatchError(f"prepare: a Ray task failed on {job.unit.path} "
                                            f"({type(cause).__name__}: "
                                            f"{' '.join(str(cause).split())[:300]}); rerun to "
                                            "resume: finished parts are kept") from None
                    except ray.exceptions.RayError as e:
                        raise MixbatchError(f"prepare: a Ray task died on {job.unit.path} "
                                            f"({type(e).__name__}); rerun to resume: finished "
                                            "parts are kept") from None
                    parts = parts_url(remote_root, job.source)
                    if parts is not None:
                        fetch_part(job, parts)
                    bar.add(summary["documents"], summary["tokens"])
                    bar.advance()
    finally:
        for ref in refs:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
    return len(todo)


def clean_remote_parts(remote_root: RemotePath, source: str) -> None:
    """Delete a source's uploaded parts once its store is published."""
    parts = parts_url(remote_root, source)
    if parts is not None and parts.exists():
        remove(parts, recursive=True)
