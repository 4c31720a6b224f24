"""The inputs of ``mixbatch prepare`` and their identity: which files a text source reads, in
which format, the fingerprint of its settings, the keys of its work units, and whether its
store is up to date with them.

:func:`source_files` is the one way to read a raw source's texts in prepare's order (read units
in order, records in order): prepare, dedup, tokenizer training and the tokenizer-mixture audit
all go through it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mixbatch.config import Config, SourceConfig
from mixbatch.errors import ConfigError, DataError, StoreError
from mixbatch.io import (
    Format,
    OnError,
    ReadUnit,
    SkipCounter,
    expand_paths,
    infer_format,
    iter_texts,
    plan_units,
)
from mixbatch.io.fs import RemotePath
from mixbatch.store import FORMAT_VERSION, META, file_digest, open_store
from mixbatch.tokenizer import Tokenizer

__all__ = ["SourceFiles", "TextBatch", "file_states", "source_files", "source_fingerprint",
           "source_format", "source_paths", "store_up_to_date", "unit_key"]


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


class TextBatch(NamedTuple):
    """Consecutive texts of one read unit: ``texts[j]`` is record ``first + j`` of the unit's
    record stream (skipped records not counted), the position a dedup drop names."""

    unit: ReadUnit
    first: int
    texts: list[str]


@dataclass(frozen=True)
class SourceFiles:
    """A text source's input files, their format, and the texts they hold in prepare's order."""

    name: str
    src: SourceConfig
    paths: list[Path]
    fmt: Format

    def units(self, chunk_bytes: int = 64 << 20) -> list[ReadUnit]:
        """The read units prepare makes of these files (large plain files cut into ranges)."""
        return plan_units(self.paths, self.fmt, self.src.split, chunk_bytes)

    def batches(self, on_error: OnError | None = None, chunk_bytes: int = 64 << 20,
                skips: SkipCounter | None = None) -> Iterator[TextBatch]:
        """The texts, unit by unit, in batches. The units are planned now (a file that cannot be
        read fails here); records are read as the batches are taken. ``on_error`` defaults to
        the source's own; skipped records are counted in ``skips`` (a fresh counter if None)."""
        units = self.units(chunk_bytes)
        return self._batches(units, on_error or self.src.on_error,
                             skips if skips is not None else SkipCounter())

    def texts(self, on_error: OnError | None = None, chunk_bytes: int = 64 << 20,
              skips: SkipCounter | None = None) -> Iterator[str]:
        """The texts one by one (see :meth:`batches`)."""
        return (t for b in self.batches(on_error, chunk_bytes, skips) for t in b.texts)

    def _batches(self, units: list[ReadUnit], on_error: OnError,
                 skips: SkipCounter) -> Iterator[TextBatch]:
        src = self.src
        for unit in units:
            first = 0
            for texts in iter_texts(unit, src.text_field, src.split, on_error, skips):
                yield TextBatch(unit, first, texts)
                first += len(texts)


def source_files(name: str, src: SourceConfig, cfg: Config,
                 skips: SkipCounter | None = None) -> SourceFiles:
    """A text source's files (:func:`source_paths`, symlink skips counted in ``skips``) and their
    format (:func:`source_format`), each error naming the source's field."""
    paths = source_paths(name, src, cfg, skips)
    return SourceFiles(name, src, paths, source_format(name, src, paths))


def source_fingerprint(src: SourceConfig, fmt: Format, tok: Tokenizer, dtype: np.dtype) -> str:
    """The settings a source's store is built with, hashed: another value rebuilds it."""
    data = {"format_version": FORMAT_VERSION, "format": fmt.value, "text_field": src.text_field,
            "split": src.split.value, "tokenizer": tok.identity(), "dtype": dtype.name}
    if src.second_field is not None:  # absent otherwise, so that older stores stay up to date
        data["second_field"] = src.second_field
    blob = json.dumps(data, sort_keys=True).encode()
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


def unit_key(unit: ReadUnit, fingerprint: str, size: int, mtime_ns: int, etag: str = "",
             ctime_ns: int = 0) -> str:
    """The name of a unit's part: its byte range, its file's state and the source settings."""
    blob = f"{unit.path}\0{unit.start}\0{unit.end}\0{size}\0{mtime_ns}\0{fingerprint}"
    blob += f"\0{etag}" if etag else ""  # etag: remote inputs only
    blob += f"\0c{ctime_ns}" if ctime_ns else ""  # a restored mtime does not restore the ctime
    return hashlib.blake2b(blob.encode(), digest_size=10).hexdigest()


def file_states(paths: list[Path]) -> list[dict[str, Any]]:
    """What identifies each input file's bytes: size, mtime and ctime (local) or ETag (remote)."""
    out = []
    for p in paths:
        st = p.stat()
        out.append({"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        if isinstance(p, RemotePath):  # an object's version tag identifies its bytes
            out[-1]["etag"] = st.etag
        else:  # the change time: set by the kernel on every write, never by utime()
            out[-1]["ctime_ns"] = st.st_ctime_ns
    return out


def store_up_to_date(folder: Path, fingerprint: str, files: list[dict[str, Any]]) -> bool:
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
