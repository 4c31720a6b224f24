"""PBT of mixtures without Ray: explore on the simplex, lineage → schedule, the member's
exploit (state copied, weights changed) replayed exactly by the loader, and bad input."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TINY_PROXY, write_alphabet_sources, write_config
from mixbatch.config import load_config
from mixbatch.errors import ConfigError
from mixbatch.loader.loader import MixedLoader
from mixbatch.online.checkpoint import save_torch
from mixbatch.prepare import prepare
from mixbatch.proxy import ProxyConfig
from mixbatch.proxy.trainer import Hooks, Step, Trainer
from mixbatch.search.pbt import PBTSettings, add_pbt_parser, run_pbt_search
from mixbatch.search.pbt_explore import (
    MIN_WEIGHT,
    PERTURB_FACTORS,
    initial_population,
    perturb,
    snap,
)
from mixbatch.search.pbt_lineage import (
    batch_digest,
    schedule_block,
    with_schedule,
    write_replay_config,
)
from mixbatch.search.pbt_member import (
    MemberSetup,
    member_steps,
    member_weights,
    read_member_checkpoint,
)

ALPHABETS = {"lower": "abcdefghijklm ", "upper": "NOPQRSTUVWXYZ ", "digits": "0123456789+-*/ "}
NAMES = list(ALPHABETS)


def prepared_config(tmp: Path) -> dict:
    """Three prepared sources with disjoint alphabets (so the mixture moves every loss)."""
    data = {"seed": 1, "store": "store", "holdout": 0.1,
            "sources": write_alphabet_sources(tmp, ALPHABETS),
            "mixture": {"weights": {n: 1.0 for n in NAMES}},
            "batch": {"seq_len": 32, "batch_size": 2, "packing": "concat"}}
    path = write_config(tmp / "c.yaml", data)
    cfg = load_config(path)
    prepare(cfg, workers=1)
    return {"tmp": tmp, "cfg": cfg, "config": path, "data": data}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    return prepared_config(tmp_path_factory.mktemp("pbt"))


def _proxy(**kw) -> ProxyConfig:
    return ProxyConfig.from_dict({**TINY_PROXY, "steps": 12, **kw})


# ---- explore ----------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 10.0), min_size=2, max_size=6).filter(lambda w: sum(w) > 1e-3),
       st.integers(0, 2**32 - 1))
def test_snap_and_perturb_stay_on_the_simplex(w, seed) -> None:
    names = [f"s{i}" for i in range(len(w))]
    rng = np.random.default_rng(seed)
    snapped = snap(names, np.array(w))
    vals = np.array(list(snapped.values()))
    assert list(snapped) == names
    # decimals of 6 digits summing to exactly one unit in the last digit
    assert round(vals.sum() * 1e6) == 10**6
    assert np.allclose(vals * 1e6, np.round(vals * 1e6))
    assert vals.min() >= MIN_WEIGHT * 0.99
    out = perturb(vals, rng, resample=0.0)
    assert np.isclose(out.sum(), 1.0) and np.all(out > 0)
    ratio = (out / vals) / (out / vals).min()  # each factor is 0.8 or 1.2, up to one scale
    assert np.all(np.isclose(ratio, 1.0) | np.isclose(ratio, 1.5))
    assert np.isclose(ratio, 1.5).any()  # never all factors alike: a perturb always moves w


def test_perturb_uses_the_papers_factors_and_resamples_at_the_rate() -> None:
    rng = np.random.default_rng(0)
    w = np.array([0.5, 0.3, 0.2])
    outs = [perturb(w, rng, resample=0.25) for _ in range(400)]
    kept = [o for o in outs if np.allclose((o / w) / (o / w).min(), np.round((o / w) / (o / w)
                                                                          .min() * 2) / 2)]
    assert 0.6 < len(kept) / len(outs) < 0.9  # about 75% perturbed, 25% fresh Dirichlet draws
    assert PERTURB_FACTORS == (0.8, 1.2)
    a = [perturb(w, np.random.default_rng(7)) for _ in range(2)]
    assert np.array_equal(a[0], a[1])  # a seed gives one draw
    with pytest.raises(ConfigError, match=r"resample: must be <= 1\.0"):
        perturb(w, rng, resample=1.5)


def test_initial_population_starts_member_0_on_the_config() -> None:
    pop = initial_population(NAMES, np.array([0.7, 0.2, 0.1]), 4, np.random.default_rng(3))
    assert len(pop) == 4 and pop[0] == {"lower": 0.7, "upper": 0.2, "digits": 0.1}
    assert len({tuple(p.values()) for p in pop}) == 4
    again = initial_population(NAMES, np.array([0.7, 0.2, 0.1]), 4, np.random.default_rng(3))
    assert again == pop


# ---- lineage → schedule ------------------------------------------------------------------------
def test_schedule_block_merges_equal_neighbours_and_same_step_changes() -> None:
    a, b, c = {"x": 0.5, "y": 0.5}, {"x": 0.9, "y": 0.1}, {"x": 0.2, "y": 0.8}
    stages = [{"start": 0, "weights": a}, {"start": 4, "weights": a},
              {"start": 8, "weights": b}, {"start": 8, "weights": c}, {"start": 12, "weights": b}]
    assert schedule_block(stages) == [{"until_step": 8, "weights": a},
                                      {"until_step": 12, "weights": c}, {"weights": b}]
    assert schedule_block([{"start": 0, "weights": a}]) == [{"weights": a}]
    with pytest.raises(ValueError, match="starts at step 0"):
        schedule_block([{"start": 4, "weights": a}])


def test_member_weights_start_from_inits_until_explored() -> None:
    inits = [{"x": 0.5, "y": 0.5}, {"x": 0.1, "y": 0.9}]
    assert member_weights({"member": 1}, inits) == inits[1]
    assert member_weights({"member": 1, "weights": {"x": 0.3, "y": 0.7}}, inits) == \
        {"x": 0.3, "y": 0.7}


# ---- exploit: a copied state continues under a new weight; stream replays it ----------------
def _roundtrip(ck: dict, path: Path) -> dict:
    save_torch(ck, path)  # as Tune stores it: a file, read back with weights_only
    return read_member_checkpoint(path)


def _stream_digests(cfg, steps: int) -> list[str]:
    loader = MixedLoader(cfg, rank=0, world_size=1)
    return [batch_digest(loader.batch_of(s)) for s in loader.steps(steps)]


def test_exploited_member_is_replayed_exactly_by_its_schedule(setup, tmp_path: Path) -> None:
    proxy = _proxy()
    ms = MemberSetup(setup["cfg"], proxy, interval=4)
    wa = {"lower": 0.8, "upper": 0.1, "digits": 0.1}
    wb = {"lower": 0.05, "upper": 0.05, "digits": 0.9}
    wc = {"lower": 0.2, "upper": 0.6, "digits": 0.2}
    # member 0 trains 4 steps on wa (its checkpoint is what Tune would keep)
    run0 = member_steps(ms, 0, wa, None)
    ck0, _ = next(run0)
    ck0 = _roundtrip(ck0, tmp_path / "m0.pt")
    run0.close()
    # member 1 exploits member 0 at step 4 with wb; Tune pauses it after step 8, it resumes
    # with its own checkpoint, then exploits itself to wc (a new stage, same owner) at 8
    run1 = member_steps(ms, 1, wb, ck0)
    ck1 = _roundtrip(next(run1)[0], tmp_path / "m1.pt")
    run1.close()
    assert ck1["step"] == 8 and len(ck1["fed"]) == 8
    runs = list(member_steps(ms, 1, wc, ck1))
    assert not any(ended for _, ended in runs)
    final = runs[-1][0]
    assert final["step"] == 12
    assert [(s["start"], s["member"], s["copied_from"]) for s in final["stages"]] == \
        [(0, 0, 0), (4, 1, 0), (8, 1, 1)]
    sched = schedule_block(final["stages"])
    assert sched == [{"until_step": 4, "weights": wa}, {"until_step": 8, "weights": wb},
                     {"weights": wc}]
    # the loader on the schedule (the proxy's batch shape) plans the batches the member saw
    from mixbatch.search.pbt import _replay_config

    replay = _replay_config(setup["cfg"], proxy, sched)
    assert _stream_digests(replay, 12) == final["fed"]
    # ... and so does the config file written for `mixbatch stream`, read from anywhere
    path = write_replay_config(replay, tmp_path / "elsewhere" / "config.yaml", "a comment")
    assert _stream_digests(load_config(path), 12) == final["fed"]
    assert yaml.safe_load(path.read_text())["mixture"]["schedule"] == sched
    # without the exploit the stream differs: the test can fail
    assert _stream_digests(with_schedule(replay, [{"weights": wa}]), 12) != final["fed"]
    # the model continued from the copy: the same as one uninterrupted run on the schedule
    fed: list[str] = []

    class Record(Hooks):
        def before_forward(self, step: Step) -> None:
            fed.append(batch_digest(step.batch))

    with Trainer(with_schedule(setup["cfg"], sched), proxy) as t:
        t.eval_rows = t.heldout_rows()
        t.run(0, 12, hooks=Record(), eval_every=4)
        assert fed == final["fed"]
        assert [r["val_loss_mean"] for r in t.history] == \
            [r["val_loss_mean"] for r in final["history"]]
        for k, v in t.model.state_dict().items():
            assert torch.equal(v, final["trainer"]["model"][k]), k


# ---- bad input: one line each ------------------------------------------------------------------
@pytest.mark.parametrize("kw, message", [
    ({"population": 1}, "--population: PBT needs at least 2 members"),
    ({"interval": 12}, "--interval: 12 steps between exploits is not less than the run's 12"),
    ({"interval": 20}, "is not less than the run's 12 steps"),
    ({"quantile": 0.0}, "--quantile: must be > 0.0"),
    ({"quantile": 0.75}, "--quantile: must be <= 0.5"),
    ({"resample": -0.1}, "--resample: must be >= 0.0"),
    ({"workers": 0}, "--workers: must be >= 1"),
])
def test_bad_settings_are_one_line_config_errors(kw, message) -> None:
    base = {"population": 2, "interval": 4, "steps": 12}
    with pytest.raises(ConfigError, match=message) as e:
        PBTSettings(**{**base, **kw})
    assert "\n" not in str(e.value)


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_pbt_parser(p.add_subparsers(dest="search_command"))
    return p.parse_args(argv)


def test_cli_refuses_bad_input_before_starting_ray(setup, tmp_path: Path) -> None:
    cfg = str(setup["config"])
    out = str(tmp_path / "o")
    args = _parse(["pbt", cfg, "--population", "1", "--interval", "4", "--steps", "12",
                   "--out", out])
    with pytest.raises(ConfigError, match="--population: PBT needs at least 2"):
        args.func(args)
    args = _parse(["pbt", cfg, "--population", "2", "--interval", "12", "--steps", "12",
                   "--out", out])
    with pytest.raises(ConfigError, match="--interval: 12 steps"):
        args.func(args)
    with pytest.raises(SystemExit):  # argparse: not a positive integer
        _parse(["pbt", cfg, "--population", "0", "--interval", "4", "--out", out])
    no_holdout = write_config(tmp_path / "nh.yaml", {**setup["data"], "holdout": 0.0,
                                                     "store": str(setup["tmp"] / "store")})
    args = _parse(["pbt", str(no_holdout), "--population", "2", "--interval", "4",
                   "--steps", "12", "--out", out])
    with pytest.raises(ConfigError, match="holdout: PBT scores members on held-out"):
        args.func(args)
    policy = load_config(setup["config"]).model_copy()
    policy = policy.model_copy(update={"mixture": policy.mixture.model_copy(
        update={"policy": {"name": "odm"}})})
    with pytest.raises(ConfigError, match=r"mixture\.policy: PBT sets the mixture weights"):
        run_pbt_search(policy, _proxy(), PBTSettings(2, 4, 12), tmp_path / "p")
