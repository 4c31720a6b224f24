"""Parquet and Arrow IPC readers: one string column, read batch by batch.

File-level problems (unreadable file, missing column, non-string column) always raise a
:class:`~mixbatch.errors.DataError`; a null value is a record problem (``missing_field``)
reported as ``path:row N``, rows counted from 0 as in pyarrow and pandas.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mixbatch.errors import DataError
from mixbatch.io.files import ReadUnit
from mixbatch.io.formats import OnError
from mixbatch.io.skips import INVALID_UTF8, MISSING_FIELD, SkipCounter, one_line, reject

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


def _check_column(path: Path, schema: pa.Schema, text_field: str) -> None:
    if schema.get_field_index(text_field) < 0:
        names = ", ".join(repr(name) for name in schema.names[:20])
        more = ", ..." if len(schema.names) > 20 else ""
        hint = " (it is there twice)" if text_field in schema.names else ""
        raise DataError(one_line(f"{path}: no column {text_field!r}{hint}; columns: {names or 'none'}{more}"))
    kind = schema.field(text_field).type
    if not _is_string(kind):
        raise DataError(one_line(f"{path}: column {text_field!r} has type {kind}, expected a string column"))


def iter_parquet_texts(
    unit: ReadUnit, text_field: str, on_error: OnError, skips: SkipCounter, batch_size: int
) -> Iterator[list[str]]:
    """Yield batches of texts from column ``text_field`` of a Parquet file."""
    path = unit.path
    try:
        parquet = pq.ParquetFile(path)
    except _ARROW_ERRORS as exc:
        raise DataError(one_line(f"{path}: not a readable Parquet file ({_detail(exc)})")) from exc
    with parquet:
        _check_column(path, parquet.schema_arrow, text_field)
        batches = parquet.iter_batches(batch_size=batch_size, columns=[text_field])
        arrays = (batch.column(0) for batch in _guarded(path, batches, "Parquet file"))
        yield from _texts(path, text_field, arrays, on_error, skips, batch_size)


def iter_arrow_texts(
    unit: ReadUnit, text_field: str, on_error: OnError, skips: SkipCounter, batch_size: int
) -> Iterator[list[str]]:
    """Yield batches of texts from column ``text_field`` of an Arrow IPC file or stream.

    The file is memory-mapped; both the IPC file format and the stream format (what
    ``datasets.Dataset.save_to_disk`` writes) are accepted.
    """
    path = unit.path
    try:
        source = pa.memory_map(str(path), "r")
    except _ARROW_ERRORS as exc:
        raise DataError(one_line(f"{path}: cannot read file ({_detail(exc)})")) from exc
    with source:
        batches = _ipc_batches(path, source)
        schema = next(batches)
        _check_column(path, schema, text_field)
        index = schema.get_field_index(text_field)
        arrays = (batch.column(index) for batch in _guarded(path, batches, "Arrow file"))
        yield from _texts(path, text_field, arrays, on_error, skips, batch_size)


def _ipc_batches(path: Path, source: pa.MemoryMappedFile) -> Iterator:
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


def _guarded(path: Path, batches: Iterable, what: str) -> Iterator:
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


def _texts(
    path: Path,
    text_field: str,
    arrays: Iterable[pa.Array],
    on_error: OnError,
    skips: SkipCounter,
    batch_size: int,
) -> Iterator[list[str]]:
    row = 0
    for array in arrays:
        for offset in range(0, len(array), batch_size):
            piece = array.slice(offset, batch_size)
            texts = _values(path, text_field, piece, row, on_error, skips)
            row += len(piece)
            if texts:
                yield texts


def _values(
    path: Path,
    text_field: str,
    piece: pa.Array,
    first_row: int,
    on_error: OnError,
    skips: SkipCounter,
) -> list[str]:
    try:
        values: list | None = piece.to_pylist()
    except UnicodeDecodeError:  # Arrow does not validate UTF-8 on read: find the bad rows
        values = None
    if values is not None and piece.null_count == 0:
        return values
    kept: list[str] = []
    for i in range(len(piece)):
        if values is not None:
            value = values[i]
        else:
            try:
                value = piece[i].as_py()
            except UnicodeDecodeError as exc:
                reject(
                    on_error,
                    skips,
                    INVALID_UTF8,
                    f"{path}:row {first_row + i}: invalid UTF-8 in column {text_field!r}"
                    f" at byte {exc.start} ({exc.reason})",
                )
                continue
        if value is None:
            reject(
                on_error,
                skips,
                MISSING_FIELD,
                f"{path}:row {first_row + i}: column {text_field!r} is null",
            )
            continue
        kept.append(value)
    return kept
