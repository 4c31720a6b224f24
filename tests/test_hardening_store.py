"""Crafted and corrupt stores (issue #12 items 1 and 5): every meta.json field and the index are
checked before use, token data read in place stays where the config put it, one flipped byte is
found before its tokens are fed, ids outside the vocabulary are an error, and `prepare` rebuilds
what fails verification."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from conftest import write_config, write_jsonl
from mixbatch.atomic import save_npy
from mixbatch.config import load_config
from mixbatch.errors import StoreError
from mixbatch.prepare import prepare
from mixbatch.store import describe_file, open_store
from mixbatch.store_blocks import BLOCKS, block_digests

TEXTS = [f"doc {i} " * (40 + i % 300) for i in range(3000)]  # ~8 MB of uint16: 8 blocks


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("store")
    write_jsonl(tmp / "d.jsonl", TEXTS)
    write_config(tmp / "c.yaml", {"store": "store", "sources": {"s": {"path": "d.jsonl"}},
                                  "batch": {"seq_len": 64, "batch_size": 4}})
    cfg = load_config(tmp / "c.yaml")
    prepare(cfg, workers=1)
    return {"tmp": tmp, "cfg": cfg, "folder": cfg.store_dir / "s"}


@pytest.fixture
def store(built, tmp_path: Path) -> Path:
    """A private copy of the built store folder, free to break."""
    folder = tmp_path / "s"
    folder.mkdir()
    for p in built["folder"].iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    return folder


def _meta(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text())


def _edit(folder: Path, change: Callable[[dict], None]) -> None:
    meta = _meta(folder)
    change(meta)
    (folder / "meta.json").write_text(json.dumps(meta))


def _reseal(folder: Path) -> None:
    """Recompute every checksum, as a crafter would, so that only the real check can fire."""
    meta = _meta(folder)
    idx = "offsets.npy" if meta["external"] is None else "spans.npy"
    tok = folder / "tokens.bin" if meta["external"] is None else Path(meta["external"]["tokens"])
    meta["checksums"]["tokens"] = describe_file(tok)
    meta["checksums"]["index"] = describe_file(folder / idx)
    save_npy(folder / BLOCKS, block_digests(tok, meta["block_sums"]["hash"]))
    meta["checksums"]["block_sums"] = describe_file(folder / BLOCKS)
    (folder / "meta.json").write_text(json.dumps(meta))


def _set(path: str, value) -> Callable[[dict], None]:
    def change(meta: dict) -> None:
        *head, last = path.split(".")
        d = meta
        for k in head:
            d = d[k]
        d[last] = value
    return change


@pytest.mark.parametrize(("path", "value", "message"), [
    ("dtype", "object", "field 'dtype' must be one of"),
    ("dtype", "float64", "field 'dtype' must be one of"),
    ("dtype", ["uint16"], "field 'dtype' must be one of"),
    ("documents", -1, "field 'documents' must be an integer >= 0"),
    ("documents", 2**70, "field 'documents' must be an integer >= 0"),
    ("tokens", True, "field 'tokens' must be an integer >= 0"),
    ("tokenizer.vocab_size", 0, "tokenizer.vocab_size' must be >= 1"),
    ("tokenizer.eod_id", "x", "tokenizer.eod_id' must be an integer"),
    ("checksums", None, "field 'checksums' must be an object"),
    ("checksums.tokens", {"size": 1}, "checksums.tokens.quick' must be a checksum"),
    ("source", 3, "field 'source' must be the source's name"),
    ("block_sums.bytes", 7, "block_sums.bytes' must be a multiple of 8"),
    ("external", {"kind": "megatron"}, "field 'external' must be null or an object"),
])
def test_every_meta_field_is_checked(store: Path, path: str, value, message: str) -> None:
    _edit(store, _set(path, value))
    with pytest.raises(StoreError, match=message) as e:
        open_store(store)
    assert "\n" not in str(e.value) and "meta.json" in str(e.value)


def test_a_5000_digit_count_is_one_line(store: Path) -> None:
    meta = _meta(store)
    n = meta["documents"]
    text = json.dumps(meta).replace(f'"documents": {n}', '"documents": ' + "9" * 5000)
    (store / "meta.json").write_text(text)
    with pytest.raises(StoreError, match="unreadable store metadata"):
        open_store(store)


def test_object_dtype_no_longer_crashes_the_stream(built, store: Path) -> None:
    """An edited dtype once reached np.memmap and segfaulted `stream` (rc 139)."""
    _edit(store, _set("dtype", "object"))
    folder = built["folder"]
    saved = (folder / "meta.json").read_bytes()
    (folder / "meta.json").write_bytes((store / "meta.json").read_bytes())
    try:
        r = subprocess.run([sys.executable, "-m", "mixbatch", "stream",
                            str(built["tmp"] / "c.yaml"), "--steps", "2"],
                           capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    finally:
        (folder / "meta.json").write_bytes(saved)
    assert r.returncode == 1 and "field 'dtype'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("offsets", "message"), [
    (lambda o: o[::-1].copy(), "offsets run from"),
    (lambda o: np.concatenate([o[:5], o[4:5] - 1, o[6:]]), "offsets decrease at document 4"),
    (lambda o: o.astype(np.int32), "expected int64 of shape"),
    (lambda o: o[:-1], "expected int64 of shape"),
])
def test_crafted_offsets_are_refused(store: Path, offsets, message: str) -> None:
    o = np.load(store / "offsets.npy")
    save_npy(store / "offsets.npy", offsets(o))
    _reseal(store)
    with pytest.raises(StoreError, match=message):
        open_store(store)


def test_external_tokens_cannot_point_anywhere(tmp_path: Path) -> None:
    arr = np.array([5, 6, 0, 7, 0], dtype=np.uint16)
    np.save(tmp_path / "flat.npy", arr)
    cfg = load_config(write_config(tmp_path / "c.yaml", {
        "store": "store", "sources": {"f": {"path": "flat.npy", "format": "tokens", "eod_id": 0}}}))
    prepare(cfg, workers=1)
    folder = cfg.store_dir / "f"
    assert open_store(folder, root=tmp_path)[1].tolist() == [7]
    good = _meta(folder)
    for target, message in [("/etc/passwd", "must name a .bin/.npy token file"),
                            ("flat.npy", "must be an absolute path"),
                            (str(tmp_path / "other.npy"), "is not among the store's input files")]:
        _edit(folder, _set("external.tokens", target))
        with pytest.raises(StoreError, match=message):
            open_store(folder)
    # listed as an input too, but outside the source's configured folder
    (folder / "meta.json").write_text(json.dumps(good))
    with pytest.raises(StoreError, match="lies outside the source's configured path"):
        open_store(folder, root=tmp_path / "elsewhere")
    spans = np.load(folder / "spans.npy")
    spans[1, 1] = 99
    save_npy(folder / "spans.npy", spans)
    _reseal(folder)
    with pytest.raises(StoreError, match=r"span 1 \(3, 99\) lies outside the 5 tokens"):
        open_store(folder)


def test_flipped_byte_in_the_middle_is_found_before_it_is_fed(built, store: Path) -> None:
    tokens = store / "tokens.bin"
    size = tokens.stat().st_size
    assert size > 3 << 20  # the quick checksum reads the first and last MiB only
    with open(tokens, "r+b") as f:
        f.seek(size // 2)
        b = f.read(1)
        f.seek(size // 2)
        f.write(bytes([b[0] ^ 0x40]))
    s = open_store(store)  # size and head/tail still match
    mid = int(np.searchsorted(s.starts, size // 4))  # a document in the flipped block
    first = s[0]  # other blocks read fine
    assert first.tolist() == list(TEXTS[0].encode())
    with pytest.raises(StoreError, match=r"\(block \d+\) do not match their checksum"):
        s[mid]
    with pytest.raises(StoreError, match="do not match their checksum"):
        s.gather(np.array([mid]))
    with pytest.raises(StoreError, match="do not match their checksum"):
        open_store(store).span_source(np.array([mid]), np.array([0]), np.array([5]))
    # prepare sees it and rebuilds the store from its inputs
    folder = built["folder"]
    good = (folder / "tokens.bin").read_bytes()
    (folder / "tokens.bin").write_bytes(tokens.read_bytes())
    report = prepare(built["cfg"], workers=1)
    assert report.sources["s"].status == "built"
    assert (folder / "tokens.bin").read_bytes() == good
    assert prepare(built["cfg"], workers=1).sources["s"].status == "up to date"


def test_token_ids_outside_the_vocabulary_are_an_error(store: Path) -> None:
    tokens = np.fromfile(store / "tokens.bin", dtype=np.uint16)
    tokens[12345] = 16495  # what a byte tokenizer can never produce
    tokens.tofile(store / "tokens.bin")
    _reseal(store)
    s = open_store(store)
    doc = int(np.searchsorted(s.starts, 12345, side="right")) - 1
    with pytest.raises(StoreError, match="token 12345 has id 16495, outside the vocabulary"):
        s[doc]
    with pytest.raises(StoreError, match="outside the vocabulary"):
        open_store(store, verify=True)


def test_verification_happens_once_per_block(store: Path) -> None:
    s = open_store(store)
    v = s.verifier
    assert v is not None and not v.done
    threads = [threading.Thread(target=s.gather, args=(np.arange(len(s)),)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert v.done and v.hashed == len(v.digests) and v.left == 0
    s.gather(np.arange(len(s)))
    assert v.hashed == len(v.digests)
    copy = pickle.loads(pickle.dumps(open_store(store).verifier))  # crosses processes
    copy.verify_all()
    assert copy.done


def test_stores_open_together_see_each_others_verification(store: Path) -> None:
    a, b = open_store(store), open_store(store)  # both opened before any block was read
    assert a.verifier is not None and b.verifier is not None and not b.verifier.done
    for i in range(len(a)):  # one document at a time: the single-span path
        a[i]
    assert a.verifier.done and b.verifier.done and b.verifier.left == 0
    b[0], b[len(b) - 1]
    assert b.verifier.hashed == 0 and a.verifier.hashed == len(a.verifier.digests)


def test_a_store_opened_again_in_the_process_is_not_hashed_again(store: Path) -> None:
    first = open_store(store)
    first.gather(np.arange(len(first)))
    assert first.verifier is not None and first.verifier.done
    again = open_store(store)  # a new loader on the same unchanged file
    assert again.verifier is not None and again.verifier.done
    again.gather(np.arange(len(again)))
    assert again.verifier.hashed == 0
    # a changed file (same size, mtime restored: ctime still moves) is verified afresh
    st = (store / "tokens.bin").stat()
    with open(store / "tokens.bin", "r+b") as f:
        f.seek(4000)
        byte = f.read(1)
        f.seek(4000)
        f.write(bytes([byte[0] ^ 1]))
    os.utime(store / "tokens.bin", ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(StoreError, match=r"do(es)? not match"):  # at open or read
        changed = open_store(store)
        changed.gather(np.arange(len(changed)))


def test_same_size_edit_with_mtime_restored_is_rebuilt(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ["alpha", "beta"])
    cfg = load_config(write_config(tmp_path / "c.yaml", {"store": "store",
                                                        "sources": {"s": {"path": "d.jsonl"}}}))
    prepare(cfg, workers=1)
    st = path.stat()
    path.write_text(path.read_text().replace("alpha", "gamma"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    assert prepare(cfg, workers=1).sources["s"].status == "built"
    assert open_store(cfg.store_dir / "s")[0].tolist() == list(b"gamma")
