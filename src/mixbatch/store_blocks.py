"""Per-block checksums of a token file, verified the first time a process reads a block.

``prepare`` hashes the token file in blocks of ``BLOCK_BYTES`` (1 MiB) and keeps the digests in
``block_sums.npy`` (uint64, one per block; the hash is xxh3-64 when the ``xxhash`` package is
installed, else blake2b cut to 8 bytes, named in ``meta.json`` under ``block_sums``). A reader
verifies each block the first time it reads a token in it: one flipped byte anywhere in the file
is found before its tokens are fed, at the cost of hashing each block once per process. A
verified block's tokens are also checked against the vocabulary (an id >= ``vocab_size``, or a
negative one, is an error). Checking every block at once (``verify_all``) is what ``prepare``
does before it calls a store up to date, so a rerun rebuilds a corrupt store.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mixbatch.errors import StoreError

__all__ = ["BLOCKS", "BLOCK_BYTES", "BlockVerifier", "block_digests", "block_hash",
           "default_hash"]

BLOCKS = "block_sums.npy"  # (blocks.npy: the object-storage format, mixbatch.store_remote)
BLOCK_BYTES = 1 << 20
_REBUILD = "run `mixbatch prepare CONFIG` to rebuild it"


def _blake2b64(buf: memoryview) -> int:
    return int.from_bytes(hashlib.blake2b(buf, digest_size=8).digest(), "little")


def block_hash(name: str) -> Callable[[memoryview], int] | None:
    """The digest function called ``name`` (``xxh3_64``, ``blake2b-64``), or ``None`` when it
    is not available here."""
    if name == "blake2b-64":
        return _blake2b64
    if name == "xxh3_64":
        try:
            import xxhash
        except ImportError:
            return None
        return xxhash.xxh3_64_intdigest
    return None


def default_hash() -> str:
    """The fastest block hash available: xxh3-64 with ``xxhash`` installed, else blake2b-64."""
    return "xxh3_64" if block_hash("xxh3_64") is not None else "blake2b-64"


def block_digests(path: Path, name: str, block_bytes: int = BLOCK_BYTES) -> np.ndarray:
    """uint64 digest of every ``block_bytes`` block of the file (the last may be shorter)."""
    fn = block_hash(name)
    if fn is None:  # pragma: no cover - default_hash() only names available ones
        raise StoreError(f"block hash {name!r} is not available here")
    out = []
    buf = bytearray(block_bytes)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            out.append(fn(view[:n]))
    return np.array(out, dtype=np.uint64)


class _Progress:
    """What is verified of one file in this process: the mask of verified blocks, how many are
    left, and the lock every verifier of the file takes to verify a block (once, whatever the
    verifiers and threads)."""

    def __init__(self, n: int) -> None:
        self.ok = np.zeros(n, dtype=bool)
        self.left = n
        self.lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"ok": self.ok, "left": self.left}  # a lock does not cross processes

    def __setstate__(self, state: dict) -> None:
        self.ok, self.left = state["ok"], state["left"]
        self.lock = threading.Lock()


#: blocks verified by this process, per file: (path, device, inode, size, mtime, ctime, ...) ->
#: the progress that every verifier of that very file shares (a new loader, or a store opened
#: again, does not hash a block twice, and sees the blocks the others verified as done; a
#: changed file has another key)
_VERIFIED: dict[tuple, _Progress] = {}
_VERIFIED_LOCK = threading.Lock()


def _progress(path: Path, digests: np.ndarray, vocab_size: int, n: int) -> _Progress:
    try:
        st = path.stat()
    except OSError:
        return _Progress(n)
    key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
           vocab_size,
           hashlib.blake2b(digests.tobytes(), digest_size=16).digest())
    with _VERIFIED_LOCK:
        progress = _VERIFIED.get(key)
        if progress is None or len(progress.ok) != n:
            progress = _VERIFIED[key] = _Progress(n)
        return progress


class BlockVerifier:
    """Verifies the blocks of one token file as they are first read.

    ``tokens`` is the token array over the file (starting ``header`` bytes in), ``raw`` the whole
    file as bytes; ``digests`` the expected uint64 per block. Verifiers of the same unchanged
    file in one process share what is verified (:data:`_VERIFIED`): each block is hashed once
    per process, not once per opened store.
    """

    def __init__(self, path: Path, raw: np.ndarray, tokens: np.ndarray, header: int,
                 digests: np.ndarray, block_bytes: int, hash_name: str, vocab_size: int) -> None:
        fn = block_hash(hash_name)
        self.path = path
        self.raw = raw
        self.tokens = tokens
        self.header = header
        self.digests = digests
        self.block_bytes = block_bytes
        self.vocab_size = vocab_size
        self.hash = fn
        kind, bits = tokens.dtype.kind, tokens.dtype.itemsize * 8
        # ids that the dtype cannot hold need no check: uint16 with a vocabulary of 65,536
        self.check_ids = not (kind == "u" and vocab_size >= 1 << bits)
        self.signed = kind == "i"
        n = -(-len(raw) // block_bytes) if len(raw) else 0
        if len(digests) != n:
            raise StoreError(f"{path}: {len(digests)} block checksums for {n} blocks of "
                             f"{block_bytes} bytes; {_REBUILD}")
        self.progress = _progress(Path(path), digests, vocab_size, n)
        self.ok = self.progress.ok  # shared with every verifier of this file in the process
        self.hashed = 0  # blocks hashed by this verifier

    @property
    def left(self) -> int:
        """Blocks of the file not verified yet (by any verifier of it in this process)."""
        return self.progress.left

    @property
    def done(self) -> bool:
        return self.progress.left <= 0

    def span(self, start: int, length: int) -> None:
        """Verify the blocks that tokens ``[start, start + length)`` touch (one document: the
        cheap path of :meth:`spans`)."""
        if length <= 0 or self.progress.left <= 0:
            return
        size = self.tokens.itemsize
        a = (self.header + start * size) // self.block_bytes
        b = (self.header + (start + length) * size - 1) // self.block_bytes
        ok = self.ok
        if a == b:
            if not ok[a]:
                self.block(a)
        elif not ok[a:b + 1].all():
            for k in np.flatnonzero(~ok[a:b + 1]).tolist():
                self.block(a + k)

    def spans(self, starts: np.ndarray, lengths: np.ndarray) -> None:
        """Verify every block that tokens ``[start, start + length)`` of each span touch."""
        if self.done:
            return
        starts = np.asarray(starts, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64)
        keep = lengths > 0
        if not keep.all():
            starts, lengths = starts[keep], lengths[keep]
        if not len(starts):
            return
        size = self.tokens.itemsize
        first = (self.header + starts * size) // self.block_bytes
        last = (self.header + (starts + lengths) * size - 1) // self.block_bytes
        ok = self.ok
        single = first == last
        need = np.unique(np.concatenate([first[single][~ok[first[single]]],
                                         *(np.arange(a, b + 1) for a, b in
                                           zip(first[~single].tolist(), last[~single].tolist(),
                                               strict=True))]))
        need = need[~ok[need]] if len(need) else need
        for b in need.tolist():
            self.block(b)

    def block(self, b: int) -> None:
        """Verify block ``b`` (hash, then token ids) and mark it (once, whatever the threads)."""
        if self.ok[b]:
            return
        with self.progress.lock:
            if not self.ok[b]:
                self._verify(b)

    def _verify(self, b: int) -> None:
        B = self.block_bytes
        if self.hash is not None:
            got = self.hash(memoryview(self.raw[b * B: (b + 1) * B]))
            self.hashed += 1
            if got != int(self.digests[b]):
                raise StoreError(f"{self.path}: bytes {b * B}..{min((b + 1) * B, len(self.raw))} "
                                 f"(block {b}) do not match their checksum: the file was changed "
                                 f"or is corrupt; {_REBUILD}")
        size = self.tokens.itemsize
        lo = max(0, (b * B - self.header) // size)
        hi = min(len(self.tokens), -(-((b + 1) * B - self.header) // size))
        if hi > lo and self.check_ids:
            part = self.tokens[lo:hi]
            top, bottom = int(part.max()), int(part.min()) if self.signed else 0
            if top >= self.vocab_size or bottom < 0:
                v = top if top >= self.vocab_size else bottom
                at = lo + int(np.flatnonzero(part == v)[0])
                raise StoreError(f"{self.path}: token {at} has id {v}, outside the vocabulary "
                                 f"of {self.vocab_size} ids (a store of another tokenizer, or "
                                 f"corrupt); {_REBUILD}")
        self.ok[b] = True
        self.progress.left -= 1

    def verify_all(self) -> None:
        """Verify every block not verified yet."""
        for b in np.flatnonzero(~self.ok).tolist():
            self.block(b)
