from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_PROXY, write_alphabet_sources, write_config
from mixbatch.cli import main
from mixbatch.config import load_config
from mixbatch.errors import ConfigError
from mixbatch.prepare import prepare
from mixbatch.proxy import ProxyConfig
from mixbatch.search.results import read_design_csv, read_results_csv
from mixbatch.search.results_file import result_columns
from mixbatch.search.runner import SearchRunError, run_search

# Three sources with disjoint alphabets, so that the mixture moves every loss.
ALPHABETS = {"lower": "abcdefghijklm ", "upper": "NOPQRSTUVWXYZ ", "digits": "0123456789+-*/ "}
NAMES = list(ALPHABETS)
DESIGN = [  # index, lower, upper, digits
    (1, 0.6, 0.3, 0.1),
    (2, 0.1, 0.8, 0.1),
    (3, 0.2, 0.2, 0.6),
    (4, 1.0, 0.0, 0.0),
]
TINY = TINY_PROXY


def _proxy(**kw) -> ProxyConfig:
    return ProxyConfig.from_dict({**TINY, **kw})


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    tmp: Path = tmp_path_factory.mktemp("runner")
    sources = write_alphabet_sources(tmp, ALPHABETS)
    data = {"seed": 1, "store": "store", "holdout": 0.1, "sources": sources,
            "mixture": {"weights": {n: 1.0 for n in NAMES}},
            "batch": {"seq_len": 64, "batch_size": 4, "packing": "concat"}}
    path = write_config(tmp / "c.yaml", data)
    cfg = load_config(path)
    prepare(cfg, workers=1)
    design = _design(tmp / "design.csv", DESIGN)
    # the reference: every row in this process, one at a time
    ref = tmp / "ref.csv"
    run = run_search(cfg, design, ref, workers=1, proxy=_proxy(), progress=False)
    return {"tmp": tmp, "cfg": cfg, "config": path, "design": design, "ref": ref, "run": run}


def _design(path: Path, rows) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", *NAMES])
        w.writerows(rows)
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _losses(path: Path) -> dict[int, tuple[float, ...]]:
    return {int(r["index"]): tuple(float(r[f"val/{n}"]) for n in [*NAMES, "mean"])
            for r in _rows(path)}


def test_results_csv_is_readable_by_fit(setup, tmp_path: Path) -> None:
    run, ref = setup["run"], setup["ref"]
    assert sorted(run.ran) == [1, 2, 3, 4] and run.skipped == [] and run.failed == {}
    with open(ref) as f:
        assert f.readline().strip().split(",") == result_columns(NAMES)
    table = read_results_csv(ref, NAMES)
    assert sorted(table.index.tolist()) == [1, 2, 3, 4]
    assert set(table.loss_columns) == {*(f"val/{n}" for n in NAMES), "val/mean"}
    assert (table.tokens == 20 * 4 * 64).all() and (table.seconds > 0).all()
    by_index = dict(zip(table.index.tolist(), table.weights.tolist(), strict=True))
    assert by_index[2] == pytest.approx([0.1, 0.8, 0.1])
    # the mixture moves the losses: training on `lower` only is best on lower, worst on digits
    losses = _losses(ref)
    assert losses[4][0] == min(v[0] for v in losses.values())
    assert losses[4][2] == max(v[2] for v in losses.values())
    x, y, _ = table.xy("val/upper")
    assert x.shape == (4, 3) and np.isfinite(y).all()
    assert Path(str(ref) + ".run.json").is_file()


def test_resume_after_interrupt_runs_only_missing_rows(setup, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import mixbatch.proxy as proxy_mod

    real = proxy_mod.train_proxy
    calls: list[dict] = []

    def interrupted_after_two(cfg, proxy=None, weights=None, init_state=None, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(weights)
        return real(cfg, proxy, weights=weights, init_state=init_state, **kw)

    out = tmp_path / "res.csv"
    monkeypatch.setattr(proxy_mod, "train_proxy", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_search(setup["cfg"], setup["design"], out, proxy=_proxy(), progress=False)
    assert sorted(_losses(out)) == [1, 2]  # two whole rows survived the interrupt

    calls.clear()

    def counting(cfg, proxy=None, weights=None, init_state=None, **kw):
        calls.append(weights)
        return real(cfg, proxy, weights=weights, init_state=init_state, **kw)

    monkeypatch.setattr(proxy_mod, "train_proxy", counting)
    run = run_search(setup["cfg"], setup["design"], out, proxy=_proxy(), progress=False)
    assert sorted(run.skipped) == [1, 2] and sorted(run.ran) == [3, 4]
    assert [c["digits"] for c in calls] == [0.6, 0.0]  # rows 3 and 4 only
    indices = [int(r["index"]) for r in _rows(out)]
    assert sorted(indices) == [1, 2, 3, 4]  # each index once
    assert _losses(out) == _losses(setup["ref"])  # resumed rows equal uninterrupted ones

    calls.clear()  # a third start has nothing to do
    run = run_search(setup["cfg"], setup["design"], out, proxy=_proxy(), progress=False)
    assert calls == [] and run.ran == [] and len(run.skipped) == 4


def test_a_line_cut_by_a_kill_is_dropped_and_rerun(setup, tmp_path: Path) -> None:
    out = tmp_path / "res.csv"
    shutil.copy(setup["ref"], out)
    shutil.copy(str(setup["ref"]) + ".run.json", str(out) + ".run.json")
    lines = out.read_text().splitlines(keepends=True)
    row3 = next(i for i, line in enumerate(lines) if line.startswith("3,"))
    cut = lines[row3][: len(lines[row3]) // 2]  # half a line, no newline: a kill mid-write
    out.write_text("".join(lines[:row3] + lines[row3 + 1:]) + cut)
    run = run_search(setup["cfg"], setup["design"], out, proxy=_proxy(), progress=False)
    assert run.repaired and run.ran == [3]
    assert _losses(out) == _losses(setup["ref"])
    assert sorted(int(r["index"]) for r in _rows(out)) == [1, 2, 3, 4]


def test_a_failing_row_is_named_and_retried(setup, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import mixbatch.proxy as proxy_mod

    real = proxy_mod.train_proxy

    def fails_on_row_2(cfg, proxy=None, weights=None, **kw):
        if weights["upper"] == 0.8:
            raise ValueError("boom\nsecond line")
        return real(cfg, proxy, weights=weights, **kw)

    out = tmp_path / "res.csv"
    lines: list[str] = []
    monkeypatch.setattr(proxy_mod, "train_proxy", fails_on_row_2)
    with pytest.raises(SearchRunError, match=r"1 of 4 design rows failed \(index 2: "
                                             r"ValueError: boom second line\)") as e:
        run_search(setup["cfg"], setup["design"], out, proxy=_proxy(), progress=False,
                   log=lines.append)
    assert lines == ["design row 2 failed: ValueError: boom second line"]
    assert sorted(e.value.run.ran) == [1, 3, 4] and list(e.value.run.failed) == [2]
    monkeypatch.setattr(proxy_mod, "train_proxy", real)
    run = run_search(setup["cfg"], setup["design"], out, proxy=_proxy(), progress=False)
    assert run.ran == [2]
    assert _losses(out) == _losses(setup["ref"])


def test_results_of_another_search_are_refused(setup, tmp_path: Path) -> None:
    out = tmp_path / "res.csv"
    shutil.copy(setup["ref"], out)
    shutil.copy(str(setup["ref"]) + ".run.json", str(out) + ".run.json")
    with pytest.raises(ConfigError, match=r"other settings .*proxy\.steps: 20 then, 30 now"):
        run_search(setup["cfg"], setup["design"], out, proxy=_proxy(steps=30), progress=False)
    other = _design(tmp_path / "other.csv", [(1, 0.5, 0.5, 0.0), *DESIGN[1:]])
    with pytest.raises(ConfigError, match="row index 1 has other weights than design row 1"):
        run_search(setup["cfg"], other, out, proxy=_proxy(), progress=False)
    # threads and device do not change what a run measures: accepted
    run = run_search(setup["cfg"], setup["design"], out, proxy=_proxy(threads=2),
                     progress=False)
    assert run.ran == []


def test_bad_design_and_settings_are_config_errors(setup, tmp_path: Path) -> None:
    cfg = setup["cfg"]
    bad = tmp_path / "bad.csv"
    bad.write_text("index,lower,upper\n1,0.5,0.5\n")
    with pytest.raises(ConfigError, match="missing weight columns: digits"):
        run_search(cfg, bad, tmp_path / "o.csv", proxy=_proxy(), progress=False)
    with pytest.raises(ConfigError, match="a design has only 'index' and weight columns"):
        read_design_csv(setup["ref"], NAMES)
    with pytest.raises(ConfigError, match="holdout is 0"):
        run_search(cfg.model_copy(update={"holdout": 0.0}), setup["design"],
                   tmp_path / "o.csv", proxy=_proxy(), progress=False)
    with pytest.raises(ConfigError, match="got 'dask', expected one of 'local', 'ray'"):
        run_search(cfg, setup["design"], tmp_path / "o.csv", backend="dask", progress=False)
    with pytest.raises(ConfigError, match="workers must be >= 1"):
        run_search(cfg, setup["design"], tmp_path / "o.csv", workers=0, progress=False)


def test_two_workers_give_the_same_losses_as_one(setup, tmp_path: Path) -> None:
    out = tmp_path / "res.csv"
    run = run_search(setup["cfg"], setup["design"], out, workers=2, proxy=_proxy(),
                     progress=False)
    assert sorted(run.ran) == [1, 2, 3, 4]
    assert _losses(out) == _losses(setup["ref"])  # bit-identical, whatever the order


def test_cli_search_run_then_fit(setup, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, model = tmp_path / "res.csv", tmp_path / "model.json"
    flags = ["--steps", "20", "--layers", "1", "--d-model", "32", "--heads", "2",
             "--seq-len", "64", "--batch-size", "4", "--lr", "0.01", "--eval-tokens", "512",
             "--threads", "1", "--device", "cpu"]
    argv = ["search", "run", str(setup["config"]), "--design", str(setup["design"]), "--out",
            str(out), "--no-progress", *flags]
    with pytest.raises(SystemExit):  # argparse refuses
        main([*argv, "--workers", "0"])
    capsys.readouterr()
    # the CLI starts from ProxyConfig.demo(): warmup 20 instead of the tiny proxies' 2
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "search run: 4 of 4 design rows" in text and "val/mean" in text
    assert sorted(_losses(out)) == [1, 2, 3, 4]
    assert main(["search", "fit", str(out), "--target", "val/upper", "--model", "linear",
                 "--folds", "0", "--out", str(model)]) == 0
    assert model.is_file()
    assert main([*argv, "--steps", "21"]) == 2  # other settings than the file's: refused
    assert "other settings" in capsys.readouterr().err


def test_ray_backend_matches_local(setup, tmp_path: Path) -> None:
    try:
        import ray
    except ImportError:
        pytest.skip("ray is not installed (pip install ray): the Ray backend is not tested")
    out = tmp_path / "res.csv"
    design = _design(tmp_path / "two.csv", DESIGN[:2])
    assert not ray.is_initialized()
    run = run_search(setup["cfg"], design, out, backend="ray", workers=2, proxy=_proxy(),
                     progress=False)
    assert not ray.is_initialized()  # the Ray it started is shut down
    assert sorted(run.ran) == [1, 2] and run.backend == "ray"
    ref = _losses(setup["ref"])
    assert _losses(out) == {i: ref[i] for i in (1, 2)}
