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
