"""Hard-batch replay in the audit log: a replayed batch is logged as a replay of its step (not
as rows again), and the mixture is counted from the log both ways, matching the trainer's own
accounting (:meth:`mixbatch.training.replay.HardBatchReplay.accounting`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mixbatch.audit.log import AuditWriter, cut_log, iter_log, log_header
from mixbatch.audit.trace import read_trace
from mixbatch.errors import DataError
from mixbatch.proxy.trainer import Trainer
from mixbatch.training.replay_log import AuditHooks
from test_loader import _cfg
from test_online import _tiny


def _train_logged(cfg, proxy, log: Path, start: int = 0, end: int | None = None,
                  state=None) -> tuple[Trainer, list[tuple[int, bool, int]]]:
    with Trainer(cfg, proxy) as t:
        if state is not None:
            t.load_state_dict(state)
        seen: list[tuple[int, bool, int]] = []

        class Hooks(AuditHooks):
            def before_forward(self, step) -> None:
                seen.append((step.index, step.replayed, step.planned.index))
                super().before_forward(step)

        with AuditWriter(log, t.names, append=state is not None,
                         header=log_header(t.loader)) as w:
            t.run(start, end, Hooks(w, t.loader))
        return t, seen


def test_replays_are_logged_as_replays_and_counted_both_ways(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    proxy = _tiny(steps=12, replay_rate=0.25, replay_capacity=2, eval_every=None)
    log = tmp_path / "audit.jsonl"
    t, seen = _train_logged(cfg, proxy, log)
    replays = [(k, j) for k, replayed, j in seen if replayed]
    assert [k for k, _ in replays] == [3, 7, 11]
    records = list(iter_log(log))
    kinds = [kind for kind, _ in records]
    assert kinds[0] == "header" and kinds.count("replay") == 3
    # the stream is logged once: fresh steps 0..8 in order, each with its rows
    row_steps = [rec["step"] for kind, rec in records if kind == "row"]
    assert sorted(set(row_steps)) == list(range(9)) and row_steps == sorted(row_steps)
    logged = [rec for kind, rec in records if kind == "replay"]
    assert [(r["train_step"], r["replay_of"]) for r in logged] == replays
    for r in logged:  # between the rows of steps `step - 1` and `step`
        i = next(i for i, (kind, rec) in enumerate(records) if rec is r)
        before = [rec["step"] for kind, rec in records[:i] if kind == "row"]
        after = [rec["step"] for kind, rec in records[i:] if kind == "row"]
        assert before[-1] == r["step"] - 1 and (not after or after[0] == r["step"])
    # the mixture from the log, with and without replays, is the trainer's accounting
    tr = read_trace([log])
    mix = tr.replay_mixture()
    assert mix["replays"] == 3
    acc = t.replay.accounting(t.loader.fed_tokens)
    assert tr.replayed_tokens.tolist() == acc["replayed_tokens"]
    assert tr.tokens.sum(axis=0).tolist() == t.loader.fed_tokens.tolist()
    names = t.names
    assert [mix["without_replays"][n]["tokens_share"] for n in names] == pytest.approx(
        acc["without_replays"])
    assert [mix["with_replays"][n]["tokens_share"] for n in names] == pytest.approx(
        acc["with_replays"])
    assert mix["with_replays"] != mix["without_replays"]
    # the replayed tokens are those of the repeated steps' rows
    per_step = {int(s): tr.tokens[i] for i, s in enumerate(tr.steps)}
    assert np.array_equal(tr.replayed_tokens, sum(per_step[j] for _, j in replays))
    assert json.loads(json.dumps(tr.to_dict()))["mixture_replays"]["replays"] == 3


def test_a_resumed_run_cuts_replays_by_training_step(tmp_path: Path) -> None:
    """A run saved at training step 8 (stream step 6: replays at 3 and 7) goes on to step 10
    and is killed; the resumed run cuts the log back by both clocks and ends with the straight
    run's log, line for line."""
    cfg = _cfg(tmp_path)
    proxy = _tiny(steps=12, replay_rate=0.25, replay_capacity=2, eval_every=None)
    straight = tmp_path / "straight.jsonl"
    _train_logged(cfg, proxy, straight)
    log = tmp_path / "audit.jsonl"
    with Trainer(cfg, proxy) as t, AuditWriter(log, t.names, header=log_header(t.loader)) as w:
        hooks = AuditHooks(w, t.loader)
        t.run(0, 8, hooks)
        state, stream_step = t.state_dict(), t.loader.step
        t.run(8, 10, hooks)  # past the state: stream steps 6 and 7
    assert stream_step == 6
    # the replay at training step 7 is logged as stream step 6 (the next one): the stream's
    # clock alone would cut it, the training step keeps it
    cut = cut_log(log, stream_step, before_train_step=8)
    assert cut.records == 2 * 4  # the rows of stream steps 6 and 7
    assert [r["train_step"] for kind, r in iter_log(log) if kind == "replay"] == [3, 7]
    _train_logged(cfg, proxy, log, 8, None, state)
    assert log.read_text() == straight.read_text()


def test_replay_records_are_checked(tmp_path: Path) -> None:
    log = tmp_path / "a.jsonl"
    with AuditWriter(log, ["s0"]) as w:
        with pytest.raises(ValueError, match="replay_of"):
            w.write_replay(3, 0, 3, 5)
        w.write_replay(4, 0, 1, 5)
    assert list(iter_log(log)) == [("replay", {"step": 4, "rank": 0, "replay_of": 1,
                                               "train_step": 5})]
    log.write_text(log.read_text() + json.dumps({"step": 0, "rank": 0, "row": 0,
                                                 "segments": [["s0", 0, 0, 3]], "eod": [1],
                                                 "pad": 0}) + "\n")
    with pytest.raises(DataError, match="replay of step 1"):
        read_trace([log])


def test_online_train_logs_replays_and_resumes_to_the_same_log(tmp_path: Path) -> None:
    """``train_online`` (``mixbatch train``) logs replays as replay records, and a run stopped
    mid-way and resumed writes the same audit log as a straight run."""
    from mixbatch.online import train_online

    cfg = _cfg(tmp_path, holdout=0.2)
    proxy = _tiny(steps=12, replay_rate=0.25, replay_capacity=2, eval_every=None)
    train_online(cfg, proxy, "none", run_dir=tmp_path / "a")
    records = list(iter_log(tmp_path / "a" / "audit.jsonl"))
    kinds = [kind for kind, _ in records]
    assert kinds.count("replay") == 3
    assert sorted({r["step"] for k, r in records if k == "row"}) == list(range(9))
    train_online(cfg, proxy, "none", run_dir=tmp_path / "b", stop_at=8, checkpoint_every=4)
    train_online(cfg, proxy, "none", run_dir=tmp_path / "b", resume=True)
    assert ((tmp_path / "a" / "audit.jsonl").read_bytes()
            == (tmp_path / "b" / "audit.jsonl").read_bytes())
