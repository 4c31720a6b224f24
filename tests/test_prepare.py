from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import write_config, write_jsonl
from mixbatch.config import load_config
from mixbatch.errors import DataError
from mixbatch.io import OnError
from mixbatch.prepare import prepare
from mixbatch.store import open_store


def _store_bytes(root: Path, name: str) -> tuple[bytes, bytes]:
    return (root / name / "tokens.bin").read_bytes(), (root / name / "offsets.npy").read_bytes()


def test_second_run_does_nothing(two_sources: Path) -> None:
    cfg = load_config(two_sources)
    first = prepare(cfg, workers=1)
    assert {r.status for r in first.sources.values()} == {"built"}
    meta_mtime = (cfg.store_dir / "web" / "meta.json").stat().st_mtime_ns
    second = prepare(cfg, workers=1)
    assert {r.status for r in second.sources.values()} == {"up to date"}
    assert second.units_run == 0
    assert (cfg.store_dir / "web" / "meta.json").stat().st_mtime_ns == meta_mtime
    # touching a file (same bytes) is still nothing to do; changing one rebuilds that source only
    os.utime(two_sources.parent / "data" / "code.jsonl")
    assert prepare(cfg, workers=1).units_run == 0
    write_jsonl(two_sources.parent / "data" / "code.jsonl", ["changed"])
    third = prepare(cfg, workers=1)
    assert third.sources["code"].status == "built" and third.sources["web"].status == "up to date"
    assert third.sources["code"].documents == 1


def test_processes_give_identical_store(tmp_path: Path) -> None:
    texts = [f"document {i} " + "ab" * (i % 50) for i in range(3000)]
    write_jsonl(tmp_path / "big.jsonl", texts)
    for i in range(3):
        write_jsonl(tmp_path / f"small{i}.jsonl", texts[i::7])
    data = {"store": "s1", "sources": {"a": {"path": ["big.jsonl", "small*.jsonl"]}}}
    cfg1 = load_config(write_config(tmp_path / "c1.yaml", data))
    cfg2 = load_config(write_config(tmp_path / "c2.yaml", {**data, "store": "s2"}))
    prepare(cfg1, workers=1, chunk_bytes=4096)
    prepare(cfg2, workers=2, chunk_bytes=4096)  # big.jsonl is cut into many byte ranges
    assert _store_bytes(cfg1.store_dir, "a") == _store_bytes(cfg2.store_dir, "a")
    store = open_store(cfg2.store_dir / "a")
    assert len(store) == 3000 + sum(len(texts[i::7]) for i in range(3))
    meta = store.meta
    assert meta["files"][0]["chunks"] > 1


def test_shards_then_merge(tmp_path: Path) -> None:
    for i in range(5):
        write_jsonl(tmp_path / f"f{i}.jsonl", [f"file {i} doc {j}" for j in range(10)])
    cfg = load_config(write_config(tmp_path / "c.yaml", {
        "store": "store", "sources": {"a": {"path": "f*.jsonl"}}}))
    ref = load_config(write_config(tmp_path / "r.yaml", {
        "store": "ref", "sources": {"a": {"path": "f*.jsonl"}}}))
    prepare(ref, workers=1)
    r0 = prepare(cfg, workers=1, shard=(0, 2))
    assert r0.sources["a"].status == "partial" and r0.units_run == 3
    assert not (cfg.store_dir / "a" / "meta.json").exists()
    r1 = prepare(cfg, workers=1, shard=(1, 2))
    assert r1.units_run == 2
    merged = prepare(cfg, workers=1)
    assert merged.units_run == 0 and merged.sources["a"].status == "built"
    assert _store_bytes(cfg.store_dir, "a") == _store_bytes(ref.store_dir, "a")


def test_interrupted_prepare_resumes(tmp_path: Path) -> None:
    """Kill a real `mixbatch prepare` mid-way; the rerun redoes only unfinished files."""
    rng = np.random.default_rng(0)
    words = np.array(["alpha", "beta", "gamma", "delta", "épsilon", "zeta"])
    n_files = 24
    for i in range(n_files):
        docs = [" ".join(rng.choice(words, size=200)) for _ in range(1500)]
        write_jsonl(tmp_path / "in" / f"f{i:02d}.jsonl", docs)
    data = {"store": "store", "sources": {"a": {"path": "in"}}}
    cfg_path = write_config(tmp_path / "c.yaml", data)
    parts = tmp_path / "store" / "a" / ".parts"
    proc = subprocess.Popen([sys.executable, "-m", "mixbatch", "prepare", str(cfg_path),
                             "--workers", "1", "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(parts.glob("*.json"))) < 2:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(parts.glob("*.json")))
    assert 2 <= done_before < n_files, "prepare finished before it could be interrupted"
    assert not (tmp_path / "store" / "a" / "meta.json").exists()

    cfg = load_config(cfg_path)
    report = prepare(cfg, workers=1)
    assert report.units_run == n_files - done_before
    ref = load_config(write_config(tmp_path / "r.yaml", {**data, "store": "ref"}))
    prepare(ref, workers=2)
    assert _store_bytes(cfg.store_dir, "a") == _store_bytes(ref.store_dir, "a")
    assert not parts.exists()


# --- bad input --------------------------------------------------------------------------------
def _bad_jsonl(tmp_path: Path) -> Path:
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b'{"text": "ok 1"}\n{"text": broken\n{"other": 1}\n{"text": 5}\n'
                  b'{"text": "caf\xe9"}\n{"text": "ok 2"}\n')
    return write_config(tmp_path / "c.yaml", {"store": "store", "sources": {"b": {"path": p.name}}})


def test_malformed_line_fails_with_file_and_line(tmp_path: Path) -> None:
    cfg = load_config(_bad_jsonl(tmp_path))
    with pytest.raises(DataError, match=r"bad\.jsonl:2: "):
        prepare(cfg, workers=1)


def test_cli_malformed_line_exit_1(tmp_path: Path) -> None:
    cfg_path = _bad_jsonl(tmp_path)
    r = subprocess.run([sys.executable, "-m", "mixbatch", "prepare", str(cfg_path),
                        "--no-progress", "--workers", "2"], capture_output=True, text=True)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "bad.jsonl:2:" in r.stderr


def test_skip_mode_counts_every_reason(tmp_path: Path) -> None:
    cfg = load_config(_bad_jsonl(tmp_path))
    report = prepare(cfg, workers=1, on_error=OnError.SKIP)
    r = report.sources["b"]
    assert r.documents == 2
    assert r.skipped == {"malformed_json": 1, "missing_field": 1, "not_a_string": 1,
                         "invalid_utf8": 1}
    meta = json.loads((cfg.store_dir / "b" / "meta.json").read_text())
    assert meta["skipped"] == r.skipped
    assert meta["files"][0]["skipped"] == r.skipped
    assert any("bad.jsonl:2" in ex for ex in meta["skipped_examples"]["malformed_json"])


def test_cli_skip_prints_counts(tmp_path: Path) -> None:
    cfg_path = _bad_jsonl(tmp_path)
    r = subprocess.run([sys.executable, "-m", "mixbatch", "prepare", str(cfg_path),
                        "--no-progress", "--on-error", "skip"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "malformed_json: 1" in r.stdout and "invalid_utf8: 1" in r.stdout


def test_truncated_gzip_is_one_clear_line(tmp_path: Path) -> None:
    blob = gzip.compress(b"".join(b'{"text": "doc %d"}\n' % i for i in range(5000)))
    (tmp_path / "t.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    cfg = load_config(write_config(tmp_path / "c.yaml", {
        "store": "store", "sources": {"t": {"path": "t.jsonl.gz", "on_error": "skip"}}}))
    with pytest.raises(DataError, match=r"t\.jsonl\.gz.*truncated"):
        prepare(cfg, workers=1)


def test_missing_tokenizer_file(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", ["x"])
    cfg_path = write_config(tmp_path / "c.yaml", {"tokenizer": "nope/tokenizer.json",
                                                  "store": "s", "sources": {"a": {"path": "d.jsonl"}}})
    r = subprocess.run([sys.executable, "-m", "mixbatch", "prepare", str(cfg_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "tokenizer: file not found" in r.stderr and "Traceback" not in r.stderr
