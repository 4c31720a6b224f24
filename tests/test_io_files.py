"""Path expansion, format inference and read-unit planning (mixbatch.io.files)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from mixbatch.errors import ConfigError, DataError
from mixbatch.io import Format, ReadUnit, Split, expand_paths, infer_format, plan_units


def touch(path: Path, data: bytes = b"x\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.jsonl", Format.JSONL),
        ("a.json", Format.JSONL),
        ("a.ndjson", Format.JSONL),
        ("a.jsonl.gz", Format.JSONL),
        ("a.JSONL.ZST", Format.JSONL),
        ("a.json.zst", Format.JSONL),
        ("a.parquet", Format.PARQUET),
        ("a.arrow", Format.ARROW),
        ("a.txt", Format.TEXT),
        ("a.md", Format.TEXT),
        ("a.txt.gz", Format.TEXT),
        ("README", Format.TEXT),
    ],
)
def test_infer_format(name: str, fmt: Format) -> None:
    assert infer_format(Path("/d") / name) is fmt


def test_expand_glob_sorted_relative_to_base(tmp_path: Path) -> None:
    for name in ["b.jsonl", "a.jsonl", "c.txt", "sub/d.jsonl"]:
        touch(tmp_path / name)
    assert expand_paths("*.jsonl", tmp_path, Format.JSONL) == [
        tmp_path / "a.jsonl",
        tmp_path / "b.jsonl",
    ]
    assert expand_paths("**/*.jsonl", tmp_path, Format.JSONL) == [
        tmp_path / "a.jsonl",
        tmp_path / "b.jsonl",
        tmp_path / "sub/d.jsonl",
    ]


def test_expand_absolute_pattern_ignores_base(tmp_path: Path) -> None:
    touch(tmp_path / "x/a.jsonl")
    got = expand_paths(str(tmp_path / "x" / "*.jsonl"), Path("/nonexistent"), None)
    assert got == [tmp_path / "x/a.jsonl"]


def test_expand_folder_recursive_filters_format_and_hidden(tmp_path: Path) -> None:
    for name in [
        "data/b/2.jsonl",
        "data/b/1.jsonl.gz",
        "data/a.jsonl",
        "data/a-b/0.jsonl",
        "data/README.md",
        "data/.hidden.jsonl",
        "data/_SUCCESS",
        "data/_tmp/9.jsonl",
    ]:
        touch(tmp_path / name)
    got = expand_paths("data", tmp_path, Format.JSONL)
    # by path components: a folder's files stay together ("a-b/..." after "a.jsonl")
    assert [p.relative_to(tmp_path / "data").as_posix() for p in got] == [
        "a-b/0.jsonl",
        "a.jsonl",
        "b/1.jsonl.gz",
        "b/2.jsonl",
    ]
    assert expand_paths("data", tmp_path, Format.TEXT) == [tmp_path / "data/README.md"]


def test_expand_keeps_pattern_order_and_dedupes(tmp_path: Path) -> None:
    for name in ["a.jsonl", "b.jsonl", "c.jsonl"]:
        touch(tmp_path / name)
    got = expand_paths(["c.jsonl", "*.jsonl", "./a.jsonl", str(tmp_path / "b.jsonl")], tmp_path, Format.JSONL)
    assert got == [tmp_path / "c.jsonl", tmp_path / "a.jsonl", tmp_path / "b.jsonl"]


def test_expand_plain_file_taken_as_is(tmp_path: Path) -> None:
    touch(tmp_path / "notes.data")
    assert expand_paths("notes.data", tmp_path, Format.JSONL) == [tmp_path / "notes.data"]


def test_expand_file_name_with_glob_characters(tmp_path: Path) -> None:
    touch(tmp_path / "part[1].jsonl")
    assert expand_paths("part[1].jsonl", tmp_path, Format.JSONL) == [tmp_path / "part[1].jsonl"]


@pytest.mark.parametrize("pattern", ["missing/*.jsonl", "missing.jsonl", "**/*.parquet"])
def test_expand_nothing_matches_names_pattern(tmp_path: Path, pattern: str) -> None:
    touch(tmp_path / "a.jsonl")
    with pytest.raises(ConfigError, match=pattern.replace("*", r"\*").replace(".", r"\.")):
        expand_paths(pattern, tmp_path, None)


def test_expand_folder_without_files_of_format(tmp_path: Path) -> None:
    touch(tmp_path / "data/a.txt")
    with pytest.raises(ConfigError, match=r"'data'.*holds no parquet files"):
        expand_paths("data", tmp_path, Format.PARQUET)


def test_expand_folder_of_mixed_formats_needs_format(tmp_path: Path) -> None:
    touch(tmp_path / "data/a.jsonl")
    touch(tmp_path / "data/b.parquet")
    with pytest.raises(ConfigError, match=r"several formats \(jsonl: 1, parquet: 1\)"):
        expand_paths("data", tmp_path, None)
    assert expand_paths("data", tmp_path, Format.JSONL) == [tmp_path / "data/a.jsonl"]


def test_expand_empty_list_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no path given"):
        expand_paths([], tmp_path, None)


def make_hf_folder(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True)
    for name in [*names, "cache-123.arrow"]:
        touch(folder / name, b"")
    (folder / "dataset_info.json").write_text("{}")
    state = {"_data_files": [{"filename": n} for n in names], "_split": "train"}
    (folder / "state.json").write_text(json.dumps(state))


def test_expand_hf_save_to_disk_folder_in_state_order(tmp_path: Path) -> None:
    names = ["data-00001-of-00002.arrow", "data-00000-of-00002.arrow"]
    make_hf_folder(tmp_path / "ds", names)
    want = [tmp_path / "ds" / n for n in names]
    assert expand_paths("ds", tmp_path, Format.ARROW) == want
    assert expand_paths("ds", tmp_path, None) == want
    with pytest.raises(ConfigError, match="set `format: arrow`"):
        expand_paths("ds", tmp_path, Format.JSONL)


def test_folder_with_only_a_state_file_is_ordinary(tmp_path: Path) -> None:
    touch(tmp_path / "data/a.jsonl")
    touch(tmp_path / "data/state.json", b"{}")
    assert expand_paths("data", tmp_path, Format.JSONL) == [
        tmp_path / "data/a.jsonl",
        tmp_path / "data/state.json",
    ]


def test_expand_hf_dataset_dict_is_refused(tmp_path: Path) -> None:
    make_hf_folder(tmp_path / "dd/train", ["data-00000-of-00001.arrow"])
    make_hf_folder(tmp_path / "dd/test", ["data-00000-of-00001.arrow"])
    (tmp_path / "dd/dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    with pytest.raises(ConfigError, match=r"DatasetDict \(splits: train, test\)"):
        expand_paths("dd", tmp_path, Format.ARROW)
    assert expand_paths("dd/train", tmp_path, Format.ARROW) == [
        tmp_path / "dd/train/data-00000-of-00001.arrow"
    ]


@pytest.mark.parametrize("name", ["../escape.arrow", "/etc/passwd", "absent.arrow"])
def test_hf_state_cannot_name_files_elsewhere(tmp_path: Path, name: str) -> None:
    make_hf_folder(tmp_path / "ds", ["data.arrow"])
    (tmp_path / "escape.arrow").write_bytes(b"")
    (tmp_path / "ds/state.json").write_text(json.dumps({"_data_files": [{"filename": name}]}))
    with pytest.raises(DataError, match=r"state\.json"):
        expand_paths("ds", tmp_path, Format.ARROW)


def write_lines(path: Path, lines: list[bytes]) -> bytes:
    data = b"".join(line + b"\n" for line in lines)
    path.write_bytes(data)
    return data


def test_plan_small_files_one_unit_each(tmp_path: Path) -> None:
    a = touch(tmp_path / "a.jsonl", b'{"text": "a"}\n')
    b = touch(tmp_path / "b.jsonl", b'{"text": "b"}\n')
    assert plan_units([a, b], Format.JSONL, Split.LINE, chunk_bytes=100) == [
        ReadUnit(a, Format.JSONL),
        ReadUnit(b, Format.JSONL),
    ]


def test_plan_cuts_big_file_at_line_starts(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    data = write_lines(path, [b"%d" % i * (i % 7 + 1) for i in range(200)])
    units = plan_units([path], Format.JSONL, Split.FILE, chunk_bytes=64)
    assert len(units) > 5
    assert units == plan_units([path], Format.JSONL, Split.FILE, chunk_bytes=64)
    assert units[0].start == 0 and units[-1].end is None
    for before, after in itertools.pairwise(units):
        assert before.end == after.start
        assert data[after.start - 1 : after.start] == b"\n"
        assert after.start - before.start >= 64


def test_plan_line_longer_than_chunk(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    write_lines(path, [b"a" * 1000, b"b", b"c" * 10])
    units = plan_units([path], Format.TEXT, Split.LINE, chunk_bytes=8)
    # the 1000-byte line is one unit; the next cut would fall past the end of the file
    assert [(u.start, u.end) for u in units] == [(0, 1001), (1001, None)]


@pytest.mark.parametrize(
    ("name", "fmt", "split"),
    [
        ("a.jsonl.gz", Format.JSONL, Split.LINE),
        ("a.jsonl.zst", Format.JSONL, Split.LINE),
        ("a.txt", Format.TEXT, Split.FILE),
        ("a.parquet", Format.PARQUET, Split.LINE),
        ("a.arrow", Format.ARROW, Split.LINE),
    ],
)
def test_plan_does_not_cut_unsplittable(tmp_path: Path, name: str, fmt: Format, split: Split) -> None:
    path = touch(tmp_path / name, b"line\n" * 100)
    assert plan_units([path], fmt, split, chunk_bytes=10) == [ReadUnit(path, fmt)]


def test_plan_missing_file_is_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"gone\.jsonl: cannot read file"):
        plan_units([tmp_path / "gone.jsonl"], Format.JSONL, Split.LINE)


def test_read_unit_rejects_bad_range(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bad byte range"):
        ReadUnit(tmp_path / "a.jsonl", Format.JSONL, 10, 5)
