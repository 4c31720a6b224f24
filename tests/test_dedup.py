"""Duplicates within and across sources: planted copies found, the kept copy deterministic,
drops at prepare time counted in the store's metadata, the audit command's JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_config, write_jsonl
from mixbatch.config import load_config
from mixbatch.dedup import (
    EXACT,
    NEAR,
    DedupConfig,
    find_duplicates,
    lsh_params,
    minhash,
    normalise,
)
from mixbatch.prepare import prepare
from mixbatch.store import open_store


def _docs(n: int, seed: int, words: int = 120) -> list[str]:
    rng = np.random.default_rng(seed)
    vocab = [f"tok{i}" for i in range(3000)]
    return [" ".join(rng.choice(vocab, words)) for _ in range(n)]


def _near(text: str, changes: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    w = text.split()
    for i in rng.choice(len(w), changes, replace=False):
        w[i] = "changed"
    return " ".join(w)


@pytest.fixture
def planted() -> dict[str, list[str]]:
    a, b = _docs(80, 1), _docs(60, 2)
    a[30] = a[4]  # exact inside a
    b[10] = "  " + a[7].upper().replace(" ", "\n")  # exact across, after normalisation
    b[20] = _near(a[9], 2, 0)  # near across (2 of 120 words)
    a[50] = _near(a[11], 3, 1)  # near inside a
    return {"a": a, "b": b}


def test_planted_duplicates_are_found_and_the_first_copy_kept(planted) -> None:
    cfg = DedupConfig(near={"threshold": 0.7, "num_perm": 128})
    d, _ = find_duplicates(planted, cfg)
    assert d.dropped("a") == {30: EXACT, 50: NEAR}
    assert d.dropped("b") == {10: EXACT, 20: NEAR}
    kept = {(d.names[int(d.source[g])], int(d.doc[g])):
            (d.names[int(d.source[d.keeper[g]])], int(d.doc[d.keeper[g]]))
            for g in np.flatnonzero(d.reason != "")}
    assert kept == {("a", 30): ("a", 4), ("a", 50): ("a", 11), ("b", 10): ("a", 7),
                    ("b", 20): ("a", 9)}
    rep = d.report()
    assert rep["sources"] == {"a": {"documents": 80, "exact_duplicates": 1, "near_duplicates": 1},
                              "b": {"documents": 60, "exact_duplicates": 1, "near_duplicates": 1}}
    assert rep["overlap"] == {"a": {"a": 4, "b": 2}, "b": {"a": 2, "b": 0}}
    # the same again: deterministic
    again, _ = find_duplicates(planted, cfg)
    assert np.array_equal(again.keeper, d.keeper)


def test_local_scope_keeps_copies_in_other_sources(planted) -> None:
    d, _ = find_duplicates(planted, DedupConfig(scope="local",
                                                near={"threshold": 0.7, "num_perm": 128}))
    assert d.dropped("a") == {30: EXACT, 50: NEAR}
    assert d.dropped("b") == {}
    d, _ = find_duplicates(planted, DedupConfig(scope="global"))  # exact only
    assert d.dropped("a") == {30: EXACT} and d.dropped("b") == {10: EXACT}


def test_minhash_estimates_jaccard_and_lsh_matches_datasketch_rule() -> None:
    base = _docs(1, 5, words=400)[0]
    other = _near(base, 40, 3)
    sig = minhash([normalise(base), normalise(other)], num_perm=512, ngram=1)

    def shingles(t: str) -> set[str]:
        return set(normalise(t).split())

    a, b = shingles(base), shingles(other)
    jac = len(a & b) / len(a | b)
    assert abs((sig[0] == sig[1]).mean() - jac) < 0.06
    # datasketch's choice for these settings (checked against MinHashLSH(...).b, .r)
    assert lsh_params(0.8, 128) == (9, 13)
    assert lsh_params(0.5, 128) == (25, 5)
    assert lsh_params(0.9, 256) == (9, 28)


def _cfg(tmp: Path, planted: dict[str, list[str]], dedup: dict | None) -> Path:
    for k, texts in planted.items():
        write_jsonl(tmp / f"{k}.jsonl", texts)
    data = {"store": "store", "sources": {k: {"path": f"{k}.jsonl"} for k in planted}}
    if dedup is not None:
        data["dedup"] = dedup
    return write_config(tmp / "c.yaml", data)


def test_prepare_drops_duplicates_and_counts_them(planted, tmp_path: Path) -> None:
    path = _cfg(tmp_path, planted, {"scope": "global", "near": {"threshold": 0.7}})
    cfg = load_config(path)
    rep = prepare(cfg, workers=1)
    assert rep.sources["a"].documents == 78 and rep.sources["b"].documents == 58
    assert rep.sources["a"].skipped == {EXACT: 1, NEAR: 1}
    meta = json.loads((cfg.store_dir / "b" / "meta.json").read_text())
    assert meta["skipped"] == {EXACT: 1, NEAR: 1}
    assert all("duplicate" in x for x in meta["skipped_examples"][EXACT])
    # the kept documents are the others, in order
    store = open_store(cfg.store_dir / "a")
    want = [t for i, t in enumerate(planted["a"]) if i not in (30, 50)]
    assert len(store) == len(want)
    assert bytes(store[29].astype(np.uint8).tolist()).decode() == want[29]
    assert prepare(cfg, workers=1).sources["a"].status == "up to date"
    # other settings rebuild: exact only keeps the near copies
    path = _cfg(tmp_path, planted, {"scope": "global", "near": None})
    rep = prepare(load_config(path), workers=1)
    assert rep.sources["a"].status == "built" and rep.sources["a"].documents == 79


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixbatch", *args], capture_output=True,
                          text=True)


def test_audit_dedup_json(planted, tmp_path: Path) -> None:
    path = _cfg(tmp_path, planted, None)
    r = _run("audit", "dedup", str(path), "--threshold", "0.7", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["sources"]["b"] == {"documents": 60, "exact_duplicates": 1, "near_duplicates": 1}
    assert d["overlap"]["b"]["a"] == 2 and d["overlap"]["a"]["b"] == 2
    assert {e["reason"] for e in d["examples"]} == {EXACT, NEAR}
    r = _run("audit", "dedup", str(path), "--threshold", "1.5")
    assert r.returncode == 2 and "threshold" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_dedup_config_is_one_line(planted, tmp_path: Path) -> None:
    path = _cfg(tmp_path, planted, {"scope": "everywhere"})
    r = _run("prepare", str(path))
    assert r.returncode == 2 and "dedup.scope" in r.stderr, r.stderr
