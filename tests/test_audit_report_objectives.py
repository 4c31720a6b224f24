"""``mixbatch audit report`` on runs with ``objectives:``: objective shares by rows and by
tokens recomputed from the log by plain counting, the exact weights' bound, per source and
objective, a training run's folder, a log from another config."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from mixbatch.audit.log import iter_log
from mixbatch.cli import main
from mixbatch.objectives.config import ObjectivesConfig
from test_audit_report import check_page_in_chromium, decode_page_images
from test_objectives_wired import _config

SPEC = {"weights": {"R": 1, "S": 2, "X": 1}}
STEPS = 25


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("objectives_audit")
    _config(tmp, SPEC, packing="concat")
    path = str(tmp / "cfg.yaml")
    log = tmp / "audit.jsonl"
    assert main(["stream", path, "--steps", str(STEPS), "--emit", str(log)]) == 0
    ranks = [tmp / f"audit.rank{r}.jsonl" for r in (0, 1)]
    for r, p in enumerate(ranks):
        assert main(["stream", path, "--steps", str(STEPS), "--rank", str(r), "--world-size",
                     "2", "--emit", str(p)]) == 0
    return {"tmp": tmp, "path": path, "log": log, "ranks": ranks}


def _report(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert main(["audit", "report", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _count(*logs: Path) -> tuple[dict, dict, dict, np.ndarray, list[str]]:
    """Rows and tokens per objective, (tokens, documents) per source and objective, and the
    rows per step and objective, by plain counting."""
    rows, tokens = defaultdict(int), defaultdict(int)
    cross: dict = defaultdict(lambda: [0, 0])
    names = [d.name for d in ObjectivesConfig(**SPEC).build()]
    per_step = np.zeros((STEPS, len(names)))
    for log in logs:
        for kind, rec in iter_log(log):
            if kind != "row":
                continue
            o = rec["objective"]
            rows[o] += 1
            per_step[rec["step"], names.index(o)] += 1
            for src, _doc, a, e in rec["segments"]:
                tokens[o] += e - a
                cross[(src, o)][0] += e - a
                cross[(src, o)][1] += int(a == 0 and e > 0)
    return rows, tokens, cross, per_step, names


def test_objective_shares_equal_the_log_counted_plainly(run, capsys) -> None:
    out = run["tmp"] / "rep"
    data = _report(capsys, str(run["log"]), "--config", run["path"], "--out", str(out))
    od = data["objectives"]
    rows, tokens, cross, per_step, names = _count(run["log"])
    weights = ObjectivesConfig(**SPEC).weight_vector()
    assert od["names"] == names and od["weights_known"] and od["all_ranks"]
    assert od["rows"] == sum(rows.values()) == STEPS * 4
    t_all = sum(tokens.values())
    c = np.cumsum(per_step, 0)
    dev = c - c.sum(1, keepdims=True) * weights
    for j, n in enumerate(names):
        o = od["objectives"][n]
        assert o["rows"] == rows[n] and o["tokens"] == tokens[n]
        assert o["rows_share"] == pytest.approx(rows[n] / od["rows"], abs=1e-12)
        assert o["tokens_share"] == pytest.approx(tokens[n] / t_all, abs=1e-12)
        assert o["target"] == pytest.approx(weights[j], abs=1e-12)
        assert o["max_abs_prefix_deviation"] == pytest.approx(np.abs(dev[:, j]).max())
    assert np.abs(dev).max() < 1.0  # the planner's rule: every prefix within one row
    for src in ("web", "code"):
        for n in names:
            got = od["by_source"][src][n]
            assert [got["tokens"], got["samples"]] == cross.get((src, n), [0, 0])
    assert {"objective shares", "objective prefix deviation",
            "tokens per source and objective"} <= set(data["figures"])
    sizes = decode_page_images(out / "report.html")
    assert len(sizes) == 9 and all(w > 100 and h > 100 for w, h in sizes)
    # the weights are in the stream's header: no --config needed
    again = _report(capsys, str(run["log"]), "--out", str(run["tmp"] / "rep1"))
    assert again["objectives"] == od


def test_objectives_of_all_ranks(run, capsys) -> None:
    data = _report(capsys, *map(str, run["ranks"]), "--out", str(run["tmp"] / "rep2"))
    rows, tokens, _, per_step, names = _count(*run["ranks"])
    whole, _, _, _, _ = _count(run["log"])
    assert dict(rows) == dict(whole)  # the ranks' rows together: the one-rank stream's
    assert data["objectives"]["all_ranks"]
    c = np.cumsum(per_step, 0)
    dev = np.abs(c - c.sum(1, keepdims=True) * ObjectivesConfig(**SPEC).weight_vector())
    for j, n in enumerate(names):
        o = data["objectives"]["objectives"][n]
        assert o["rows"] == rows[n] and o["tokens"] == tokens[n]
        assert o["max_abs_prefix_deviation"] == pytest.approx(dev[:, j].max())
    assert dev.max() < 1.0
    one = _report(capsys, str(run["ranks"][0]), "--out", str(run["tmp"] / "rep3"))
    assert not one["objectives"]["all_ranks"] and one["objectives"]["rows"] == STEPS * 2


def test_objectives_page_loads_in_headless_chromium(run, capsys, tmp_path: Path) -> None:
    out = run["tmp"] / "rep4"
    _report(capsys, str(run["log"]), "--out", str(out))
    check_page_in_chromium(out / "report.html", tmp_path, 9)


def test_a_log_from_another_config_is_one_line(run, capsys) -> None:
    from mixbatch.config import load_config

    base = load_config(run["path"]).model_dump(mode="json", exclude={"base_dir"})
    for name, change, needle in (
            ("none.yaml", {"objectives": None}, "the config has no `objectives:`"),
            ("w.yaml", {"objectives": {**base["objectives"], "weights": {"R": 1}}},
             "are not the config's")):
        (run["tmp"] / name).write_text(json.dumps({**base, **change}))
        capsys.readouterr()
        assert main(["audit", "report", str(run["log"]), "--config",
                     str(run["tmp"] / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "another config" in err and len(err.splitlines()) == 1


def test_training_run_folder_with_objectives(tmp_path: Path, capsys) -> None:
    pytest.importorskip("torch")
    _config(tmp_path, SPEC, holdout=0.1)
    proxy = [f"--proxy={k}={v}" for k, v in (("n_layer", 1), ("d_model", 32), ("n_head", 2),
                                              ("threads", 1), ("device", "cpu"),
                                              ("eval_tokens", 256))]
    folder = tmp_path / "run"
    assert main(["train", str(tmp_path / "cfg.yaml"), "--steps", "4", "--policy", "none",
                 "--out", str(folder), *proxy]) == 0
    # a training run's log starts with the stream's header, objectives' weights included
    first = json.loads((folder / "audit.jsonl").read_text().splitlines()[0])
    assert first["audit_log"] and "objectives" in first
    bare = _report(capsys, str(folder))
    assert bare["objectives"]["weights_known"]
    data = _report(capsys, str(folder), "--config", str(tmp_path / "cfg.yaml"))
    od = data["objectives"]
    rows = defaultdict(int)
    for kind, rec in iter_log(folder / "audit.jsonl"):
        if kind == "row":
            rows[rec["objective"]] += 1
    assert od["weights_known"] and od["rows"] == sum(rows.values()) == 16
    weights = ObjectivesConfig(**SPEC).weight_vector()
    for j, (n, o) in enumerate(od["objectives"].items()):
        assert o["rows"] == rows[n] and o["target"] == pytest.approx(weights[j])
        assert o["max_abs_prefix_deviation"] < 1.0
    assert (folder / "audit-report" / "report.html").is_file()
