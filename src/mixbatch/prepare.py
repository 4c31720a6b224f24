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
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import queue
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mixbatch.atomic import atomic_path, save_npy, write_json
from mixbatch.config import Config, SourceConfig, TokenFormat
from mixbatch.dedup import drop_records, plan_drops
from mixbatch.errors import ConfigError, DataError, MixbatchError, StoreError
from mixbatch.io import (
    Format,
    OnError,
    ReadUnit,
    SecondValues,
    SkipCounter,
    expand_paths,
    infer_format,
    iter_records,
    iter_texts,
    plan_units,
)
from mixbatch.io.fs import RemotePath, apply_storage_env, is_url, storage_env
from mixbatch.lock import FolderLock, exit_with_parent, remove_leftovers
from mixbatch.prepare_remote import input_identity, publish, remote_up_to_date, staging_root
from mixbatch.progress import RateProgress
from mixbatch.series.config import is_series_config
from mixbatch.store import (
    FORMAT_VERSION,
    META,
    OFFSETS,
    SECOND_LENGTHS,
    SPANS,
    TOKENS,
    describe_file,
    file_digest,
    flat_token_spans,
    open_flat_tokens,
    open_store,
    read_megatron_index,
)
from mixbatch.store_blocks import BLOCK_BYTES, BLOCKS, block_digests, default_hash
from mixbatch.tokenizer import Tokenizer, load_tokenizer, token_dtype

PARTS = ".parts"


@dataclass(frozen=True)
class _Job:
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


@dataclass
class SourceReport:
    name: str
    status: str = "built"  # built | up to date | partial
    files: int = 0
    documents: int = 0
    tokens: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    units_done: int = 0
    units_total: int = 0


@dataclass
class PrepareReport:
    sources: dict[str, SourceReport]
    seconds: float = 0.0
    units_run: int = 0

    @property
    def documents(self) -> int:
        return sum(s.documents for s in self.sources.values())

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.sources.values())


# ---------------------------------------------------------------------------------------------
# worker side
# ---------------------------------------------------------------------------------------------
_TOKENIZERS: dict[tuple[str, str, str | None], Tokenizer] = {}
_PROGRESS: Any = None  # a multiprocessing queue in worker processes, or a callable in-process


def _init_worker(progress_queue: Any, env: dict[str, str] | None = None) -> None:
    global _PROGRESS
    exit_with_parent()  # a kill -9 of prepare ends its workers too
    _PROGRESS = progress_queue
    if env is not None:  # the parent's object-storage variables now, not the forkserver's
        apply_storage_env(env)


def _report(docs: int, toks: int) -> None:
    if _PROGRESS is None:
        return
    if callable(_PROGRESS):
        _PROGRESS(docs, toks)
    else:
        _PROGRESS.put((docs, toks))


def _tokenizer_for(job: _Job) -> Tokenizer:
    key = (job.tokenizer, str(job.base_dir), job.eod_token)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = load_tokenizer(job.tokenizer, job.base_dir, job.eod_token)
    return _TOKENIZERS[key]


def _run_unit(job: _Job) -> dict[str, Any]:
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
    save_npy(job.part_dir / f"{job.key}.lengths.npy", _concat(lengths))
    if job.second_field is not None:
        save_npy(job.part_dir / f"{job.key}.second.npy", _concat(seconds))
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


def _batches(job: _Job, skips: SkipCounter) -> Iterator[tuple[list[str], SecondValues | None]]:
    """The unit's texts, each batch with its second values (``None`` without ``second_field``)."""
    on_error = OnError(job.on_error)
    if job.second_field is None:
        for texts in iter_texts(job.unit, job.text_field, _split(job.split), on_error, skips):
            yield texts, None
    else:
        yield from iter_records(job.unit, job.text_field, job.second_field, on_error, skips)


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays).astype(np.int64, copy=False) if arrays else np.empty(0, dtype=np.int64)


def _split(value: str):
    from mixbatch.io import Split

    return Split(value)


# ---------------------------------------------------------------------------------------------
# planning
# ---------------------------------------------------------------------------------------------
def source_paths(name: str, src: SourceConfig, cfg: Config,
                 skips: SkipCounter | None = None) -> list[Path]:
    """The input files of a text source; a pattern that matches nothing names the field.
    Symbolic links out of the source's folder are skipped (counted in ``skips``) unless the
    source sets ``follow_symlinks: true``."""
    try:
        return expand_paths(src.patterns, cfg.base_dir, src.format,
                            follow_symlinks=src.follow_symlinks,
                            skips=skips)
    except ConfigError as e:
        raise ConfigError(f"sources.{name}.path: {e}") from None


def source_format(name: str, src: SourceConfig, paths: list[Path]) -> Format:
    if isinstance(src.format, Format):
        return src.format
    formats = {infer_format(p) for p in paths}
    if len(formats) > 1:
        shown = ", ".join(sorted(f.value for f in formats))
        raise DataError(f"sources.{name}: files of several formats ({shown}); set `format:`")
    fmt = formats.pop()
    if fmt is Format.TEXT and src.second_field is not None:
        raise ConfigError(f"sources.{name}.second_field: {paths[0]} is read as text (inferred from "
                          "its name), which has no fields; second_field needs jsonl, parquet or "
                          "arrow records")
    return fmt


def _fingerprint(src: SourceConfig, fmt: Format, tok: Tokenizer, dtype: np.dtype) -> str:
    data = {"format_version": FORMAT_VERSION, "format": fmt.value, "text_field": src.text_field,
            "split": src.split.value, "tokenizer": tok.identity(), "dtype": dtype.name}
    if src.second_field is not None:  # absent otherwise, so that older stores stay up to date
        data["second_field"] = src.second_field
    blob = json.dumps(data, sort_keys=True).encode()
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


def _unit_key(unit: ReadUnit, fingerprint: str, size: int, mtime_ns: int, etag: str = "",
              ctime_ns: int = 0) -> str:
    blob = f"{unit.path}\0{unit.start}\0{unit.end}\0{size}\0{mtime_ns}\0{fingerprint}"
    blob += f"\0{etag}" if etag else ""  # etag: remote inputs only
    blob += f"\0c{ctime_ns}" if ctime_ns else ""  # a restored mtime does not restore the ctime
    return hashlib.blake2b(blob.encode(), digest_size=10).hexdigest()


def _file_states(paths: list[Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        st = p.stat()
        out.append({"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        if isinstance(p, RemotePath):  # an object's version tag identifies its bytes
            out[-1]["etag"] = st.etag
        else:  # the change time: set by the kernel on every write, never by utime()
            out[-1]["ctime_ns"] = st.st_ctime_ns
    return out


def _up_to_date(folder: Path, fingerprint: str, files: list[dict[str, Any]]) -> bool:
    """True when the store was built from these very files with these settings, and its files
    pass verification (every field checked, every block of ``tokens.bin`` hashed).

    What is trusted: an input whose size, mtime and ctime are those recorded is taken as
    unchanged. A same-size edit whose mtime was set back still moves the ctime (the kernel sets
    it on every write; no call sets it back), so such a file, or one touched or copied, is
    compared by its content checksum.
    """
    meta_path = folder / META
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if meta.get("format_version") != FORMAT_VERSION or meta.get("fingerprint") != fingerprint:
        return False
    old = meta.get("files", [])
    if [f["path"] for f in old] != [f["path"] for f in files]:
        return False
    for was, now in zip(old, files, strict=True):
        if was["size"] != now["size"] or was.get("etag") != now.get("etag"):
            return False
        if "etag" in now:  # a remote input: size and ETag say it all
            continue
        moved = was["mtime_ns"] != now["mtime_ns"] or was.get("ctime_ns") != now["ctime_ns"]
        if moved and file_digest(Path(now["path"])) != was["blake2b"]:
            return False
    if meta.get("block_sums") is None:  # built before block checksums: rebuilt once
        return False
    try:  # the data files must still match the metadata, block by block
        store = open_store(folder)
        if store.verifier is not None:
            store.verifier.verify_all()
    except (StoreError, OSError):
        return False
    return True


# ---------------------------------------------------------------------------------------------
# merging
# ---------------------------------------------------------------------------------------------
def _merge(name: str, folder: Path, jobs: list[_Job], files: list[dict[str, Any]],
           fingerprint: str, tok: Tokenizer, dtype: np.dtype, src: SourceConfig,
           fmt: Format, file_skips: SkipCounter | None = None) -> SourceReport:
    part_dir = folder / PARTS
    summaries = [json.loads((part_dir / f"{j.key}.json").read_text()) for j in jobs]
    report = SourceReport(name, files=len(files), units_done=len(jobs), units_total=len(jobs))
    skipped: Counter[str] = Counter(file_skips.counts if file_skips else {})
    examples: dict[str, list[str]] = {k: list(v) for k, v in
                                      (file_skips.examples if file_skips else {}).items()}
    for s in summaries:
        skipped.update(s["skipped"])
        for reason, ex in s["examples"].items():
            examples.setdefault(reason, [])
            examples[reason].extend(ex[: 5 - len(examples[reason])])
    lengths = [np.load(part_dir / f"{j.key}.lengths.npy") for j in jobs]
    all_lengths = np.concatenate(lengths) if lengths else np.empty(0, dtype=np.int64)
    seconds = None if src.second_field is None else _part_seconds(part_dir, jobs, lengths)
    report.documents = len(all_lengths)
    report.tokens = int(all_lengths.sum())
    report.skipped, report.examples = dict(skipped), examples
    if report.documents == 0:
        detail = f" ({', '.join(f'{k}: {v}' for k, v in skipped.items())} skipped)" if skipped else ""
        shown = ", ".join(f["path"] for f in files[:3]) + (", ..." if len(files) > 3 else "")
        raise DataError(f"sources.{name}: no documents in {len(files)} file(s): {shown}{detail}")

    # per-input-file checksums: blake2b of the file, or of its chunks' digests when it was split
    per_file: dict[str, list[dict[str, Any]]] = {}
    for s in summaries:
        per_file.setdefault(s["path"], []).append(s)
    file_meta = []
    for f in files:
        parts = per_file.get(f["path"], [])
        digest = parts[0]["raw_blake2b"] if len(parts) == 1 else hashlib.blake2b(
            "".join(p["raw_blake2b"] for p in parts).encode(), digest_size=16).hexdigest()
        file_meta.append({**f, "blake2b": digest, "chunks": len(parts),
                          "documents": sum(p["documents"] for p in parts),
                          "tokens": sum(p["tokens"] for p in parts),
                          "skipped": dict(sum((Counter(p["skipped"]) for p in parts), Counter()))})

    tokens_path = folder / TOKENS
    with atomic_path(tokens_path) as tmp, open(tmp, "wb") as out:
        for j in jobs:
            with open(part_dir / f"{j.key}.tokens", "rb") as part:
                shutil.copyfileobj(part, out, 16 << 20)
    offsets = np.zeros(len(all_lengths) + 1, dtype=np.int64)
    np.cumsum(all_lengths, out=offsets[1:])
    save_npy(folder / OFFSETS, offsets)
    checksums = {"tokens": describe_file(tokens_path), "index": describe_file(folder / OFFSETS)}
    block_sums = _write_block_sums(folder, tokens_path, checksums)
    if seconds is not None:
        save_npy(folder / SECOND_LENGTHS, seconds)
        checksums["second_lengths"] = describe_file(folder / SECOND_LENGTHS)
    meta = {
        "format_version": FORMAT_VERSION, "source": name, "fingerprint": fingerprint,
        "format": fmt.value, "text_field": src.text_field, "split": src.split.value,
        "dtype": dtype.name, "tokenizer": tok.identity(), "documents": report.documents,
        "tokens": report.tokens, "files": file_meta, "skipped": report.skipped,
        "skipped_examples": examples, "external": None, "second_field": src.second_field,
        "checksums": checksums, "block_sums": block_sums,
    }
    write_json(folder / META, meta)
    if seconds is None:  # left by an earlier build with a second_field
        (folder / SECOND_LENGTHS).unlink(missing_ok=True)
    shutil.rmtree(part_dir, ignore_errors=True)
    return report


def _write_block_sums(folder: Path, tokens_path: Path,
                      checksums: dict[str, Any]) -> dict[str, Any]:
    """Write ``block_sums.npy`` for a token file, add its checksum; the ``block_sums`` entry of
    ``meta.json`` (:mod:`mixbatch.store_blocks`)."""
    name = default_hash()
    digests = block_digests(tokens_path, name, BLOCK_BYTES)
    save_npy(folder / BLOCKS, digests)
    checksums["block_sums"] = describe_file(folder / BLOCKS)
    return {"bytes": BLOCK_BYTES, "hash": name, "count": len(digests)}


def _part_seconds(part_dir: Path, jobs: list[_Job], lengths: list[np.ndarray]) -> np.ndarray:
    """The parts' second lengths in order, each part checked against its document count."""
    seconds = []
    for j, lens in zip(jobs, lengths, strict=True):
        path = part_dir / f"{j.key}.second.npy"
        try:
            part = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise StoreError(f"{path}: unreadable part ({e}); delete it and its .json to redo "
                             "the part, or run `mixbatch prepare CONFIG --force`") from None
        if part.shape != lens.shape:
            raise StoreError(f"{path}: {part.shape[0] if part.ndim else 0} second lengths for "
                             f"{len(lens)} documents; run `mixbatch prepare CONFIG --force`")
        seconds.append(part)
    return _concat(seconds)


# ---------------------------------------------------------------------------------------------
# existing token data
# ---------------------------------------------------------------------------------------------
def _prepare_token_data(name: str, src: SourceConfig, cfg: Config, folder: Path,
                        tok: Tokenizer) -> SourceReport:
    remote = [p for p in src.patterns if is_url(p)]
    if remote:
        raise ConfigError(f"sources.{name}.path: {remote[0]}: token data ({src.format.value}) is "
                          "read in place from local files; copy it to a local path")
    paths = [cfg.resolve(p) for p in src.patterns]
    if len(paths) != 1:
        raise DataError(f"sources.{name}.path: token data takes one path, got {len(paths)}")
    path = Path(os.path.abspath(paths[0]))  # meta.json keeps absolute paths only
    header = 0
    if src.format == TokenFormat.MEGATRON:
        prefix = path.with_suffix("") if path.suffix in (".bin", ".idx") else path
        bin_path, idx_path = prefix.with_suffix(".bin"), prefix.with_suffix(".idx")
        for p in (bin_path, idx_path):
            if not p.is_file():
                raise DataError(f"sources.{name}.path: {p} not found (Megatron data needs "
                                f"{bin_path.name} and {idx_path.name})")
        dtype, spans = read_megatron_index(idx_path)
        n_tok = bin_path.stat().st_size // dtype.itemsize
        inputs = [bin_path, idx_path]
        eod = src.eod_id if src.eod_id is not None else tok.eod_id
    else:
        if not path.is_file():
            raise DataError(f"sources.{name}.path: {path} not found")
        if path.suffix not in (".npy", ".bin"):
            raise DataError(f"sources.{name}.path: {path}: a flat token array is a .npy or a "
                            "raw .bin file; rename it")
        arr, header = open_flat_tokens(path, src.dtype)
        dtype, n_tok, bin_path, inputs = arr.dtype, len(arr), path, [path]
        eod = int(src.eod_id)  # validated by the config
        spans = flat_token_spans(arr, eod)
    if len(spans) and int((spans[:, 0] + spans[:, 1]).max()) > n_tok:
        raise StoreError(f"{bin_path}: index points past the end of the token file "
                         f"({n_tok} tokens)")
    if len(spans) == 0:
        raise DataError(f"sources.{name}: no documents in {path}")
    folder.mkdir(parents=True, exist_ok=True)
    save_npy(folder / SPANS, spans)
    checksums = {"tokens": describe_file(bin_path), "index": describe_file(folder / SPANS)}
    block_sums = _write_block_sums(folder, bin_path, checksums)
    ident = tok.identity() | {"eod_id": int(eod)}
    meta = {
        "format_version": FORMAT_VERSION, "source": name, "format": src.format.value,
        "dtype": np.dtype(dtype).name, "tokenizer": ident, "documents": len(spans),
        "tokens": int(spans[:, 1].sum()), "skipped": {}, "skipped_examples": {},
        "files": [{"path": str(p), **describe_file(p, full=False)} for p in inputs],
        "external": {"kind": src.format.value, "tokens": str(bin_path), "header_bytes": header},
        "checksums": checksums, "block_sums": block_sums,
    }
    write_json(folder / META, meta)
    return SourceReport(name, files=len(inputs), documents=meta["documents"],
                        tokens=meta["tokens"], units_done=1, units_total=1)


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------
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
    plans: dict[str, tuple[list[_Job], list[dict[str, Any]], str, Format, SkipCounter]] = {}
    pending: list[_Job] = []
    drops = plan_drops(cfg, on_error, chunk_bytes)  # None without `dedup:`

    for name, src in cfg.sources.items():
        folder = root / name
        if force and folder.exists():
            (folder / META).unlink(missing_ok=True)  # the commit point goes first
            shutil.rmtree(folder)
        if src.is_token_data:
            if shard is None:
                reports[name] = _prepare_token_data(name, src, cfg, folder, tok)
            continue
        file_skips = SkipCounter()
        paths = source_paths(name, src, cfg, file_skips)
        fmt = source_format(name, src, paths)
        files = _file_states(paths)
        fp = _fingerprint(src, fmt, tok, dtype)
        fp = drops.fingerprint(name, fp) if drops is not None else fp
        there = None if remote is None or force else remote_up_to_date(remote / name, fp, files)
        if there is not None and not _up_to_date(folder, fp, files):
            reports[name] = SourceReport(name, "up to date", len(files), there["documents"],
                                         there["tokens"], there["skipped"],
                                         there.get("skipped_examples", {}))
            continue
        if _up_to_date(folder, fp, files):
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
        for unit in plan_units(paths, fmt, src.split, chunk_bytes):
            st = states[str(unit.path)]
            key = _unit_key(unit, fp, st["size"], st["mtime_ns"], st.get("etag", ""),
                            st.get("ctime_ns", 0))
            jobs.append(_Job(name, unit, key, part_dir, src.text_field, src.split.value,
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
            reports[name] = _merge(name, root / name, jobs, files, fp, tok, dtype,
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


def _all_jobs(plans: dict[str, tuple[list[_Job], Any, Any, Any, Any]]) -> list[_Job]:
    return [j for jobs, *_ in plans.values() for j in jobs]


#: below this much input per extra process, starting processes costs more than it saves
_BYTES_PER_PROCESS = 8 << 20


def _run_jobs(jobs: list[_Job], workers: int | None, show: bool) -> None:
    if not jobs:
        return
    if workers is None:
        size = sum(((j.unit.end if j.unit.end is not None else j.unit.path.stat().st_size)
                    - j.unit.start) for j in jobs)
        workers = min(os.cpu_count() or 1, max(1, size // _BYTES_PER_PROCESS))
    workers = max(1, min(workers, len(jobs)))
    global _PROGRESS
    with RateProgress("tokenising", total=len(jobs), enabled=show) as bar:
        if workers == 1:
            _PROGRESS = bar.add
            try:
                for job in jobs:
                    _run_unit(job)
                    bar.advance()
            finally:
                _PROGRESS = None
            return
        ctx = mp.get_context("forkserver")
        # workers fork with prepare imported; the forkserver dies with this process
        ctx.set_forkserver_preload(["mixbatch._die_with_parent", "mixbatch.prepare"])
        q = ctx.Queue()
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
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
