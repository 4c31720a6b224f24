"""JSON Lines reader: one JSON object per line, plain, gzip or zstd, streamed."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from mixbatch.io.files import ReadUnit
from mixbatch.io.formats import OnError
from mixbatch.io.lines import LineNumbers, iter_line_blocks
from mixbatch.io.skips import (
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


def iter_jsonl_texts(
    unit: ReadUnit, text_field: str, on_error: OnError, skips: SkipCounter, batch_size: int
) -> Iterator[list[str]]:
    """Yield batches of ``record[text_field]`` for the JSON Lines records of ``unit``.

    Each line is decoded (strict UTF-8) and parsed on its own, so one bad line spoils only
    itself. Blank lines are ignored; empty texts are kept. A ``null`` value counts as a
    missing field. A text holding a lone surrogate (``"\\ud800"``) is invalid UTF-8 too: it
    could not be encoded for the tokenizer.
    """
    numbers = LineNumbers(unit.path, unit.start)
    batch: list[str] = []
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
            if not text.isascii() and _SURROGATE_ESCAPE.search(line) and not _encodable(text):
                reject(
                    on_error,
                    skips,
                    INVALID_UTF8,
                    f"{numbers.where(local)}: field {text_field!r} holds a lone surrogate"
                    " (\\ud800-\\udfff escape), which is not valid UTF-8",
                )
                continue
            batch.append(text)
            if len(batch) >= batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


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
    if text is _MISSING:
        fields = ", ".join(repr(k) for k in list(record)[:10])
        more = ", ..." if len(record) > 10 else ""
        reject(
            on_error,
            skips,
            MISSING_FIELD,
            f"{where}: no field {text_field!r} (fields: {fields or 'none'}{more})",
        )
    elif text is None:
        reject(on_error, skips, MISSING_FIELD, f"{where}: field {text_field!r} is null")
    else:
        kind = _JSON_TYPE_NAMES.get(type(text), type(text).__name__)
        shown = json.dumps(text, ensure_ascii=False)
        if len(shown) > 40:
            shown = shown[:37] + "..."
        reject(
            on_error,
            skips,
            NOT_A_STRING,
            f"{where}: field {text_field!r} is {kind} ({shown}), expected a string",
        )
