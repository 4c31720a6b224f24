""""Which documents, and which of their tokens, had the model seen by step T?"

:func:`seen_spans` streams an audit log once (stopping at the first step after ``T``, since a
log is written in step order) and yields every document's token spans seen in steps ``<= T``,
contiguous pieces of one document merged. Memory stays bounded whatever the log's size: the
spans still open are kept in a small LRU table (``open_limit`` documents; a document's pieces
arrive close together in every packing mode, so an evicted one rarely comes back, and if it does
it is simply reported as one more span), and distinct documents are counted with one bit per
document when the log's header gives the source sizes.

A series stream's log (:mod:`mixbatch.series.stream`) is answered by :func:`seen_windows`:
every window fed in steps ``<= T`` with its series and its place in that series (the values
``[start, end)`` of the series, in the order they were prepared: a series' windows are
consecutive in its store, ``stride`` values apart), distinct windows counted with one bit per
window of the store.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mixbatch.audit.log import iter_log
from mixbatch.errors import ConfigError, DataError


@dataclass
class SeenTotals:
    """Per source: tokens seen, spans reported, distinct documents (None without a header)."""

    tokens: dict[str, int] = field(default_factory=dict)
    spans: dict[str, int] = field(default_factory=dict)
    documents: dict[str, int | None] = field(default_factory=dict)
    last_step: int = -1


def seen_spans(path: str | Path, step: int, source: str | None = None,
               totals: SeenTotals | None = None, open_limit: int = 4096
               ) -> Iterator[tuple[str, int, int, int]]:
    """``(source, doc, start, end)`` of the tokens fed in steps ``<= step`` (all ranks the log
    holds), in the order they were fed; ``totals`` (if given) is filled as the log is read."""
    if step < 0:
        raise ConfigError(f"--step: must be >= 0, got {step}")
    totals = totals if totals is not None else SeenTotals()
    bits: dict[str, np.ndarray] = {}
    names: list[str] | None = None
    opened: OrderedDict[tuple[str, int], list[int]] = OrderedDict()
    for kind, rec in iter_log(path):
        if kind == "header":
            if str(rec.get("audit_log", "")).startswith("series/"):
                raise DataError(f"{path}: a series stream's log: its windows are listed by "
                                "seen_windows")
            names = list(rec["sources"])
            if source is not None and source not in names:
                raise ConfigError(f"--source: {source!r} is not in the log (sources: "
                                  f"{', '.join(names)})")
            sizes = rec.get("store_documents", rec.get("documents", []))
            for n, d in zip(names, sizes, strict=False):
                bits[n] = np.zeros((int(d) + 7) // 8 + 1, dtype=np.uint8)
            continue
        if kind != "row":
            continue
        s = int(rec["step"])
        if s > step:
            break
        totals.last_step = max(totals.last_step, s)
        for name, doc, a, e in rec["segments"]:
            if source is not None and name != source:
                continue
            totals.tokens[name] = totals.tokens.get(name, 0) + (e - a)
            if e <= a:
                continue
            b = bits.get(name)
            if b is not None:
                if doc // 8 >= len(b):
                    raise DataError(f"{path}: step {s}: document {doc} of {name!r} is past the "
                                    f"source's size in the log's header")
                b[doc // 8] |= np.uint8(1 << (doc % 8))
            key = (name, int(doc))
            span = opened.get(key)
            if span is not None and span[1] == a:
                span[1] = e
                opened.move_to_end(key)
                continue
            if span is not None:
                yield _count(totals, key, span)
                del opened[key]
            opened[key] = [a, e]
            if len(opened) > open_limit:
                k, sp = opened.popitem(last=False)
                yield _count(totals, k, sp)
    while opened:
        k, sp = opened.popitem(last=False)
        yield _count(totals, k, sp)
    if source is not None and names is None and source not in totals.tokens:
        raise ConfigError(f"--source: {source!r} never appears in the log by step {step}")
    for n in names or sorted(totals.tokens):
        if source is not None and n != source:
            continue
        b = bits.get(n)
        totals.documents[n] = (int(np.unpackbits(b).sum()) if b is not None else None)
        totals.tokens.setdefault(n, 0)
        totals.spans.setdefault(n, 0)


@dataclass
class SeenWindows:
    """Per source of a series log: windows fed (a window fed twice counts twice), distinct
    windows, distinct series; ``last_step``: the last step read."""

    windows: dict[str, int] = field(default_factory=dict)
    distinct: dict[str, int | None] = field(default_factory=dict)
    series: dict[str, int] = field(default_factory=dict)
    last_step: int = -1


def seen_windows(path: str | Path, step: int, source: str | None = None,
                 totals: SeenWindows | None = None
                 ) -> Iterator[tuple[str, str, int, int | None, int | None]]:
    """``(source, series, window, start, end)`` of every window fed in steps ``<= step`` of a
    series log (all ranks it holds), in the order they were fed; ``start``/``end`` locate the
    window in its series (None for a ``series/1`` log, whose header lacks the series list)."""
    if step < 0:
        raise ConfigError(f"--step: must be >= 0, got {step}")
    totals = totals if totals is not None else SeenWindows()
    names: list[str] = []
    bits: dict[str, np.ndarray] = {}
    first: dict[str, dict[str, int]] = {}  # source -> series -> its first window in the store
    width: int | None = None
    sizes: dict[str, int] = {}
    strides: dict[str, int] = {}
    series_seen: dict[str, set[str]] = {}
    for kind, rec in iter_log(path):
        if kind == "header":
            names = list(rec["sources"])
            if source is not None and source not in names:
                raise ConfigError(f"--source: {source!r} is not in the log (sources: "
                                  f"{', '.join(names)})")
            for n, d in zip(names, rec.get("windows", []), strict=False):
                sizes[n] = int(d)
                bits[n] = np.zeros((int(d) + 7) // 8, dtype=np.uint8)
            for n, listed in zip(names, rec.get("series", []), strict=False):
                starts = np.concatenate([[0], np.cumsum([int(w) for _, w in listed])[:-1]])
                first[n] = {str(a): int(b) for (a, _), b in zip(listed, starts, strict=True)}
            strides = dict(zip(names, (int(x) for x in rec.get("strides", [])), strict=False))
            width = int(rec["context"]) + int(rec["horizon"]) if "context" in rec else None
            continue
        if kind != "window":
            raise DataError(f"{path}: a {kind} record in a series stream's log")
        s = int(rec["step"])
        if s > step:
            break
        totals.last_step = max(totals.last_step, s)
        name, series, w = rec["source"], str(rec.get("series", "?")), int(rec["window"])
        if source is not None and name != source:
            continue
        totals.windows[name] = totals.windows.get(name, 0) + 1
        series_seen.setdefault(name, set()).add(series)
        b = bits.get(name)
        if b is not None:
            if not 0 <= w < sizes[name]:
                raise DataError(f"{path}: step {s}: window {w} of {name!r} is past the store's "
                                f"{sizes[name]} windows (the log's header)")
            b[w // 8] |= np.uint8(1 << (w % 8))
        start = end = None
        f = first.get(name, {}).get(series)
        stride = strides.get(name)
        if f is not None and stride is not None and width is not None:
            start = (w - f) * stride
            end = start + width
        yield name, series, w, start, end
    for n in names or sorted(totals.windows):
        if source is not None and n != source:
            continue
        totals.windows.setdefault(n, 0)
        b = bits.get(n)
        totals.distinct[n] = int(np.unpackbits(b).sum()) if b is not None else None
        totals.series[n] = len(series_seen.get(n, ()))


def _count(totals: SeenTotals, key: tuple[str, int], span: list[int]) -> tuple[str, int, int, int]:
    totals.spans[key[0]] = totals.spans.get(key[0], 0) + 1
    return key[0], key[1], span[0], span[1]
