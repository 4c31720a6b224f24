"""One entry point for raw text: the documents of a read unit, in batches."""

from __future__ import annotations

from collections.abc import Iterator

from mixbatch.errors import ConfigError
from mixbatch.io.columnar import iter_arrow_texts, iter_parquet_texts
from mixbatch.io.files import ReadUnit, is_splittable
from mixbatch.io.formats import Format, OnError, Split
from mixbatch.io.jsonl import iter_jsonl_texts
from mixbatch.io.skips import SkipCounter
from mixbatch.io.text import iter_text_texts


def iter_texts(
    unit: ReadUnit,
    text_field: str,
    split: Split,
    on_error: OnError,
    skips: SkipCounter,
    batch_size: int = 1024,
) -> Iterator[list[str]]:
    """Yield the documents of ``unit`` in file order, as lists of at most ``batch_size`` texts.

    Memory stays bounded by a few MB of file blocks plus one batch (and the longest record):
    files are streamed, never loaded whole, except a ``text`` file read with ``split=file``,
    which is one document. ``text_field`` names the JSON field or column (unused for text);
    ``split`` applies to text only. A bad record raises
    :class:`~mixbatch.errors.DataError` ``"file:line: problem"`` with ``on_error=fail``, or is
    counted in ``skips`` with ``on_error=skip``; a file-level problem (truncated compressed
    stream, unreadable Parquet/Arrow file, missing or non-string column) always raises.
    """
    fmt, split, on_error = Format(unit.fmt), Split(split), OnError(on_error)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if unit.is_range and not is_splittable(unit.path, fmt, split):
        raise ValueError(f"{unit.path}: byte ranges apply only to uncompressed JSONL and line-split text")
    if fmt is Format.JSONL:
        return iter_jsonl_texts(unit, text_field, on_error, skips, batch_size)
    if fmt is Format.PARQUET:
        return iter_parquet_texts(unit, text_field, on_error, skips, batch_size)
    if fmt is Format.ARROW:
        return iter_arrow_texts(unit, text_field, on_error, skips, batch_size)
    return iter_text_texts(unit, split, on_error, skips, batch_size)
