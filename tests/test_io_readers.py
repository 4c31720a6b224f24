"""Raw text readers (mixbatch.io): exact round trips, every bad input, bounded memory."""

from __future__ import annotations

import gzip
import json
import re
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixbatch.errors import ConfigError, DataError
from mixbatch.io import (
    Format,
    OnError,
    ReadUnit,
    SkipCounter,
    Split,
    expand_paths,
    iter_texts,
    plan_units,
)

TEXTS = [
    "hello world",
    "",
    "two\nlines and a\r\nwindows break",
    "emoji 🙂👍🏽 and flags 🇫🇷",
    "accents é ü, CJK 数据, RTL مرحبا",
    "separators \u2028 \u2029 \x85 inside",
    'quote " backslash \\ tab \t nul \x00',
    "\ufeffstarts with a BOM character",
    "x" * 10_000,
]


def at(path: Path) -> str:
    """``path`` as a regular expression that matches it literally."""
    return re.escape(str(path))


def read_all(
    paths: list[Path],
    fmt: Format,
    split: Split = Split.LINE,
    *,
    text_field: str = "text",
    on_error: OnError = OnError.FAIL,
    chunk_bytes: int = 64 << 20,
    batch_size: int = 1024,
    skips: SkipCounter | None = None,
) -> list[str]:
    """All texts of ``paths``, unit after unit, checking batch sizes on the way."""
    skips = SkipCounter() if skips is None else skips
    texts: list[str] = []
    for unit in plan_units(paths, fmt, split, chunk_bytes=chunk_bytes):
        for batch in iter_texts(unit, text_field, split, on_error, skips, batch_size=batch_size):
            assert 0 < len(batch) <= batch_size
            texts.extend(batch)
    return texts


def jsonl_bytes(records: list[object], ensure_ascii: bool = False) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=ensure_ascii) + "\n" for r in records).encode()


def write_jsonl(path: Path, records: list[object], ensure_ascii: bool = False) -> Path:
    data = jsonl_bytes(records, ensure_ascii)
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    elif path.name.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def docs(texts: list[str]) -> list[dict]:
    return [{"id": i, "text": t, "meta": {"n": [1, 2]}} for i, t in enumerate(texts)]


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a.jsonl", "a.jsonl.gz", "a.jsonl.zst", "a.ndjson", "a.json"])
@pytest.mark.parametrize("ensure_ascii", [False, True])
def test_jsonl_round_trip(tmp_path: Path, name: str, ensure_ascii: bool) -> None:
    path = write_jsonl(tmp_path / name, docs(TEXTS), ensure_ascii)
    assert read_all([path], Format.JSONL, batch_size=4) == TEXTS


def test_jsonl_round_trip_split_in_units(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", docs(TEXTS * 20))
    units = plan_units([path], Format.JSONL, Split.LINE, chunk_bytes=3000)
    assert len(units) > 10
    assert read_all([path], Format.JSONL, chunk_bytes=3000, batch_size=3) == TEXTS * 20


def test_jsonl_blank_lines_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n\r\n   \n{"text": "b"}\n\n{"text": ""}')
    assert read_all([path], Format.JSONL) == ["a", "b", ""]


def test_jsonl_other_text_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [{"content": "x", "text": 1}, {"content": "y"}])
    assert read_all([path], Format.JSONL, text_field="content") == ["x", "y"]


def test_zstd_concatenated_frames_and_gzip_members(tmp_path: Path) -> None:
    first, second = jsonl_bytes(docs(["a", "b"])), jsonl_bytes(docs(["c"]))
    zst = tmp_path / "a.jsonl.zst"
    compressor = zstandard.ZstdCompressor()
    zst.write_bytes(compressor.compress(first) + compressor.compress(second))
    gz = tmp_path / "a.jsonl.gz"
    gz.write_bytes(gzip.compress(first) + gzip.compress(second))
    assert read_all([zst], Format.JSONL) == ["a", "b", "c"]
    assert read_all([gz], Format.JSONL) == ["a", "b", "c"]


def test_zstd_streamed_without_content_size(tmp_path: Path) -> None:
    data = jsonl_bytes(docs([f"doc {i} " * 50 for i in range(3000)]))
    path = tmp_path / "a.jsonl.zst"
    with open(path, "wb") as fh, zstandard.ZstdCompressor().stream_writer(fh) as writer:
        for start in range(0, len(data), 1000):
            writer.write(data[start : start + 1000])
    assert read_all([path], Format.JSONL) == [f"doc {i} " * 50 for i in range(3000)]


def test_parquet_round_trip_several_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    table = pa.table({"id": list(range(len(TEXTS) * 3)), "text": TEXTS * 3})
    pq.write_table(table, path, row_group_size=4)
    assert pq.ParquetFile(path).num_row_groups == 7
    assert read_all([path], Format.PARQUET, batch_size=3) == TEXTS * 3


@pytest.mark.parametrize("kind", [pa.large_string(), pa.dictionary(pa.int32(), pa.string())])
def test_parquet_large_and_dictionary_strings(tmp_path: Path, kind: pa.DataType) -> None:
    path = tmp_path / "a.parquet"
    array = pa.array(["a", "b", "a", ""]).cast(kind)
    pq.write_table(pa.table({"text": array}), path)
    assert read_all([path], Format.PARQUET) == ["a", "b", "a", ""]


def write_arrow(path: Path, table: pa.Table, stream: bool, max_chunksize: int = 4) -> Path:
    opener = pa.ipc.new_stream if stream else pa.ipc.new_file
    with pa.OSFile(str(path), "wb") as sink, opener(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=max_chunksize):
            writer.write_batch(batch)
    return path


@pytest.mark.parametrize("stream", [False, True])
def test_arrow_file_and_stream_round_trip(tmp_path: Path, stream: bool) -> None:
    table = pa.table({"text": TEXTS * 2, "n": list(range(len(TEXTS) * 2))})
    path = write_arrow(tmp_path / "a.arrow", table, stream)
    assert read_all([path], Format.ARROW, batch_size=3) == TEXTS * 2


def test_hf_save_to_disk_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    folder.mkdir()
    shards = {"data-00000-of-00002.arrow": TEXTS[:4], "data-00001-of-00002.arrow": TEXTS[4:]}
    for name, texts in shards.items():
        write_arrow(folder / name, pa.table({"text": texts, "label": [0] * len(texts)}), True)
    (folder / "dataset_info.json").write_text(json.dumps({"features": {}}))
    state = {"_data_files": [{"filename": n} for n in shards], "_fingerprint": "f", "_split": None}
    (folder / "state.json").write_text(json.dumps(state))
    paths = expand_paths("ds", tmp_path, None)
    assert paths == [folder / name for name in shards]
    assert read_all(paths, Format.ARROW) == TEXTS


def test_text_split_file(tmp_path: Path) -> None:
    paths = []
    for i, text in enumerate(TEXTS):
        paths.append(tmp_path / f"{i}.txt")
        paths[-1].write_bytes(text.encode())
    want = [t.removeprefix("\ufeff") for t in TEXTS]  # a leading BOM is not content
    assert read_all(paths, Format.TEXT, Split.FILE) == want


def test_text_split_line(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes("\ufeffone\r\n\ntwo 🙂\n\r\n   \nthree\u2028still three\nlast".encode())
    want = ["one", "two 🙂", "   ", "three\u2028still three", "last"]
    assert read_all([path], Format.TEXT, Split.LINE) == want
    assert read_all([path], Format.TEXT, Split.LINE, chunk_bytes=4, batch_size=2) == want


def test_text_gzip(tmp_path: Path) -> None:
    path = tmp_path / "a.txt.gz"
    path.write_bytes(gzip.compress(b"a\nb\n"))
    assert read_all([path], Format.TEXT, Split.LINE) == ["a", "b"]
    assert read_all([path], Format.TEXT, Split.FILE) == ["a\nb\n"]


def test_batches_are_full_until_the_last(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", docs([str(i) for i in range(10)]))
    unit = ReadUnit(path, Format.JSONL)
    sizes = [len(b) for b in iter_texts(unit, "text", Split.LINE, OnError.FAIL, SkipCounter(), 4)]
    assert sizes == [4, 4, 2]


# --- property tests ------------------------------------------------------------------------

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(
    texts=st.lists(st.text(max_size=30), max_size=40),
    chunk_bytes=st.integers(1, 200),
    batch_size=st.integers(1, 7),
    ensure_ascii=st.booleans(),
)
def test_jsonl_units_concatenate_to_input(
    tmp_path: Path, texts: list[str], chunk_bytes: int, batch_size: int, ensure_ascii: bool
) -> None:
    path = write_jsonl(tmp_path / "h.jsonl", docs(texts), ensure_ascii)
    got = read_all([path], Format.JSONL, chunk_bytes=chunk_bytes, batch_size=batch_size)
    assert got == texts


@FAST
@given(
    texts=st.lists(
        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\ufeff"),
                min_size=1, max_size=30),
        max_size=40,
    ),
    chunk_bytes=st.integers(1, 200),
    batch_size=st.integers(1, 7),
)
def test_text_lines_units_concatenate_to_input(
    tmp_path: Path, texts: list[str], chunk_bytes: int, batch_size: int
) -> None:
    path = tmp_path / "h.txt"
    path.write_bytes("".join(t + "\n" for t in texts).encode())
    got = read_all([path], Format.TEXT, Split.LINE, chunk_bytes=chunk_bytes, batch_size=batch_size)
    assert got == texts


# --- bad records -----------------------------------------------------------------------------

GOOD = b'{"text": "ok"}'
BAD_LINES = {
    "malformed_json": (
        b'{"text": "unterminated',
        r"malformed JSON \(Unterminated string starting at column 10\)",
    ),
    "not_an_object": (b'["text"]', "expected a JSON object, got an array"),
    "missing_field": (b'{"body": "x", "id": 3}', r"no field 'text' \(fields: 'body', 'id'\)"),
    "not_a_string": (b'{"text": 42}', r"field 'text' is a number \(42\), expected a string"),
    "invalid_utf8": (b'{"text": "caf\xe9"}', "invalid UTF-8 at byte 13 of the line"),
}


@pytest.mark.parametrize("reason", sorted(BAD_LINES))
def test_bad_record_fails_naming_file_line_and_problem(tmp_path: Path, reason: str) -> None:
    line, problem = BAD_LINES[reason]
    path = tmp_path / "file.jsonl"
    path.write_bytes(b"\n".join([GOOD, GOOD, line, GOOD]) + b"\n")
    with pytest.raises(DataError, match=rf"^{at(path)}:3: {problem}") as info:
        read_all([path], Format.JSONL)
    assert "\n" not in str(info.value)


def test_skip_mode_counts_each_reason_exactly(tmp_path: Path) -> None:
    path = tmp_path / "file.jsonl"
    lines = [GOOD]
    for reason, n in zip(sorted(BAD_LINES), [1, 2, 3, 1, 2], strict=True):
        lines += [BAD_LINES[reason][0], GOOD] * n
    lines += [b'{"text": null}', b'{"text": "\\ud800 lone"}', b'{"text": "\\ud83d\\ude00"}']
    path.write_bytes(b"\n".join(lines) + b"\n")
    skips = SkipCounter()
    texts = read_all([path], Format.JSONL, on_error=OnError.SKIP, skips=skips)
    assert texts == ["ok"] * 10 + ["😀"]
    assert skips.counts == {
        "invalid_utf8": 2,
        "malformed_json": 2,
        "missing_field": 4,
        "not_a_string": 1,
        "not_an_object": 2,
    }
    assert skips.total == 11
    assert skips.examples["malformed_json"][0].startswith(f"{path}:4: malformed JSON")
    assert skips.examples["missing_field"][-1] == f"{path}:20: field 'text' is null"
    assert skips.examples["invalid_utf8"][-1].startswith(f"{path}:21: field 'text' holds a lone")


def test_lone_surrogate_fails(tmp_path: Path) -> None:
    path = tmp_path / "file.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\\u00e9 \\uDC00"}\n')
    with pytest.raises(DataError, match=rf"^{at(path)}:2: field 'text' holds a lone surrogate"):
        read_all([path], Format.JSONL)


def test_json_array_file_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "file.json"
    path.write_text(json.dumps([{"text": "a"}], indent=1))
    with pytest.raises(DataError, match=r":1: malformed JSON .*looks like one JSON array"):
        read_all([path], Format.JSONL)


def test_line_numbers_are_absolute_in_later_units(tmp_path: Path) -> None:
    path = tmp_path / "file.jsonl"
    lines = [b'{"text": "%d"}' % i for i in range(300)]
    lines[250] = b'{"text": 250}'
    path.write_bytes(b"\n".join(lines) + b"\n")
    units = plan_units([path], Format.JSONL, Split.LINE, chunk_bytes=1000)
    assert len(units) >= 3 and units[1].start > 0
    bad_unit = next(u for u in units if u.start <= 250 * 15 and (u.end or 1e9) > 250 * 16)
    assert bad_unit is not units[0]
    with pytest.raises(DataError, match=rf"^{at(path)}:251: field 'text' is a number"):
        list(iter_texts(bad_unit, "text", Split.LINE, OnError.FAIL, SkipCounter()))
    skips = SkipCounter()
    read_all([path], Format.JSONL, on_error=OnError.SKIP, chunk_bytes=1000, skips=skips)
    assert skips.examples == {
        "not_a_string": [f"{path}:251: field 'text' is a number (250), expected a string"]
    }


def test_text_line_invalid_utf8_in_later_unit(tmp_path: Path) -> None:
    path = tmp_path / "file.txt"
    lines = [b"line %03d" % i for i in range(100)]
    lines[77] = b"bad \xff byte"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError, match=rf"^{at(path)}:78: invalid UTF-8 at byte 4 of the line"):
        read_all([path], Format.TEXT, Split.LINE, chunk_bytes=100)
    skips = SkipCounter()
    texts = read_all([path], Format.TEXT, Split.LINE, chunk_bytes=100, on_error=OnError.SKIP, skips=skips)
    assert len(texts) == 99 and skips.counts == {"invalid_utf8": 1}


def test_text_file_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "doc.txt"
    path.write_bytes(b"fine\nbad \xc3\x28\n")
    with pytest.raises(DataError, match=rf"^{at(path)}:2: invalid UTF-8 at byte 9"):
        read_all([path], Format.TEXT, Split.FILE)
    skips = SkipCounter()
    assert read_all([path], Format.TEXT, Split.FILE, on_error=OnError.SKIP, skips=skips) == []
    assert skips.counts == {"invalid_utf8": 1}


# --- bad files -----------------------------------------------------------------------------


def truncated(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


@pytest.mark.parametrize(("name", "kind"), [("a.jsonl.gz", "gzip"), ("a.jsonl.zst", "zstd")])
@pytest.mark.parametrize("on_error", [OnError.FAIL, OnError.SKIP])
def test_truncated_stream_always_fails(tmp_path: Path, name: str, kind: str, on_error: OnError) -> None:
    path = write_jsonl(tmp_path / name, docs([f"document {i}" * 20 for i in range(5000)]))
    path.write_bytes(truncated(path.read_bytes()))
    with pytest.raises(DataError, match=rf"^{at(path)}: truncated or corrupt {kind} stream after line"):
        read_all([path], Format.JSONL, on_error=on_error)


@pytest.mark.parametrize(("name", "kind"), [("a.jsonl.gz", "gzip"), ("a.jsonl.zst", "zstd")])
def test_not_compressed_at_all(tmp_path: Path, name: str, kind: str) -> None:
    path = tmp_path / name
    path.write_bytes(b'{"text": "plain"}\n')
    with pytest.raises(DataError, match=rf"truncated or corrupt {kind} stream after line 0"):
        read_all([path], Format.JSONL)


def test_truncated_text_gz_split_file(tmp_path: Path) -> None:
    path = tmp_path / "a.txt.gz"
    path.write_bytes(truncated(gzip.compress(b"some words\n" * 10_000)))
    with pytest.raises(DataError, match=rf"^{at(path)}: truncated or corrupt gzip stream"):
        read_all([path], Format.TEXT, Split.FILE)


def test_missing_file(tmp_path: Path) -> None:
    unit = ReadUnit(tmp_path / "gone.jsonl", Format.JSONL)
    with pytest.raises(DataError, match=r"gone\.jsonl: cannot read file"):
        list(iter_texts(unit, "text", Split.LINE, OnError.SKIP, SkipCounter()))


def test_unreadable_parquet(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    path.write_bytes(b"this is not parquet at all")
    with pytest.raises(DataError, match=rf"^{at(path)}: not a readable Parquet file \("):
        read_all([path], Format.PARQUET, on_error=OnError.SKIP)


def test_parquet_missing_column_names_columns(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"body": ["x"], "id": [1]}), path)
    with pytest.raises(DataError, match=rf"^{at(path)}: no column 'text'; columns: 'body', 'id'$"):
        read_all([path], Format.PARQUET, on_error=OnError.SKIP)


def test_parquet_non_string_column(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), path)
    with pytest.raises(DataError, match=r"column 'text' has type int64, expected a string column"):
        read_all([path], Format.PARQUET)


def test_parquet_nulls(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["a", None, "b", None, ""]}), path, row_group_size=2)
    with pytest.raises(DataError, match=rf"^{at(path)}:row 1: column 'text' is null$"):
        read_all([path], Format.PARQUET)
    skips = SkipCounter()
    assert read_all([path], Format.PARQUET, on_error=OnError.SKIP, skips=skips) == ["a", "b", ""]
    assert skips.counts == {"missing_field": 2}
    assert skips.examples["missing_field"][1] == f"{path}:row 3: column 'text' is null"


def test_arrow_invalid_utf8_values(tmp_path: Path) -> None:
    binary = pa.array([b"good", b"\xff\xfe", b"fine"], pa.binary())
    strings = pa.Array.from_buffers(pa.string(), len(binary), binary.buffers())
    path = write_arrow(tmp_path / "a.arrow", pa.table({"text": strings}), stream=False)
    with pytest.raises(DataError, match=rf"^{at(path)}:row 1: invalid UTF-8 in column 'text'"):
        read_all([path], Format.ARROW)
    skips = SkipCounter()
    assert read_all([path], Format.ARROW, on_error=OnError.SKIP, skips=skips) == ["good", "fine"]
    assert skips.counts == {"invalid_utf8": 1}


@pytest.mark.parametrize("stream", [False, True])
def test_arrow_missing_and_wrong_column(tmp_path: Path, stream: bool) -> None:
    path = write_arrow(tmp_path / "a.arrow", pa.table({"body": ["x"], "n": [1.5]}), stream)
    with pytest.raises(DataError, match=r"no column 'text'; columns: 'body', 'n'"):
        read_all([path], Format.ARROW)
    with pytest.raises(DataError, match=r"column 'n' has type double"):
        read_all([path], Format.ARROW, text_field="n")


def test_unreadable_arrow(tmp_path: Path) -> None:
    path = tmp_path / "a.arrow"
    path.write_bytes(b"garbage bytes, not Arrow IPC")
    with pytest.raises(DataError, match=rf"^{at(path)}: not a readable Arrow IPC file or stream"):
        read_all([path], Format.ARROW)


def test_iter_texts_checks_its_arguments(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl.gz", docs(["a"]))
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        list(
            iter_texts(
                ReadUnit(path, Format.JSONL), "text", Split.LINE, OnError.FAIL, SkipCounter(), batch_size=0
            )
        )
    with pytest.raises(ValueError, match="byte ranges apply only"):
        list(iter_texts(ReadUnit(path, Format.JSONL, 0, 5), "text", Split.LINE, OnError.FAIL, SkipCounter()))


def test_messages_stay_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a\\nb": 1}\n')
    with pytest.raises(DataError) as info:
        read_all([path], Format.JSONL)
    assert "\n" not in str(info.value) and "'a\\nb'" in str(info.value)


# --- skip counter ----------------------------------------------------------------------------


def test_skip_counter_keeps_five_examples_and_merges() -> None:
    a, b = SkipCounter(), SkipCounter()
    for i in range(7):
        a.add("malformed_json", example=f"f:{i}: bad")
    b.add("missing_field", 3, example="g:1: gone\nreally")
    b.add("malformed_json", example="g:9: bad")
    a.merge(b)
    assert a.counts == {"malformed_json": 8, "missing_field": 3}
    assert a.total == 11
    assert a.examples["malformed_json"] == [f"f:{i}: bad" for i in range(5)]
    assert a.examples["missing_field"] == ["g:1: gone\\nreally"]
    assert a.summary() == "11 skipped: malformed_json 8, missing_field 3"
    assert SkipCounter().summary() == "0 skipped"


# --- memory --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["big.jsonl", "big.jsonl.zst"])
def test_reading_a_big_file_keeps_memory_bounded(tmp_path: Path, name: str) -> None:
    lines = [
        json.dumps({"id": i, "text": f"document {i} " + "lorem ipsum dolor " * (i % 40 + 5)})
        for i in range(1000)
    ]
    block = ("\n".join(lines) + "\n").encode()
    path = tmp_path / name
    repeats = (50 << 20) // len(block) + 1
    if name.endswith(".zst"):
        with open(path, "wb") as fh, zstandard.ZstdCompressor().stream_writer(fh) as writer:
            for _ in range(repeats):
                writer.write(block)
    else:
        with open(path, "wb") as fh:
            for _ in range(repeats):
                fh.write(block)
    tracemalloc.start()
    try:
        count = 0
        for unit in plan_units([path], Format.JSONL, Split.LINE):
            for batch in iter_texts(unit, "text", Split.LINE, OnError.FAIL, SkipCounter()):
                count += len(batch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 1000 * repeats
    assert peak < 20 << 20, f"peak Python allocation {peak / 2**20:.1f} MB"


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_every_truncation_point_is_caught(tmp_path: Path, kind: str) -> None:
    data = jsonl_bytes(docs([f"record {i} " * (i % 9) for i in range(400)]))
    if kind == "gzip":
        whole, path = gzip.compress(data), tmp_path / "t.jsonl.gz"
    else:
        compressor = zstandard.ZstdCompressor(write_checksum=True, write_content_size=False)
        # several blocks in one frame: a small window forces block boundaries
        whole = compressor.compress(data * 20)
        path = tmp_path / "t.jsonl.zst"
    for cut in range(1, len(whole), max(1, len(whole) // 300)):
        path.write_bytes(whole[:cut])
        with pytest.raises(DataError, match=f"truncated or corrupt {kind} stream"):
            read_all([path], Format.JSONL, on_error=OnError.SKIP)
    for cut in range(len(whole) - 12, len(whole)):  # the last bytes: end of block, checksum
        path.write_bytes(whole[:cut])
        with pytest.raises(DataError, match=f"truncated or corrupt {kind} stream"):
            read_all([path], Format.JSONL, on_error=OnError.SKIP)
    path.write_bytes(whole)
    assert len(read_all([path], Format.JSONL)) == (400 if kind == "gzip" else 8000)
