"""One writer per folder: an exclusive lock that names its holder, and cleanup of what a dead
writer left.

:class:`FolderLock` takes an ``fcntl.flock`` on ``<folder>/.mixbatch.lock`` and writes who holds
it (pid, host, command, since when) into that file. A second writer is refused at once (or waits
up to ``wait`` seconds) with one line naming the holder. The kernel drops the lock when the
holder's process ends, however it ends (``kill -9`` included), so a stale lock file never blocks
anyone: only its text stays behind, and the next holder overwrites it.

While a process holds a folder's lock no other mixbatch process writes there, so every temporary
file in it (``.NAME.tmp-PID-TID``, see :func:`mixbatch.atomic.temp_name`) that is not its own
was left by a process that died: :func:`remove_leftovers` deletes them.

:func:`exit_with_parent` makes a worker process end when its parent dies (Linux:
``PR_SET_PDEATHSIG``; elsewhere a thread that watches the parent's pid).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from mixbatch.errors import MixbatchError

__all__ = ["LOCK_NAME", "FolderLock", "LockedError", "exit_with_parent", "holder_of",
           "pid_alive", "remove_leftovers"]

LOCK_NAME = ".mixbatch.lock"
_TEMP = re.compile(r"^\..+\.tmp-(\d+)-\d+$")


class LockedError(MixbatchError):
    """Another process holds the folder's lock. Exit code 1."""

    exit_code = 1


def holder_of(folder: str | Path) -> dict[str, Any] | None:
    """Who last took the lock of ``folder`` (pid, host, command, since), or ``None``."""
    try:
        text = (Path(folder) / LOCK_NAME).read_text(encoding="utf-8")
        info = json.loads(text)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process"
    since = info.get("since")
    when = (time.strftime(" since %H:%M:%S UTC", time.gmtime(since))
            if isinstance(since, int | float) else "")
    cmd = str(info.get("command", ""))[:120]
    return (f"process {info.get('pid', '?')} on {info.get('host', '?')}"
            + (f" (`{cmd}`)" if cmd else "") + when)


class FolderLock:
    """Exclusive lock of a folder for one writer; a context manager.

    ``what`` names the folder in messages ("store", "run folder"); ``wait`` is how many seconds
    to wait for the holder before giving up (0: give up at once). ``shared`` takes a shared lock
    instead: any number of shared holders (e.g. ``prepare --shard`` jobs, each writing its own
    parts) together, but never with an exclusive one.
    """

    def __init__(self, folder: str | Path, what: str = "folder", wait: float = 0.0,
                 shared: bool = False) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.wait = float(wait)
        self.shared = shared
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FolderLock:
        if self._fd is not None:
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise LockedError(f"{self.path}: cannot create the lock of this {self.what} "
                              f"({e.strerror or e}); check that the folder is writable") from None
        deadline = time.monotonic() + self.wait
        try:
            while not _try_lock(fd, self.shared):
                if time.monotonic() >= deadline:
                    info = holder_of(self.folder)
                    raise LockedError(
                        f"{self.folder}: {_describe(info)} is writing this {self.what}; wait "
                        "for it to finish (or stop it) and run again")
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "command": " ".join(os.path.basename(a) if i == 0 else a
                                        for i, a in enumerate(sys.argv)),
                    "since": time.time()}
            if not self.shared:
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if not self.shared:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # no stale name left for the next reader
        os.close(fd)  # closing drops the flock

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _try_lock(fd: int, shared: bool = False) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return _try_lock_windows(fd)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:  # pragma: no cover - a filesystem without locks (some NFS setups)
        raise LockedError(f"cannot lock ({e.strerror or e}): the filesystem does not support "
                          "locks; use a local folder") from None
    return True


def _try_lock_windows(fd: int) -> bool:  # pragma: no cover - not run on POSIX
    import msvcrt

    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_leftovers(folder: str | Path, *, recursive: bool = True) -> list[Path]:
    """Delete the temporary files (``.NAME.tmp-PID-TID``) under ``folder`` that this process did
    not make; call it only while holding the folder's :class:`FolderLock`. Returns what went."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    me = os.getpid()
    found = folder.rglob(".*.tmp-*") if recursive else folder.glob(".*.tmp-*")
    gone = []
    for p in found:
        m = _TEMP.match(p.name)
        if m is None or int(m.group(1)) == me or not p.is_file():
            continue
        try:
            p.unlink()
        except FileNotFoundError:
            continue
        gone.append(p)
    return gone


def exit_with_parent(parent: int | None = None) -> None:
    """Make this (worker) process end when its parent ends, even by ``kill -9``.

    ``parent``: the parent's pid as the parent saw it before starting this process (default:
    the current parent); with it, a parent that died before this call is noticed too."""
    parent = os.getppid() if parent is None else parent
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) == 0:
                if os.getppid() != parent:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl
            pass
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True,  # pragma: no cover
                     name="mixbatch-parent-watch").start()


def _watch_parent(parent: int) -> None:  # pragma: no cover - the non-Linux fallback
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)
