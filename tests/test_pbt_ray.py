"""``mixbatch search pbt`` on Ray Tune end to end: a local Ray, a tiny population, the winner's
schedule replayed by ``stream``, the same result for the same seed, and an interrupted search
(a member that fails, a driver stopped after a round) resumed to the same result."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY_PROXY
from mixbatch.config import load_config
from mixbatch.errors import StateError
from mixbatch.loader.loader import MixedLoader
from mixbatch.search.pbt import Interrupt, add_pbt_parser, run_pbt_search, search_of_args
from mixbatch.search.pbt_lineage import batch_digest
from mixbatch.search.pbt_state import ROUNDS_DIR, STATE_FILE
from test_pbt import prepared_config

ray = pytest.importorskip("ray", reason="ray is not installed: PBT on Ray Tune is not tested")
pytestmark = pytest.mark.slow  # a local Ray and a few PBT runs: tens of seconds

STEPS, INTERVAL = 6, 2  # rounds at steps 2 and 4


def _args(config: Path, out: Path, seed: int, *extra: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_pbt_parser(p.add_subparsers(dest="search_command"))
    proxy = dict(TINY_PROXY)
    flags = ["--layers", str(proxy["n_layer"]), "--d-model", str(proxy["d_model"]),
             "--heads", str(proxy["n_head"]), "--seq-len", "16", "--batch-size", "2",
             "--lr", str(proxy["lr"]), "--eval-tokens", "256", "--device", "cpu"]
    return p.parse_args(["pbt", str(config), "--population", "3", "--interval", str(INTERVAL),
                         "--steps", str(STEPS), "--seed", str(seed), "--workers", "2",
                         "--out", str(out), *flags, *extra])


def _pbt(config: Path, out: Path, seed: int, *extra: str) -> dict:
    args = _args(config, out, seed, *extra)
    assert args.func(args) == 0
    return json.loads((out / "pbt.json").read_text())


def _interrupted(config: Path, out: Path, interrupt: Interrupt) -> dict:
    """Run until ``interrupt`` stops the search; return the error and the record it left."""
    cfg, proxy, settings = search_of_args(_args(config, out, 5))
    with pytest.raises(StateError) as e:
        run_pbt_search(cfg, proxy, settings, out, interrupt=interrupt)
    return {"error": str(e.value), "record": json.loads((out / STATE_FILE).read_text()),
            "states": sorted(p.relative_to(out / ROUNDS_DIR).as_posix()
                             for p in (out / ROUNDS_DIR).rglob("*.pt"))}


def _resume(config: Path, out: Path, *flags: str) -> dict:
    """``mixbatch search pbt CONFIG --out DIR --resume`` (settings and proxy as recorded)."""
    p = argparse.ArgumentParser()
    add_pbt_parser(p.add_subparsers(dest="search_command"))
    args = p.parse_args(["pbt", str(config), "--out", str(out), "--resume", "--workers", "2",
                         *flags])
    assert args.func(args) == 0
    return json.loads((out / "pbt.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    tmp: Path = tmp_path_factory.mktemp("pbt_ray")
    config = prepared_config(tmp)["config"]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # shared by both runs
    try:
        first = _pbt(config, tmp / "a", seed=5)
        # a member fails in round 2: round 1 (step 2) is recorded; resume from it
        fault = _interrupted(config, tmp / "f", Interrupt(step=4, member=1))
        fault["resumed"] = _resume(config, tmp / "f")
        # the driver stops once round 2 (step 4) is recorded, as Ctrl-C stops it; resume
        halt = _interrupted(config, tmp / "h", Interrupt(step=4))
        halt["resumed"] = _resume(config, tmp / "h", "--seed", "5")
        finished = _error(lambda: _resume(config, tmp / "h"))
        other = _error(lambda: _resume(config, tmp / "a", "--seed", "6"))
        failed = None
        if not torch.cuda.is_available():  # a member that fails inside Ray
            with pytest.raises(StateError) as e:
                _pbt(config, tmp / "c", 5, "--device", "cuda")
            failed = str(e.value)
    finally:
        ray.shutdown()
    return {"tmp": tmp, "first": first, "failed": failed, "fault": fault,
            "halt": halt, "finished": finished, "other": other}


def _error(fn) -> str:
    with pytest.raises(StateError) as e:
        fn()
    return str(e.value)


def test_winner_schedule_is_replayed_exactly_by_stream(runs) -> None:
    out, rep = runs["tmp"] / "a", runs["first"]
    fed = rep["winner_record"]["fed"]
    assert len(fed) == STEPS and rep["winner_record"]["step"] == STEPS
    cfg = load_config(out / "config.yaml")
    assert cfg.batch.seq_len == 16 and cfg.batch.batch_size == 2  # the proxy's shape
    sched = yaml.safe_load((out / "schedule.yaml").read_text())["mixture"]["schedule"]
    assert [s.model_dump(exclude_none=True) for s in cfg.mixture.schedule] == sched == \
        rep["schedule"]
    loader = MixedLoader(cfg, rank=0, world_size=1)
    assert [batch_digest(loader.batch_of(s)) for s in loader.steps(STEPS)] == fed
    from mixbatch.cli import main

    assert main(["stream", str(out / "config.yaml"), "--steps", str(STEPS), "--json"]) == 0
    assert not (out / "ray").exists()  # Tune's checkpoints are removed unless kept


def test_population_exploits_and_the_winner_is_the_best(runs) -> None:
    rep = runs["first"]
    members = rep["members"]
    assert [m["member"] for m in members] == [0, 1, 2]
    assert all(m["steps"] == STEPS for m in members)
    assert rep["val_loss"] == min(m["val_loss"] for m in members)
    assert members[rep["winner"]]["val_loss"] == rep["val_loss"]
    # the worst of three copies one of the best each round (quantile 0.25: one member)
    steps = [e["step"] for e in rep["exploits"]]
    assert steps == [INTERVAL * k for k in range(1, STEPS // INTERVAL)]
    assert all(e["member"] != e["copied_from"] for e in rep["exploits"])
    # a lineage's stages after a copy start where the copy was made
    for m in members:
        for s in m["stages"][1:]:
            assert s["start"] in steps
    # member 0 started on the config's mixture (uniform), snapped to 6 decimals
    assert rep["initial_weights"][0] == {"lower": 0.333334, "upper": 0.333333,
                                         "digits": 0.333333}


def test_a_failing_member_is_one_line_naming_it(runs) -> None:
    if runs["failed"] is None:
        pytest.skip("this machine has a CUDA device: the failing member is not tested")
    msg = runs["failed"]
    assert msg.startswith("search pbt: member ") and "\n" not in msg
    assert "proxy.device: cuda was asked for but torch sees no CUDA device" in msg


SAME = ("winner", "val_loss", "schedule", "members", "initial_weights", "exploits",
        "winner_record")


def test_a_failed_member_leaves_the_last_round_and_resume_gives_the_same_search(runs) -> None:
    """The interrupted search is a second run with the same seed: its first round is the first
    search's, and resumed it gives that search's result (so a seed gives one search)."""
    f = runs["fault"]
    msg = f["error"]
    assert msg.startswith("search pbt: member 1 failed: RuntimeError: fault injected into "
                          "member 1 at step 4; ")
    assert "1 of 2 rounds are recorded" in msg and "--resume" in msg and "\n" not in msg
    rec = f["record"]
    assert [r["step"] for r in rec["rounds"]] == [2] and "finished" not in rec
    # the states the resume starts from: every member's at step 2 (later ones: removed)
    assert all(s.startswith("step_00000002/") for s in f["states"] if "00000004" not in s)
    assert {f"step_00000002/member_{i:04d}.pt" for i in range(3)} <= set(f["states"])
    first = runs["first"]
    assert rec["rounds"][0]["exploits"] == [e for e in first["exploits"] if e["step"] == 2]
    resumed = f["resumed"]
    for key in SAME:  # the winner's schedule and its batches' digests included
        assert resumed[key] == first[key], key
    assert resumed["resumed_at"] == [2] and first["resumed_at"] == []
    out = runs["tmp"] / "f"
    done = json.loads((out / STATE_FILE).read_text())
    assert done["finished"]["report"] == str(out / "pbt.json")
    assert not (out / ROUNDS_DIR).exists()


def test_a_stopped_driver_resumes_from_its_last_round_to_the_same_search(runs) -> None:
    h = runs["halt"]
    assert h["error"].startswith("search pbt: interrupted (member ")
    assert "2 of 2 rounds are recorded" in h["error"]
    assert [r["step"] for r in h["record"]["rounds"]] == [2, 4]
    # only the last recorded round's states are kept
    assert {s.split("/")[0] for s in h["states"]} == {"step_00000004"}
    row = h["record"]["rounds"][-1]["members"]
    assert [m["member"] for m in row] == [0, 1, 2]
    copied = {e["member"]: e["copied_from"] for e in runs["first"]["exploits"]
              if e["step"] == 4}
    assert {m["member"]: m["state_of"] for m in row if m["state_of"] != m["member"]} == copied
    for key in SAME:
        assert h["resumed"][key] == runs["first"][key], key
    assert h["resumed"]["resumed_at"] == [4]


def test_resume_refuses_a_finished_search_and_other_settings(runs) -> None:
    tmp = runs["tmp"]
    assert runs["finished"] == (f"{tmp / 'h'}: this PBT search already finished: its result is "
                                f"{tmp / 'h' / 'pbt.json'} (schedule "
                                f"{tmp / 'h' / 'schedule.yaml'}); nothing to resume")
    assert "already finished" in runs["other"]  # a finished search: the settings come after
