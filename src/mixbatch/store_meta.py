"""What a store's ``meta.json`` and index may hold: every field checked before it is used.

A store folder may come from anywhere (copied, downloaded, edited), so nothing in it goes to
``np.memmap`` or to ``open`` unchecked: the token dtype must be one of the integer dtypes a store
holds (an ``object`` dtype would make NumPy read pointers out of the file), counts are
non-negative integers, checksums have their fields, and ``external.tokens`` (existing token data
read in place) must be an absolute path to a regular token file (``.bin``/``.npy``) that the
metadata also lists among its input files, inside ``root`` when the caller knows the source's
configured path. The offsets (``offsets.npy``) must start at 0, never decrease and end at the
token count; the spans (``spans.npy``) of existing data must lie inside the token file.
Each problem is one :class:`~mixbatch.errors.StoreError` line naming the file and the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mixbatch.errors import StoreError

__all__ = ["TOKEN_DTYPES", "check_index", "check_meta", "external_tokens_path",
           "token_data_root"]

#: the token dtypes a store can hold (ours: uint16/uint32; Megatron and flat arrays: the rest)
TOKEN_DTYPES = frozenset({"uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64",
                          "int64"})
_EXTERNAL_SUFFIXES = {"megatron": (".bin",), "tokens": (".bin", ".npy")}
_REBUILD = "run `mixbatch prepare CONFIG --force` to rebuild the store"
_CHUNK = 1 << 24  # index entries checked at once


def _bad(where: str, field: str, what: str) -> StoreError:
    return StoreError(f"{where}: field {field!r} {what}; {_REBUILD}")


def _count(meta: dict[str, Any], key: str, where: str, field: str | None = None) -> int:
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v >= 1 << 62:
        raise _bad(where, field or key, f"must be an integer >= 0, got {str(v)[:40]!r}")
    return v


def _file_check(value: Any, where: str, field: str) -> None:
    if not isinstance(value, dict):
        raise _bad(where, field, "must be an object with size and quick checksum")
    _count(value, "size", where, f"{field}.size")
    if not isinstance(value.get("quick"), str):
        raise _bad(where, field + ".quick", "must be a checksum string")
    if "blake2b" in value and not isinstance(value["blake2b"], str):
        raise _bad(where, field + ".blake2b", "must be a checksum string")


def check_meta(meta: dict[str, Any], where: str) -> dict[str, Any]:
    """Check every field of a parsed ``meta.json`` that reading the store relies on."""
    if not isinstance(meta.get("source"), str):
        raise _bad(where, "source", "must be the source's name")
    dtype = meta.get("dtype")
    if not isinstance(dtype, str) or dtype not in TOKEN_DTYPES:
        raise _bad(where, "dtype", f"must be one of {', '.join(sorted(TOKEN_DTYPES))}, got "
                   f"{str(dtype)[:40]!r}")
    _count(meta, "documents", where)
    _count(meta, "tokens", where)
    tok = meta.get("tokenizer")
    if not isinstance(tok, dict):
        raise _bad(where, "tokenizer", "must be an object")
    vocab = _count(tok, "vocab_size", where, "tokenizer.vocab_size")
    if vocab < 1:
        raise _bad(where, "tokenizer.vocab_size", "must be >= 1")
    eod = tok.get("eod_id")
    if isinstance(eod, bool) or not isinstance(eod, int):
        raise _bad(where, "tokenizer.eod_id", f"must be an integer, got {str(eod)[:40]!r}")
    checks = meta.get("checksums")
    if not isinstance(checks, dict):
        raise _bad(where, "checksums", "must be an object")
    for key in ("tokens", "index"):
        _file_check(checks.get(key), where, f"checksums.{key}")
    for key in ("second_lengths", "blocks", "block_sums"):
        if key in checks:
            _file_check(checks[key], where, f"checksums.{key}")
    ext = meta.get("external")
    if ext is not None:
        if not isinstance(ext, dict) or not isinstance(ext.get("tokens"), str):
            raise _bad(where, "external", "must be null or an object with a tokens path")
        if ext.get("kind") not in _EXTERNAL_SUFFIXES:
            raise _bad(where, "external.kind", f"must be one of {', '.join(_EXTERNAL_SUFFIXES)}")
        _count(ext, "header_bytes", where, "external.header_bytes")
    sums = meta.get("block_sums")
    if sums is not None:
        if not isinstance(sums, dict) or not isinstance(sums.get("hash"), str):
            raise _bad(where, "block_sums", "must be an object with bytes, hash and count")
        size = _count(sums, "bytes", where, "block_sums.bytes")
        if size < 4096 or size % 8:
            raise _bad(where, "block_sums.bytes", f"must be a multiple of 8 >= 4096, got {size}")
        _count(sums, "count", where, "block_sums.count")
        if "block_sums" not in checks:
            raise _bad(where, "checksums.block_sums", "is missing")
    return meta


def external_tokens_path(meta: dict[str, Any], where: str, root: Path | None = None) -> Path:
    """The checked path of existing token data that a store reads in place."""
    ext = meta["external"]
    raw = ext["tokens"]
    path = Path(raw)
    if "\0" in raw or not path.is_absolute() or ".." in path.parts:
        raise _bad(where, "external.tokens", f"must be an absolute path, got {raw[:80]!r}")
    if path.suffix not in _EXTERNAL_SUFFIXES[ext["kind"]]:
        raise _bad(where, "external.tokens", f"must name a {'/'.join(_EXTERNAL_SUFFIXES[ext['kind']])} "
                   f"token file, got {raw[:80]!r}")
    listed = {f.get("path") for f in meta.get("files", []) if isinstance(f, dict)}
    if raw not in listed:
        raise _bad(where, "external.tokens", f"{raw[:80]!r} is not among the store's input files")
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError) as e:
        raise StoreError(f"{path}: token data of {where} cannot be read ({e}); {_REBUILD}") from None
    if not real.is_file():
        raise _bad(where, "external.tokens", f"{raw[:80]!r} is not a regular file")
    if root is not None:
        base = Path(root).resolve()
        if real != base and base not in real.parents:
            raise _bad(where, "external.tokens", f"{raw[:80]!r} lies outside the source's "
                       f"configured path {base}")
    return path


def check_index(index: np.ndarray, external: bool, n_tok: int, documents: int,
                where: str) -> None:
    """Offsets: 1-D int64, ``documents + 1`` entries, from 0, non-decreasing, ending at the
    token count. Spans: (documents, 2) int64, starts and lengths >= 0, inside the token file."""
    want_shape = (documents, 2) if external else (documents + 1,)
    if index.dtype != np.int64 or index.shape != want_shape:
        raise StoreError(f"{where}: expected int64 of shape {want_shape}, got {index.dtype} "
                         f"{index.shape}; {_REBUILD}")
    if external:
        for a in range(0, documents, _CHUNK):
            part = np.asarray(index[a: a + _CHUNK])
            s, n = part[:, 0], part[:, 1]
            if (s < 0).any() or (n < 0).any() or (s > n_tok - n).any():
                bad = int(np.flatnonzero((s < 0) | (n < 0) | (s > n_tok - n))[0]) + a
                raise StoreError(f"{where}: span {bad} ({int(index[bad, 0])}, "
                                 f"{int(index[bad, 1])}) lies outside the {n_tok} tokens; "
                                 f"{_REBUILD}")
        return
    if int(index[0]) != 0 or int(index[-1]) != n_tok:
        raise StoreError(f"{where}: offsets run from {int(index[0])} to {int(index[-1])}, the "
                         f"token file holds 0..{n_tok}; {_REBUILD}")
    for a in range(0, documents, _CHUNK):
        part = np.asarray(index[a: a + _CHUNK + 1])
        step = np.diff(part)
        if (step < 0).any():
            bad = int(np.flatnonzero(step < 0)[0]) + a
            raise StoreError(f"{where}: offsets decrease at document {bad} ({int(index[bad])} "
                             f"-> {int(index[bad + 1])}); {_REBUILD}")


def token_data_root(cfg: Any, name: str) -> Path | None:
    """The folder that a source's existing token data must lie in (the folder of its configured
    path), or ``None`` for a source that is tokenised by ``prepare``."""
    src = cfg.sources[name]
    if not src.is_token_data or not src.patterns:
        return None
    return Path(os.path.abspath(cfg.resolve(src.patterns[0]))).parent
