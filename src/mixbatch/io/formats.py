"""The options a raw-data reader takes: file format, text split and bad-record policy."""

from __future__ import annotations

from enum import StrEnum


class Format(StrEnum):
    """How a raw data file is encoded."""

    JSONL = "jsonl"
    PARQUET = "parquet"
    ARROW = "arrow"
    TEXT = "text"


class Split(StrEnum):
    """How a ``text`` file is cut into documents: the whole file, or one per non-empty line."""

    FILE = "file"
    LINE = "line"


class OnError(StrEnum):
    """What a bad record does: stop with a :class:`~mixbatch.errors.DataError`, or be counted and
    skipped (see :class:`~mixbatch.io.skips.SkipCounter`)."""

    FAIL = "fail"
    SKIP = "skip"
