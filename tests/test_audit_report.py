"""``mixbatch audit report`` and ``audit seen``: numbers recomputed from the log, the page in a
real headless browser, bounded-memory queries, bad logs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from mixbatch.audit.log import iter_log, read_audit_log, summary_path
from mixbatch.audit.seen import SeenTotals, seen_spans
from mixbatch.audit.trace import read_trace
from mixbatch.config import load_config
from mixbatch.errors import ConfigError, DataError
from test_loader import _cfg


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixbatch", *args], capture_output=True,
                          text=True)


SCHEDULE = {"unit": "tokens", "weights": None,
            "schedule": [{"until_step": 20, "weights": {"s0": 0.6, "s1": 0.2, "s2": 0.2}},
                         {"weights": {"s0": 0.2, "s1": 0.4, "s2": 0.4}}]}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("audit")
    _cfg(tmp, mixture=SCHEDULE, batch={"batch_size": 4, "packing": "bfd", "pack_window": 8})
    cfg = str(tmp / "c.yaml")
    log = tmp / "audit.jsonl"
    r = _run("stream", cfg, "--steps", "40", "--emit", str(log), "--json")
    assert r.returncode == 0, r.stderr
    ranks = []
    for rank in (0, 1):
        p = tmp / f"audit.rank{rank}.jsonl"
        r = _run("stream", cfg, "--steps", "40", "--rank", str(rank), "--world-size", "2",
                 "--emit", str(p))
        assert r.returncode == 0, r.stderr
        ranks.append(p)
    return {"tmp": tmp, "cfg": cfg, "log": log, "ranks": ranks}


def _recompute(logs: list[Path]) -> tuple[dict, dict, dict]:
    tokens, samples = defaultdict(int), defaultdict(int)
    per_rank: dict = defaultdict(lambda: defaultdict(int))
    for log in logs:
        for rec in read_audit_log(log):
            for src, _doc, a, e in rec["segments"]:
                tokens[src] += e - a
                samples[src] += int(a == 0 and e > 0)
                per_rank[rec["rank"]][src] += e - a
    return tokens, samples, per_rank


def test_report_shares_equal_those_recomputed_from_the_log(run) -> None:
    out = run["tmp"] / "rep"
    r = _run("audit", "report", str(run["log"]), "--config", run["cfg"], "--out", str(out),
             "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    tokens, samples, _ = _recompute([run["log"]])
    t_all, s_all = sum(tokens.values()), sum(samples.values())
    saved = json.loads(summary_path(run["log"]).read_text())
    for n, s in data["sources"].items():
        assert s["tokens"] == tokens[n] and s["samples"] == samples[n]
        assert s["tokens_share"] == pytest.approx(tokens[n] / t_all, abs=1e-12)
        assert s["samples_share"] == pytest.approx(samples[n] / s_all, abs=1e-12)
        # the stream's own summary agrees (one rank: the log holds the whole stream)
        assert s["tokens"] == saved["sources"][n]["tokens"]
        # epochs: documents started over the documents the run can draw (the log's header)
        header = next(rec for kind, rec in iter_log(run["log"]) if kind == "header")
        docs = dict(zip(header["sources"], header["documents"], strict=True))
        assert s["epochs"] == pytest.approx(samples[n] / docs[n], rel=1e-12)
    assert data["weights_logged"] and data["steps"] == 40
    # the target integrates the two stages: 20 steps at (.6,.2,.2), then (.2,.4,.4)
    tr = read_trace([run["log"]])
    w = tr.target_weights()
    assert np.allclose(w[:20], [0.6, 0.2, 0.2]) and np.allclose(w[20:], [0.2, 0.4, 0.4])
    # the prefix deviation, recomputed step by step from the log's rows and step weights
    per_step = np.zeros((40, 3))
    weights = {}
    for kind, rec in iter_log(run["log"]):
        if kind == "row":
            for src, _doc, a, e in rec["segments"]:
                per_step[rec["step"], int(src[1])] += e - a
        elif kind == "step":
            weights[rec["step"]] = rec["weights"]
    target = np.cumsum(np.array([weights[t] for t in range(40)]) * per_step.sum(1)[:, None], 0)
    assert np.allclose(tr.deviation(), np.cumsum(per_step, 0) - target)
    assert data["sources"]["s0"]["max_abs_prefix_deviation"] == pytest.approx(
        np.abs(np.cumsum(per_step, 0) - target)[:, 0].max())
    assert data["padding_fraction"] == pytest.approx(saved["padding_fraction"], abs=1e-12)
    assert data["truncated_tokens"] == saved["truncated_tokens"]
    for name in ("report.html", "mixture.png", "deviation.png", "weights.png", "epochs.png",
                 "padding.png", "ranks.png", "report.json"):
        assert (out / name).stat().st_size > 0


def test_report_of_all_ranks_composition_and_balance(run) -> None:
    out = run["tmp"] / "rep2"
    r = _run("audit", "report", *map(str, run["ranks"]), "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    _, _, per_rank = _recompute(run["ranks"])
    for n, s in data["sources"].items():
        assert s["ranks"] == {str(k): per_rank[k][n] for k in (0, 1)}
    # the two ranks together fed exactly what one rank fed alone
    whole, _, _ = _recompute([run["log"]])
    assert {n: s["tokens"] for n, s in data["sources"].items()} == dict(whole)
    assert data["ranks"] == [0, 1] and data["rank_cost_imbalance"]["max"] >= 1.0
    stream = json.loads(summary_path(run["ranks"][0]).read_text())
    assert data["rank_cost_imbalance"]["max"] == pytest.approx(
        stream["rank_cost_imbalance"]["max"], rel=1e-9)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def decode_page_images(page: Path) -> list[tuple[int, int]]:
    """Every image of a report page decoded from its data URI (without a browser): sizes."""
    import base64
    import io
    import re

    from PIL import Image

    sizes = []
    for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page.read_text()):
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            im.load()
            sizes.append(im.size)
    return sizes


def check_page_in_chromium(page: Path, tmp: Path, images: int) -> None:
    """Open ``page`` in headless Chromium: the title, ``images`` images all decoded, no console
    error. Skipped without Chromium unless MIXBATCH_REQUIRE_BROWSER is set (.ci/run)."""
    if CHROMIUM is None or DRIVER is None:
        if os.environ.get("MIXBATCH_REQUIRE_BROWSER"):
            pytest.fail("chromium / chromedriver not found; .ci/run installs them with apt")
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp / 'profile'}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(DRIVER))
    try:
        driver.set_page_load_timeout(60)
        driver.get(page.resolve().as_uri())
        assert driver.title == "mixbatch run report"
        found = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth,"
            " i.naturalHeight]);")
        assert len(found) == images
        for alt, complete, w, h in found:
            assert complete and w > 100 and h > 100, alt
        driver.set_script_timeout(30)
        decoded = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "Promise.all(Array.from(document.images).map(i => i.decode()))"
            ".then(() => done('ok'), e => done('error: ' + e));")
        assert decoded == "ok"
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
    finally:
        driver.quit()


def test_report_page_loads_in_headless_chromium(run, tmp_path: Path) -> None:
    out = run["tmp"] / "rep3"
    assert _run("audit", "report", str(run["log"]), "--out", str(out)).returncode == 0
    sizes = decode_page_images(out / "report.html")
    assert len(sizes) == 6 and all(w > 100 and h > 100 for w, h in sizes)
    check_page_in_chromium(out / "report.html", tmp_path, 6)


def test_seen_by_step_matches_the_log(run, tmp_path: Path) -> None:
    log = run["log"]
    step = 12
    want: dict = defaultdict(set)
    for rec in read_audit_log(log):
        if rec["step"] <= step:
            for src, doc, a, e in rec["segments"]:
                want[(src, doc)] |= set(range(a, e))
    totals = SeenTotals()
    got: dict = defaultdict(set)
    spans = list(seen_spans(log, step, totals=totals, open_limit=3))  # tiny LRU: still right
    for src, doc, a, e in spans:
        assert a < e and not (got[(src, doc)] & set(range(a, e)))  # spans never overlap
        got[(src, doc)] |= set(range(a, e))
    assert got == {k: v for k, v in want.items() if v}
    for n in ("s0", "s1", "s2"):
        assert totals.documents[n] == len({d for (s, d), v in want.items() if s == n and v})
        assert totals.tokens[n] == sum(len(v) for (s, _), v in want.items() if s == n)
    # merged: in the default table a document's contiguous pieces make one span
    merged = list(seen_spans(log, step))
    assert len(merged) <= len(spans)
    out = tmp_path / "seen.jsonl"
    r = _run("audit", "seen", str(log), "--step", str(step), "--source", "s1", "--out", str(out),
             "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert {x["source"] for x in lines} == {"s1"}
    assert json.loads(r.stdout)["sources"]["s1"]["tokens"] == totals.tokens["s1"]


def test_bad_logs_give_one_line(run, tmp_path: Path) -> None:
    text = run["log"].read_text()
    cut = tmp_path / "cut.jsonl"
    cut.write_text(text[: len(text) // 2 - 7])
    r = _run("audit", "report", str(cut))
    assert r.returncode == 1 and "truncated audit log" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(DataError, match="truncated"):
        list(iter_log(cut))
    # a log from another config (other seed): refused with exit code 2
    other = load_config(run["cfg"]).model_dump(mode="json", exclude={"base_dir"})
    other["seed"] = 99
    (run["tmp"] / "other.yaml").write_text(json.dumps(other))
    r = _run("audit", "report", str(run["log"]), "--config", str(run["tmp"] / "other.yaml"))
    assert r.returncode == 2 and "another config" in r.stderr, r.stderr
    with pytest.raises(ConfigError, match="another config"):
        read_trace([run["log"]], load_config(run["tmp"] / "other.yaml"))
    r = _run("audit", "seen", str(run["log"]), "--step", "3", "--source", "nope")
    assert r.returncode == 2 and "'nope' is not in the log" in r.stderr
    r = _run("audit", "report", str(tmp_path / "missing.jsonl"))
    assert r.returncode == 1 and "no such audit log" in r.stderr


def test_report_of_a_training_run_folder_uses_its_weights(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from mixbatch.online import train_online
    from mixbatch.proxy import ProxyConfig

    cfg = _cfg(tmp_path, holdout=0.2)
    proxy = ProxyConfig.from_dict({"n_layer": 1, "d_model": 32, "n_head": 2, "seq_len": 64,
                                   "batch_size": 4, "steps": 12, "lr": 1e-2, "warmup": 2,
                                   "eval_tokens": 256, "eval_every": 6, "device": "cpu",
                                   "threads": 1})
    run = tmp_path / "run"
    train_online(cfg, proxy, {"name": "odm"}, target="s2", run_dir=run)
    r = _run("audit", "report", str(run), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["weights_logged"] and data["steps"] == 12
    lines = (run / "weights.csv").read_text().splitlines()
    head = lines[0].split(",")
    last = dict(zip(head, lines[-1].split(","), strict=True))
    for n in ("s0", "s1", "s2"):
        assert data["sources"][n]["target_last_step"] == pytest.approx(float(last[f"weight_{n}"]))
    assert (run / "audit-report" / "report.html").is_file()


def test_seen_with_held_out_documents(tmp_path: Path) -> None:
    # with a holdout the trained documents are spread over the whole store's indices
    _cfg(tmp_path, holdout=0.2)
    log = tmp_path / "a.jsonl"
    assert _run("stream", str(tmp_path / "c.yaml"), "--steps", "30", "--emit",
                str(log)).returncode == 0
    totals = SeenTotals()
    spans = list(seen_spans(log, 29, totals=totals))
    docs = {(s, d) for s, d, _, _ in spans}
    for n in ("s0", "s1", "s2"):
        assert totals.documents[n] == len({d for s, d in docs if s == n})
