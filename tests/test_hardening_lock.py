"""One writer per folder (issue #12 item 4): the lock names its holder, dies with its process,
and leftovers of a dead writer are removed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mixbatch.lock import FolderLock, LockedError, holder_of, pid_alive, remove_leftovers


def test_second_writer_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    with FolderLock(tmp_path, "store"):
        with pytest.raises(LockedError) as e:
            FolderLock(tmp_path, "store").acquire()
        msg = str(e.value)
        assert f"process {os.getpid()}" in msg and "is writing this store" in msg
        assert "\n" not in msg
    # released: a new writer gets it
    with FolderLock(tmp_path, "store") as lock:
        assert lock.held


def test_waiting_writer_gets_the_lock_when_the_holder_ends(tmp_path: Path) -> None:
    code = ("import sys, time; from mixbatch.lock import FolderLock\n"
            "l = FolderLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(0.6)")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert p.stdout is not None and p.stdout.readline().strip() == b"held"
    assert holder_of(tmp_path)["pid"] == p.pid
    with pytest.raises(LockedError, match=f"process {p.pid}"):
        FolderLock(tmp_path).acquire()
    t0 = time.monotonic()
    with FolderLock(tmp_path, wait=10):
        assert time.monotonic() - t0 < 9
    p.wait()


def test_kill_9_releases_the_lock(tmp_path: Path) -> None:
    code = ("import sys, time; from mixbatch.lock import FolderLock\n"
            "FolderLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert p.stdout is not None and p.stdout.readline().strip() == b"held"
    p.kill()
    p.wait()
    assert not pid_alive(p.pid)
    with FolderLock(tmp_path) as lock:  # the stale lock file does not block
        assert lock.held


def test_unwritable_folder_is_one_line(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(LockedError, match="cannot create the lock"):
        FolderLock(target / "sub").acquire()


def test_remove_leftovers_keeps_own_and_foreign_names(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    dead = tmp_path / "src" / ".tokens.bin.tmp-999999999-1"
    mine = tmp_path / f".meta.json.tmp-{os.getpid()}-1"
    other = tmp_path / "notes.tmp-1-1"  # not one of our temporary names
    for p in (dead, mine, other):
        p.write_bytes(b"x")
    assert remove_leftovers(tmp_path) == [dead]
    assert mine.exists() and other.exists() and not dead.exists()
