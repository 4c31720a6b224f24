"""A local cache of remote store files, shared safely by the processes of one node.

Layout: ``<dir>/stores/<key>/`` per store, where ``key`` is the store's ``tokens.bin`` checksum
from its metadata (content-addressed: a store prepared again gets a new key, so a stale file is
never served). Inside: whole small files (``offsets.npy`` ...) and blocks of ``tokens.bin``
(``tokens.<i>``), each verified against the store's checksums *before* it is written. Each file
is one cache entry: it is there whole or not at all, and it is evicted whole.

Safety between the processes of a node, all through POSIX locks, which the kernel drops when
a process dies (so a crash never leaves a pin or a lock behind):

- every entry is written under a temporary name and renamed into place, so a reader sees
  nothing or the whole verified file; a block being fetched is locked with a record lock on
  byte ``i`` of ``<key>/.lock``, so two processes that need it fetch it once;
- the cap holds for the node, not per process: ``<dir>/.index`` holds the bytes the cache
  uses, read and updated under an exclusive ``flock`` of that file. A writer reserves an
  entry's bytes there *before* it renames the entry into place; when the reservation would pass
  ``max_bytes`` it first evicts, under the same lock, the least recently used entries (their
  mtime; a hit refreshes it) down to 90% of the cap, and sets the count to what the scan found
  (a process that died between reserving and renaming only made the count too high, which the
  next scan corrects: the folder never holds more than the count);
- an entry being read is pinned by a shared ``flock`` on the entry itself (held for the read
  of a block, and for as long as a memory map of a whole file lives); eviction takes an
  exclusive non-blocking ``flock`` on each candidate and skips it when that fails. A reader
  takes its pin, then checks that the path is still the file it locked (eviction may have
  unlinked it in between); if not, it is a miss.

When every entry is pinned and a new block does not fit, the block is served from memory
without being cached (:attr:`StoreCache.uncached`); a whole file that does not fit is an error.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mixbatch.atomic import atomic_path
from mixbatch.errors import ConfigError, StoreError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "KIB": 2**10, "M": 10**6, "MB": 10**6,
          "MIB": 2**20, "G": 10**9, "GB": 10**9, "GIB": 2**30, "T": 10**12, "TB": 10**12,
          "TIB": 2**40}
INDEX = ".index"
#: a temporary file older than this (seconds) was left by a process that died; a scan deletes it
STALE_TMP_S = 3600.0


def parse_size(value: int | str, where: str = "size") -> int:
    """``1048576``, ``"1 MiB"``, ``"20GB"`` -> bytes; :class:`ConfigError` otherwise."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a size in bytes, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{where}: a size cannot be negative, got {value}")
        return value
    m = _SIZE.match(str(value))
    unit = (m.group(2) or "").upper() if m else ""
    if m is None or unit not in _UNITS:
        raise ConfigError(f"{where}: expected a size such as 20GB or 512MiB, got {value!r}")
    return int(float(m.group(1)) * _UNITS[unit])


def default_cache_dir() -> Path:
    env = os.environ.get("MIXBATCH_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mixbatch"


@dataclass(frozen=True)
class CacheSettings:
    """Where remote stores are cached and how.

    ``max_bytes``: the cap of the cache folder, for all the processes of the node together
    (least recently used entries go first); ``memory_bytes``: blocks kept in each process's
    memory; ``prefetch_threads``: background fetches per store; ``whole``: download
    ``tokens.bin`` whole when a store is opened (then read it memory-mapped) instead of
    fetching blocks as they are needed; ``block_bytes``: the verified block (one cache file) of
    the stores ``prepare`` writes to a URL; ``verify_cached``: check a cached block's checksum
    again when a process first reads it (a block is always verified before it is cached, and
    its size is always checked).
    """

    dir: Path = field(default_factory=default_cache_dir)
    max_bytes: int = field(default_factory=lambda: parse_size(
        os.environ.get("MIXBATCH_CACHE_MAX_BYTES", "50GB"), "MIXBATCH_CACHE_MAX_BYTES"))
    memory_bytes: int = 64 << 20
    prefetch_threads: int = 4
    whole: bool = False
    #: block size (verified range) of the stores written to a URL by ``prepare``
    block_bytes: int = 1 << 20
    #: hash every cached block again when a process first reads it (bit rot on the local disk)
    verify_cached: bool = False

    def check(self, block_bytes: int) -> None:
        """:class:`ConfigError` when the folder is not writable or the cap is below one block."""
        if self.max_bytes < block_bytes:
            raise ConfigError(f"cache.max_bytes: {self.max_bytes} bytes is smaller than one range "
                              f"of the store ({block_bytes} bytes); raise it to at least that")
        check_writable(self.dir)


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as e:
        raise ConfigError(f"cache.dir: {folder} is not writable ({e.strerror or e}); set "
                          "`cache.dir` or MIXBATCH_CACHE_DIR to a writable folder") from None


# ---------------------------------------------------------------------------------------------
# pins: a shared flock on an entry while it is read
# ---------------------------------------------------------------------------------------------
def open_pinned(path: Path) -> IO[bytes] | None:
    """``path`` opened for reading with a shared ``flock`` held (eviction skips it until the
    file is closed), or ``None`` when it is not cached."""
    while True:
        try:
            f = open(path, "rb")  # noqa: SIM115  (the caller closes it: that ends the pin)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(f, fcntl.LOCK_SH)
            here = os.stat(path)
            mine = os.fstat(f.fileno())
        except FileNotFoundError:  # evicted between the open and the lock
            f.close()
            return None
        except BaseException:
            f.close()
            raise
        if (here.st_ino, here.st_dev) == (mine.st_ino, mine.st_dev):
            return f
        f.close()  # replaced by a newer copy in between: pin that one


def pin_while_alive(owner: object, path: Path) -> bool:
    """Pin ``path`` for as long as ``owner`` (e.g. a memory map of it) lives; ``False`` when
    the file is not there."""
    f = open_pinned(path)
    if f is None:
        return False
    weakref.finalize(owner, f.close)
    return True


def _try_evict(path: str) -> bool:
    """Unlink a cache entry unless a process holds a pin on it."""
    try:
        f = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return True
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return True


# ---------------------------------------------------------------------------------------------
# the node's index: bytes used, under an exclusive flock
# ---------------------------------------------------------------------------------------------
class _Index:
    """The open, locked ``<dir>/.index``: the cache's byte count for the whole node."""

    def __init__(self, f: IO[bytes], base: Path) -> None:
        self.f = f
        self.base = base
        raw = os.pread(f.fileno(), 64, 0).strip()
        self.used = int(raw) if raw.isdigit() else None  # None: unknown (new, or torn)

    def total(self) -> int:
        if self.used is None:
            self.used = sum(size for _, _, size in scan(self.base))
        return self.used

    def save(self) -> None:
        body = str(max(0, int(self.used or 0))).encode()
        os.pwrite(self.f.fileno(), body.ljust(24), 0)

    def evict(self, cap: int, keep: int) -> int:
        """Delete least recently used unpinned entries until at most ``keep`` bytes remain;
        set the count to what is left; return the bytes freed."""
        files = sorted(scan(self.base, clean=True))
        total = sum(size for _, _, size in files)
        freed = 0
        for _, path, size in files:
            if total - freed <= keep:
                break
            if _try_evict(path):
                freed += size
        self.used = total - freed
        self.save()
        return freed


@contextmanager
def locked_index(base: Path) -> Iterator[_Index]:
    # not "a+b": a write at an offset of a file opened for appending lands at its end
    fd = os.open(base / INDEX, os.O_RDWR | os.O_CREAT, 0o644)
    with open(fd, "r+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield _Index(f, base)
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class StoreCache:
    """The cache folder of one store (see the module docstring)."""

    def __init__(self, settings: CacheSettings, key: str) -> None:
        self.settings = settings
        self.base = Path(settings.dir)
        self.root = self.base / "stores" / key
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.root / ".lock"
        self._lock_file: Any = None
        self._lock_pid = -1
        self._mu = threading.Lock()
        #: blocks this process served without caching them (every entry pinned, cap reached)
        self.uncached = 0

    def path(self, name: str) -> Path:
        return self.root / name

    def read(self, name: str) -> bytes | None:
        """A cached file's bytes (pinned while read, its mtime refreshed), or ``None``."""
        f = open_pinned(self.root / name)
        if f is None:
            return None
        with f:
            data = f.read()
            with contextlib.suppress(OSError):
                os.utime(f.fileno())
        return data

    def write(self, name: str, data: bytes) -> bool:
        """Cache a verified file: reserve its bytes in the node's index (evicting if needed),
        then write it atomically. ``False`` when it could not be cached (no room: the other
        entries are pinned, or the disk is full); the caller still has ``data``."""
        try:
            return self._put(name, len(data), lambda tmp: tmp.write_bytes(data))
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                with locked_index(self.base) as idx:
                    idx.evict(self.settings.max_bytes, self.settings.max_bytes // 2)
                self.uncached += 1
                return False
            raise

    def put_file(self, name: str, size: int, fill: Any) -> None:
        """Cache a whole file that ``fill(tmp_path)`` writes (a download); a
        :class:`~mixbatch.errors.StoreError` when it cannot fit under the cap."""
        if not self._put(name, size, fill):
            raise StoreError(f"cache.dir {self.base}: no room for {name} ({size} bytes) under "
                             f"cache.max_bytes={self.settings.max_bytes}: the rest of the cache "
                             "is in use by running processes; raise the cap")

    def _put(self, name: str, size: int, fill: Any) -> bool:
        target = self.root / name
        cap = self.settings.max_bytes
        with locked_index(self.base) as idx:
            try:
                old = target.stat().st_size
            except FileNotFoundError:
                old = 0
            if idx.total() - old + size > cap:
                idx.evict(cap, max(0, min(int(cap * 0.9), cap - size)))
                if idx.total() + size > cap:
                    self.uncached += 1
                    return False
            idx.used = idx.total() + size  # reserved before the rename: never under-counted
            idx.save()
            try:
                with atomic_path(target, fsync=False) as tmp:
                    fill(tmp)
            except BaseException:
                idx.used -= size
                idx.save()
                raise
            if old:  # the file it replaced is gone
                idx.used -= old
                idx.save()
        return True

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_lock_file=None, _lock_pid=-1, _mu=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._mu = threading.Lock()

    def _lock_fd(self) -> Any:
        # one descriptor per process, never closed while in use: closing any descriptor of a
        # file drops every POSIX record lock the process holds on it
        with self._mu:
            if self._lock_pid != os.getpid():
                self._lock_file = open(self._lock_path, "a+b")  # noqa: SIM115
                self._lock_pid = os.getpid()
            return self._lock_file

    def try_lock(self, index: int) -> bool:
        """Take the record lock of block ``index`` if no other process holds it."""
        try:
            fcntl.lockf(self._lock_fd(), fcntl.LOCK_EX | fcntl.LOCK_NB, 1, index)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EAGAIN, errno.EDEADLK):
                return False
            raise
        return True

    def unlock(self, index: int) -> None:
        fcntl.lockf(self._lock_fd(), fcntl.LOCK_UN, 1, index)

    @contextmanager
    def locked(self, index: int) -> Iterator[None]:
        """Hold the record lock of block ``index`` (other processes wait for it).

        Waiting polls the lock instead of blocking on it: the kernel's deadlock check counts
        locks per process, so a process whose prefetch thread holds one block while its main
        thread waits for another could be refused (EDEADLK) although no one waits forever."""
        pause = 0.001
        while not self.try_lock(index):
            time.sleep(pause)
            pause = min(0.05, pause * 2)
        try:
            yield
        finally:
            self.unlock(index)

    def usage(self) -> int:
        """Bytes the node's cache holds (a scan)."""
        return sum(size for _, _, size in scan(self.base))

    def counted(self) -> int:
        """Bytes the node's index counts (at least :meth:`usage`)."""
        with locked_index(self.base) as idx:
            return idx.total()

    def evict(self, target: float = 0.9) -> int:
        """Evict least recently used unpinned entries down to ``target`` of the cap (only when
        the cache is over the cap); return the bytes freed."""
        cap = self.settings.max_bytes
        with locked_index(self.base) as idx:
            if idx.total() <= cap:
                return 0
            return idx.evict(cap, int(cap * target))


def scan(base: Path, clean: bool = False) -> Iterator[tuple[int, str, int]]:
    """(mtime_ns, path, size) of every cached entry (not locks, markers or temporary files);
    ``clean``: delete temporary files that processes which died left behind."""
    stores = base / "stores"
    try:
        keys = list(os.scandir(stores))
    except FileNotFoundError:
        return
    now = time.time()
    for key in keys:
        if not key.is_dir():
            continue
        try:
            entries = list(os.scandir(key.path))
        except FileNotFoundError:
            continue
        for e in entries:
            try:
                st = e.stat()
            except FileNotFoundError:
                continue
            if e.name.startswith("."):
                if clean and ".tmp-" in e.name and now - st.st_mtime > STALE_TMP_S:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(e.path)
                continue
            yield st.st_mtime_ns, e.path, st.st_size
