"""The proxy trainer under a batch-size schedule (``batch.batch_size`` as stages by tokens): the
rows of each step follow the ramp, an LR by tokens follows the tokens (not the steps), and a
run resumes exactly mid-ramp, through :class:`Trainer` state and ``mixbatch train --resume``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mixbatch.online.cli import main
from mixbatch.online.loop import train_online
from mixbatch.proxy.settings import ProxyConfig
from mixbatch.proxy.trainer import Hooks, Step, Trainer
from test_loader import _cfg

# 64-token rows: 4 steps of 2 rows (512 tokens), 4 of 4 (to 1536), then 8 a step
RAMP = {"batch_size": [{"until_tokens": 512, "batch_size": 2},
                       {"until_tokens": 1536, "batch_size": 4}, {"batch_size": 8}]}
TINY = {"n_layer": 1, "d_model": 32, "n_head": 2, "lr": 1e-2, "eval_tokens": 512,
        "device": "cpu", "threads": 1, "schedule": "wsd", "decay_fraction": 1.0}


class _Seen(Hooks):
    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.rows: list[int] = []
        self.lrs: list[float] = []
        self.fed: list[int] = []

    def before_backward(self, step: Step) -> None:
        self.rows.append(int(step.ids.shape[0]))
        self.lrs.append(self.trainer.opt.param_groups[0]["lr"])
        self.fed.append(int(self.trainer.loader.fed_tokens.sum()))


def _run(cfg, proxy: ProxyConfig, start: int = 0, end: int | None = None, state=None):
    with Trainer(cfg, proxy) as t:
        if state is not None:
            t.load_state_dict(state)
        seen = _Seen(t)
        t.run(start, end, seen)
        return seen, t.losses(), t.state_dict()


@pytest.fixture(scope="module")
def ramp_cfg(tmp_path_factory: pytest.TempPathFactory):
    return _cfg(tmp_path_factory.mktemp("ramp"), batch=RAMP, holdout=0.2)


def test_rows_follow_the_ramp_and_the_lr_follows_tokens(ramp_cfg, tmp_path: Path) -> None:
    # the same 2048 tokens: 9 steps of the ramp, 8 steps of 4 rows; warm-up over 256 tokens
    ramp, _, _ = _run(ramp_cfg, ProxyConfig.from_dict({**TINY, "steps": 9, "warmup": 2}))
    assert ramp.rows == [2] * 4 + [4] * 4 + [8]
    # real tokens fed (a concat row's 64 positions hold at most 64 of them)
    assert 2048 - 64 <= ramp.fed[-1] <= 2048
    fixed_cfg = _cfg(tmp_path, batch={"batch_size": 4}, holdout=0.2)
    fixed, _, _ = _run(fixed_cfg, ProxyConfig.from_dict({**TINY, "steps": 8, "warmup": 1}))
    assert fixed.rows == [4] * 8 and fixed.fed[-1] == ramp.fed[-1]  # the same row stream
    # at the same tokens trained, the same LR, whatever the steps taken to get there
    at_tokens = dict(zip(fixed.fed, fixed.lrs, strict=True))
    common = [(lr, at_tokens[f]) for f, lr in zip(ramp.fed, ramp.lrs, strict=True)
              if f in at_tokens]
    assert len(common) == 7  # after 4, 8, 12, 16, 20, 24 and 32 rows
    assert all(a == pytest.approx(b, rel=1e-12) for a, b in common)
    assert ramp.lrs[3] != fixed.lrs[3]  # and not the same LR at the same step


@pytest.mark.parametrize("cut", [3, 4, 6])  # inside the first stage, at its end, inside the next
def test_trainer_resumes_exactly_mid_ramp(ramp_cfg, cut: int) -> None:
    proxy = ProxyConfig.from_dict({**TINY, "steps": 9, "warmup": 2})
    straight, losses, end_state = _run(ramp_cfg, proxy)
    _, _, state = _run(ramp_cfg, proxy, 0, cut)
    rest, rest_losses, rest_state = _run(ramp_cfg, proxy, cut, None, state)
    assert rest.rows == straight.rows[cut:] and rest.lrs == straight.lrs[cut:]
    assert rest.fed == straight.fed[cut:] and rest_losses == losses[cut:]
    assert rest_state["loader"] == end_state["loader"]
    for k, v in end_state["model"].items():
        assert torch.equal(rest_state["model"][k], v), k


def test_mixbatch_train_resume_under_a_ramp(ramp_cfg, tmp_path: Path) -> None:
    """``mixbatch train --resume`` continues a run cut mid-ramp: the run folder ends as a
    straight run's, the LR by tokens included."""
    path = _config_path(ramp_cfg)
    flags = {k: v for k, v in TINY.items() if k != "device"}
    proxy_args = [a for k, v in flags.items() for a in ("--proxy", f"{k}={v}")]
    args = ["train", path, "--steps", "9", "--policy", "none", *proxy_args,
            "--proxy", "warmup=2", "--proxy", "eval_every=3"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    proxy = ProxyConfig.from_dict({"seed": ramp_cfg.seed, **flags, "warmup": 2, "eval_every": 3,
                                   "steps": 9})
    cut = tmp_path / "b"
    train_online(ramp_cfg, proxy, "none", run_dir=cut, stop_at=5)
    assert json.loads((cut / "summary.json").read_text())["steps"] == 5
    assert main([*args, "--out", str(cut), "--resume"]) == 0
    for f in ("weights.csv", "losses.csv", "audit.jsonl"):
        assert (cut / f).read_text() == (tmp_path / "a" / f).read_text(), f
    a, b = (json.loads((d / "summary.json").read_text()) for d in (tmp_path / "a", cut))
    assert a["tokens"] == b["tokens"] and a["val_loss"] == b["val_loss"]


def _config_path(cfg) -> str:
    """The YAML file ``test_loader._cfg`` wrote for ``cfg`` (its folder's ``c.yaml``)."""
    path = Path(cfg.base_dir) / "c.yaml"
    assert path.exists(), path
    return str(path)
