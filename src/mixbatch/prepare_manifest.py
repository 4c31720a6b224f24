"""What ``mixbatch prepare`` made: the per-source report (documents, tokens, skips with
examples) and the store's manifest, ``meta.json``, written when a source's finished parts are
merged into ``tokens.bin`` + ``offsets.npy`` (+ ``second_lengths.npy``) and ``block_sums.npy``.
``meta.json`` is written last: it is the store's commit point.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mixbatch.atomic import atomic_path, save_npy, write_json
from mixbatch.config import SourceConfig
from mixbatch.errors import DataError, StoreError
from mixbatch.io import Format, SkipCounter
from mixbatch.prepare_worker import PARTS, Job, concat_lengths
from mixbatch.store import FORMAT_VERSION, META, OFFSETS, SECOND_LENGTHS, TOKENS, describe_file
from mixbatch.store_blocks import BLOCK_BYTES, BLOCKS, block_digests, default_hash
from mixbatch.tokenizer import Tokenizer

__all__ = ["PrepareReport", "SourceReport", "merge_parts", "write_block_sums"]


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


def merge_parts(name: str, folder: Path, jobs: list[Job], files: list[dict[str, Any]],
                fingerprint: str, tok: Tokenizer, dtype: np.dtype, src: SourceConfig,
                fmt: Format, file_skips: SkipCounter | None = None) -> SourceReport:
    """Concatenate a source's finished parts, in input order, into its store; ``meta.json``
    (the manifest: inputs, checksums, skips) is written last, then the parts are removed."""
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
    all_lengths = concat_lengths(lengths)
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
    block_sums = write_block_sums(folder, tokens_path, checksums)
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


def write_block_sums(folder: Path, tokens_path: Path,
                     checksums: dict[str, Any]) -> dict[str, Any]:
    """Write ``block_sums.npy`` for a token file, add its checksum; the ``block_sums`` entry of
    ``meta.json`` (:mod:`mixbatch.store_blocks`)."""
    name = default_hash()
    digests = block_digests(tokens_path, name, BLOCK_BYTES)
    save_npy(folder / BLOCKS, digests)
    checksums["block_sums"] = describe_file(folder / BLOCKS)
    return {"bytes": BLOCK_BYTES, "hash": name, "count": len(digests)}


def _part_seconds(part_dir: Path, jobs: list[Job], lengths: list[np.ndarray]) -> np.ndarray:
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
    return concat_lengths(seconds)
