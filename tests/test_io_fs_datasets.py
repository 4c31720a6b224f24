"""Hugging Face ``datasets`` objects and names as sources (no network: local datasets only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import write_jsonl
from mixbatch.config import config_from_dict
from mixbatch.errors import ConfigError
from mixbatch.io.hf_datasets import dataset_source
from mixbatch.prepare import prepare
from mixbatch.store import open_store

datasets = pytest.importorskip("datasets")

TEXTS = [f"document {i} " + "abc " * (i % 17) for i in range(300)]


def _docs(tmp: Path, entry: dict, name: str) -> list[str]:
    cfg = config_from_dict({"store": str(tmp / f"store-{name}"), "sources": {name: entry}})
    prepare(cfg, workers=1)
    store = open_store(tmp / f"store-{name}" / name)
    return [bytes(store[i].astype(np.uint8)).decode() for i in range(len(store))]


def test_in_memory_dataset_and_its_shuffle(tmp_path: Path) -> None:
    ds = datasets.Dataset.from_dict({"text": TEXTS, "n": list(range(300))})
    entry = dataset_source(ds, folder=tmp_path / "hf")
    assert entry["format"] == "parquet"
    assert _docs(tmp_path, entry, "mem") == TEXTS
    again = dataset_source(ds, folder=tmp_path / "hf")  # same fingerprint: written once
    assert again == entry
    shuffled = ds.shuffle(seed=1)
    got = _docs(tmp_path, dataset_source(shuffled, folder=tmp_path / "hf"), "shuf")
    assert got == list(shuffled["text"])


def test_saved_dataset_is_read_in_place_and_by_name(tmp_path: Path) -> None:
    ds = datasets.Dataset.from_dict({"body": TEXTS})
    ds.save_to_disk(str(tmp_path / "saved"))
    entry = dataset_source(str(tmp_path / "saved"), column="body")
    assert entry["format"] == "arrow"
    assert all(str(p).startswith(str(tmp_path / "saved")) for p in entry["path"])
    assert _docs(tmp_path, entry, "saved") == TEXTS
    dd = datasets.DatasetDict({"train": ds, "test": ds.select(range(5))})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert _docs(tmp_path, dataset_source(str(tmp_path / "dd"), column="body", split="test",
                                          folder=tmp_path / "hf"), "dd") == TEXTS[:5]
    with pytest.raises(ConfigError, match="needs `split`"):
        dataset_source(str(tmp_path / "dd"), column="body")
    with pytest.raises(ConfigError, match="no column 'text'"):
        dataset_source(ds)


def test_local_script_free_dataset_and_iterable(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "repo" / "data" / "train.jsonl", TEXTS[:200])
    write_jsonl(tmp_path / "repo" / "data" / "validation.jsonl", TEXTS[200:])
    # a dataset name (here a local folder, as a Hub name would be) with split and column
    entry = dataset_source(str(tmp_path / "repo"), split="validation", column="text",
                           load_kwargs={"cache_dir": str(tmp_path / "hf_cache")})
    assert entry["format"] == "arrow"  # load_dataset's Arrow cache, read in place
    assert _docs(tmp_path, entry, "local") == TEXTS[200:]
    stream = datasets.load_dataset(str(tmp_path / "repo"), split="train", streaming=True)
    got = _docs(tmp_path, dataset_source(stream, folder=tmp_path / "hf", max_epochs=2), "it")
    assert got == TEXTS[:200]
