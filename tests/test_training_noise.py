from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mixbatch.errors import ConfigError, StateError
from mixbatch.training.noise import NoiseScale
from test_training_moe import run_gloo
from training_dist_worker import gradients

DIM, SIGMA = 16, 2.0
ANALYTIC = DIM * SIGMA**2 / 1.0  # tr Σ / |G|² of training_dist_worker.gradients


def _feed(monitor: NoiseScale, xs: torch.Tensor, parts: int) -> list[float]:
    """Small batches: ``parts`` equal slices of each step's examples; big: all of them."""
    out = []
    for x in xs:
        small = torch.stack([c.mean(0).pow(2).sum() for c in x.chunk(parts)]).mean()
        big = x.mean(0).pow(2).sum()
        out.append(monitor.update(float(small), float(big), len(x) // parts, len(x)))
    return out


def test_estimate_matches_trace_over_squared_gradient() -> None:
    xs = gradients(0, 400, 32, DIM)
    est = _feed(NoiseScale(beta=0.99), xs, 4)
    assert est[-1] == pytest.approx(ANALYTIC, rel=0.2)
    # a batch of 32 is far below B_simple = 64: the single-step ratio is noisy, the EMA is not
    # (and NaN where its |G|² estimate is negative)
    raw = torch.tensor(_feed(NoiseScale(beta=0.0), xs[-50:], 4))
    assert raw.isnan().any() and raw[~raw.isnan()].std() > 3 * abs(est[-1] - ANALYTIC)


def test_resume_is_exact_and_bad_input() -> None:
    xs = gradients(1, 30, 8, DIM)
    whole = _feed(NoiseScale(0.9), xs, 2)
    first = NoiseScale(0.9)
    _feed(first, xs[:11], 2)
    second = NoiseScale(0.9)
    second.load_state_dict(first.state_dict())
    assert _feed(second, xs[11:], 2) == pytest.approx(whole[11:], rel=0, abs=0, nan_ok=True)
    assert math.isnan(NoiseScale().b_simple)
    with pytest.raises(StateError, match="beta"):
        NoiseScale(0.5).load_state_dict(first.state_dict())
    with pytest.raises(ConfigError, match=r"noise\.b_big"):
        NoiseScale().update(1.0, 1.0, 4, 4)
    with pytest.raises(ConfigError, match=r"noise\.beta"):
        NoiseScale(1.0)


def test_gloo_ddp_hook_measures_local_and_global_gradients(tmp_path: Path) -> None:
    args = {"seed": 3, "steps": 300, "local_batch": 8, "dim": DIM, "beta": 0.98}
    ranks = run_gloo(tmp_path, "noise", args)
    assert "error" not in ranks[0], ranks[0].get("error")
    assert ranks[0]["estimates"] == ranks[1]["estimates"]
    xs = gradients(3, 300, 16, DIM)
    want = _feed(NoiseScale(0.98), xs, 2)  # the same batches measured by one process
    assert ranks[0]["estimates"] == pytest.approx(want, rel=1e-9, nan_ok=True)
    assert ranks[0]["estimates"][-1] == pytest.approx(ANALYTIC, rel=0.3)
    assert torch.allclose(torch.tensor(ranks[0]["grad"][0], dtype=torch.float64),
                          xs[-1].mean(0))  # the hook still averages the gradient


def test_gloo_proxy_trainer_logs_the_noise_scale_per_step(tmp_path: Path) -> None:
    from test_loader import _cfg
    from test_online import _tiny

    _cfg(tmp_path)
    proxy = _tiny(steps=6, noise_beta=0.5, eval_every=None)
    ranks = run_gloo(tmp_path, "trainer", {"config": str(tmp_path / "c.yaml"),
                                           "proxy": proxy.model_dump(mode="json")})
    assert "error" not in ranks[0], ranks[0].get("error")
    a, b = ranks
    assert len(a["noise"]) == 6 and a["noise"] == b["noise"]  # one value a step, every rank
    assert a["state"]["steps"] == 6 and a["state"]["trace"] > 0
