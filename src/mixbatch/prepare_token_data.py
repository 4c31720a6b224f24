"""Existing token data as a source: Megatron ``.bin``/``.idx`` pairs and flat token arrays
(``.npy``, raw ``.bin``) are read in place, not copied; ``mixbatch prepare`` writes their
document spans, block checksums and ``meta.json`` into the source's store folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mixbatch.atomic import save_npy, write_json
from mixbatch.config import Config, SourceConfig, TokenFormat
from mixbatch.errors import ConfigError, DataError, StoreError
from mixbatch.io.fs import is_url
from mixbatch.prepare_manifest import SourceReport, write_block_sums
from mixbatch.store import (
    FORMAT_VERSION,
    META,
    SPANS,
    describe_file,
    flat_token_spans,
    open_flat_tokens,
    read_megatron_index,
)
from mixbatch.tokenizer import Tokenizer

__all__ = ["prepare_token_data"]


def prepare_token_data(name: str, src: SourceConfig, cfg: Config, folder: Path,
                       tok: Tokenizer) -> SourceReport:
    """Index a source of existing token data (Megatron ``.bin``/``.idx``, or a flat ``.npy``
    or ``.bin`` array) in place: ``spans.npy``, ``block_sums.npy`` and ``meta.json``."""
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
    block_sums = write_block_sums(folder, bin_path, checksums)
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
