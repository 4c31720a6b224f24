"""`stream` resumes like `train` (issue #12 items 3 and 6): periodic atomic states, the audit log
cut back to the state's step on resume, torn tails dropped and counted, never glued."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mixbatch.audit.log import TornTail, cut_log, iter_log, read_audit_log
from mixbatch.audit.stream import run_stream
from mixbatch.errors import DataError
from test_loader import _cfg

TOTAL = 30


def _rows(path: Path) -> list[tuple]:
    return [(r["step"], r["rank"], r["row"], json.dumps(r["segments"]), r["pad"])
            for r in read_audit_log(path)]


def _records(path: Path) -> list[str]:
    return [json.dumps(rec, sort_keys=True) for kind, rec in iter_log(path) if kind != "header"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("stream")
    cfg = _cfg(tmp, batch={"batch_size": 4, "packing": "bfd", "pack_window": 8})
    whole = tmp / "whole.jsonl"
    run_stream(cfg, TOTAL, None, None, None, None, str(whole), False)
    return {"cfg": cfg, "tmp": tmp, "whole": whole}


def _step_of(state: Path) -> int:
    return int(json.loads(state.read_text())["step"])


def test_cut_log_keeps_header_and_earlier_steps_drops_torn_tail(setup, tmp_path: Path) -> None:
    log = tmp_path / "a.jsonl"
    text = setup["whole"].read_text()
    log.write_text(text + '{"step": 30, "rank": 0, "ro')  # a kill in the middle of a write
    with pytest.raises(DataError, match="truncated audit log"):
        list(iter_log(log))
    torn = TornTail()
    assert len(list(iter_log(log, torn))) == len(text.splitlines())
    assert (torn.lines, torn.bytes) == (1, len('{"step": 30, "rank": 0, "ro'))
    cut = cut_log(log, 12)
    assert cut.torn_bytes == torn.bytes and cut.records > 0
    kinds = [k for k, _ in iter_log(log)]
    assert kinds[0] == "header" and kinds.count("header") == 1
    assert {r["step"] for r in read_audit_log(log)} == set(range(12))
    assert _records(log) == [r for r in _records(setup["whole"])
                             if json.loads(r)["step"] < 12]
    assert str(cut).startswith(f"{cut.records} record(s)")
    again = cut_log(log, 12)  # nothing left to cut
    assert (again.records, again.torn_bytes) == (0, 0)
    assert cut_log(tmp_path / "missing.jsonl", 3).kept == 0


def test_cut_log_bad_line_is_one_line(tmp_path: Path) -> None:
    log = tmp_path / "b.jsonl"
    log.write_text('{"step": 0, "rank": 0, "row": 0, "segments": [], "pad": 0}\nnope\n')
    with pytest.raises(DataError, match=r"b\.jsonl:2: not JSON"):
        cut_log(log, 1)


@pytest.mark.parametrize("fail_at", [1, 4, 7, 13, 29])
def test_failure_at_any_step_resumes_to_the_same_log(setup, tmp_path: Path, monkeypatch,
                                                     fail_at: int) -> None:
    """A run that dies after `fail_at` steps (after its rows were written, before or after a
    save), resumed from its last saved state, logs exactly the uninterrupted run."""
    from mixbatch.audit import log as log_module

    cfg, log, state = setup["cfg"], tmp_path / "run.jsonl", tmp_path / "state.json"
    real = log_module.AuditWriter.write_step
    calls = {"n": 0}

    def dying(self, step, rank):
        real(self, step, rank)
        calls["n"] += 1
        if calls["n"] == fail_at:
            self._f.write('{"step": 999, "torn')  # and a torn line, as a kill leaves it
            self._f.flush()
            raise KeyboardInterrupt

    monkeypatch.setattr(log_module.AuditWriter, "write_step", dying)
    with pytest.raises(KeyboardInterrupt):
        run_stream(cfg, TOTAL, None, None, None, str(state), str(log), False, save_every=5)
    monkeypatch.setattr(log_module.AuditWriter, "write_step", real)
    if state.exists():
        done = _step_of(state)
        assert done == 5 * (fail_at // 5)
        s = run_stream(cfg, TOTAL - done, None, None, str(state), str(state), str(log), False,
                       save_every=5)
        assert s["log_cut"]["torn_bytes"] > 0 and s["first_step"] == done
    else:
        assert fail_at < 5
        run_stream(cfg, TOTAL, None, None, None, str(state), str(log), False, save_every=5)
    assert _records(log) == _records(setup["whole"])
    assert _step_of(state) == TOTAL


def test_kill_9_at_random_points_log_equals_uninterrupted(setup) -> None:
    """Real SIGKILLs of `mixbatch stream --save-every` at random points of the log's growth."""
    tmp = setup["tmp"] / "kills"
    tmp.mkdir()
    log, state = tmp / "run.jsonl", tmp / "state.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rng = random.Random(12)
    kills = 0
    for attempt in range(6):
        done = _step_of(state) if state.exists() else 0
        args = [sys.executable, "-m", "mixbatch", "stream", str(setup["tmp"] / "c.yaml"),
                "--steps", str(TOTAL - done), "--save-every", "2", "--state-out", str(state),
                "--emit", str(log)] + (["--state-in", str(state)] if state.exists() else [])
        p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if attempt < 2:  # kill when the log has grown by a random number of bytes
            start = log.stat().st_size if log.exists() else 0
            grow = rng.randrange(200, 4000)
            deadline = time.monotonic() + 60
            while p.poll() is None and time.monotonic() < deadline:
                if log.exists() and log.stat().st_size - start >= grow:
                    p.send_signal(signal.SIGKILL)
                    kills += 1
                    break
                time.sleep(0.002)
        p.wait(timeout=120)
        if p.returncode == 0:
            break
        assert p.returncode == -signal.SIGKILL, p.stderr.read() if p.stderr else ""
    assert kills >= 1 and p.returncode == 0
    assert _rows(log) == _rows(setup["whole"])
    assert _records(log) == _records(setup["whole"])
