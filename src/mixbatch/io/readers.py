"""One entry point for raw text: the documents of a read unit, in batches."""

from __future__ import annotations

from collections.abc import Iterator

from mixbatch.errors import ConfigError
from mixbatch.io.columnar import iter_arrow_records, iter_parquet_records
from mixbatch.io.files import ReadUnit, is_splittable
from mixbatch.io.formats import Format, OnError, Split
from mixbatch.io.jsonl import iter_jsonl_records
from mixbatch.io.second import SecondValues
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
    fmt, split, on_error = _check(unit, split, on_error, batch_size)
    if fmt is Format.TEXT:
        return iter_text_texts(unit, split, on_error, skips, batch_size)
    return (texts for texts, _ in _records(unit, fmt, text_field, None, on_error, skips, batch_size))


def iter_records(
    unit: ReadUnit,
    text_field: str,
    second_field: str,
    on_error: OnError,
    skips: SkipCounter,
    batch_size: int = 1024,
) -> Iterator[tuple[list[str], SecondValues]]:
    """Like :func:`iter_texts`, each batch of texts with the records' ``second_field`` values.

    A value is an integer >= 0, a string (to be tokenised) or a list (its length); a missing,
    null, negative or otherwise typed value makes the whole record bad (raised or counted like
    any bad record), so texts and values stay aligned. Parquet and Arrow columns must be of
    integer, string or list type (a file-level problem otherwise). Text files have no fields:
    :class:`~mixbatch.errors.ConfigError`.
    """
    if not isinstance(second_field, str) or not second_field:
        raise ConfigError(f"second_field must be a field name, got {second_field!r}")
    fmt, _, on_error = _check(unit, Split.FILE, on_error, batch_size)
    if fmt is Format.TEXT:
        raise ConfigError(
            f"{unit.path}: second_field {second_field!r} needs records with fields (jsonl, parquet,"
            " arrow); a text file has none"
        )
    batches = _records(unit, fmt, text_field, second_field, on_error, skips, batch_size)
    return ((texts, second) for texts, second in batches if second is not None)


def _check(unit: ReadUnit, split: Split, on_error: OnError, batch_size: int) -> tuple[Format, Split, OnError]:
    fmt, split, on_error = Format(unit.fmt), Split(split), OnError(on_error)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if unit.is_range and not is_splittable(unit.path, fmt, split):
        raise ValueError(f"{unit.path}: byte ranges apply only to uncompressed JSONL and line-split text")
    return fmt, split, on_error


def _records(
    unit: ReadUnit,
    fmt: Format,
    text_field: str,
    second_field: str | None,
    on_error: OnError,
    skips: SkipCounter,
    batch_size: int,
) -> Iterator[tuple[list[str], SecondValues | None]]:
    if fmt is Format.JSONL:
        return iter_jsonl_records(unit, text_field, on_error, skips, batch_size, second_field)
    if fmt is Format.PARQUET:
        return iter_parquet_records(unit, text_field, on_error, skips, batch_size, second_field)
    return iter_arrow_records(unit, text_field, on_error, skips, batch_size, second_field)
