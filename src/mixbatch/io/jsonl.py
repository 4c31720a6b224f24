"""JSON Lines reader: one JSON object per line, plain, gzip or zstd, streamed."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import numpy as np

from mixbatch.io.files import ReadUnit
from mixbatch.io.formats import OnError
from mixbatch.io.lines import LineNumbers, iter_line_blocks
from mixbatch.io.second import EXPECTED, INT64_MAX, SecondValues
from mixbatch.io.skips import (
    BAD_SECOND_VALUE,
    INVALID_UTF8,
    MALFORMED_JSON,
    MISSING_FIELD,
    NOT_A_STRING,
    NOT_AN_OBJECT,
    SkipCounter,
    reject,
)

_BOM = b"\xef\xbb\xbf"
_MISSING = object()
# A JSON escape of a UTF-16 surrogate (U+D800..U+DFFF); paired ones decode fine, lone ones do not.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_JSON_TYPE_NAMES = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
    dict: "an object",
}
_SECOND_TYPE_NAMES = {**_JSON_TYPE_NAMES, float: "a float"}


def iter_jsonl_records(
    unit: ReadUnit,
    text_field: str,
    on_error: OnError,
    skips: SkipCounter,
    batch_size: int,
    second_field: str | None = None,
) -> Iterator[tuple[list[str], SecondValues | None]]:
    """Yield batches of ``record[text_field]`` for the JSON Lines records of ``unit``, each with
    the batch's ``record[second_field]`` values (``None`` without a ``second_field``).

    Each line is decoded (strict UTF-8) and parsed on its own, so one bad line spoils only
    itself. Blank lines are ignored; empty texts are kept. A ``null`` value counts as a
    missing field. A text holding a lone surrogate (``"\\ud800"``) is invalid UTF-8 too: it
    could not be encoded for the tokenizer. A record whose second value is bad (see
    :mod:`mixbatch.io.second`) is bad as a whole: its text is not yielded either.
    """
    numbers = LineNumbers(unit.path, unit.start)
    batch: list[str] = []
    counts: list[int] = []
    strings: list[str] = []
    local = 0
    for lines in iter_line_blocks(unit.path, unit.start, unit.end):
        for raw in lines:
            local += 1
            if local == 1 and unit.start == 0 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]  # a byte order mark opens the file; it is not data
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                reject(
                    on_error,
                    skips,
                    INVALID_UTF8,
                    f"{numbers.where(local)}: invalid UTF-8 at byte {exc.start} of the line ({exc.reason})",
                )
                continue
            record = _parse(line)
            if record is _UNPARSED:
                try:
                    record = json.loads(line)
                except (ValueError, RecursionError) as exc:
                    if line.strip():  # blank lines are allowed; checked here, off the fast path
                        _malformed(line, exc, numbers, local, on_error, skips)
                    continue
            if type(record) is not dict:
                kind = _JSON_TYPE_NAMES.get(type(record), type(record).__name__)
                reject(
                    on_error,
                    skips,
                    NOT_AN_OBJECT,
                    f"{numbers.where(local)}: expected a JSON object, got {kind}",
                )
                continue
            text = record.get(text_field, _MISSING)
            if type(text) is not str:
                _bad_value(record, text, text_field, numbers, local, on_error, skips)
                continue
            if not text.isascii() and not _valid_string(
                text, text_field, line, numbers, local, on_error, skips
            ):
                continue
            if second_field is not None:
                second = record.get(second_field, _MISSING)
                if isinstance(second, str):
                    if not second.isascii() and not _valid_string(
                        second, second_field, line, numbers, local, on_error, skips
                    ):
                        continue
                    counts.append(-1)
                    strings.append(second)
                elif isinstance(second, list):
                    counts.append(len(second))
                elif type(second) is int and 0 <= second <= INT64_MAX:  # bool is no length
                    counts.append(second)
                else:
                    _bad_second(record, second, second_field, numbers, local, on_error, skips)
                    continue
            batch.append(text)
            if len(batch) >= batch_size:
                yield batch, _second_values(second_field, counts, strings)
                batch, counts, strings = [], [], []
    if batch:
        yield batch, _second_values(second_field, counts, strings)


def _second_values(second_field: str | None, counts: list[int], strings: list[str]) -> SecondValues | None:
    if second_field is None:
        return None
    return SecondValues(np.array(counts, dtype=np.int64), strings)


def _valid_string(
    value: str,
    field: str,
    line: str,
    numbers: LineNumbers,
    local: int,
    on_error: OnError,
    skips: SkipCounter,
) -> bool:
    """False (after rejecting the record) when ``value`` holds a lone surrogate."""
    if not _SURROGATE_ESCAPE.search(line) or _encodable(value):
        return True
    reject(
        on_error,
        skips,
        INVALID_UTF8,
        f"{numbers.where(local)}: field {field!r} holds a lone surrogate"
        " (\\ud800-\\udfff escape), which is not valid UTF-8",
    )
    return False


_scan_once = json.JSONDecoder().scan_once
_UNPARSED = object()


def _parse(line: str) -> object:
    """``json.loads(line)`` for the common case (no leading whitespace), without its regex
    passes; ``_UNPARSED`` when ``json.loads`` must decide (and word the error)."""
    try:
        value, end = _scan_once(line, 0)
    except (StopIteration, ValueError, RecursionError):
        return _UNPARSED
    if end != len(line) and line[end:].strip(" \t\n\r"):
        return _UNPARSED
    return value


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _malformed(
    line: str,
    exc: BaseException,
    numbers: LineNumbers,
    local: int,
    on_error: OnError,
    skips: SkipCounter,
) -> None:
    if isinstance(exc, json.JSONDecodeError):
        at = " " if exc.msg.endswith(" at") else " at "  # "Unterminated string starting at"
        detail = f"{exc.msg}{at}column {exc.colno}"
    elif isinstance(exc, RecursionError):
        detail = "nested too deeply"
    else:
        detail = " ".join(str(exc).split())
    hint = ""
    if local == 1 and numbers.start == 0 and line.lstrip().startswith("["):
        hint = "; the file looks like one JSON array, not JSON Lines (one object per line)"
    reject(on_error, skips, MALFORMED_JSON, f"{numbers.where(local)}: malformed JSON ({detail}){hint}")


def _missing(
    record: dict, value: object, field: str, where: str, on_error: OnError, skips: SkipCounter
) -> bool:
    """Reject the record if ``value`` is missing or null; whether it was."""
    if value is _MISSING:
        fields = ", ".join(repr(k) for k in list(record)[:10])
        more = ", ..." if len(record) > 10 else ""
        reject(
            on_error,
            skips,
            MISSING_FIELD,
            f"{where}: no field {field!r} (fields: {fields or 'none'}{more})",
        )
    elif value is None:
        reject(on_error, skips, MISSING_FIELD, f"{where}: field {field!r} is null")
    else:
        return False
    return True


def _shown(value: object) -> str:
    shown = json.dumps(value, ensure_ascii=False)
    return shown[:37] + "..." if len(shown) > 40 else shown


def _bad_value(
    record: dict,
    text: object,
    text_field: str,
    numbers: LineNumbers,
    local: int,
    on_error: OnError,
    skips: SkipCounter,
) -> None:
    where = numbers.where(local)
    if _missing(record, text, text_field, where, on_error, skips):
        return
    kind = _JSON_TYPE_NAMES.get(type(text), type(text).__name__)
    reject(
        on_error,
        skips,
        NOT_A_STRING,
        f"{where}: field {text_field!r} is {kind} ({_shown(text)}), expected a string",
    )


def _bad_second(
    record: dict,
    value: object,
    field: str,
    numbers: LineNumbers,
    local: int,
    on_error: OnError,
    skips: SkipCounter,
) -> None:
    where = numbers.where(local)
    if _missing(record, value, field, where, on_error, skips):
        return
    if isinstance(value, int) and not isinstance(value, bool):
        problem = "negative" if value < 0 else "too large for int64"
        message = f"{where}: field {field!r} is {value}, {problem}; {EXPECTED}"
    else:
        kind = _SECOND_TYPE_NAMES.get(type(value), type(value).__name__)
        message = f"{where}: field {field!r} is {kind} ({_shown(value)}), {EXPECTED}"
    reject(on_error, skips, BAD_SECOND_VALUE, message)
