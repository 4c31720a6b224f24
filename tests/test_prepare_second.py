"""Second lengths per document (``second_field``): readers, prepare, store and inspect."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_config
from mixbatch import prepare as prepare_module
from mixbatch.config import load_config
from mixbatch.errors import ConfigError, DataError, StoreError
from mixbatch.io import Format, OnError, ReadUnit, SecondValues, SkipCounter, iter_records, iter_texts
from mixbatch.prepare import prepare
from mixbatch.store import SECOND_LENGTHS, describe_file, open_store
from mixbatch.tokenizer import HFTokenizer
from mixbatch.tokenizer_training import train_bpe


def _jsonl(path: Path, records: list[object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _config(tmp: Path, path: str, store: str = "store", name: str = "cfg", **src: object) -> Path:
    source = {"path": path, "second_field": "target", **src}
    if source["second_field"] is None:
        del source["second_field"]
    return write_config(tmp / f"{name}.yaml", {"store": store, "sources": {"s": source}})


def _texts(store) -> list[str]:
    return [bytes(store[i].astype(np.uint8)).decode() for i in range(len(store))]


def _write_arrow(path: Path, table: pa.Table, stream: bool) -> Path:
    with pa.OSFile(str(path), "wb") as sink:
        opener = pa.ipc.new_stream if stream else pa.ipc.new_file
        with opener(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=3)
    return path


# --- values of every kind -------------------------------------------------------------------
def test_jsonl_int_string_and_list_values(tmp_path: Path) -> None:
    records = [
        {"text": "a", "target": 7},
        {"text": "bb", "target": "héllo"},  # 6 UTF-8 bytes with the byte tokenizer
        {"text": "ccc", "target": [1, [2], "x", None]},
        {"text": "dddd", "target": 0},
        {"text": "eeeee", "target": ""},
        {"text": "ffffff", "target": []},
    ]
    _jsonl(tmp_path / "d.jsonl", records)
    cfg = load_config(_config(tmp_path, "d.jsonl"))
    report = prepare(cfg, workers=1)
    assert report.sources["s"].documents == 6
    store = open_store(cfg.store_dir / "s")
    assert store.has_second and store.second_field == "target"
    assert store.second_lengths is not None
    assert store.second_lengths.dtype == np.int64 and not store.second_lengths.flags.writeable
    assert store.second_lengths.tolist() == [7, 6, 4, 0, 0, 0]
    assert _texts(store) == ["a", "bb", "ccc", "dddd", "eeeee", "ffffff"]
    meta = json.loads((cfg.store_dir / "s" / "meta.json").read_text())
    assert meta["second_field"] == "target"
    assert set(meta["checksums"]) == {"tokens", "index", "second_lengths", "block_sums"}
    size = (cfg.store_dir / "s" / SECOND_LENGTHS).stat().st_size
    assert meta["checksums"]["second_lengths"]["size"] == size


def test_source_without_second_field_has_none(tmp_path: Path) -> None:
    _jsonl(tmp_path / "d.jsonl", [{"text": "abc", "target": 1}])
    cfg = load_config(_config(tmp_path, "d.jsonl", second_field=None))
    prepare(cfg, workers=1)
    store = open_store(cfg.store_dir / "s")
    assert store.second_lengths is None and not store.has_second and store.second_field is None
    assert not (cfg.store_dir / "s" / SECOND_LENGTHS).exists()
    assert set(store.meta["checksums"]) == {"tokens", "index", "block_sums"}


def test_second_field_may_be_the_text_field(tmp_path: Path) -> None:
    _jsonl(tmp_path / "d.jsonl", [{"text": t} for t in ["ab", "ü", "xyz"]])
    _parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["ab", "ü", "xyz"]}), _parquet)
    for i, path in enumerate(["d.jsonl", "d.parquet"]):
        cfg = load_config(_config(tmp_path, path, store=f"s{i}", name=f"c{i}", second_field="text"))
        prepare(cfg, workers=1)
        store = open_store(cfg.store_dir / "s")
        assert store.second_lengths.tolist() == store.lengths.tolist() == [2, 2, 3]


_COLUMNS = {
    "int64": (pa.array([3, 0, 12, 5], pa.int64()), [3, 0, 12, 5]),
    "uint8": (pa.array([3, 0, 255, 5], pa.uint8()), [3, 0, 255, 5]),
    "string": (pa.array(["abc", "", "é", "12345"]), [3, 0, 2, 5]),
    "large_string": (pa.array(["abc", "", "é", "12345"], pa.large_string()), [3, 0, 2, 5]),
    "dict_string": (pa.array(["ab", "ab", "c", "ab"]).dictionary_encode(), [2, 2, 1, 2]),
    "dict_int": (pa.array([4, 4, 1, 4]).dictionary_encode(), [4, 4, 1, 4]),
    "list": (pa.array([[1, 2], [], [3], [4, 5, 6]]), [2, 0, 1, 3]),
    "large_list": (pa.array([["a"], [], ["b", "c"], ["d"]], pa.large_list(pa.string())), [1, 0, 2, 1]),
    "fixed_list": (pa.array([[1, 2], [3, 4], [5, 6], [7, 8]], pa.list_(pa.int32(), 2)), [2, 2, 2, 2]),
}


@pytest.mark.parametrize("kind", sorted(_COLUMNS))
@pytest.mark.parametrize("fmt", ["parquet", "arrow-file", "arrow-stream"])
def test_columnar_values(tmp_path: Path, kind: str, fmt: str) -> None:
    column, want = _COLUMNS[kind]
    table = pa.table({"target": column, "text": ["one", "two", "three", "four"]})
    if fmt == "parquet":
        pq.write_table(table, tmp_path / "d.parquet", row_group_size=3)
        path = "d.parquet"
    else:
        _write_arrow(tmp_path / "d.arrow", table, stream=fmt == "arrow-stream")
        path = "d.arrow"
    cfg = load_config(_config(tmp_path, path))
    prepare(cfg, workers=1)
    store = open_store(cfg.store_dir / "s")
    assert store.second_lengths.tolist() == want
    assert _texts(store) == ["one", "two", "three", "four"]


def test_string_values_count_tokens_of_a_tokenizer_json(tmp_path: Path) -> None:
    corpus = [f"The quick brown fox number {i} jumps over the lazy dog." for i in range(200)]
    bpe = train_bpe([corpus], 300, tmp_path / "tok" / "tokenizer.json")
    targets = [f"lazy dog number {i} jumps" for i in range(50)] + ["", "fox"]
    _jsonl(tmp_path / "d.jsonl", [{"text": f"doc {i}", "target": t} for i, t in enumerate(targets)])
    pq.write_table(pa.table({"text": [f"doc {i}" for i in range(len(targets))], "target": targets}),
                   tmp_path / "d.parquet")
    tok = HFTokenizer(bpe)
    want = tok.encode_batch(targets)[1]
    assert want.sum() < sum(len(t) for t in targets)  # merges: not a byte count
    for i, path in enumerate(["d.jsonl", "d.parquet"]):
        cfg_path = write_config(tmp_path / f"c{i}.yaml", {
            "tokenizer": str(bpe), "store": f"s{i}",
            "sources": {"s": {"path": path, "second_field": "target"}}})
        cfg = load_config(cfg_path)
        prepare(cfg, workers=1)
        store = open_store(cfg.store_dir / "s")
        assert store.second_lengths.tolist() == want.tolist()


def test_iter_records_yields_aligned_batches(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [{"text": str(i), "target": "x" * i} for i in range(10)])
    unit = ReadUnit(path, Format.JSONL)
    batches = list(iter_records(unit, "text", "target", OnError.FAIL, SkipCounter(), batch_size=4))
    assert [len(texts) for texts, _ in batches] == [4, 4, 2]
    for texts, second in batches:
        assert isinstance(second, SecondValues) and len(second) == len(texts)
        lens = second.lengths(lambda s: np.array([len(x) for x in s], dtype=np.int64))
        assert lens.tolist() == [int(t) for t in texts]
    # the plain text API is unchanged
    assert [t for b in iter_texts(unit, "text", "line", OnError.FAIL, SkipCounter()) for t in b] == [
        str(i) for i in range(10)]


# --- bad values --------------------------------------------------------------------------------
_BAD_JSON = {
    "missing": ({"text": "x"}, r"no field 'target' \(fields: 'text'\)", "missing_field"),
    "null": ({"text": "x", "target": None}, r"field 'target' is null", "missing_field"),
    "negative": ({"text": "x", "target": -3}, r"field 'target' is -3, negative; expected an integer >= 0",
                 "bad_second_value"),
    "huge": ({"text": "x", "target": 2**70}, r"field 'target' is \d+, too large for int64",
             "bad_second_value"),
    "float": ({"text": "x", "target": 2.0}, r"field 'target' is a float \(2\.0\), expected an integer",
              "bad_second_value"),
    "bool": ({"text": "x", "target": True}, r"field 'target' is a boolean \(true\), expected",
             "bad_second_value"),
    "object": ({"text": "x", "target": {"a": 1}}, r"field 'target' is an object \(\{\"a\": 1\}\)",
               "bad_second_value"),
}


@pytest.mark.parametrize("case", sorted(_BAD_JSON))
def test_bad_jsonl_value_fails_naming_file_line_and_field(tmp_path: Path, case: str) -> None:
    record, message, _ = _BAD_JSON[case]
    path = _jsonl(tmp_path / "d.jsonl", [{"text": "ok", "target": 1}, record, {"text": "ok", "target": 2}])
    cfg = load_config(_config(tmp_path, "d.jsonl"))
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:2: {message}") as info:
        prepare(cfg, workers=1)
    assert "\n" not in str(info.value)


def test_lone_surrogate_in_a_string_value(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok", "target": "bad \\ud800"}\n', encoding="utf-8")
    cfg = load_config(_config(tmp_path, "d.jsonl"))
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'target' holds a lone surrogate"):
        prepare(cfg, workers=1)


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
@pytest.mark.parametrize(("column", "message"), [
    (pa.array([1, 2, None, -1]), r":row 2: column 'target' is null"),
    (pa.array([1, 2, 5, -1]), r":row 3: column 'target' is -1, negative; expected an integer >= 0"),
    (pa.array(["a", "b", None, "d"]), r":row 2: column 'target' is null"),
    (pa.array([[1], [], None, [2]]), r":row 2: column 'target' is null"),
    (pa.nulls(4), r":row 0: column 'target' is null"),
    (pa.array([1, 2, 2**63 + 5, 1], pa.uint64()), r":row 2: column 'target' is \d+, too large for int64"),
])
def test_bad_columnar_value_fails_naming_row_and_column(tmp_path: Path, fmt: str, column: pa.Array,
                                                         message: str) -> None:
    table = pa.table({"text": ["a", "b", "c", "d"], "target": column})
    path = tmp_path / f"d.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, path)
    else:
        _write_arrow(path, table, stream=False)
    cfg = load_config(_config(tmp_path, path.name))
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}{message}"):
        prepare(cfg, workers=1)


@pytest.mark.parametrize(("column", "message"), [
    (pa.array([1.0, 2.0]), r"column 'target' \(second_field\) has type double, expected an integer, string"),
    (pa.array([True, False]), r"column 'target' \(second_field\) has type bool"),
    (None, r"no column 'target'; columns: 'text'"),
])
def test_bad_column_fails_even_when_skipping(tmp_path: Path, column: pa.Array | None, message: str) -> None:
    data = {"text": ["a", "b"]} | ({} if column is None else {"target": column})
    pq.write_table(pa.table(data), tmp_path / "d.parquet")
    cfg = load_config(_config(tmp_path, "d.parquet", on_error="skip"))
    with pytest.raises(DataError, match=rf"d\.parquet: {message}"):
        prepare(cfg, workers=1)


def test_text_files_have_no_second_field(tmp_path: Path) -> None:
    (tmp_path / "d.txt").write_text("a document\n")
    cfg = load_config(_config(tmp_path, "d.txt"))
    with pytest.raises(ConfigError, match=r"sources\.s\.second_field: .*d\.txt is read as text"):
        prepare(cfg, workers=1)
    with pytest.raises(ConfigError, match=r"d\.txt: second_field 'target' needs records with fields"):
        iter_records(ReadUnit(tmp_path / "d.txt", Format.TEXT), "text", "target", OnError.FAIL,
                     SkipCounter())
    with pytest.raises(ConfigError, match="second_field"):
        load_config(_config(tmp_path, "d.txt", format="text"))


# --- skipping keeps texts and second lengths aligned -------------------------------------------
def test_skip_drops_the_whole_record(tmp_path: Path) -> None:
    records: list[object] = [
        {"text": "aa", "target": 2},
        {"text": "bbb", "target": -1},  # bad second value
        {"text": 5, "target": 1},  # bad text
        {"text": 6, "target": None},  # both bad: counted once, under the text's reason
        {"text": "", "target": 4},  # empty document: dropped with its value
        {"text": "cccc", "target": "cccc"},
        {"target": 3},
        {"text": "ddddd", "target": 1.5},
        {"text": "eeeeee", "target": [1, 2, 3, 4, 5, 6]},
    ]
    _jsonl(tmp_path / "d.jsonl", records)
    cfg = load_config(_config(tmp_path, "d.jsonl", on_error="skip"))
    report = prepare(cfg, workers=1)
    assert report.sources["s"].skipped == {"bad_second_value": 2, "not_a_string": 2, "missing_field": 1,
                                           "empty_document": 1}
    store = open_store(cfg.store_dir / "s")
    assert _texts(store) == ["aa", "cccc", "eeeeee"]
    assert store.second_lengths.tolist() == [2, 4, 6]
    examples = store.meta["skipped_examples"]["bad_second_value"]
    assert any("d.jsonl:2: field 'target' is -1" in e for e in examples)


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_columnar_skip_drops_the_whole_record(tmp_path: Path, fmt: str) -> None:
    table = pa.table({"text": ["aa", None, "ccc", "dddd", None, "ffffff", ""],
                      "target": [2, 9, None, -4, None, 6, 1]})
    path = tmp_path / f"d.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, path, row_group_size=2)
    else:
        _write_arrow(path, table, stream=True)
    cfg = load_config(_config(tmp_path, path.name, on_error="skip"))
    report = prepare(cfg, workers=1)
    assert report.sources["s"].skipped == {"missing_field": 3, "bad_second_value": 1, "empty_document": 1}
    store = open_store(cfg.store_dir / "s")
    assert _texts(store) == ["aa", "ffffff"]
    assert store.second_lengths.tolist() == [2, 6]


_RECORD_KINDS = ["int", "str", "list", "missing", "null", "negative", "float", "bool", "bad_text",
                 "empty_text", "not_json"]


def _record_line(kind: str, text: str) -> str:
    n = len(text.encode())  # the byte tokenizer: the second length equals the text's length
    value: object = {"int": n, "str": text, "list": list(range(n)), "null": None, "negative": -1 - n,
                     "float": n + 0.5, "bool": False}.get(kind, n)
    record: dict[str, object] = {"text": text, "target": value}
    if kind == "missing":
        del record["target"]
    elif kind == "bad_text":
        record["text"] = n
    elif kind == "empty_text":
        record["text"] = ""
    elif kind == "not_json":
        return '{"text": ' + json.dumps(text)
    return json.dumps(record, ensure_ascii=False)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(st.tuples(st.sampled_from(_RECORD_KINDS), st.text(min_size=1, max_size=30)),
                        min_size=1, max_size=60),
       chunk=st.integers(40, 400), fmt=st.sampled_from(["jsonl", "parquet"]))
def test_alignment_under_random_skips(tmp_path_factory, records: list[tuple[str, str]], chunk: int,
                                      fmt: str) -> None:
    tmp = tmp_path_factory.mktemp("align")
    good = [t for kind, t in records if kind in ("int", "str", "list")]
    if fmt == "jsonl":
        (tmp / "d.jsonl").write_text("".join(_record_line(k, t) + "\n" for k, t in records), "utf-8")
    else:  # one column type per file: strings, with nulls and empty texts as the bad records
        kinds = [k if k in ("str", "null", "empty_text") else "str" for k, _ in records]
        good = [t for k, (_, t) in zip(kinds, records, strict=True) if k == "str"]
        pq.write_table(pa.table({
            "text": ["" if k == "empty_text" else t for k, (_, t) in zip(kinds, records, strict=True)],
            "target": pa.array([None if k == "null" else t for k, (_, t) in zip(kinds, records, strict=True)],
                               pa.string()),
        }), tmp / "d.parquet", row_group_size=7)
    cfg = load_config(_config(tmp, f"d.{fmt}", on_error="skip"))
    if not good:
        with pytest.raises(DataError, match="no documents"):
            prepare(cfg, workers=1, chunk_bytes=chunk)
        return
    report = prepare(cfg, workers=1, chunk_bytes=chunk)  # JSONL: several byte-range units
    store = open_store(cfg.store_dir / "s")
    assert _texts(store) == good
    assert store.second_lengths.tolist() == store.lengths.tolist()
    assert sum(report.sources["s"].skipped.values()) == len(records) - len(good)


# --- resumable, sharded, up to date ------------------------------------------------------------
def _many_files(tmp: Path, n_files: int = 6, docs: int = 40) -> None:
    rng = np.random.default_rng(0)
    for f in range(n_files):
        records = []
        for d in range(docs):
            text = "w" * int(rng.integers(1, 50))
            kind = d % 3
            target: object = [0] * len(text) if kind == 0 else (text if kind == 1 else len(text))
            records.append({"text": f"{f}:{text}", "target": target})
        _jsonl(tmp / "in" / f"f{f}.jsonl", records)


def _second_bytes(cfg) -> bytes:
    return (cfg.store_dir / "s" / SECOND_LENGTHS).read_bytes()


def _check_aligned(cfg) -> None:
    store = open_store(cfg.store_dir / "s", verify=True)
    # every target has the length of the text after its "f:" prefix
    assert store.second_lengths.tolist() == [len(t.split(":", 1)[1]) for t in _texts(store)]


def test_interrupted_prepare_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _many_files(tmp_path)
    cfg = load_config(_config(tmp_path, "in"))
    ref = load_config(_config(tmp_path, "in", store="ref", name="ref"))
    prepare(ref, workers=2)
    real = prepare_module._run_unit
    done: list[int] = []

    def dies_after_three(job):
        if len(done) == 3:
            raise KeyboardInterrupt
        done.append(1)
        return real(job)

    monkeypatch.setattr(prepare_module, "_run_unit", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, workers=1)
    monkeypatch.setattr(prepare_module, "_run_unit", real)
    parts = cfg.store_dir / "s" / ".parts"
    assert len(list(parts.glob("*.second.npy"))) == 3 and not (cfg.store_dir / "s" / "meta.json").exists()
    report = prepare(cfg, workers=1)
    assert report.units_run == 3
    assert _second_bytes(cfg) == _second_bytes(ref)
    _check_aligned(cfg)
    assert not parts.exists()


def test_shards_then_merge(tmp_path: Path) -> None:
    _many_files(tmp_path)
    cfg = load_config(_config(tmp_path, "in"))
    ref = load_config(_config(tmp_path, "in", store="ref", name="ref"))
    prepare(ref, workers=1)
    for i in range(3):
        assert prepare(cfg, workers=1, shard=(i, 3)).sources["s"].status == "partial"
    assert not (cfg.store_dir / "s" / SECOND_LENGTHS).exists()
    merged = prepare(cfg, workers=1)
    assert merged.units_run == 0 and merged.sources["s"].status == "built"
    assert _second_bytes(cfg) == _second_bytes(ref)
    _check_aligned(cfg)


def test_processes_and_byte_ranges_give_identical_store(tmp_path: Path) -> None:
    _many_files(tmp_path)
    one = load_config(_config(tmp_path, "in", store="one", name="one"))
    two = load_config(_config(tmp_path, "in", store="two", name="two"))
    prepare(one, workers=1)
    prepare(two, workers=2, chunk_bytes=300)  # each file cut into several units
    assert _second_bytes(one) == _second_bytes(two)
    _check_aligned(two)


def test_rerun_is_a_no_op_and_second_field_changes_rebuild(tmp_path: Path) -> None:
    _jsonl(tmp_path / "d.jsonl", [{"text": "abc", "target": 1, "other": "xy"},
                                  {"text": "de", "target": 5, "other": [1, 2, 3]}])
    cfg = load_config(_config(tmp_path, "d.jsonl"))
    assert prepare(cfg, workers=1).sources["s"].status == "built"
    folder = cfg.store_dir / "s"
    mtime = (folder / "meta.json").stat().st_mtime_ns
    again = prepare(cfg, workers=1)
    assert again.units_run == 0 and again.sources["s"].status == "up to date"
    assert (folder / "meta.json").stat().st_mtime_ns == mtime

    other = load_config(_config(tmp_path, "d.jsonl", second_field="other"))
    assert prepare(other, workers=1).sources["s"].status == "built"
    assert open_store(folder).second_lengths.tolist() == [2, 3]

    plain = load_config(_config(tmp_path, "d.jsonl", second_field=None))
    assert prepare(plain, workers=1).sources["s"].status == "built"
    store = open_store(folder)
    assert store.second_lengths is None and store.meta["second_field"] is None
    assert not (folder / SECOND_LENGTHS).exists()
    assert prepare(plain, workers=1).sources["s"].status == "up to date"

    assert prepare(cfg, workers=1).sources["s"].status == "built"
    assert open_store(folder).second_lengths.tolist() == [1, 5]
    (folder / SECOND_LENGTHS).unlink()  # a lost data file is rebuilt, not trusted
    assert prepare(cfg, workers=1).sources["s"].status == "built"
    assert open_store(folder).second_lengths.tolist() == [1, 5]


# --- the store refuses a damaged file ----------------------------------------------------------
def test_open_store_refuses_a_damaged_second_lengths(tmp_path: Path) -> None:
    _jsonl(tmp_path / "d.jsonl", [{"text": f"doc {i}", "target": i} for i in range(20)])
    cfg = load_config(_config(tmp_path, "d.jsonl"))
    prepare(cfg, workers=1)
    folder = cfg.store_dir / "s"
    path = folder / SECOND_LENGTHS
    good = path.read_bytes()
    data = bytearray(good)
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=rf"{re.escape(str(path))}: checksum does not match.*prepare"):
        open_store(folder)
    path.write_bytes(good[:-8])
    with pytest.raises(StoreError, match=rf"{re.escape(str(path))}: \d+ bytes, the store metadata says"):
        open_store(folder)
    path.unlink()
    with pytest.raises(StoreError, match=rf"{re.escape(str(path))}: missing"):
        open_store(folder)

    # a well-formed file of the wrong length, with metadata that matches it
    np.save(path, np.arange(19, dtype=np.int64))
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["checksums"]["second_lengths"] = describe_file(path)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=rf"{re.escape(str(path))}: 19 second lengths, metadata says "
                                         r"20 documents; run `mixbatch prepare CONFIG --force`"):
        open_store(folder)
    np.save(path, np.arange(20, dtype=np.int32))
    meta["checksums"]["second_lengths"] = describe_file(path)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=r"expected a 1-D int64 array, got shape \(20,\) dtype int32"):
        open_store(folder)
    del meta["checksums"]["second_lengths"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=r"second_field 'target' but no second_lengths\.npy checksum"):
        open_store(folder)


def test_second_lengths_part_that_disagrees_is_refused(tmp_path: Path, monkeypatch) -> None:
    _jsonl(tmp_path / "d.jsonl", [{"text": f"doc {i}", "target": i} for i in range(5)])
    cfg = load_config(_config(tmp_path, "d.jsonl"))
    prepare(cfg, workers=1, shard=(0, 1))
    (part,) = (cfg.store_dir / "s" / ".parts").glob("*.second.npy")
    np.save(part, np.arange(4, dtype=np.int64))
    with pytest.raises(StoreError, match=r"\.second\.npy: 4 second lengths for 5 documents"):
        prepare(cfg, workers=1)


# --- inspect -----------------------------------------------------------------------------------
def test_inspect_shows_the_second_length_summary(tmp_path: Path) -> None:
    targets = [1, 2, 3, 4, 100]
    _jsonl(tmp_path / "d.jsonl", [{"text": f"doc {i}", "target": t} for i, t in enumerate(targets)])
    _jsonl(tmp_path / "p.jsonl", [{"text": "plain"}])
    cfg_path = write_config(tmp_path / "c.yaml", {"store": "store", "sources": {
        "s": {"path": "d.jsonl", "second_field": "target"}, "p": {"path": "p.jsonl"}}})
    prepare(load_config(cfg_path), workers=1)
    r = subprocess.run([sys.executable, "-m", "mixbatch", "inspect", str(cfg_path), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["sources"]["s"]["second"] == {"field": "target", "min": 1, "median": 3.0, "mean": 22.0,
                                               "p99": int(np.percentile(targets, 99, method="lower")),
                                               "max": 100}
    assert "second" not in stats["sources"]["p"]
    r = subprocess.run([sys.executable, "-m", "mixbatch", "inspect", str(cfg_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "second lengths" in r.stdout and "target" in r.stdout and "22.0" in r.stdout
