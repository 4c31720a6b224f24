"""The critical-batch-size controller: grows the loader's batch when the smoothed noise scale
passes it (bounded factor, a maximum, multiples of the rank split), resumes exactly."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from conftest import write_jsonl
from mixbatch.config import config_from_dict
from mixbatch.errors import ConfigError, StateError
from mixbatch.loader.loader import MixedLoader
from mixbatch.prepare import prepare
from mixbatch.testing import plan_signature
from mixbatch.training.noise import BatchSizeController, NoiseHookState, NoiseScale


@pytest.fixture(scope="module")
def make(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("ctl")
    rng = np.random.default_rng(0)
    lens = np.clip(rng.lognormal(3.0, 1.0, size=300).astype(int), 1, 200)
    write_jsonl(tmp / "a.jsonl", [f"{i}:" + "q" * int(m) for i, m in enumerate(lens)])
    data = {"seed": 1, "store": "store", "sources": {"a": {"path": "a.jsonl"}},
            "batch": {"seq_len": 16, "batch_size": 4, "max_batch_size": 64}}

    def build(world: int = 1, rank: int = 0, **batch) -> MixedLoader:
        d = json.loads(json.dumps(data))
        d["batch"].update(batch)
        d["batch"] = {k: v for k, v in d["batch"].items() if v is not None}  # None: left out
        return MixedLoader(config_from_dict(d, "c.yaml", tmp), rank, world)

    prepare(config_from_dict(json.loads(json.dumps(data)), "c.yaml", tmp), workers=1)
    return build


def _noise(g2: float, trace: float, b_small: int, b_big: int) -> tuple[float, float]:
    """Expected squared norms of a b-example gradient: |G|² + tr Σ / b (exact, no sampling)."""
    return g2 + trace / b_small, g2 + trace / b_big


def _train(ctl: BatchSizeController, mon: NoiseScale, hook: NoiseHookState | None, steps: int,
           trace_at) -> list[int]:
    """A loop: draw a step, measure the noise at the batch it had, let the controller act."""
    sizes = []
    for _ in range(steps):
        step = ctl.loader.next_step()
        sizes.append(step.plan.rows)
        local = hook.local_batch if hook is not None else step.plan.rows // 2
        small, big = _noise(1.0, trace_at(step.index), local, local * 2)
        ctl.update(mon.update(small, big, local, local * 2))
    return sizes


def test_grows_towards_the_noise_scale_bounded(make) -> None:
    loader = make(world=2)
    hook = NoiseHookState(NoiseScale(), local_batch=2)
    ctl = BatchSizeController(loader, growth=2.0, max_batch_size=48, every=5, hook=hook)
    sizes = _train(ctl, NoiseScale(beta=0.5), hook, 40, lambda t: 30.0)  # B_simple = 30
    changes = [(a, b) for a, b in itertools.pairwise(sizes) if b != a]
    assert changes == [(4, 8), (8, 16), (16, 30)]  # x2, x2, then B_simple (a multiple of 2)
    assert all(b <= 2 * a for a, b in changes)
    assert hook.local_batch == 15  # the per-rank rows behind the local gradient follow
    # growth only every 5 steps
    starts = [i for i in range(1, len(sizes)) if sizes[i] != sizes[i - 1]]
    assert all(b - a >= 5 for a, b in itertools.pairwise(starts))
    # a noise scale that keeps rising is capped at max_batch_size
    loader = make(world=4)
    ctl = BatchSizeController(loader, growth=4.0, max_batch_size=48, every=1)
    sizes = _train(ctl, NoiseScale(beta=0.0), None, 10, lambda t: 1e6)
    assert sizes[:4] == [4, 16, 48, 48] and max(sizes) == 48


def test_no_growth_below_or_before_warmup(make) -> None:
    loader = make()
    ctl = BatchSizeController(loader, every=1, warmup=3)
    assert ctl.update(float("nan")) is None
    list(loader.steps(2))
    assert ctl.update(1000.0) is None  # step 2 < warmup 3
    list(loader.steps(1))
    assert ctl.update(3.5) is None  # below the batch of 4
    assert ctl.update(6.9) == 6 and loader.rows_per_step == 6


def test_resume_is_exact(make) -> None:
    ramp = lambda t: 4.0 + 2.0 * t  # noqa: E731  (a noise scale that grows in training)

    def run(cut: int | None, total: int = 30) -> list:
        loader = make(world=2)
        mon = NoiseScale(beta=0.8)
        ctl = BatchSizeController(loader, growth=1.5, every=3)
        out = []
        for i in range(total):
            if i == cut:  # save everything through JSON, rebuild, load
                state = json.loads(json.dumps({"loader": loader.state_dict(),
                                               "mon": mon.state_dict(),
                                               "ctl": ctl.state_dict()}))
                loader = make(world=2, rank=1)
                loader.load_state_dict(state["loader"])
                mon = NoiseScale(beta=0.8)
                mon.load_state_dict(state["mon"])
                ctl = BatchSizeController(loader, growth=1.5, every=3)
                ctl.load_state_dict(state["ctl"])
            step = loader.next_step()
            out.append(plan_signature(step.plan))
            b = step.plan.rows // 2
            ctl.update(mon.update(*_noise(1.0, ramp(i), b, 2 * b), b, 2 * b))
        return out

    whole = run(None)
    assert len({s[0] for s in whole}) > 3  # the batch grew several times
    for cut in (4, 13, 22):
        assert run(cut) == whole


def test_bad_settings(make) -> None:
    loader = make()
    with pytest.raises(ConfigError, match=r"noise\.growth"):
        BatchSizeController(loader, growth=1.0)
    with pytest.raises(ConfigError, match="above the loader's largest batch 64"):
        BatchSizeController(loader, max_batch_size=128)
    ctl = BatchSizeController(loader, growth=2.0)
    with pytest.raises(StateError, match="growth"):
        BatchSizeController(loader, growth=3.0).load_state_dict(ctl.state_dict())
    with pytest.raises(StateError, match="last_change"):
        ctl.load_state_dict({**ctl.state_dict(), "last_change": -1})
    assert math.isnan(NoiseScale().b_simple)
    with pytest.raises(ConfigError, match="no batch size to grow"):
        BatchSizeController(make(packing="buckets", token_budget=128, min_len=8,
                                 batch_size=None, max_batch_size=None))
