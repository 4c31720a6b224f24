"""Plain text reader: a whole file per document, or one document per non-empty line."""

from __future__ import annotations

from collections.abc import Iterator

from mixbatch.io.files import ReadUnit
from mixbatch.io.formats import OnError, Split
from mixbatch.io.lines import CorruptStreamError, LineNumbers, iter_chunks, iter_line_blocks
from mixbatch.io.skips import INVALID_UTF8, SkipCounter, reject

_BOM = b"\xef\xbb\xbf"


def iter_text_texts(
    unit: ReadUnit, split: Split, on_error: OnError, skips: SkipCounter, batch_size: int
) -> Iterator[list[str]]:
    """Yield batches of documents from a UTF-8 text file (optionally gzip/zstd compressed).

    ``split=file``: the file is one document (possibly empty). ``split=line``: each line,
    without its ``\\n`` or ``\\r\\n``, is a document; empty lines separate nothing and are
    dropped. A byte order mark at the start of the file is removed.
    """
    if split is Split.FILE:
        yield from _whole_file(unit, on_error, skips)
    else:
        yield from _lines(unit, on_error, skips, batch_size)


def _whole_file(unit: ReadUnit, on_error: OnError, skips: SkipCounter) -> Iterator[list[str]]:
    chunks: list[bytes] = []
    try:
        for chunk in iter_chunks(unit.path):
            chunks.append(chunk)
    except CorruptStreamError as exc:
        done = sum(chunk.count(b"\n") for chunk in chunks)
        raise exc.to_data_error(unit.path, done) from exc.cause
    data = b"".join(chunks)
    del chunks
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        reject(
            on_error,
            skips,
            INVALID_UTF8,
            f"{unit.path}:{line}: invalid UTF-8 at byte {exc.start} ({exc.reason})",
        )
        return
    yield [text]


def _lines(unit: ReadUnit, on_error: OnError, skips: SkipCounter, batch_size: int) -> Iterator[list[str]]:
    numbers = LineNumbers(unit.path, unit.start)
    batch: list[str] = []
    local = 0
    for lines in iter_line_blocks(unit.path, unit.start, unit.end):
        for raw in lines:
            local += 1
            if local == 1 and unit.start == 0 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if not raw:
                continue
            try:
                batch.append(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                reject(
                    on_error,
                    skips,
                    INVALID_UTF8,
                    f"{numbers.where(local)}: invalid UTF-8 at byte {exc.start} of the line ({exc.reason})",
                )
                continue
            if len(batch) >= batch_size:
                yield batch
                batch = []
    if batch:
        yield batch
