"""Streaming a file's bytes as lines: plain byte ranges, gzip and zstd, in bounded memory.

Files are read in blocks of a few MB and cut at ``b"\\n"``, so memory holds one block plus the
longest line, never the whole file. A compressed stream that ends early or is corrupt is a
file-level :class:`~mixbatch.errors.DataError`, whatever the bad-record policy: the tail of a
file must never be dropped silently.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

import zstandard

from mixbatch.errors import DataError
from mixbatch.io.fs import open_input
from mixbatch.io.skips import one_line

BLOCK_BYTES = 4 << 20
_ZSTD_READ_BYTES = 1 << 17

_GZIP_SUFFIXES = (".gz", ".gzip")
_ZSTD_SUFFIXES = (".zst", ".zstd")


def compression_of(path: Path) -> str | None:
    """``"gzip"``, ``"zstd"`` or ``None``, from the file name's last suffix."""
    name = path.name.lower()
    if name.endswith(_GZIP_SUFFIXES):
        return "gzip"
    if name.endswith(_ZSTD_SUFFIXES):
        return "zstd"
    return None


def strip_compression_suffix(name: str) -> str:
    """``"a.jsonl.gz"`` -> ``"a.jsonl"``; names without a compression suffix are unchanged."""
    lower = name.lower()
    for suffix in _GZIP_SUFFIXES + _ZSTD_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


class CorruptStreamError(Exception):
    """A compressed stream ended early or is corrupt (turned into a DataError by the caller)."""

    def __init__(self, kind: str, cause: BaseException) -> None:
        super().__init__(f"{kind}: {cause}")
        self.kind = kind
        self.cause = cause

    def to_data_error(self, path: Path, lines: int) -> DataError:
        """The user-facing error, saying how many lines were read intact."""
        detail = " ".join(str(self.cause).split()) or type(self.cause).__name__
        return DataError(
            one_line(f"{path}: truncated or corrupt {self.kind} stream after line {lines} ({detail})")
        )


def cannot_read(path: Path, exc: OSError) -> DataError:
    """The error for a file that cannot be opened or read at all."""
    return DataError(one_line(f"{path}: cannot read file ({exc.strerror or exc})"))


def iter_chunks(
    path: Path, start: int = 0, end: int | None = None, block_bytes: int = BLOCK_BYTES
) -> Iterator[bytes]:
    """Yield the (decompressed) bytes of ``path``, or of its byte range ``[start, end)``.

    Byte ranges exist only for uncompressed files. Raises :class:`CorruptStreamError` for a bad
    compressed stream and :class:`~mixbatch.errors.DataError` for an unreadable file.
    """
    kind = compression_of(path)
    if kind is not None and (start != 0 or end is not None):
        raise ValueError(f"{path}: a compressed file cannot be read by byte range")
    try:
        with open_input(path) as fh:
            if kind == "gzip":
                yield from _gzip_chunks(fh, block_bytes)
            elif kind == "zstd":
                yield from _zstd_chunks(fh, block_bytes)
            else:
                yield from _plain_chunks(fh, start, end, block_bytes)
    except CorruptStreamError:
        raise
    except OSError as exc:
        raise cannot_read(path, exc) from exc


def _plain_chunks(fh, start: int, end: int | None, block_bytes: int) -> Iterator[bytes]:
    fh.seek(start)
    remaining = None if end is None else end - start
    while remaining is None or remaining > 0:
        chunk = fh.read(block_bytes if remaining is None else min(block_bytes, remaining))
        if not chunk:
            return
        if remaining is not None:
            remaining -= len(chunk)
        yield chunk


def _gzip_chunks(fh, block_bytes: int) -> Iterator[bytes]:
    with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
        while True:
            try:
                chunk = gz.read(block_bytes)
            except (EOFError, OSError, zlib.error) as exc:
                raise CorruptStreamError("gzip", exc) from exc
            if not chunk:
                return
            yield chunk


def _zstd_chunks(fh, block_bytes: int) -> Iterator[bytes]:
    reader = zstandard.ZstdDecompressor().stream_reader(
        fh, read_size=_ZSTD_READ_BYTES, read_across_frames=True, closefd=False
    )
    while True:
        try:
            chunk = reader.read(block_bytes)
        except zstandard.ZstdError as exc:
            raise CorruptStreamError("zstd", exc) from exc
        if not chunk:
            break
        yield chunk
    # The reader ends quietly, without an error, when the input stops inside a frame; so the
    # frames' structure is checked once the data is read.
    problem = zstd_frames_problem(fh)
    if problem is not None:
        raise CorruptStreamError("zstd", EOFError(problem))


_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_SKIPPABLE_MAGIC = 0x184D2A50  # low 4 bits are free
_DICT_ID_BYTES = (0, 1, 2, 4)
_RLE_BLOCK = 1
_RESERVED_BLOCK = 3


def zstd_frames_problem(fh) -> str | None:
    """Walk the zstd frames of an open binary file by their headers (RFC 8878, section 3.1)
    without decompressing; return what is wrong (e.g. the input ends inside a frame) or
    ``None`` if every frame is complete."""
    size = fh.seek(0, 2)

    def read_at(pos: int, n: int) -> bytes:
        fh.seek(pos)
        return fh.read(n)

    pos = 0
    while pos < size:
        head = read_at(pos, 5)
        if len(head) < 4:
            return f"{len(head)} stray bytes at the end"
        magic = int.from_bytes(head[:4], "little")
        if magic & 0xFFFFFFF0 == _ZSTD_SKIPPABLE_MAGIC:
            skip = read_at(pos + 4, 4)
            if len(skip) < 4:
                return "input ends inside a skippable frame"
            pos += 8 + int.from_bytes(skip, "little")
            continue
        if magic != _ZSTD_MAGIC or len(head) < 5:
            return f"no zstd frame starts at byte {pos}"
        descriptor = head[4]
        single_segment = descriptor >> 5 & 1
        content_size_bytes = (single_segment, 2, 4, 8)[descriptor >> 6]
        pos += 5 + (1 - single_segment) + _DICT_ID_BYTES[descriptor & 3] + content_size_bytes
        while True:
            header = read_at(pos, 3)
            if len(header) < 3:
                return f"input ends inside a frame (at byte {size})"
            value = int.from_bytes(header, "little")
            kind, block_size = value >> 1 & 3, value >> 3
            if kind == _RESERVED_BLOCK:
                return f"reserved block type at byte {pos}"
            pos += 3 + (1 if kind == _RLE_BLOCK else block_size)
            if value & 1:  # last block of the frame
                break
        pos += 4 * (descriptor >> 2 & 1)  # content checksum
    if pos > size:
        return f"input ends inside a frame (at byte {size})"
    return None


def iter_line_blocks(
    path: Path, start: int = 0, end: int | None = None, block_bytes: int = BLOCK_BYTES
) -> Iterator[list[bytes]]:
    """Yield lists of complete lines (without ``b"\\n"``; a ``b"\\r"`` is kept) in file order.

    A last line without a final newline is yielded too. Lines are cut at ``b"\\n"`` only, never
    at other Unicode line breaks (JSON may hold U+2028 raw inside strings).
    """
    done = 0
    pending: list[bytes] = []
    try:
        for chunk in iter_chunks(path, start, end, block_bytes):
            lines = chunk.split(b"\n")
            if len(lines) == 1:  # no newline: part of a long line, join later (not quadratic)
                pending.append(chunk)
                continue
            if pending:
                pending.append(lines[0])
                lines[0] = b"".join(pending)
                pending = []
            tail = lines.pop()
            if tail:
                pending.append(tail)
            done += len(lines)
            yield lines
    except CorruptStreamError as exc:
        raise exc.to_data_error(path, done) from exc.cause
    if pending:
        yield [b"".join(pending)]


def count_newlines(path: Path, end: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Number of ``b"\\n"`` in the first ``end`` bytes of an uncompressed file."""
    total = 0
    for chunk in iter_chunks(path, 0, end, block_bytes):
        total += chunk.count(b"\n")
    return total


class LineNumbers:
    """Absolute line numbers for a unit that starts at byte ``start`` (a line start).

    The newlines before ``start`` are counted only when a number is first needed, i.e. when an
    error must be reported, so that clean reads pay nothing.
    """

    def __init__(self, path: Path, start: int) -> None:
        self.path = path
        self.start = start
        self._before: int | None = 0 if start == 0 else None

    def absolute(self, local: int) -> int:
        """The file's line number (from 1) of the unit's ``local``-th line (from 1)."""
        if self._before is None:
            self._before = count_newlines(self.path, self.start)
        return self._before + local

    def where(self, local: int) -> str:
        """``"path:LINE"`` for the unit's ``local``-th line."""
        return f"{self.path}:{self.absolute(local)}"


def next_line_start(fh, pos: int, size: int, block_bytes: int = 1 << 20) -> int:
    """The first line start at or after ``pos`` in an open binary file of ``size`` bytes."""
    if pos <= 0:
        return 0
    fh.seek(pos - 1)
    offset = pos - 1
    while offset < size:
        block = fh.read(block_bytes)
        if not block:
            break
        found = block.find(b"\n")
        if found >= 0:
            return offset + found + 1
        offset += len(block)
    return size
