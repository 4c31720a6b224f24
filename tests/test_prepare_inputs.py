"""One way to read a raw source's texts in prepare's order (mixbatch.prepare_inputs.source_files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import write_config, write_jsonl
from mixbatch.config import load_config
from mixbatch.errors import ConfigError, DataError
from mixbatch.io import Format, OnError, SkipCounter
from mixbatch.prepare_inputs import source_files


def _config(tmp_path: Path, extra: dict | None = None) -> Path:
    texts = [f"document {i} " + "ab" * (i % 40) for i in range(400)]
    write_jsonl(tmp_path / "data" / "a.jsonl", texts)
    write_jsonl(tmp_path / "data" / "b.jsonl", texts[::5])
    return write_config(tmp_path / "cfg.yaml", {
        "store": "store",
        "sources": {"s": {"path": "data/*.jsonl", **(extra or {})}},
    })


def test_batches_number_records_within_each_unit(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path))
    files = source_files("s", cfg.sources["s"], cfg)
    assert files.fmt is Format.JSONL
    assert [p.name for p in files.paths] == ["a.jsonl", "b.jsonl"]
    units = files.units(chunk_bytes=2048)
    assert len(units) > 2  # a.jsonl is cut into byte ranges
    seen: dict[object, list[str]] = {}
    for b in files.batches(chunk_bytes=2048):
        got = seen.setdefault(b.unit, [])
        assert b.first == len(got)  # positions count from 0 in every unit
        got.extend(b.texts)
    assert list(seen) == [u for u in units if u in seen]  # units in order
    flat = [t for u in seen for t in seen[u]]
    assert flat == list(files.texts(chunk_bytes=2048)) == list(files.texts())
    assert len(flat) == 400 + 80


def test_bad_records_follow_on_error_and_are_counted(tmp_path: Path) -> None:
    path = _config(tmp_path)
    with open(tmp_path / "data" / "b.jsonl", "a", encoding="utf-8") as f:
        f.write("{not json\n")
    cfg = load_config(path)
    files = source_files("s", cfg.sources["s"], cfg)
    with pytest.raises(DataError, match=r"b\.jsonl:81"):
        list(files.texts())  # the source's own on_error: fail
    skips = SkipCounter()
    assert len(list(files.texts(OnError.SKIP, skips=skips))) == 480
    assert skips.counts == {"malformed_json": 1}


def test_units_are_planned_when_the_batches_are_asked_for(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path))
    files = source_files("s", cfg.sources["s"], cfg)
    with pytest.raises(ConfigError, match="chunk_bytes"):
        files.batches(chunk_bytes=0)  # before any batch is taken


def test_a_pattern_matching_nothing_names_the_source(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, {"path": "data/none*.jsonl"}))
    with pytest.raises(ConfigError, match=r"sources\.s\.path"):
        source_files("s", cfg.sources["s"], cfg)
