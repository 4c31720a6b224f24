"""``tokens.bin`` of a token store on object storage, read by verified byte ranges.

:class:`RemoteTokens` is indexed like a 1-D NumPy array: slicing or fancy-indexing it fetches
only the blocks that hold the asked tokens, runs of neighbouring blocks in one range request
and several ranges at once, each block checked against ``blocks.npy``
(:mod:`mixbatch.store_publish`) before it enters the node's cache folder
(:class:`~mixbatch.io.cache.StoreCache`, shared by the processes of a node: each block is
fetched once per node) and a small in-memory LRU. A mismatch is fetched again once, then it is
a :class:`~mixbatch.io.retry.RemoteError` naming the URL, the bytes and the object's version
tags. :meth:`RemoteTokens.prefetch_blocks` fetches blocks the caller will read soon in
background threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from mixbatch.errors import StoreError
from mixbatch.io.cache import StoreCache
from mixbatch.io.fs import RemoteError, RemotePath, read_range, read_ranges
from mixbatch.io.skips import one_line
from mixbatch.ranges import span_positions

__all__ = ["RUN_BLOCKS", "RemoteTokens"]

#: blocks fetched by one range request at most
RUN_BLOCKS = 16


def _digest(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=8).digest()


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
        return np.unique(span_positions(first, last - first + 1))

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
