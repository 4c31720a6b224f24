from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_config, write_jsonl
from mixbatch.config import load_config
from mixbatch.errors import DataError, StoreError
from mixbatch.prepare import prepare
from mixbatch.store import flat_token_spans, open_store
from mixbatch.tokenizer import ByteTokenizer

texts_strategy = st.lists(st.text(min_size=1, max_size=200), min_size=1, max_size=40)


def _one_source(tmp: Path, texts: list[str], **src) -> Path:
    write_jsonl(tmp / "d.jsonl", texts)
    return write_config(tmp / "c.yaml", {"store": "store",
                                         "sources": {"s": {"path": "d.jsonl", **src}}})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=texts_strategy)
def test_store_round_trip_random_documents(tmp_path_factory, texts: list[str]) -> None:
    tmp = tmp_path_factory.mktemp("rt")
    cfg = load_config(_one_source(tmp, texts))
    prepare(cfg, workers=1)
    store = open_store(cfg.store_dir / "s", verify=True)
    tok = ByteTokenizer()
    assert len(store) == len(texts)
    assert store.tokens.dtype == np.uint16
    for i, t in enumerate(texts):
        assert tok.decode(store[i]) == t
    flat, lens = store.gather(np.arange(len(texts))[::-1])
    assert lens.tolist() == [len(t.encode()) for t in texts[::-1]]
    assert tok.decode(flat) == "".join(texts[::-1])


@given(st.text())
def test_byte_tokenizer_round_trip(text: str) -> None:
    tok = ByteTokenizer()
    flat, lens = tok.encode_batch([text, text])
    assert lens.tolist() == [len(text.encode())] * 2
    assert tok.decode(flat[: lens[0]]) == text


def test_metadata_contents(two_sources: Path) -> None:
    cfg = load_config(two_sources)
    prepare(cfg, workers=1)
    meta = json.loads((cfg.store_dir / "web" / "meta.json").read_text())
    assert meta["format_version"] == 1
    assert meta["documents"] == 50 and meta["dtype"] == "uint16"
    assert meta["tokenizer"]["kind"] == "byte" and meta["tokenizer"]["hash"]
    assert [Path(f["path"]).name for f in meta["files"]] == ["a.jsonl", "b.jsonl"]
    assert all(len(f["blake2b"]) == 32 for f in meta["files"])
    assert sum(f["tokens"] for f in meta["files"]) == meta["tokens"]
    assert set(meta["checksums"]) == {"tokens", "index", "block_sums"}
    assert meta["block_sums"]["count"] == -(-meta["checksums"]["tokens"]["size"] // (1 << 20))


def test_store_refuses_mismatched_files(two_sources: Path) -> None:
    cfg = load_config(two_sources)
    prepare(cfg, workers=1)
    folder = cfg.store_dir / "web"
    tokens = folder / "tokens.bin"
    data = bytearray(tokens.read_bytes())
    data[3] ^= 0xFF
    tokens.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"tokens\.bin: checksum does not match.*prepare"):
        open_store(folder)
    tokens.write_bytes(bytes(data[:-2]))
    with pytest.raises(StoreError, match=r"tokens\.bin: \d+ bytes, the store metadata says"):
        open_store(folder)
    meta = json.loads((folder / "meta.json").read_text())
    meta["format_version"] = 99
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="format version 99"):
        open_store(folder)
    with pytest.raises(StoreError, match="no token store here"):
        open_store(cfg.store_dir / "nothing")


def test_full_verify_catches_middle_corruption(tmp_path: Path) -> None:
    texts = ["x" * 1000] * 3000  # 3 MB: the quick checksum reads only head and tail
    cfg = load_config(_one_source(tmp_path, texts))
    prepare(cfg, workers=1)
    tokens = cfg.store_dir / "s" / "tokens.bin"
    with open(tokens, "r+b") as f:
        f.seek(3_000_000)
        f.write(b"\x01\x00")
    open_store(cfg.store_dir / "s")  # quick check cannot see the middle
    with pytest.raises(StoreError, match="full checksum"):
        open_store(cfg.store_dir / "s", verify=True)


def test_empty_source_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text("\n\n")
    cfg = load_config(write_config(tmp_path / "c.yaml", {"store": "store",
                                                        "sources": {"s": {"path": "d.jsonl"}}}))
    with pytest.raises(DataError, match=r"sources\.s: no documents in 1 file"):
        prepare(cfg, workers=1)


def test_empty_documents_are_counted(tmp_path: Path) -> None:
    cfg = load_config(_one_source(tmp_path, ["a", "", "b", ""]))
    report = prepare(cfg, workers=1)
    assert report.sources["s"].documents == 2
    assert report.sources["s"].skipped == {"empty_document": 2}


# --- existing token data -----------------------------------------------------------------------
def _write_megatron(prefix: Path, docs: list[list[int]], dtype=np.uint16) -> None:
    code = {np.uint16: 8, np.int32: 4}[dtype]
    flat = np.concatenate([np.asarray(d, dtype=dtype) for d in docs])
    prefix.with_suffix(".bin").write_bytes(flat.tobytes())
    sizes = np.array([len(d) for d in docs], dtype=np.int32)
    pointers = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) * np.dtype(dtype).itemsize
    doc_idx = np.arange(len(docs) + 1, dtype=np.int64)
    header = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", code)
    header += struct.pack("<Q", len(docs)) + struct.pack("<Q", len(doc_idx))
    prefix.with_suffix(".idx").write_bytes(header + sizes.tobytes() + pointers.tobytes()
                                           + doc_idx.tobytes())


def test_megatron_indexed_dataset(tmp_path: Path) -> None:
    docs = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [10, 11]]
    _write_megatron(tmp_path / "mg", docs)
    cfg = load_config(write_config(tmp_path / "c.yaml", {
        "store": "store", "sources": {"m": {"path": "mg", "format": "megatron"}}}))
    report = prepare(cfg, workers=1)
    assert report.sources["m"].documents == 4 and report.sources["m"].tokens == 11
    store = open_store(cfg.store_dir / "m")
    assert [store[i].tolist() for i in range(4)] == docs


def test_megatron_bad_magic(tmp_path: Path) -> None:
    (tmp_path / "mg.bin").write_bytes(b"\x00" * 8)
    (tmp_path / "mg.idx").write_bytes(b"NOTMEGATRON" * 4)
    cfg = load_config(write_config(tmp_path / "c.yaml", {
        "store": "store", "sources": {"m": {"path": "mg", "format": "megatron"}}}))
    with pytest.raises(StoreError, match=r"mg\.idx: not a Megatron-LM indexed dataset"):
        prepare(cfg, workers=1)


@pytest.mark.parametrize("suffix", [".npy", ".bin"])
def test_flat_token_array(tmp_path: Path, suffix: str) -> None:
    arr = np.array([5, 6, 0, 7, 0, 0, 8, 9, 10], dtype=np.uint32)  # eod 0, empty doc kept
    path = tmp_path / f"flat{suffix}"
    if suffix == ".npy":
        np.save(path, arr)
    else:
        arr.tofile(path)
    src = {"path": path.name, "format": "tokens", "eod_id": 0}
    if suffix == ".bin":
        src["dtype"] = "uint32"
    cfg = load_config(write_config(tmp_path / "c.yaml", {"store": "store", "sources": {"f": src}}))
    prepare(cfg, workers=1)
    store = open_store(cfg.store_dir / "f")
    assert [store[i].tolist() for i in range(len(store))] == [[5, 6], [7], [], [8, 9, 10]]
    assert store.eod_id == 0


def test_flat_spans_blocks_agree() -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 5, size=10_000)
    assert np.array_equal(flat_token_spans(arr, 0, block=7), flat_token_spans(arr, 0))
