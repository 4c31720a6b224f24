"""Token stores on object storage: read by byte ranges through a verified local cache.

A store at a URL has the files of a local store (``meta.json``, ``tokens.bin``,
``offsets.npy``, maybe ``second_lengths.npy``) plus ``blocks.npy``: the blake2b (8 bytes) of
every ``block_bytes`` block of ``tokens.bin`` (:func:`block_digests`), written by
:func:`publish_store` (``mixbatch prepare`` with a URL ``store:``). ``meta.json`` is uploaded
last and removed first on a rewrite: it is the commit point, as on disk.

Opening one (:func:`open_remote_store`) reads ``meta.json``, fetches the small index files whole
(verified against their checksums) and returns a :class:`~mixbatch.store.TokenStore` whose
``tokens`` is a :class:`RemoteTokens`: slicing or fancy-indexing it fetches only the blocks that
hold the asked tokens, several ranges at once, each checked against ``blocks.npy`` before it
enters the cache; a mismatch is fetched again once, then it is a
:class:`~mixbatch.io.retry.RemoteError` naming the URL, the bytes and the object's version tags. The
loader's code is unchanged: it indexes ``store.tokens`` as it indexes a memory map.

Prefetch: :meth:`RemoteTokenStore.prefetch` takes document ids the caller will read soon (the
planned order) and fetches their blocks in background threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import numpy as np

from mixbatch.atomic import json_digest, save_npy, write_text
from mixbatch.errors import ConfigError, StoreError
from mixbatch.io.cache import CacheSettings, StoreCache, check_writable, open_pinned
from mixbatch.io.fs import (
    RemoteError,
    RemotePath,
    download_file,
    read_range,
    read_ranges,
    remove,
    upload_file,
    write_bytes,
)
from mixbatch.io.skips import one_line
from mixbatch.store import (
    META,
    OFFSETS,
    SECOND_LENGTHS,
    TOKENS,
    TokenStore,
    describe_file,
    file_digest,
    parse_meta,
)

BLOCKS = "blocks.npy"
#: default bytes per verified block of tokens.bin (a multiple of 8, so no token straddles two)
BLOCK_BYTES = 1 << 20
#: blocks fetched by one range request at most
RUN_BLOCKS = 16


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def _digest(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=8).digest()


def block_digests(path: Path, block_bytes: int = BLOCK_BYTES) -> np.ndarray:
    """The 8-byte blake2b of each ``block_bytes`` block of a file, as a (blocks, 8) uint8 array."""
    if block_bytes <= 0 or block_bytes % 8:
        raise ValueError(f"block_bytes must be a positive multiple of 8, got {block_bytes}")
    out = []
    with open(path, "rb") as f:
        while True:
            block = f.read(block_bytes)
            if not block:
                break
            out.append(np.frombuffer(_digest(block), dtype=np.uint8))
    return np.stack(out) if out else np.empty((0, 8), dtype=np.uint8)


def publish_store(folder: Path, dest: RemotePath, block_bytes: int = BLOCK_BYTES) -> bool:
    """Upload a prepared local store folder to ``dest``; return whether anything was uploaded.

    Nothing is uploaded when ``dest`` already holds this very store (same ``meta.json``).
    Otherwise ``dest/meta.json`` is removed first, the data files and ``blocks.npy`` are
    uploaded, and the new ``meta.json`` (with a ``blocks`` entry) goes last.
    """

    meta = json.loads((folder / META).read_text(encoding="utf-8"))
    if meta.get("external") is not None:
        raise StoreError(f"{folder}: a store that reads token data in place cannot be uploaded; "
                         "point the source at the data's URL instead")
    blocks_path = folder / BLOCKS
    digests = block_digests(folder / TOKENS, block_bytes)
    save_npy(blocks_path, digests)
    meta["blocks"] = {"bytes": block_bytes, "count": len(digests)}
    meta["checksums"]["blocks"] = describe_file(blocks_path)
    body = (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode()
    meta_url = dest / META
    try:
        if meta_url.is_file() and read_range(meta_url, 0, None) == body:
            return False
    except StoreError:
        pass
    remove(meta_url)
    names = [TOKENS, OFFSETS, BLOCKS]
    if (folder / SECOND_LENGTHS).is_file() and "second_lengths" in meta["checksums"]:
        names.append(SECOND_LENGTHS)
    for name in names:
        upload_file(folder / name, dest / name)
    write_bytes(meta_url, body)
    return True


def read_remote_meta(url: RemotePath) -> dict[str, Any] | None:
    """The parsed ``meta.json`` of a store at ``url``, or ``None`` when there is none."""

    path = url / META
    if not path.is_file():
        return None
    return json.loads(read_range(path, 0, None).decode("utf-8"))


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + c)`` for every pair, vectorised."""
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, np.int64)
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(starts, counts) + (np.arange(total, dtype=np.int64) - offsets)


class RemoteTokens:
    """``tokens.bin`` of a remote store, indexed like a 1-D NumPy array (slices, integers and
    integer arrays); only the blocks holding the asked tokens are fetched."""

    ndim = 1

    def __init__(self, url: RemotePath, dtype: np.dtype, size_bytes: int, block_bytes: int,
                 digests: np.ndarray | None, etag: str, cache: StoreCache) -> None:
        if block_bytes % 8:
            raise StoreError(f"{url}: block size {block_bytes} is not a multiple of 8")
        self.url = url
        self.dtype = np.dtype(dtype)
        self.size_bytes = size_bytes
        self.block_bytes = block_bytes
        self.n_blocks = -(-size_bytes // block_bytes)
        self.digests = digests
        self.etag = etag
        self.cache = cache
        self.shape = (size_bytes // self.dtype.itemsize,)
        self.fetched_bytes = 0  # bytes fetched from the server by this process
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._mu = threading.Lock()
        self._memory: OrderedDict[int, np.ndarray] = OrderedDict()
        self._memory_bytes = 0
        self._inflight: dict[int, threading.Event] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for k in ("_mu", "_memory", "_inflight", "_pool", "_pending", "_memory_bytes", "_pid"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def _check_pid(self) -> None:
        if self._pid != os.getpid():  # forked: locks and threads do not survive a fork
            self._reset()

    @property
    def size(self) -> int:
        return self.shape[0]

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def _numba_type_(self) -> Any:
        # asked by a compiled kernel handed this object instead of an array: say what to do
        raise StoreError(f"{self.url}: this store is read by byte ranges, which the caller's "
                         "compiled read path does not take; set `cache: {whole: true}` (one "
                         "download, then a memory map) or read through TokenStore.span_source")

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError(f"{self.url}: a remote token array is not read whole; index it "
                        "(or open the store with `cache.whole: true`)")

    def __getitem__(self, key: Any) -> np.ndarray:
        n = self.shape[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                raise IndexError("remote token arrays take slices with step 1")
            return self.take(np.arange(start, max(start, stop), dtype=np.int64))
        if isinstance(key, int | np.integer):
            i = int(key) + (n if key < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {key} out of range for {n} tokens")
            return self.take(np.array([i], dtype=np.int64))[0]
        return self.take(np.asarray(key))

    def take(self, idx: np.ndarray) -> np.ndarray:
        """The tokens at ``idx`` (any shape of non-negative integer positions)."""
        idx = np.asarray(idx)
        if idx.dtype.kind not in "iu":
            raise IndexError(f"remote token arrays take integer indices, got {idx.dtype}")
        flat = idx.reshape(-1).astype(np.int64, copy=False)
        out = np.empty(flat.shape, dtype=self.dtype)
        if flat.size == 0:
            return out.reshape(idx.shape)
        if flat.min() < 0 or flat.max() >= self.shape[0]:
            raise IndexError(f"token index out of range for {self.shape[0]} tokens")
        item = self.dtype.itemsize
        per_block = self.block_bytes // item
        block_of = flat // per_block
        blocks = np.unique(block_of)
        data = self.blocks(blocks)
        if len(blocks) == 1:
            out[:] = data[int(blocks[0])][flat - blocks[0] * per_block]
            return out.reshape(idx.shape)
        order = np.argsort(block_of, kind="stable")
        bounds = [*np.searchsorted(block_of[order], blocks, side="left").tolist(), len(order)]
        for k, b in enumerate(blocks.tolist()):
            sel = order[bounds[k]: bounds[k + 1]]
            out[sel] = data[b][flat[sel] - b * per_block]
        return out.reshape(idx.shape)

    def blocks_of_spans(self, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The block numbers that hold the token spans ``[start, start + length)``."""
        starts = np.asarray(starts, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64)
        keep = lengths > 0
        if not keep.any():
            return np.empty(0, dtype=np.int64)
        per_block = self.block_bytes // self.dtype.itemsize
        first = starts[keep] // per_block
        last = (starts[keep] + lengths[keep] - 1) // per_block
        return np.unique(_ranges(first, last - first + 1))

    # ---- blocks ---------------------------------------------------------------------------
    def blocks(self, wanted: np.ndarray) -> dict[int, np.ndarray]:
        """The token arrays of blocks ``wanted`` (from memory, the cache folder or the server)."""
        self._check_pid()
        out: dict[int, np.ndarray] = {}
        missing: list[int] = []
        with self._mu:
            for b in wanted.tolist():
                hit = self._memory.get(b)
                if hit is not None:
                    self._memory.move_to_end(b)
                    out[b] = hit
                else:
                    missing.append(b)
        if missing:
            out.update(self._load(missing))
        return out

    def _load(self, missing: list[int]) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        to_fetch: list[int] = []
        waits: list[tuple[int, threading.Event]] = []
        for b in missing:
            data = self._from_disk(b)
            if data is not None:
                out[b] = data
                continue
            with self._mu:
                ev = self._inflight.get(b)
                if ev is None:
                    self._inflight[b] = threading.Event()
                    to_fetch.append(b)
                else:
                    waits.append((b, ev))
        try:
            if to_fetch:
                out.update(self._fetch_shared(to_fetch))
        finally:
            with self._mu:
                for b in to_fetch:
                    self._inflight.pop(b).set()
        for b, ev in waits:
            ev.wait()
            got = self._memory.get(b)
            out[b] = got if got is not None else self._load([b])[b]
        for b, arr in out.items():
            self._remember(b, arr)
        return out

    def _remember(self, b: int, arr: np.ndarray) -> None:
        with self._mu:
            if b in self._memory:
                return
            self._memory[b] = arr
            self._memory_bytes += arr.nbytes
            cap = self.cache.settings.memory_bytes
            while self._memory_bytes > cap and len(self._memory) > 1:
                _, old = self._memory.popitem(last=False)
                self._memory_bytes -= old.nbytes

    def _expected_len(self, b: int) -> int:
        return min(self.block_bytes, self.size_bytes - b * self.block_bytes)

    def _ok(self, b: int, data: bytes) -> bool:
        if len(data) != self._expected_len(b):
            return False
        return self.digests is None or _digest(data) == self.digests[b].tobytes()

    def _from_disk(self, b: int) -> np.ndarray | None:
        data = self.cache.read(f"tokens.{b}")
        if data is None:
            return None
        bad = len(data) != self._expected_len(b) or (
            self.cache.settings.verify_cached and not self._ok(b, data))
        if bad:  # damaged on disk: never served, fetched again
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.cache.path(f"tokens.{b}"))
            return None
        return np.frombuffer(data, dtype=self.dtype)

    def _fetch_shared(self, blocks: list[int]) -> dict[int, np.ndarray]:
        """Fetch blocks once per node: those no other process is fetching are locked and
        fetched here; for the others, wait for their lock, then read what that process cached
        (or fetch it, if it failed)."""
        mine = [b for b in blocks if self.cache.try_lock(b)]
        out: dict[int, np.ndarray] = {}
        try:
            # another process may have cached a block between the look on disk and the lock
            todo = []
            for b in mine:
                data = self._from_disk(b)
                if data is None:
                    todo.append(b)
                else:
                    out[b] = data
            if todo:
                out.update(self._fetch(todo))
        finally:
            for b in mine:
                self.cache.unlock(b)
        for b in blocks:
            if b in out:
                continue
            with self.cache.locked(b):
                data = self._from_disk(b)
                out[b] = data if data is not None else self._fetch([b])[b]
        return out

    def _fetch(self, blocks: list[int]) -> dict[int, np.ndarray]:
        """Fetch blocks from the server (runs of neighbours in one request), verify, cache;
        the caller holds their record locks."""
        out: dict[int, np.ndarray] = {}
        runs: list[list[int]] = []
        for b in sorted(blocks):
            if runs and runs[-1][-1] == b - 1 and len(runs[-1]) < RUN_BLOCKS:
                runs[-1].append(b)
            else:
                runs.append([b])
        starts = [r[0] * self.block_bytes for r in runs]
        ends = [min(self.size_bytes, (r[-1] + 1) * self.block_bytes) for r in runs]
        bodies = read_ranges(self.url, starts, ends)
        for run, start, body in zip(runs, starts, bodies, strict=True):
            self.fetched_bytes += len(body)
            for b in run:
                lo = b * self.block_bytes - start
                piece = body[lo: lo + self._expected_len(b)]
                if not self._ok(b, piece):
                    piece = self._refetch(b)
                self.cache.write(f"tokens.{b}", piece)
                out[b] = np.frombuffer(piece, dtype=self.dtype)
        return out

    def _refetch(self, b: int) -> bytes:
        """A block that failed its checksum, fetched once more; still wrong: a clear error."""
        lo = b * self.block_bytes
        hi = lo + self._expected_len(b)
        piece = read_range(self.url, lo, hi)
        self.fetched_bytes += len(piece)
        if self._ok(b, piece):
            return piece
        now = self.url.fresh_stat()
        raise RemoteError(one_line(
            f"{self.url}: bytes [{lo}, {hi}) do not match the store's checksum twice; the object "
            f"changed since the store was written (ETag {self.etag!r} then, {now.etag!r} now, "
            f"size {self.size_bytes} then, {now.st_size} now); prepare the store again"))

    # ---- prefetch -------------------------------------------------------------------------
    def prefetch_blocks(self, blocks: np.ndarray) -> None:
        """Fetch these blocks in the background (those not in memory already)."""
        self._check_pid()
        with self._mu:
            todo = [b for b in np.asarray(blocks).tolist() if b not in self._memory
                    and b not in self._inflight]
            if not todo:
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max(1, self.cache.settings.prefetch_threads),
                                                thread_name_prefix="mixbatch-prefetch")
            self._pending = [f for f in self._pending if not f.done()]
            step = max(1, len(todo) // max(1, self.cache.settings.prefetch_threads))
            for k in range(0, len(todo), step):
                chunk = np.asarray(todo[k: k + step], dtype=np.int64)
                self._pending.append(self._pool.submit(self.blocks, chunk))

    def wait_prefetch(self) -> None:
        """Wait for the background fetches; re-raise the first error one of them met."""
        pending, self._pending = self._pending, []
        for f in pending:
            f.result()


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
