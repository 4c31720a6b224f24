from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({field: t}, ensure_ascii=False) + "\n")
    return path


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def two_sources(tmp_path: Path) -> Path:
    """A config with two small JSONL sources and a byte tokenizer."""
    write_jsonl(tmp_path / "data" / "web" / "a.jsonl", [f"web doc {i} " * (i + 1) for i in range(30)])
    write_jsonl(tmp_path / "data" / "web" / "b.jsonl", [f"más web {i} ü" for i in range(20)])
    write_jsonl(tmp_path / "data" / "code.jsonl", [f"def f{i}():\n    return {i}\n" for i in range(25)])
    return write_config(tmp_path / "cfg.yaml", {
        "seed": 0,
        "tokenizer": "byte",
        "store": "store",
        "sources": {
            "web": {"path": "data/web/*.jsonl", "format": "jsonl"},
            "code": {"path": "data/code.jsonl", "max_epochs": 4},
        },
        "mixture": {"unit": "tokens", "weights": {"web": 0.7, "code": 0.3}},
        "batch": {"seq_len": 64, "batch_size": 4, "packing": "concat"},
    })


#: a proxy small enough for tests: one layer, 20 steps, one thread
TINY_PROXY = {"n_layer": 1, "d_model": 32, "n_head": 2, "seq_len": 64, "batch_size": 4,
              "steps": 20, "lr": 1e-2, "warmup": 2, "eval_tokens": 512, "device": "cpu",
              "threads": 1}


def write_alphabet_sources(tmp: Path, alphabets: dict[str, str], docs: int = 60) -> dict:
    """One JSONL source per alphabet, random texts of 20-120 characters; the `sources:` block."""
    import numpy as np

    rng = np.random.default_rng(0)
    sources = {}
    for name, alphabet in alphabets.items():
        chars = np.array(list(alphabet))
        texts = ["".join(rng.choice(chars, size=int(rng.integers(20, 120)))) for _ in range(docs)]
        write_jsonl(tmp / f"{name}.jsonl", texts)
        sources[name] = {"path": f"{name}.jsonl"}
    return sources
