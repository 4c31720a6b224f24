"""Token stores on object storage: read by byte ranges through a verified local cache.

A store at a URL has the files of a local store (``meta.json``, ``tokens.bin``,
``offsets.npy``, maybe ``second_lengths.npy``) plus ``blocks.npy``: the blake2b (8 bytes) of
every ``block_bytes`` block of ``tokens.bin`` (:func:`block_digests`), written by
:func:`publish_store` (``mixbatch prepare`` with a URL ``store:``; :mod:`mixbatch.store_publish`).
``meta.json`` is uploaded last and removed first on a rewrite: it is the commit point, as on disk.

Opening one (:func:`open_remote_store`, here) reads ``meta.json``, fetches the small index files
whole into the cache (verified against their checksums, pinned while in use) and returns a
:class:`~mixbatch.store.TokenStore` whose ``tokens`` is a :class:`RemoteTokens`
(:mod:`mixbatch.store_remote_tokens`): slicing or fancy-indexing it fetches only the blocks that
hold the asked tokens, several ranges at once, each checked against ``blocks.npy`` before it
enters the cache; a mismatch is fetched again once, then it is a
:class:`~mixbatch.io.retry.RemoteError` naming the URL, the bytes and the object's version tags. The
loader's code is unchanged: it indexes ``store.tokens`` as it indexes a memory map.

Prefetch: :meth:`TokenStore.prefetch <mixbatch.store.TokenStore.prefetch>` takes document ids the
caller will read soon (the planned order) and fetches their blocks in background threads.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import IO, Any

import numpy as np

from mixbatch.atomic import json_digest, write_text
from mixbatch.errors import ConfigError, StoreError
from mixbatch.io.cache import CacheSettings, StoreCache, check_writable, open_pinned
from mixbatch.io.fs import RemoteError, RemotePath, download_file, read_range
from mixbatch.io.skips import one_line
from mixbatch.store import (
    META,
    OFFSETS,
    SECOND_LENGTHS,
    TOKENS,
    TokenStore,
    file_digest,
    parse_meta,
)
from mixbatch.store_publish import (
    BLOCK_BYTES,
    BLOCKS,
    block_digests,
    publish_store,
    read_remote_meta,
)
from mixbatch.store_remote_tokens import RUN_BLOCKS, RemoteTokens

__all__ = ["BLOCKS", "BLOCK_BYTES", "RUN_BLOCKS", "RemoteTokens", "block_digests",
           "open_remote_store", "publish_store", "read_remote_meta"]


def open_remote_store(url: RemotePath, verify: bool = False) -> Any:
    """Open the store at ``url`` (see the module docstring); ``verify=True`` fetches and checks
    every block now."""

    settings: CacheSettings = url.options if isinstance(url.options, CacheSettings) \
        else CacheSettings()
    check_writable(settings.dir)
    meta_url = url / META
    try:
        raw = read_range(meta_url, 0, None)
    except Exception as e:
        if "not found" in str(e) or "does not exist" in str(e):
            raise StoreError(f"{url}: no token store here (no {META}); run `mixbatch prepare "
                             "CONFIG`") from None
        raise
    meta = parse_meta(raw, str(meta_url))
    if meta.get("external") is not None:
        raise StoreError(f"{url}: a store that reads token data in place is local only")
    checks = meta["checksums"]
    key = json_digest([checks["tokens"], checks["index"]], size=12)
    blocks_meta = meta.get("blocks") or {}
    block_bytes = int(blocks_meta.get("bytes", BLOCK_BYTES))
    settings.check(block_bytes)
    cache = StoreCache(settings, key)
    index = _load_pinned(_whole_file(url / OFFSETS, checks["index"], cache, OFFSETS), True)
    digests = None
    if "blocks" in checks:
        digests = _load_pinned(_whole_file(url / BLOCKS, checks["blocks"], cache, BLOCKS),
                               False)
    second = None
    if "second_lengths" in checks:
        second = _load_pinned(_whole_file(url / SECOND_LENGTHS, checks["second_lengths"], cache,
                                          SECOND_LENGTHS), True)
    tok_url = url / TOKENS
    st = tok_url.fresh_stat()
    want = checks["tokens"]["size"]
    if st.st_size != want:
        raise RemoteError(f"{tok_url}: {st.st_size} bytes, the store metadata says {want}: the "
                          "object changed since the store was written; prepare the store again")
    dtype = np.dtype(meta["dtype"])
    if settings.whole or verify:
        if settings.max_bytes < want:
            raise ConfigError(f"cache.max_bytes: {settings.max_bytes} bytes is smaller than "
                              f"{tok_url} ({want} bytes), which `whole: true` downloads whole")
        pinned = _whole_file(tok_url, checks["tokens"], cache, TOKENS)
        n_tok = want // dtype.itemsize
        if n_tok:
            mapped = np.memmap(pinned.name, dtype=dtype, mode="r", shape=(n_tok,))
            weakref.finalize(mapped, pinned.close)  # pinned while the map lives
            tokens: Any = mapped.view(np.ndarray)
        else:
            pinned.close()
            tokens = np.empty(0, dtype=dtype)
    else:
        if digests is not None and len(digests) != -(-want // block_bytes):
            raise StoreError(f"{url / BLOCKS}: {len(digests)} block checksums for {want} bytes "
                             f"in blocks of {block_bytes}; prepare the store again")
        tokens = RemoteTokens(tok_url, dtype, want, block_bytes, digests, st.etag, cache)
    starts, lengths = index[:-1], np.diff(index)
    if len(lengths) != meta["documents"]:
        raise StoreError(f"{url / OFFSETS}: {len(lengths)} documents, metadata says "
                         f"{meta['documents']}; prepare the store again")

    return TokenStore(meta["source"], url, tokens, starts, lengths, meta,
                      None if second is None else second.view(np.ndarray))


class _Mismatch(Exception):
    """A downloaded file that does not match the store's checksum."""


def _whole_file(src: RemotePath, want: dict[str, Any], cache: StoreCache, name: str) -> IO[bytes]:
    """A store file, downloaded whole into the cache and verified (once: a cached copy of the
    right size and checksum is used as it is), returned open and pinned (the cache does not
    evict it until the caller closes it); a mismatch is downloaded once more, then it is a
    :class:`RemoteError`."""

    path = cache.path(name)
    # written next to the file once it verified; the cache is content-addressed, so a file of
    # the right size with this marker is not hashed again on every open
    marker = cache.root / f".{name}.verified"
    digest = str(want.get("blake2b", want.get("quick", "")))

    def good(p: Path) -> bool:
        return p.is_file() and p.stat().st_size == want["size"] and (
            "blake2b" not in want or file_digest(p) == want["blake2b"])

    def fill(tmp: Path) -> None:
        download_file(src, tmp, fsync=False)
        if not good(tmp):
            raise _Mismatch(tmp.stat().st_size)

    with cache.locked(1 << 40):  # one process downloads, the others wait and find it there
        pinned = open_pinned(path)
        if pinned is not None:
            size = os.fstat(pinned.fileno()).st_size
            if size == want["size"] and marker.is_file() and marker.read_text() == digest:
                os.utime(pinned.fileno())
                return pinned
            if good(path):
                write_text(marker, digest)
                os.utime(pinned.fileno())
                return pinned
            pinned.close()
        marker.unlink(missing_ok=True)
        for attempt in range(2):
            try:
                cache.put_file(name, want["size"], fill)
            except _Mismatch as e:
                if attempt:
                    raise RemoteError(one_line(
                        f"{src}: {e.args[0]} bytes that do not match the store's checksum "
                        f"(metadata says {want['size']} bytes); the object changed since the "
                        "store was written; prepare the store again")) from None
                continue
            write_text(marker, digest)
            pinned = open_pinned(path)
            if pinned is not None:  # (under the record lock, so nothing replaced it)
                return pinned
    raise RemoteError(f"{src}: the cached copy of {name} vanished while it was opened")


def _load_pinned(f: IO[bytes], mmap: bool) -> np.ndarray:
    """``np.load`` of a pinned cache file; a memory map keeps the pin for as long as it lives,
    anything else drops it once read."""
    if not mmap:
        with f:
            return np.load(f, allow_pickle=False)
    arr = np.load(f.name, mmap_mode="r", allow_pickle=False)
    weakref.finalize(arr, f.close)
    return arr
