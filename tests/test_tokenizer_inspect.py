from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_config, write_jsonl
from mixbatch.config import load_config
from mixbatch.errors import ConfigError
from mixbatch.prepare import prepare
from mixbatch.store import open_store
from mixbatch.tokenizer import HFTokenizer, load_tokenizer

CORPUS = [f"def function_{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(300)] + [
    f"The quick brown fox number {i} jumps over the lazy dog." for i in range(300)]


@pytest.fixture
def bpe(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "a.jsonl", CORPUS[:300])
    write_jsonl(tmp_path / "b.jsonl", CORPUS[300:])
    cfg_path = write_config(tmp_path / "c.yaml", {
        "store": "store", "sources": {"a": {"path": "a.jsonl"}, "b": {"path": "b.jsonl"}}})
    out = tmp_path / "tok" / "tokenizer.json"
    r = subprocess.run([sys.executable, "-m", "mixbatch", "tokenizer", "train", str(cfg_path),
                        "--vocab-size", "400", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "on 600 documents" in r.stdout
    return out


def test_trained_bpe_round_trips_and_compresses(bpe: Path) -> None:
    tok = HFTokenizer(bpe)
    assert tok.vocab_size == 400
    assert tok.eod_id == tok._tok.token_to_id("<|endoftext|>")
    flat, lens = tok.encode_batch(CORPUS[:5])
    assert lens.sum() == len(flat)
    assert lens.sum() < sum(len(t.encode()) for t in CORPUS[:5]) / 2  # BPE merges something
    start = 0
    for text, n in zip(CORPUS[:5], lens, strict=True):
        assert tok.decode(flat[start: start + n]) == text
        start += n


def test_prepare_with_bpe_tokenizer(bpe: Path, tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path / "p.yaml", {
        "tokenizer": str(bpe), "store": "bstore",
        "sources": {"a": {"path": "a.jsonl"}, "b": {"path": "b.jsonl"}}}))
    prepare(cfg, workers=2)
    store = open_store(cfg.store_dir / "a")
    tok = HFTokenizer(bpe)
    assert store.tokens.dtype == np.uint16
    assert store.meta["tokenizer"]["kind"] == "hf"
    assert store.meta["tokenizer"]["hash"] == tok.identity()["hash"]
    assert tok.decode(store[17]) == CORPUS[17]


def test_tokenizer_train_rejects_tiny_vocab(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", ["x"])
    cfg = write_config(tmp_path / "c.yaml", {"sources": {"a": {"path": "a.jsonl"}}})
    r = subprocess.run([sys.executable, "-m", "mixbatch", "tokenizer", "train", str(cfg),
                        "--vocab-size", "10", "--out", str(tmp_path / "t.json")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--vocab-size must be at least" in r.stderr


def test_bad_tokenizer_file_and_eod(tmp_path: Path, bpe: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=r"not a valid tokenizer\.json"):
        load_tokenizer(str(bad))
    with pytest.raises(ConfigError, match="'<nope>' is not in"):
        load_tokenizer(str(bpe), eod_token="<nope>")


def test_inspect_json_and_plot(two_sources: Path, tmp_path: Path) -> None:
    cfg = load_config(two_sources)
    prepare(cfg, workers=1)
    plot = tmp_path / "len.png"
    r = subprocess.run([sys.executable, "-m", "mixbatch", "inspect", str(two_sources), "--json",
                        "--plot", str(plot)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    web, code = stats["sources"]["web"], stats["sources"]["code"]
    lengths = np.asarray(open_store(cfg.store_dir / "web").lengths)
    assert web["documents"] == 50 and web["files"] == 2
    assert web["tokens"] == int(lengths.sum())
    assert web["max"] == int(lengths.max())
    assert web["p50"] == int(np.percentile(lengths, 50, method="lower"))
    assert abs(web["share"] + code["share"] - 1) < 1e-12
    assert stats["tokens"] == web["tokens"] + code["tokens"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = subprocess.run([sys.executable, "-m", "mixbatch", "inspect", str(two_sources)],
                           capture_output=True, text=True)
    assert "web" in table.stdout and "p99" in table.stdout


def test_inspect_before_prepare_says_what_to_do(two_sources: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "mixbatch", "inspect", str(two_sources)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "mixbatch prepare" in r.stderr and "Traceback" not in r.stderr
