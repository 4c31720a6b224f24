"""`prepare` and the CLI under hostile or unlucky conditions (issue #12 items 4, 7 and 8; #11):
one writer per store, nothing left by a dead run, one clear line for every OS error, symbolic
links confined to the source's folder, empty inputs named."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_config, write_jsonl
from mixbatch import cli
from mixbatch.config import load_config
from mixbatch.errors import ConfigError, DataError, StoreError
from mixbatch.io import expand_paths
from mixbatch.io.skips import SkipCounter
from mixbatch.lock import FolderLock, LockedError
from mixbatch.prepare import prepare
from mixbatch.store import open_store

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _config(tmp: Path, docs: int = 200, **src) -> Path:
    write_jsonl(tmp / "d.jsonl", [f"document {i} " * 20 for i in range(docs)])
    return write_config(tmp / "c.yaml", {"store": "store",
                                         "sources": {"s": {"path": "d.jsonl", **src}},
                                         "batch": {"seq_len": 64, "batch_size": 4}})


def _main(capsys, *args: str) -> tuple[int, str]:
    rc = cli.main(list(args))
    return rc, capsys.readouterr().err


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp-" in p.name or p.name == ".parts"]


# --- item 4: one writer per store ------------------------------------------------------------
def test_second_prepare_is_refused_naming_the_first(tmp_path: Path, capsys) -> None:
    cfg_path = _config(tmp_path)
    with FolderLock(tmp_path / "store", "store"):
        rc, err = _main(capsys, "prepare", str(cfg_path), "--no-progress")
    assert rc == 1 and f"process {os.getpid()}" in err and "is writing this store" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "store" / "s").exists()  # nothing written under the other's lock
    assert _main(capsys, "prepare", str(cfg_path), "--no-progress")[0] == 0


def test_two_prepare_processes_race_one_wins(tmp_path: Path) -> None:
    cfg_path = _config(tmp_path, docs=4000)
    release = tmp_path / "release"  # the first holds the lock until the second has tried
    slow = ("import sys, time, pathlib; import mixbatch.prepare as p; from mixbatch.config "
            "import load_config\nrun = p._run_unit\ngo = pathlib.Path(sys.argv[2])\n"
            "def held(job):\n    end = time.monotonic() + 120\n"
            "    while not go.exists() and time.monotonic() < end: time.sleep(0.02)\n"
            "    return run(job)\np._run_unit = held\n"
            "p.prepare(load_config(sys.argv[1]), workers=1)")
    first = subprocess.Popen([sys.executable, "-c", slow, str(cfg_path), str(release)], env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    args = [sys.executable, "-m", "mixbatch", "prepare", str(cfg_path), "--no-progress"]
    lock = tmp_path / "store" / ".mixbatch.lock"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and first.poll() is None:
        if lock.exists() and lock.read_text().strip():
            break
        time.sleep(0.01)
    second = subprocess.run(args, env=ENV, capture_output=True, text=True)
    release.touch()
    err = first.communicate(timeout=120)[1]
    assert first.returncode == 0, err
    assert second.returncode == 1 and f"process {first.pid}" in second.stderr, second.stderr
    assert len(second.stderr.strip().splitlines()) == 1 and "Traceback" not in second.stderr
    store = open_store(tmp_path / "store" / "s", verify=True)
    assert len(store) == 4000


def test_next_run_removes_what_a_dead_run_left(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path))
    prepare(cfg, workers=1)
    folder = cfg.store_dir / "s"
    dead = [folder / ".tokens.bin.tmp-999999999-1", cfg.store_dir / ".x.tmp-999999998-7"]
    for p in dead:
        p.write_bytes(b"\0" * 4096)
    (folder / ".parts").mkdir()  # a kill after meta.json, before the parts were removed
    (folder / ".parts" / "0123.tokens").write_bytes(b"x")
    assert prepare(cfg, workers=1).sources["s"].status == "up to date"
    assert _leftovers(cfg.store_dir) == []
    # stale parts of an interrupted build whose inputs changed are dropped, fresh ones kept
    write_jsonl(tmp_path / "d.jsonl", ["changed"] * 10)
    (folder / ".parts").mkdir()
    (folder / ".parts" / "feedbeef.tokens").write_bytes(b"x")
    prepare(cfg, workers=1)
    assert _leftovers(cfg.store_dir) == [] and len(open_store(folder)) == 10


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_kill_9_of_prepare_ends_its_forkserver_and_workers(tmp_path: Path) -> None:
    for i in range(4):
        write_jsonl(tmp_path / "data" / f"{i}.jsonl", [f"doc {j} " * 50 for j in range(8_000)])
    cfg_path = write_config(tmp_path / "c.yaml", {"store": "store",
                                                  "sources": {"s": {"path": "data"}}})
    p = subprocess.Popen([sys.executable, "-m", "mixbatch", "prepare", str(cfg_path),
                          "--no-progress", "--workers", "2"], env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    kids: set[int] = set()
    while time.monotonic() < deadline and p.poll() is None:
        kids = _descendants(p.pid)
        if len(kids) >= 3:  # the forkserver and two workers (and maybe a resource tracker)
            break
        time.sleep(0.05)
    assert p.poll() is None and len(kids) >= 3
    time.sleep(0.3)  # the workers' initializers have run
    kids = _descendants(p.pid)
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.05)
    assert not [k for k in kids if _alive(k)]


# --- item 7: one clear line for every OS error ------------------------------------------------
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "store/s/.tokens.bin.tmp")


def test_disk_full_during_merge(tmp_path: Path, capsys, monkeypatch) -> None:
    cfg_path = _config(tmp_path)
    monkeypatch.setattr(shutil, "copyfileobj", _enospc)
    rc, err = _main(capsys, "prepare", str(cfg_path), "--no-progress", "--workers", "1")
    assert rc == 1 and "No space left on device; the disk is full" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    folder = tmp_path / "store" / "s"
    assert not (folder / "meta.json").exists()  # nothing that opens as a store
    assert not [p for p in folder.rglob("*") if ".tmp-" in p.name]
    monkeypatch.undo()
    assert _main(capsys, "prepare", str(cfg_path), "--no-progress")[0] == 0  # resumes


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_disk_full_on_a_real_small_filesystem(tmp_path: Path, capsys) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        cfg_path = _config(tmp_path, docs=3000)  # ~1.2 MB of tokens: does not fit
        data = json.loads(json.dumps(load_config(cfg_path).model_dump(mode="json",
                                                                      exclude={"base_dir"})))
        data["store"] = str(mnt / "store")
        write_config(cfg_path, data)
        rc, err = _main(capsys, "prepare", str(cfg_path), "--no-progress", "--workers", "1")
        assert rc == 1 and "No space left on device" in err and "the disk is full" in err
        assert len(err.strip().splitlines()) == 1
        assert not (mnt / "store" / "s" / "meta.json").exists()
        assert not [p for p in mnt.rglob("*") if ".tmp-" in p.name]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_failed_state_save_keeps_the_previous_state(tmp_path: Path, capsys,
                                                    monkeypatch) -> None:
    cfg_path = _config(tmp_path)
    assert _main(capsys, "prepare", str(cfg_path), "--no-progress")[0] == 0
    state, log = tmp_path / "state.json", tmp_path / "a.jsonl"
    base = ["stream", str(cfg_path), "--state-out", str(state), "--emit", str(log)]
    assert _main(capsys, *base, "--steps", "5")[0] == 0
    before = state.read_bytes()
    import mixbatch.atomic as atomic

    real = atomic.os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda *a: _enospc())
    rc, err = _main(capsys, *base, "--steps", "5", "--state-in", str(state))
    assert rc == 1 and "the disk is full" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(atomic.os, "replace", real)
    assert state.read_bytes() == before  # the previous state, whole
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    # resuming from it cuts the log back: no row twice
    assert _main(capsys, *base, "--steps", "5", "--state-in", str(state))[0] == 0
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    keys = [(r["step"], r["row"]) for r in rows if "row" in r]
    assert len(keys) == len(set(keys)) == 10 * 4


@pytest.mark.parametrize(("make", "message"), [
    (lambda t: t / "missing" / "s.json", "does not exist: check the path"),
    (lambda t: t, "it is a folder, a file was expected"),
    (lambda t: t / "c.yaml" / "s.json", "a part of the path is a file"),
])
def test_unwritable_state_paths_are_one_line(tmp_path: Path, capsys, make, message) -> None:
    cfg_path = _config(tmp_path)
    assert _main(capsys, "prepare", str(cfg_path), "--no-progress")[0] == 0
    rc, err = _main(capsys, "stream", str(cfg_path), "--steps", "2", "--state-out",
                    str(make(tmp_path)))
    assert rc == 1 and message in err and len(err.strip().splitlines()) == 1, err


def test_unreadable_store_file_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    cfg_path = _config(tmp_path)
    assert _main(capsys, "prepare", str(cfg_path), "--no-progress")[0] == 0
    import mixbatch.store as store_module

    def denied(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(store_module, "quick_digest", denied)
    rc, err = _main(capsys, "stream", str(cfg_path), "--steps", "1")
    assert rc == 1 and "tokens.bin: cannot read this store file (Permission denied)" in err


def test_store_path_that_is_a_file(tmp_path: Path, capsys) -> None:
    cfg_path = _config(tmp_path)
    (tmp_path / "store").write_text("not a folder")
    rc, err = _main(capsys, "prepare", str(cfg_path), "--no-progress")
    assert rc == 1 and "the store path is a file, not a folder" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["a\0b", "x" * 300])
def test_source_names_no_filesystem_holds(tmp_path: Path, name: str) -> None:
    cfg = load_config(_config(tmp_path))
    cfg.sources[name] = cfg.sources.pop("s")
    with pytest.raises(ConfigError, match="no NUL byte, at most 255 bytes") as e:
        prepare(cfg, workers=1)
    assert "\n" not in str(e.value) and "\0" not in str(e.value)
    with pytest.raises(StoreError, match=r"no token store here|not a usable store path"):
        open_store(cfg.store_dir / name)


def test_empty_input_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "y.jsonl").write_text("")
    cfg = load_config(write_config(tmp_path / "c.yaml", {"store": "store",
                                                        "sources": {"y": {"path": "y.jsonl"}}}))
    with pytest.raises(DataError, match=r"sources\.y: no documents in 1 file\(s\): .*y\.jsonl"):
        prepare(cfg, workers=1)


# --- item 8: symbolic links -------------------------------------------------------------------
def test_symlinks_out_of_the_folder_are_skipped_and_counted(tmp_path: Path) -> None:
    data, outside = tmp_path / "data", tmp_path / "outside"
    write_jsonl(data / "a.jsonl", ["inside"] * 3)
    write_jsonl(outside / "secret.jsonl", ["outside"] * 5)
    write_jsonl(data / "sub" / "b.jsonl", ["linked inside"] * 2)
    (data / "etc").symlink_to(outside, target_is_directory=True)
    (data / "gone.jsonl").symlink_to(tmp_path / "nothing.jsonl")
    (data / "alias.jsonl").symlink_to(data / "sub" / "b.jsonl")  # inside: followed
    cfg = load_config(write_config(tmp_path / "c.yaml", {"store": "store",
                                                        "sources": {"s": {"path": "data"}}}))
    report = prepare(cfg, workers=1).sources["s"]
    assert report.documents == 3 + 2 + 2
    assert report.skipped == {"symlink_outside_folder": 1, "dangling_symlink": 1}
    assert any("etc: links to" in ex for ex in report.examples["symlink_outside_folder"])
    meta = json.loads((cfg.store_dir / "s" / "meta.json").read_text())
    assert meta["skipped"] == report.skipped  # kept with the store, reported when up to date
    skips = SkipCounter()
    files = expand_paths("data", tmp_path, None, follow_symlinks=True, skips=skips)
    assert tmp_path / "data" / "etc" / "secret.jsonl" in files
    assert skips.counts == {"dangling_symlink": 1}
    skips = SkipCounter()
    files = expand_paths("da*/*.jsonl", tmp_path, None, skips=skips)
    assert [f.name for f in files] == ["a.jsonl", "alias.jsonl"]
    assert skips.counts == {"dangling_symlink": 1}


def test_locked_error_is_a_mixbatch_error() -> None:
    assert issubclass(LockedError, cli.MixbatchError) and LockedError.exit_code == 1


def test_force_on_a_read_only_store_keeps_it_whole(tmp_path: Path, capsys, monkeypatch) -> None:
    cfg_path = _config(tmp_path)
    assert _main(capsys, "prepare", str(cfg_path), "--no-progress")[0] == 0
    real = Path.unlink

    def read_only(self, missing_ok=False):
        if self.name == "meta.json":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only)
    rc, err = _main(capsys, "prepare", str(cfg_path), "--no-progress", "--force")
    assert rc == 1 and "meta.json: Permission denied; permission denied" in err
    assert len(err.strip().splitlines()) == 1
    monkeypatch.undo()
    assert len(open_store(tmp_path / "store" / "s", verify=True)) == 200


def test_disk_full_while_emitting_then_resume(tmp_path: Path, capsys, monkeypatch) -> None:
    from mixbatch.audit.log import AuditWriter

    cfg_path = _config(tmp_path)
    assert _main(capsys, "prepare", str(cfg_path), "--no-progress")[0] == 0
    state, log = tmp_path / "state.json", tmp_path / "a.jsonl"
    base = ["stream", str(cfg_path), "--state-out", str(state), "--emit", str(log),
            "--save-every", "2"]
    real, calls = AuditWriter._put, {"n": 0}

    def full(self, records):
        calls["n"] += 1
        if calls["n"] == 6:  # the header, then steps 0-3 fit; step 4 does not
            self._f.write('{"step": 4, "ra')  # what the disk took before it filled up
            self._f.flush()
            _enospc()
        real(self, records)

    monkeypatch.setattr(AuditWriter, "_put", full)
    rc, err = _main(capsys, *base, "--steps", "10")
    assert rc == 1 and "the disk is full" in err and len(err.strip().splitlines()) == 1
    monkeypatch.undo()
    assert json.loads(state.read_text())["step"] == 4
    assert _main(capsys, *base, "--steps", "6", "--state-in", str(state))[0] == 0
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["step"] for r in rows if "row" in r] == [s for s in range(10) for _ in range(4)]
