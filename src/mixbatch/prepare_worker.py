"""One work unit of ``mixbatch prepare`` tokenised into a *part*, in a worker process or in-process.

A unit (a file, or a newline-aligned byte range of a large plain file) becomes
``<key>.tokens`` + ``<key>.lengths.npy`` (+ ``<key>.second.npy`` with a ``second_field``) under
``<store>/<source>/.parts/``; the part is finished when its summary ``<key>.json`` exists
(written last, by rename). :mod:`mixbatch.prepare` plans the units and runs them (a local
process pool, or Ray: :mod:`mixbatch.prepare_ray`); :mod:`mixbatch.prepare_manifest` merges the
finished parts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixbatch.atomic import atomic_path, save_npy, write_json
from mixbatch.dedup import drop_records
from mixbatch.io import OnError, ReadUnit, SecondValues, SkipCounter, Split, iter_records, iter_texts
from mixbatch.io.fs import RemotePath, apply_storage_env
from mixbatch.lock import exit_with_parent
from mixbatch.prepare_remote import input_identity
from mixbatch.store import file_digest
from mixbatch.tokenizer import Tokenizer, load_tokenizer

__all__ = ["PARTS", "Job", "concat_lengths", "init_worker", "run_unit", "set_progress"]

#: the folder of a source's parts, under its store folder
PARTS = ".parts"


@dataclass(frozen=True)
class Job:
    """Everything a worker needs for one unit; plain data, so it crosses process boundaries."""

    source: str
    unit: ReadUnit
    key: str
    part_dir: Path
    text_field: str
    split: str
    on_error: str
    tokenizer: str
    base_dir: Path
    eod_token: str | None
    dtype: str
    second_field: str | None = None
    drop: tuple[int, ...] = ()  # duplicates to drop (mixbatch.dedup.DropPlan)


_TOKENIZERS: dict[tuple[str, str, str | None], Tokenizer] = {}
_PROGRESS: Any = None  # a multiprocessing queue in worker processes, or a callable in-process


def init_worker(progress_queue: Any, env: dict[str, str] | None = None) -> None:
    """A pool worker's initialiser: progress goes to ``progress_queue``."""
    global _PROGRESS
    exit_with_parent()  # a kill -9 of prepare ends its workers too
    _PROGRESS = progress_queue
    if env is not None:  # the parent's object-storage variables now, not the forkserver's
        apply_storage_env(env)


def set_progress(sink: Any) -> None:
    """Where this process reports ``(documents, tokens)`` as it tokenises: a callable, a queue,
    or ``None`` (nowhere)."""
    global _PROGRESS
    _PROGRESS = sink


def _report(docs: int, toks: int) -> None:
    if _PROGRESS is None:
        return
    if callable(_PROGRESS):
        _PROGRESS(docs, toks)
    else:
        _PROGRESS.put((docs, toks))


def _tokenizer_for(job: Job) -> Tokenizer:
    key = (job.tokenizer, str(job.base_dir), job.eod_token)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = load_tokenizer(job.tokenizer, job.base_dir, job.eod_token)
    return _TOKENIZERS[key]


def run_unit(job: Job) -> dict[str, Any]:
    """Tokenise one unit into ``<key>.tokens`` + ``<key>.lengths.npy`` (+ ``<key>.second.npy``
    with a ``second_field``), then write ``<key>.json``."""
    tok = _tokenizer_for(job)
    dtype = np.dtype(job.dtype)
    skips = SkipCounter()
    lengths: list[np.ndarray] = []
    seconds: list[np.ndarray] = []
    n_docs = n_toks = 0
    tok_path = job.part_dir / f"{job.key}.tokens"
    with atomic_path(tok_path) as tmp, open(tmp, "wb") as out:
        for texts, second in drop_records(_batches(job, skips), job.drop, skips,
                                          str(job.unit.path)):
            kept = [t for t in texts if t]
            if len(kept) < len(texts):
                skips.add("empty_document", len(texts) - len(kept))
            if not kept:
                continue
            if second is not None:
                second_lengths = second.lengths(lambda strings: tok.encode_batch(strings)[1])
                if len(kept) < len(texts):  # an empty document goes with its second value
                    second_lengths = second_lengths[np.fromiter(map(bool, texts), bool, len(texts))]
                seconds.append(second_lengths)
            flat, lens = tok.encode_batch(kept)
            out.write(np.ascontiguousarray(flat, dtype=dtype).tobytes())
            lengths.append(lens)
            n_docs += len(kept)
            n_toks += int(lens.sum())
            _report(len(kept), int(lens.sum()))
    save_npy(job.part_dir / f"{job.key}.lengths.npy", concat_lengths(lengths))
    if job.second_field is not None:
        save_npy(job.part_dir / f"{job.key}.second.npy", concat_lengths(seconds))
    unit = job.unit
    summary = {
        "key": job.key, "path": str(unit.path), "start": unit.start, "end": unit.end,
        "documents": n_docs, "tokens": n_toks,
        "skipped": dict(skips.counts), "examples": {k: list(v) for k, v in skips.examples.items()},
        "raw_blake2b": (input_identity(unit.path, unit.start, unit.end)
                        if isinstance(unit.path, RemotePath)
                        else file_digest(unit.path, unit.start, unit.end)),
    }
    write_json(job.part_dir / f"{job.key}.json", summary)
    return summary


def _batches(job: Job, skips: SkipCounter) -> Iterator[tuple[list[str], SecondValues | None]]:
    """The unit's texts, each batch with its second values (``None`` without ``second_field``)."""
    on_error = OnError(job.on_error)
    if job.second_field is None:
        for texts in iter_texts(job.unit, job.text_field, Split(job.split), on_error, skips):
            yield texts, None
    else:
        yield from iter_records(job.unit, job.text_field, job.second_field, on_error, skips)


def concat_lengths(arrays: list[np.ndarray]) -> np.ndarray:
    """The arrays back to back as int64 (an empty int64 array for none)."""
    return np.concatenate(arrays).astype(np.int64, copy=False) if arrays else np.empty(0, dtype=np.int64)
