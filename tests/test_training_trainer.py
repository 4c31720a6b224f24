"""The proxy trainer with an LR by tokens: re-warming at the mixture's stage change, exact
resume (scheduler state in the checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixbatch.errors import StateError
from mixbatch.proxy.trainer import Hooks, Step, Trainer
from test_loader import _cfg
from test_online import _tiny

STAGES = {"mixture": {"unit": "tokens", "weights": None, "schedule": [
    {"until_step": 6, "weights": {"s0": 0.8, "s1": 0.1, "s2": 0.1}},
    {"weights": {"s0": 0.1, "s1": 0.1, "s2": 0.8}}]}}


class _LRs(Hooks):
    def __init__(self, trainer: Trainer) -> None:
        self.trainer, self.lrs = trainer, []

    def before_backward(self, step: Step) -> None:
        self.lrs.append(self.trainer.opt.param_groups[0]["lr"])


def _lrs(cfg, proxy, start: int = 0, end: int | None = None, state=None):
    with Trainer(cfg, proxy) as t:
        if state is not None:
            t.load_state_dict(state)
        hooks = _LRs(t)
        t.run(start, end, hooks)
        return hooks.lrs, t.losses(), t.state_dict()


def test_rewarm_at_the_stage_change_and_exact_resume(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, **STAGES)
    proxy = _tiny(steps=12, warmup=2, schedule="wsd", decay_fraction=1.0,
                   rewarm_tokens=2 * 256, eval_every=None)
    lrs, losses, _ = _lrs(cfg, proxy)
    plain, _, _ = _lrs(cfg, proxy.model_copy(update={"rewarm_tokens": None}))
    assert lrs[:6] == plain[:6]
    # stage 1 begins at step 6: the LR climbs back from where it was over 2 steps' tokens
    assert lrs[5] < lrs[6] < 1e-2 and lrs[6] < lrs[7] and all(
        a > b for a, b in zip(lrs[6:], plain[6:], strict=True))
    assert plain[2:] == sorted(plain[2:], reverse=True) and lrs[-1] < lrs[7]
    _, _, state = _lrs(cfg, proxy, 0, 5)
    rest, rest_losses, _ = _lrs(cfg, proxy, 5, None, state)
    assert rest == lrs[5:] and rest_losses == losses[5:]
    del state["lr_scheduler"]
    with pytest.raises(StateError, match="no lr_scheduler"):
        _lrs(cfg, proxy, 5, None, state)
