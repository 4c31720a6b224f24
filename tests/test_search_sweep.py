"""``mixbatch search sweep`` (:mod:`mixbatch.search.batch_sweep`): steps and tokens to a held-out
loss per batch size; runs that never reach it are censored at their length, never dropped."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from mixbatch.errors import ConfigError
from mixbatch.search.batch_sweep import SweepRun, add_sweep_parser, fit_tradeoff, summarize
from test_loader import _cfg


def _run(b: int, seed: int, steps: int, hit: int | None, per_step: int = 100) -> SweepRun:
    at = steps if hit is None else hit
    return SweepRun(b, seed, steps, steps * per_step * b, at, at * per_step * b, hit is None,
                    3.0, 2.9, 1.0)


def test_censored_runs_count_at_their_length() -> None:
    runs = [_run(4, 0, 100, 40), _run(4, 1, 100, 60), _run(4, 2, 100, None),
            _run(8, 0, 50, None), _run(8, 1, 50, None), _run(8, 2, 50, 30)]
    by = {r["batch_size"]: r for r in summarize(runs)["by_batch_size"]}
    assert by[4]["runs"] == 3 and by[4]["reached"] == 2
    assert by[4]["median_steps"] == 60 and not by[4]["median_steps_lower_bound"]
    # two of three never reached it: the median is the run length, a lower bound
    assert by[8]["reached"] == 1 and by[8]["median_steps"] == 50
    assert by[8]["median_steps_lower_bound"] and by[8]["median_tokens_lower_bound"]
    assert by[8]["step_speedup"] == pytest.approx(60 / 50)
    assert by[8]["token_cost"] == pytest.approx(50 * 8 / (60 * 4))
    # an even count: the two middle runs, a bound if either is censored
    two = summarize([_run(2, 0, 10, 4), _run(2, 1, 10, None)])["by_batch_size"][0]
    assert two["median_steps"] == 7 and two["median_steps_lower_bound"]


def test_fit_recovers_the_tradeoff() -> None:
    s_min, e_min = 200.0, 50_000.0
    steps = [250.0, 300.0, 500.0, 1000.0]
    tokens = [e_min * s / (s - s_min) for s in steps]  # (S/S_min - 1)(E/E_min - 1) = 1
    fit = fit_tradeoff(steps, tokens)
    assert fit["s_min"] == pytest.approx(s_min) and fit["e_min"] == pytest.approx(e_min)
    assert fit["b_crit_tokens"] == pytest.approx(e_min / s_min) and fit["why"] is None
    assert fit_tradeoff([100.0], [1e4])["why"].startswith("fewer than two")
    # a larger batch that needs more steps follows no trade-off
    assert "no positive fit" in fit_tradeoff([100.0, 200.0], [1e3, 4e3])["why"]


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_sweep_parser(p.add_subparsers(dest="cmd"))
    return p.parse_args(["sweep", *argv])


def test_sweep_command_on_proxies(tmp_path: Path, capsys) -> None:
    _cfg(tmp_path, holdout=0.2)
    tiny = ["--layers", "1", "--d-model", "32", "--heads", "2", "--seq-len", "64",
            "--eval-tokens", "512", "--threads", "1", "--device", "cpu", "--lr", "1e-2"]
    out = tmp_path / "sweep.json"
    args = _parse([str(tmp_path / "c.yaml"), "--batch-sizes", "2", "4", "--seeds", "0", "1",
                   "--tokens", "4096", "--target", "4.6", "--eval-every-tokens", "512",
                   "--out", str(out), *tiny])
    assert args.func(args) == 0
    data = json.loads(out.read_text())
    runs = data["runs"]
    assert [(r["batch_size"], r["seed"]) for r in runs] == [(2, 0), (2, 1), (4, 0), (4, 1)]
    assert [r["steps"] for r in runs] == [32, 32, 16, 16]  # the same tokens for every size
    for r in runs:
        if r["censored"]:  # never reached: counted at the run's length
            assert r["steps_to_target"] == r["steps"] and r["best_loss"] > 4.6
        else:
            assert r["steps_to_target"] <= r["steps"] and r["best_loss"] <= 4.6
            assert r["steps_to_target"] % (512 // (64 * r["batch_size"])) == 0
    assert [r["batch_size"] for r in data["by_batch_size"]] == [2, 4]
    assert "median steps" in capsys.readouterr().out
    # an unreachable target: every run censored, still every run reported
    args = _parse([str(tmp_path / "c.yaml"), "--batch-sizes", "4", "--seeds", "0",
                   "--tokens", "1024", "--target", "0.0", "--out", str(out), *tiny])
    assert args.func(args) == 0
    data = json.loads(out.read_text())
    assert [r["censored"] for r in data["runs"]] == [True]
    assert data["by_batch_size"][0]["median_steps_lower_bound"]
    assert data["fit"]["why"].startswith("fewer than two")


def test_sweep_needs_held_out_documents(tmp_path: Path) -> None:
    _cfg(tmp_path)
    args = _parse([str(tmp_path / "c.yaml"), "--batch-sizes", "4", "--tokens", "1024",
                   "--target", "3"])
    with pytest.raises(ConfigError, match="holdout"):
        args.func(args)
    args = _parse([str(tmp_path / "c.yaml"), "--batch-sizes", "4", "--tokens", "1024",
                   "--target", "3", "--batch-size", "8"])
    with pytest.raises(ConfigError, match="--batch-size: the sweep sets"):
        args.func(args)
