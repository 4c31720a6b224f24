"""Resuming an interrupted ``search pbt`` without Ray: the round record, the states a resume
starts from, and every refusal (no search, a finished one, other config or settings, a fresh
search over an unfinished one) before Ray starts. The resumed search itself on Ray Tune:
``tests/test_pbt_ray.py``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from conftest import write_config
from mixbatch.config import load_config
from mixbatch.errors import ConfigError, StateError
from mixbatch.search.pbt import PBTSettings, add_pbt_parser, run_pbt_search, search_of_args
from mixbatch.search.pbt_lineage import absolute_dump
from mixbatch.search.pbt_state import (
    ROUNDS_DIR,
    STATE_FILE,
    RoundLog,
    differences,
    identity,
    round_file,
)
from test_pbt import _proxy, prepared_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    return prepared_config(tmp_path_factory.mktemp("pbt_resume"))


def _ident(cfg, proxy, settings: PBTSettings) -> dict:
    """The identity run_pbt_search records (the proxy as it runs: steps and one thread)."""
    proxy = proxy.model_copy(update={"steps": settings.steps, "threads": proxy.threads or 1})
    return identity(absolute_dump(cfg), proxy.model_dump(mode="json"), settings)


INITS = [{"lower": 0.5, "upper": 0.25, "digits": 0.25}, {"lower": 0.2, "upper": 0.2,
                                                           "digits": 0.6}]


def _member_file(log: RoundLog, step: int, member: int, payload: bytes) -> None:
    path = round_file(log.rounds_dir, step, member)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)


def test_rounds_are_recorded_and_a_resume_starts_from_the_last(tmp_path: Path) -> None:
    ident = {"settings": {"seed": 1}, "proxy": {}, "config": {}}
    log = RoundLog.start(tmp_path, ident, INITS)
    assert log.step == 0 and log.restart() == (INITS, {})
    for m in (0, 1):
        _member_file(log, 2, m, f"m{m}@2".encode())
    w1 = {"lower": 0.4, "upper": 0.3, "digits": 0.3}
    log.commit(2, [{"member": 0, "val_loss": 3.0, "state_of": 0, "weights": INITS[0]},
                   {"member": 1, "val_loss": 3.5, "state_of": 0, "weights": w1}],
               [{"step": 2, "member": 1, "copied_from": 0}])
    for m in (0, 1):
        _member_file(log, 4, m, f"m{m}@4".encode())
    log.commit(4, [{"member": 0, "val_loss": 2.9, "state_of": 1, "weights": w1},
                   {"member": 1, "val_loss": 2.8, "state_of": 1, "weights": w1}],
               [{"step": 4, "member": 0, "copied_from": 1}])
    assert not round_file(log.rounds_dir, 2, 0).parent.exists()  # the previous round: removed
    _member_file(log, 6, 0, b"an unrecorded round")  # interrupted after member 0 reported 6
    back = RoundLog.for_resume(tmp_path, json.loads(json.dumps(ident)))
    assert back.step == 4 and back.exploits() == [{"step": 2, "member": 1, "copied_from": 0},
                                                  {"step": 4, "member": 0, "copied_from": 1}]
    weights, starts = back.restart()
    assert weights == [w1, w1] and starts == {0: b"m1@4", 1: b"m1@4"}  # both continue m1's
    assert sorted(p.name for p in back.rounds_dir.iterdir()) == ["step_00000004"]
    round_file(back.rounds_dir, 4, 1).unlink()
    with pytest.raises(StateError, match=r"member_0001\.pt: the state of member 1 at the "
                                         r"recorded step 4 is missing"):
        back.restart()
    # a round whose member did not write its state is not recorded
    with pytest.raises(StateError, match="member 1 reported step 6 without writing its state"):
        back.commit(6, [{"member": 1, "val_loss": 1.0, "state_of": 1, "weights": w1}], [])
    back.finish({"report": "r.json", "schedule": "s.yaml"})
    assert not back.rounds_dir.exists()
    with pytest.raises(StateError, match=r"already finished: its result is r\.json \(schedule "
                                         r"s\.yaml\); nothing to resume"):
        RoundLog.for_resume(tmp_path, ident)


def test_differences_name_the_keys() -> None:
    a = {"settings": {"seed": 5, "population": 3}, "config": {"mixture": {"weights": {"x": 1}}}}
    b = {"settings": {"seed": 6, "population": 3}, "config": {"mixture": {"weights": {"x": 2}}}}
    assert differences(a, b) == "settings.seed: 5 -> 6; config.mixture.weights.x: 1 -> 2"
    assert differences(a, a) == ""
    many = {"settings": {f"k{i}": i for i in range(6)}}
    assert differences(many, {"settings": {"k0": 0}}) == (
        "settings.k1: 1 -> unset; settings.k2: 2 -> unset; settings.k3: 3 -> unset; "
        "settings.k4: 4 -> unset (and 1 more)")


def test_resume_refusals_are_one_line_before_ray_starts(setup, tmp_path: Path) -> None:
    cfg, proxy = setup["cfg"], _proxy()
    settings = PBTSettings(population=2, interval=4, steps=12, seed=5)
    out = tmp_path / "o"
    with pytest.raises(StateError, match=r"/o: no PBT search to resume \(no pbt_rounds\.json\); "
                                         r"start one without --resume"):
        run_pbt_search(cfg, proxy, settings, out, resume=True)
    RoundLog.start(out, _ident(cfg, proxy, settings), INITS)  # as an interrupted search left it
    with pytest.raises(StateError, match=r"holds an unfinished PBT search \(0 rounds recorded\): "
                                         r"resume it with --resume, or choose another --out"):
        run_pbt_search(cfg, proxy, settings, out)
    other = PBTSettings(population=2, interval=4, steps=12, seed=6)
    with pytest.raises(StateError, match=r"made with another config or settings \(settings\."
                                         r"seed: 5 -> 6\); resume with the same CONFIG") as e:
        run_pbt_search(cfg, proxy, other, out, resume=True)
    assert "\n" not in str(e.value)
    with pytest.raises(StateError, match=r"\(proxy\.lr: 0\.01 -> 0\.02\)"):
        run_pbt_search(cfg, proxy.model_copy(update={"lr": 0.02}), settings, out, resume=True)
    changed = write_config(tmp_path / "c2.yaml", {
        **setup["data"], "store": str(setup["tmp"] / "store"),
        "sources": {k: {**v, "path": str(setup["tmp"] / v["path"])}
                    for k, v in setup["data"]["sources"].items()},
        "mixture": {"weights": {"lower": 2.0, "upper": 1.0, "digits": 1.0}}})
    with pytest.raises(StateError, match=r"\(config\.mixture\.weights\.lower: 1\.0 -> 2\.0\)"):
        run_pbt_search(load_config(changed), proxy, settings, out, resume=True)


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_pbt_parser(p.add_subparsers(dest="search_command"))
    return p.parse_args(argv)


def test_cli_resume_reads_settings_and_proxy_from_the_record(setup, tmp_path: Path) -> None:
    config, out = str(setup["config"]), str(tmp_path / "o")
    with pytest.raises(ConfigError, match=r"--population: required to start a search \(only "
                                          r"--resume reads it"):
        search_of_args(_parse(["pbt", config, "--interval", "4", "--out", out]))
    with pytest.raises(StateError, match="no PBT search to resume"):
        search_of_args(_parse(["pbt", config, "--out", out, "--resume"]))
    args = _parse(["pbt", config, "--population", "3", "--interval", "4", "--steps", "12",
                   "--seed", "7", "--layers", "1", "--d-model", "32", "--out", out])
    cfg, proxy, settings = search_of_args(args)
    assert (settings.population, settings.interval, settings.steps, settings.seed,
            settings.resample, settings.quantile) == (3, 4, 12, 7, 0.25, 0.25)
    ident = _ident(cfg, proxy, settings)
    RoundLog.start(out, ident, INITS)
    # --resume alone: everything as recorded
    cfg2, proxy2, settings2 = search_of_args(_parse(["pbt", config, "--out", out, "--resume",
                                                     "--workers", "1"]))
    assert _ident(cfg2, proxy2, settings2) == ident and settings2.workers == 1
    # flags given override the record: the same values pass, others are named by the resume
    _, proxy3, settings3 = search_of_args(_parse(["pbt", config, "--out", out, "--resume",
                                                  "--seed", "8", "--d-model", "48"]))
    assert settings3.seed == 8 and proxy3.d_model == 48
    with pytest.raises(StateError, match=r"settings\.seed: 7 -> 8; proxy\.d_model: 32 -> 48"):
        run_pbt_search(cfg2, proxy3, settings3, out, resume=True)
    assert (Path(out) / STATE_FILE).is_file() and not (Path(out) / ROUNDS_DIR).exists()
