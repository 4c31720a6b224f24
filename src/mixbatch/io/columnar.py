"""Parquet and Arrow IPC readers: one string column (and a ``second_field`` column), read batch
by batch.

File-level problems (unreadable file, missing column, non-string text column, second column that
is not integer, string or list) always raise a :class:`~mixbatch.errors.DataError`; a null or
negative value is a record problem (``missing_field``, ``bad_second_value``) reported as
``path:row N``, rows counted from 0 as in pyarrow and pandas.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mixbatch.errors import DataError
from mixbatch.io.files import ReadUnit
from mixbatch.io.formats import OnError
from mixbatch.io.fs import RemotePath, open_input
from mixbatch.io.second import EXPECTED, INT64_MAX, SecondValues
from mixbatch.io.skips import (
    BAD_SECOND_VALUE,
    INVALID_UTF8,
    MISSING_FIELD,
    SkipCounter,
    one_line,
    reject,
)

_ARROW_ERRORS = (OSError, pa.ArrowException)


def _detail(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _is_string(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    is_view = getattr(pa.types, "is_string_view", None)
    return (
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or (is_view is not None and is_view(kind))
    )


def _is_integer(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_integer(kind)


def _is_list(kind: pa.DataType) -> bool:
    checks = ("is_list", "is_large_list", "is_fixed_size_list", "is_list_view", "is_large_list_view")
    return any(getattr(pa.types, name, lambda _: False)(kind) for name in checks)


def _check_present(path: Path | RemotePath, schema: pa.Schema, field: str) -> None:
    if schema.get_field_index(field) < 0:
        names = ", ".join(repr(name) for name in schema.names[:20])
        more = ", ..." if len(schema.names) > 20 else ""
        hint = " (it is there twice)" if field in schema.names else ""
        raise DataError(one_line(f"{path}: no column {field!r}{hint}; columns: {names or 'none'}{more}"))


def _check_column(path: Path | RemotePath, schema: pa.Schema, text_field: str) -> None:
    _check_present(path, schema, text_field)
    kind = schema.field(text_field).type
    if not _is_string(kind):
        raise DataError(one_line(f"{path}: column {text_field!r} has type {kind}, expected a string column"))


def _check_second_column(path: Path | RemotePath, schema: pa.Schema, second_field: str) -> None:
    _check_present(path, schema, second_field)
    kind = schema.field(second_field).type
    if not (_is_string(kind) or _is_integer(kind) or _is_list(kind) or pa.types.is_null(kind)):
        raise DataError(
            one_line(
                f"{path}: column {second_field!r} (second_field) has type {kind}, expected an integer,"
                " string or list column"
            )
        )


def iter_parquet_records(
    unit: ReadUnit,
    text_field: str,
    on_error: OnError,
    skips: SkipCounter,
    batch_size: int,
    second_field: str | None = None,
) -> Iterator[tuple[list[str], SecondValues | None]]:
    """Yield batches of texts from column ``text_field`` of a Parquet file, each with the
    batch's values of column ``second_field`` (``None`` without one)."""
    path = unit.path
    try:
        parquet = pq.ParquetFile(open_input(path) if isinstance(path, RemotePath) else path)
    except _ARROW_ERRORS as exc:
        raise DataError(one_line(f"{path}: not a readable Parquet file ({_detail(exc)})")) from exc
    with parquet:
        _check_column(path, parquet.schema_arrow, text_field)
        columns = [text_field]
        if second_field is not None:
            _check_second_column(path, parquet.schema_arrow, second_field)
            if second_field != text_field:
                columns.append(second_field)
        batches = parquet.iter_batches(batch_size=batch_size, columns=columns)
        pairs = (
            (batch.column(text_field), None if second_field is None else batch.column(second_field))
            for batch in _guarded(path, batches, "Parquet file")
        )
        yield from _records(path, text_field, second_field, pairs, on_error, skips, batch_size)


def iter_arrow_records(
    unit: ReadUnit,
    text_field: str,
    on_error: OnError,
    skips: SkipCounter,
    batch_size: int,
    second_field: str | None = None,
) -> Iterator[tuple[list[str], SecondValues | None]]:
    """Yield batches of texts from column ``text_field`` of an Arrow IPC file or stream, each
    with the batch's values of column ``second_field`` (``None`` without one).

    The file is memory-mapped; both the IPC file format and the stream format (what
    ``datasets.Dataset.save_to_disk`` writes) are accepted.
    """
    path = unit.path
    try:
        source = (pa.PythonFile(open_input(path), mode="r") if isinstance(path, RemotePath)
                  else pa.memory_map(str(path), "r"))
    except _ARROW_ERRORS as exc:
        raise DataError(one_line(f"{path}: cannot read file ({_detail(exc)})")) from exc
    with source:
        batches = _ipc_batches(path, source)
        schema = next(batches)
        _check_column(path, schema, text_field)
        index = schema.get_field_index(text_field)
        second = -1
        if second_field is not None:
            _check_second_column(path, schema, second_field)
            second = schema.get_field_index(second_field)
        pairs = (
            (batch.column(index), None if second < 0 else batch.column(second))
            for batch in _guarded(path, batches, "Arrow file")
        )
        yield from _records(path, text_field, second_field, pairs, on_error, skips, batch_size)


def _ipc_batches(path: Path | RemotePath, source: pa.NativeFile) -> Iterator:
    """Yield the schema, then the record batches, of an IPC file or stream."""
    try:
        reader = pa.ipc.open_file(source)
    except _ARROW_ERRORS:
        source.seek(0)
        try:
            stream = pa.ipc.open_stream(source)
        except _ARROW_ERRORS as exc:
            raise DataError(
                one_line(f"{path}: not a readable Arrow IPC file or stream ({_detail(exc)})")
            ) from exc
        yield stream.schema
        yield from stream
        return
    yield reader.schema
    for i in range(reader.num_record_batches):
        yield reader.get_batch(i)


def _guarded(path: Path | RemotePath, batches: Iterable, what: str) -> Iterator:
    """``batches``, with a read error mid-file turned into a DataError."""
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except _ARROW_ERRORS as exc:
            raise DataError(one_line(f"{path}: not a readable {what} ({_detail(exc)})")) from exc
        yield batch


#: a bad record of a piece: its row in the piece -> (skip reason, message)
_Problems = dict[int, tuple[str, str]]


def _records(
    path: Path,
    text_field: str,
    second_field: str | None,
    pairs: Iterable[tuple[pa.Array, pa.Array | None]],
    on_error: OnError,
    skips: SkipCounter,
    batch_size: int,
) -> Iterator[tuple[list[str], SecondValues | None]]:
    row = 0
    for texts, seconds in pairs:
        for offset in range(0, len(texts), batch_size):
            piece = texts.slice(offset, batch_size)
            values, problems = _strings(path, text_field, piece, row)
            second = None
            if seconds is not None and second_field is not None:
                second = _seconds(path, second_field, seconds.slice(offset, batch_size), row, problems)
            for i in sorted(problems):  # in row order, so that `fail` names the first bad row
                reject(on_error, skips, *problems[i])
            row += len(piece)
            if problems:
                keep = np.ones(len(piece), dtype=bool)
                keep[list(problems)] = False
                values = [v for v, k in zip(values, keep.tolist(), strict=True) if k]
                if second is not None:
                    second = second.select(keep)
            if values:
                yield values, second


def _strings(path: Path, field: str, piece: pa.Array, first_row: int) -> tuple[list, _Problems]:
    """The values of a string column piece; ``None``, and a problem, where a row is bad."""
    try:
        values: list | None = piece.to_pylist()
    except UnicodeDecodeError:  # Arrow does not validate UTF-8 on read: find the bad rows
        values = None
    problems: _Problems = {}
    if values is not None and piece.null_count == 0:
        return values, problems
    out: list = []
    for i in range(len(piece)):
        if values is not None:
            value = values[i]
        else:
            try:
                value = piece[i].as_py()
            except UnicodeDecodeError as exc:
                problems[i] = (
                    INVALID_UTF8,
                    f"{path}:row {first_row + i}: invalid UTF-8 in column {field!r}"
                    f" at byte {exc.start} ({exc.reason})",
                )
                out.append(None)
                continue
        if value is None:
            problems[i] = (MISSING_FIELD, f"{path}:row {first_row + i}: column {field!r} is null")
        out.append(value)
    return out, problems


def _seconds(path: Path, field: str, piece: pa.Array, first_row: int, problems: _Problems) -> SecondValues:
    """The second values of a column piece; a bad row's problem is added to ``problems``
    unless the row is bad already (a record is rejected once)."""
    if pa.types.is_dictionary(piece.type):
        piece = piece.dictionary_decode()
    kind = piece.type
    if _is_string(kind):
        strings, string_problems = _strings(path, field, piece, first_row)
        for i, problem in string_problems.items():
            problems.setdefault(i, problem)
        return SecondValues(np.full(len(piece), -1, dtype=np.int64), strings)
    if _is_list(kind):
        piece = pc.list_value_length(piece)
    elif pa.types.is_null(kind):  # a column of nulls only: every row misses its value
        piece = pa.nulls(len(piece), pa.int64())
    nulls = piece.is_null().to_numpy(zero_copy_only=False) if piece.null_count else None
    raw = piece.fill_null(0).to_numpy(zero_copy_only=False) if piece.null_count else piece.to_numpy()
    bad = raw > INT64_MAX if raw.dtype == np.uint64 else raw < 0
    if nulls is not None:
        bad |= nulls
    counts = raw.astype(np.int64)
    counts[bad] = 0  # rejected rows; -1 would read as a string
    for i in np.flatnonzero(bad).tolist():
        where = f"{path}:row {first_row + i}: column {field!r}"
        if nulls is not None and nulls[i]:
            problem = (MISSING_FIELD, f"{where} is null")
        else:
            too = "negative" if raw[i] < 0 else "too large for int64"
            problem = (BAD_SECOND_VALUE, f"{where} is {raw[i]}, {too}; {EXPECTED}")
        problems.setdefault(i, problem)
    return SecondValues(counts, [])
