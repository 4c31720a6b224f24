"""``mixbatch audit report`` and ``audit seen`` on a series stream's log: numbers recomputed
from the log by plain counting, epochs against the stores, windows per series, the page, bad
logs."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from mixbatch.audit.log import iter_log, summary_path
from mixbatch.audit.seen import SeenWindows, seen_windows
from mixbatch.cli import main
from mixbatch.config import load_config
from mixbatch.series.windows import SeriesStore
from test_audit_report import check_page_in_chromium, decode_page_images
from test_series_wired import _config

STEPS = 30  # 180 windows: source b (123 windows) passes its first epoch


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("series_audit")
    cfg = _config(tmp)
    path = str(tmp / "cfg.yaml")
    assert main(["prepare", path]) == 0
    log = tmp / "audit.jsonl"
    assert main(["stream", path, "--steps", str(STEPS), "--emit", str(log)]) == 0
    ranks = [tmp / f"audit.rank{r}.jsonl" for r in (0, 1)]
    for r, p in enumerate(ranks):
        assert main(["stream", path, "--steps", str(STEPS), "--rank", str(r), "--world-size",
                     "2", "--emit", str(p)]) == 0
    return {"tmp": tmp, "cfg": cfg, "path": path, "log": log, "ranks": ranks}


def _report(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert main(["audit", "report", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _rows(*logs: Path) -> list[dict]:
    return [rec for log in logs for kind, rec in iter_log(log) if kind == "window"]


def test_series_report_equals_the_log_counted_plainly(run, capsys) -> None:
    out = run["tmp"] / "rep"
    data = _report(capsys, str(run["log"]), "--config", run["path"], "--out", str(out))
    rows = _rows(run["log"])
    per_source = Counter(r["source"] for r in rows)
    total = sum(per_source.values())
    assert total == STEPS * 6 and data["kind"] == "series" and data["windows"] == total
    stores = {n: SeriesStore(run["tmp"] / "store" / n) for n in ("a", "b")}
    summary = json.loads(summary_path(run["log"]).read_text())
    target = {"a": 0.25, "b": 0.75}
    for n, s in data["sources"].items():
        assert s["windows"] == per_source[n]
        assert s["share"] == pytest.approx(per_source[n] / total, abs=1e-12)
        assert s["target"] == pytest.approx(target[n], abs=1e-12)
        # epochs: windows fed / windows in the store, as the stream's own summary says
        assert s["store_windows"] == len(stores[n])
        assert s["epochs"] == pytest.approx(per_source[n] / len(stores[n]), rel=1e-12)
        assert s["epochs"] == pytest.approx(summary["sources"][n]["epochs"], rel=1e-12)
        assert s["ranks"] == {"0": per_source[n]}
    assert data["sources"]["b"]["epochs"] > 1
    # the prefix deviation after every step, counted from the rows: within one window
    counts = np.zeros((STEPS, 2))
    for r in rows:
        counts[r["step"], "ab".index(r["source"])] += 1
    c = np.cumsum(counts, 0)
    dev = np.abs(c - c.sum(1, keepdims=True) * np.array([0.25, 0.75]))
    for i, n in enumerate("ab"):
        assert data["sources"][n]["max_abs_prefix_deviation"] == pytest.approx(dev[:, i].max())
    assert dev.max() <= 1.0
    # windows per series: drawn counted from the rows, expected = source's windows x the
    # series' share of the store's windows
    for n, store in stores.items():
        drawn = Counter(r["series"] for r in rows if r["source"] == n)
        names = [x["name"] for x in store.meta["series"]]
        sizes = [x["windows"] for x in store.meta["series"]]
        assert set(data["series"][n]) == set(names)
        for name, w in zip(names, sizes, strict=True):
            got = data["series"][n][name]
            assert got["windows"] == drawn.get(name, 0)
            assert got["expected"] == pytest.approx(per_source[n] * w / len(store))
    assert set(data["left_out"]) >= {"padding and truncation", "token compute balance"}
    page = (out / "report.html").read_text()
    assert "Not shown for series" in page and "nothing is padded" in page
    sizes = decode_page_images(out / "report.html")
    assert len(sizes) == 6 and all(w > 100 and h > 100 for w, h in sizes)


def test_series_report_of_all_ranks(run, capsys) -> None:
    data = _report(capsys, *map(str, run["ranks"]), "--out", str(run["tmp"] / "rep2"))
    per_rank: dict = defaultdict(Counter)
    for r in _rows(*run["ranks"]):
        per_rank[r["rank"]][r["source"]] += 1
    whole = Counter(r["source"] for r in _rows(run["log"]))
    assert data["ranks"] == [0, 1] and data["all_ranks"]
    for n, s in data["sources"].items():
        assert s["ranks"] == {str(k): per_rank[k][n] for k in (0, 1)}
        assert s["windows"] == whole[n]  # the two ranks together fed the one-rank stream
    one = _report(capsys, str(run["ranks"][1]), "--out", str(run["tmp"] / "rep3"))
    assert not one["all_ranks"] and one["windows"] == STEPS * 3


def test_series_page_loads_in_headless_chromium(run, capsys, tmp_path: Path) -> None:
    out = run["tmp"] / "rep4"
    _report(capsys, str(run["log"]), "--out", str(out))
    check_page_in_chromium(out / "report.html", tmp_path, 6)


def test_seen_lists_the_windows_of_each_series(run, capsys, tmp_path: Path) -> None:
    step = 7
    want = [(r["source"], r["series"], r["window"]) for r in _rows(run["log"])
            if r["step"] <= step]
    totals = SeenWindows()
    got = list(seen_windows(run["log"], step, totals=totals))
    assert [(a, b, c) for a, b, c, _, _ in got] == want
    assert totals.windows == dict(Counter(s for s, _, _ in want))
    for n in ("a", "b"):
        assert totals.distinct[n] == len({w for s, _, w in want if s == n})
        assert totals.series[n] == len({x for s, x, _ in want if s == n})
    # each window's [start, end) in its series: the store's values are that slice of the
    # series, normalised (source a's series x is sin(i / 7), y is 0.5 i, stride 2)
    store = SeriesStore(run["tmp"] / "store" / "a")
    raw = {"x": np.sin(np.arange(120) / 7), "y": 0.5 * np.arange(120)}
    for source, series, w, a, e in got:
        if source != "a":
            continue
        assert e - a == 10 and a % 2 == 0
        back = store.denormalise(store.windows[[w]], np.array([w]))[0]
        np.testing.assert_allclose(back, raw[series][a:e], atol=1e-4)
    out = tmp_path / "seen.jsonl"
    capsys.readouterr()
    assert main(["audit", "seen", str(run["log"]), "--step", str(step), "--source", "b",
                 "--out", str(out), "--json"]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(x["source"], x["series"], x["window"]) for x in lines] == [
        x for x in want if x[0] == "b"]
    assert json.loads(capsys.readouterr().out)["sources"]["b"]["windows"] == len(lines)


def test_bad_series_logs_give_one_line(run, capsys, tmp_path: Path) -> None:
    text = run["log"].read_text()
    cut = tmp_path / "cut.jsonl"
    cut.write_text(text[: len(text) // 2 - 3])
    capsys.readouterr()
    assert main(["audit", "report", str(cut)]) == 1
    err = capsys.readouterr().err.strip()
    assert "truncated audit log" in err and len(err.splitlines()) == 1
    # a log from another config: another seed (identity), or a text config
    other = load_config(run["path"]).model_dump(mode="json", exclude={"base_dir"})
    other["seed"] = 99
    (run["tmp"] / "other.yaml").write_text(json.dumps(other))
    assert main(["audit", "report", str(run["log"]), "--config",
                 str(run["tmp"] / "other.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "another config" in err and len(err.splitlines()) == 1
    text_cfg = {"sources": {"a": {"path": "a.jsonl"}, "b": {"path": "b.jsonl"}}}
    (run["tmp"] / "text.yaml").write_text(json.dumps(text_cfg))
    assert main(["audit", "report", str(run["log"]), "--config",
                 str(run["tmp"] / "text.yaml")]) == 2
    assert "text sources: a log from another config" in capsys.readouterr().err
    # a series log next to a text stream's log: different runs
    text_log = tmp_path / "text.jsonl"
    text_log.write_text(json.dumps({"step": 0, "rank": 0, "row": 0, "segments": [["a", 0, 0, 3]],
                                    "eod": [1], "pad": 0}) + "\n")
    assert main(["audit", "report", str(run["log"]), str(text_log)]) == 1
    assert "logs of different runs" in capsys.readouterr().err
    assert main(["audit", "seen", str(run["log"]), "--step", "2", "--source", "nope"]) == 2
    assert "'nope' is not in the log" in capsys.readouterr().err


def test_a_series_1_log_is_still_reported(run, capsys, tmp_path: Path) -> None:
    # logs written before the header listed series, strides, weights and identity
    lines = run["log"].read_text().splitlines()
    head = json.loads(lines[0])
    for key in ("series", "strides", "weights", "identity"):
        del head[key]
    head["audit_log"] = "series/1"
    old = tmp_path / "old.jsonl"
    old.write_text("\n".join([json.dumps(head), *lines[1:]]) + "\n")
    summary_path(old).write_text(summary_path(run["log"]).read_text())
    data = _report(capsys, str(old), "--out", str(tmp_path / "rep"))
    new = _report(capsys, str(run["log"]), "--out", str(tmp_path / "rep2"))
    assert data["weights_from"] == "the summary's target"
    for n, s in data["sources"].items():
        assert s["target"] == pytest.approx(new["sources"][n]["target"], abs=1e-12)
        assert s["epochs"] == new["sources"][n]["epochs"]
        assert all(v["expected"] is None for v in data["series"][n].values())
    spans = list(seen_windows(old, 3))
    assert spans and all(a is None and e is None for *_, a, e in spans)
