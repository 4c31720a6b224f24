from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mixbatch.errors import ConfigError, StateError
from mixbatch.proxy.trainer import Hooks, Step, Trainer
from mixbatch.training.replay import HardBatchReplay
from test_loader import _cfg
from test_online import _tiny


def test_keeps_the_hardest_and_replays_at_the_rate() -> None:
    r = HardBatchReplay(capacity=3, rate=0.25, sources=2)
    for key, loss in enumerate([5.0, 1.0, 4.0, 3.0, 0.5, 6.0, float("nan")]):
        r.record(key, loss, {"k": key})
    assert sorted(r.keys) == [0, 2, 5] and r.hardest() == (5, {"k": 5})
    r.record(5, 2.0, None)  # replayed: its loss goes stale no more
    assert r.hardest()[0] == 0 and not r.wants(9, 1.0) and r.wants(9, 4.5)
    assert [k for k in range(16) if r.due(k)] == [3, 7, 11, 15]
    assert not HardBatchReplay(3, 0.5, 2).due(1)  # nothing kept yet: nothing to replay
    r.count(np.array([30, 10]))
    acc = r.accounting(np.array([50, 50]))
    assert acc["without_replays"] == [0.5, 0.5]
    assert acc["with_replays"] == pytest.approx([80 / 140, 60 / 140])


def test_state_round_trip_and_bad_input() -> None:
    r = HardBatchReplay(2, 0.5, 3)
    r.record(1, 2.0, {"a": [1, 2]})
    r.count(np.array([1, 2, 3]))
    again = HardBatchReplay(2, 0.5, 3)
    again.load_state_dict(r.state_dict())
    assert again.state_dict() == r.state_dict()
    with pytest.raises(StateError, match=r"capacity 2 and rate 0\.5"):
        HardBatchReplay(3, 0.5, 3).load_state_dict(r.state_dict())
    with pytest.raises(ConfigError, match=r"replay\.rate"):
        HardBatchReplay(2, 1.0, 3)


class _Seen(Hooks):
    def __init__(self) -> None:
        self.steps: list[tuple[int, bool, int]] = []
        self.ids: dict[tuple[int, bool], list] = {}

    def before_forward(self, step: Step) -> None:
        self.steps.append((step.index, step.replayed, step.planned.index))
        self.ids[step.planned.index, step.replayed] = step.ids.tolist()


def _train(cfg, proxy, start=0, end=None, state=None):
    with Trainer(cfg, proxy) as t:
        if state is not None:
            t.load_state_dict(state)
        seen = _Seen()
        t.run(start, end, seen)
        return seen, t.losses(), t.state_dict(), t


def test_trainer_replays_hard_batches_and_resumes_exactly(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    proxy = _tiny(steps=12, replay_rate=0.25, replay_capacity=2, eval_every=None)
    seen, losses, _, t = _train(cfg, proxy)
    steps = seen.steps
    replays = [s for s in steps if s[1]]
    assert [s[0] for s in replays] == [3, 7, 11]
    fresh = [s[2] for s in steps if not s[1]]
    assert fresh == list(range(9))  # the loader moves on only for fresh steps
    assert all(s[2] in fresh[:s[0]] for s in replays)  # a batch trained before
    acc = t.replay.accounting(t.loader.fed_tokens)
    assert sum(acc["replayed_tokens"]) > 0 and acc["with_replays"] != acc["without_replays"]
    for _, _, index in replays:  # the same tokens as when the batch was fresh
        assert seen.ids[index, True] == seen.ids[index, False]
    _, _, half, _ = _train(cfg, proxy, 0, 5)
    rest, rest_losses, _, _ = _train(cfg, proxy, 5, None, half)
    assert rest.steps == steps[5:] and rest_losses == losses[5:]
