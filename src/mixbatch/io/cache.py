"""A local cache of remote store files, shared safely by the processes of one node.

Layout: ``<dir>/stores/<key>/`` per store, where ``key`` is the store's ``tokens.bin`` checksum
from its metadata (content-addressed: a store prepared again gets a new key, so a stale file is
never served). Inside: whole small files (``offsets.npy`` ...) and blocks of ``tokens.bin``
(``tokens.<i>``), each verified against the store's checksums *before* it is written.

Safety between processes: every file is written under a temporary name and renamed into place
(``os.replace`` is atomic on POSIX), so a reader sees nothing or the whole verified file; a
block being fetched is locked with a POSIX record lock on byte ``i`` of ``<key>/.lock``, so two
processes that need it fetch it once; eviction runs under ``<dir>/.evict.lock``. A file deleted
by eviction while another process reads it stays readable to that process (POSIX unlink).

Size cap: each process counts the cache's size (a scan, plus what it writes); when the count
passes ``max_bytes``, or a tenth of the cap was written since its last scan (other processes
write too), it scans under the lock and deletes the least recently used files (mtime; a hit
refreshes it) down to 90% of the cap.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixbatch.errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "KIB": 2**10, "M": 10**6, "MB": 10**6,
          "MIB": 2**20, "G": 10**9, "GB": 10**9, "GIB": 2**30, "T": 10**12, "TB": 10**12,
          "TIB": 2**40}


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

    ``max_bytes``: the cap of the cache folder (least recently used files go first);
    ``memory_bytes``: blocks kept in each process's memory; ``prefetch_threads``: background
    fetches per store; ``whole``: download ``tokens.bin`` whole when a store is opened (then
    read it memory-mapped) instead of fetching blocks as they are needed; ``block_bytes``: the
    verified block (one cache file) of the stores ``prepare`` writes to a URL; ``verify_cached``:
    check a cached block's checksum again when a process first reads it (a block is always
    verified before it is cached, and its size is always checked).
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
        self._usage = self.usage()  # this process's estimate: last scan + its own writes
        self._written = 0  # bytes written since the last scan

    def path(self, name: str) -> Path:
        return self.root / name

    def read(self, name: str) -> bytes | None:
        """A cached file's bytes (its mtime refreshed), or ``None`` when it is not there."""
        p = self.root / name
        try:
            with open(p, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        with contextlib.suppress(OSError):
            os.utime(p)
        return data

    def write(self, name: str, data: bytes) -> None:
        """Write a verified file atomically (temporary name, then rename), then keep the cap."""
        p = self.root / name
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, p)
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                self.evict(target=0.5)
                return
            raise
        with self._mu:
            self._usage += len(data)
            self._written += len(data)
            # over the cap by this process's count, or enough written that others' writes
            # may have filled it: scan and evict
            over = self._usage > self.settings.max_bytes \
                or self._written > self.settings.max_bytes // 10
        if over:
            self.evict()

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
        return sum(size for _, _, size in _files(self.base))

    def evict(self, target: float = 0.9) -> int:
        """Delete least recently used files until the cache holds at most ``target`` of the cap;
        return the bytes freed."""
        cap = self.settings.max_bytes
        lock = self.base / ".evict.lock"
        with open(lock, "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                files = sorted(_files(self.base))
                total = sum(size for _, _, size in files)
                freed = 0
                if total > cap:
                    for _, path, size in files:
                        if total - freed <= cap * target:
                            break
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(path)
                            freed += size
                with self._mu:
                    self._usage, self._written = total - freed, 0
                return freed
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _files(base: Path) -> Iterator[tuple[int, str, int]]:
    """(mtime_ns, path, size) of every cached data file (not locks or temporary files)."""
    stores = base / "stores"
    try:
        keys = list(os.scandir(stores))
    except FileNotFoundError:
        return
    for key in keys:
        if not key.is_dir():
            continue
        try:
            entries = list(os.scandir(key.path))
        except FileNotFoundError:
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                st = e.stat()
            except FileNotFoundError:
                continue
            yield st.st_mtime_ns, e.path, st.st_size
