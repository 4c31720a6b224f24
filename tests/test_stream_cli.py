from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from mixbatch.audit import read_audit_log, summary_path
from mixbatch.config import load_config
from mixbatch.errors import DataError
from mixbatch.loader.loader import MixedLoader
from test_loader import _cfg


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixbatch", *args], capture_output=True,
                          text=True)


def test_stream_json_summary_and_audit_log(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    emit = tmp_path / "audit.jsonl"
    r = _run("stream", str(tmp_path / "c.yaml"), "--steps", "40", "--emit", str(emit), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["steps"] == 40 and s["unit"] == "tokens"
    assert s["max_prefix_deviation"] <= s["max_unit_length"] <= s["max_document_length"]
    for name, w in {"s0": 0.5, "s1": 0.3, "s2": 0.2}.items():
        assert s["sources"][name]["target"] == pytest.approx(w)
        assert abs(s["sources"][name]["realised"] - w) < 0.05
    records = list(read_audit_log(emit))
    assert len(records) == 40 * 4
    assert records[0].keys() == {"step", "rank", "row", "segments", "eod", "pad"}
    # the log rebuilds what the loader planned, token for token
    ref = MixedLoader(cfg)
    expect = Counter()
    for step in ref.steps(40):
        p = step.plan
        for k in range(len(p.row)):
            expect[(step.index, int(p.row[k]), ref.names[int(p.source[k])], int(p.doc[k]),
                    int(p.start[k]), int(p.end[k]))] += 1
    got = Counter((rec["step"], rec["row"], *seg) for rec in records for seg in rec["segments"])
    assert got == expect
    tokens = sum(e - a for rec in records for _, _, a, e in rec["segments"])
    assert tokens == sum(src["tokens"] for src in s["sources"].values())
    # the summary is written next to the log
    saved = json.loads(summary_path(emit).read_text())
    assert summary_path(emit).name == "audit.summary.json"
    for key in ("sources", "padding_fraction", "truncated_tokens", "pieces_per_document",
                "tokens_per_step", "rank_cost_imbalance", "skipped_documents",
                "max_prefix_deviation"):
        assert saved[key] == s[key]


def test_audit_summary_after_resume_covers_the_whole_run(tmp_path: Path) -> None:
    _cfg(tmp_path, batch={"batch_size": 8, "packing": "bfd"})
    cfg = str(tmp_path / "c.yaml")
    whole = tmp_path / "whole.jsonl"
    assert _run("stream", cfg, "--steps", "30", "--emit", str(whole)).returncode == 0
    log, state = tmp_path / "run.jsonl", tmp_path / "state.json"
    assert _run("stream", cfg, "--steps", "12", "--state-out", str(state),
                "--emit", str(log)).returncode == 0
    assert _run("stream", cfg, "--steps", "18", "--state-in", str(state),
                "--emit", str(log)).returncode == 0
    a = json.loads(summary_path(whole).read_text())
    b = json.loads(summary_path(log).read_text())
    assert b["first_step"] == 12 and b["steps"] == 18
    for key in ("padding_fraction", "truncated_tokens", "pieces_per_document",
                "tokens_per_step"):
        assert b[key] == a[key]
    assert {n: v["tokens"] for n, v in b["sources"].items()} == {
        n: v["tokens"] for n, v in a["sources"].items()}


def test_stream_resume_with_other_world_size_appends_log(tmp_path: Path) -> None:
    _cfg(tmp_path, batch={"batch_size": 8})
    cfg = str(tmp_path / "c.yaml")
    straight = tmp_path / "straight.jsonl"
    assert _run("stream", cfg, "--steps", "20", "--emit", str(straight)).returncode == 0
    state = tmp_path / "state.json"
    part = tmp_path / "part.jsonl"
    r = _run("stream", cfg, "--steps", "8", "--rank", "1", "--world-size", "2",
             "--state-out", str(state), "--emit", str(part))
    assert r.returncode == 0, r.stderr
    rest = []
    for rank in range(4):
        log = tmp_path / f"r{rank}.jsonl"
        r = _run("stream", cfg, "--steps", "12", "--rank", str(rank), "--world-size", "4",
                 "--state-in", str(state), "--emit", str(log))
        assert r.returncode == 0, r.stderr
        rest += list(read_audit_log(log))
    want = Counter((x["step"], tuple(map(tuple, x["segments"]))) for x in read_audit_log(straight)
                   if x["step"] >= 8)
    got = Counter((x["step"], tuple(map(tuple, x["segments"]))) for x in rest)
    assert got == want


def test_stream_table_output(tmp_path: Path) -> None:
    _cfg(tmp_path)
    r = _run("stream", str(tmp_path / "c.yaml"), "--steps", "5")
    assert r.returncode == 0, r.stderr
    assert "largest prefix deviation" in r.stdout and "s0" in r.stdout


@pytest.mark.parametrize(("text", "msg"), [
    ("{not json", "corrupt state file"),
    ('{"format": "other"}', "not a mixbatch loader state"),
])
def test_stream_bad_state_exit_2(tmp_path: Path, text: str, msg: str) -> None:
    _cfg(tmp_path)
    state = tmp_path / "bad.json"
    state.write_text(text)
    r = _run("stream", str(tmp_path / "c.yaml"), "--steps", "1", "--state-in", str(state))
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr


def test_stream_state_from_other_config_exit_2(tmp_path: Path) -> None:
    _cfg(tmp_path)
    cfg = tmp_path / "c.yaml"
    state = tmp_path / "s.json"
    assert _run("stream", str(cfg), "--steps", "2", "--state-out", str(state)).returncode == 0
    cfg.write_text(cfg.read_text().replace("seed: 3", "seed: 9"))
    r = _run("stream", str(cfg), "--steps", "1", "--state-in", str(state))
    assert r.returncode == 2 and "seed 3 -> 9" in r.stderr


@pytest.mark.parametrize(("mixture", "msg"), [
    ({"unit": "tokens", "weights": {"s0": -1, "s1": 1}}, "mixture.weights.s0: weight must be >= 0"),
    ({"unit": "tokens", "weights": {"s0": 0, "s1": 0}}, "all weights are 0"),
    ({"unit": "tokens", "weights": {"s0": float("nan")}}, "finite"),
    ({"schedule": [{"until_step": 9, "weights": {"s0": 1}}, {"until_step": 5, "weights": {"s1": 1}},
                   {"weights": {"s2": 1}}]}, "must be greater than 9"),
])
def test_bad_weights_exit_2(tmp_path: Path, mixture: dict, msg: str) -> None:
    _cfg(tmp_path)
    cfg = load_config(tmp_path / "c.yaml")
    del cfg
    import yaml
    data = yaml.safe_load((tmp_path / "c.yaml").read_text())
    data["mixture"] = mixture
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    r = _run("stream", str(tmp_path / "c.yaml"), "--steps", "1")
    assert r.returncode == 2, r.stderr
    assert msg in r.stderr and "Traceback" not in r.stderr


def test_audit_log_bad_line(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    p.write_text('{"step": 0, "rank": 0, "row": 0, "segments": [], "pad": 0}\nnope\n')
    with pytest.raises(DataError, match=r"a\.jsonl:2: not JSON"):
        list(read_audit_log(p))


@pytest.mark.parametrize("packing", ["concat", "bfd", "pad", "buckets"])
def test_audit_rows_show_end_tokens_and_add_up(tmp_path: Path, packing: str) -> None:
    from mixbatch.audit.log import rows_of
    from test_loader import SHAPES

    loader = MixedLoader(_cfg(tmp_path, batch=SHAPES[packing]))
    ends = 0
    for step in loader.steps(12):
        for rec in rows_of(step.plan, loader.names, step.index, 0):
            assert len(rec["eod"]) == len(rec["segments"]) and set(rec["eod"]) <= {0, 1}
            width = sum(e - s for _, _, s, e in rec["segments"]) + sum(rec["eod"]) + rec["pad"]
            assert width == step.plan.seq_len  # no unstated +1 per finished document
            ends += sum(rec["eod"])
    assert ends > 0 or packing == "buckets"  # buckets rows end without an end token


def test_stream_summary_states_its_scope(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from mixbatch.cli import main

    _cfg(tmp_path)
    cfg, state = str(tmp_path / "c.yaml"), tmp_path / "state.json"
    assert main(["stream", cfg, "--steps", "12", "--state-out", str(state), "--json"]) == 0
    capsys.readouterr()
    assert main(["stream", cfg, "--steps", "8", "--state-in", str(state), "--json"]) == 0
    scope = json.loads(capsys.readouterr().out)["scope"]
    assert scope["stream"].startswith("steps 0 to 19 of the whole stream")
    assert scope["call"].startswith("steps 12 to 19 of this call")
    assert main(["stream", cfg, "--steps", "8", "--state-in", str(state)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "mixture of steps 0 to 19 (the whole stream); this call ran steps 12 to 19" in text
    assert "realised: what the planner decided" in text
