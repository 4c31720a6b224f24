"""Turn a :class:`StepPlan` into token arrays, reading only the planned spans.

Two forms of one batch.

**Compact** (:func:`materialize_compact`, what the loader builds and ships): for ``R`` rows of
``L`` positions,

- ``input_ids`` (R, L) in the stores' token dtype (uint16 for vocabularies below 65,536; wider
  or signed only when a store, ``eod_id`` or ``pad_id`` needs it): tokens, ``eod_id`` after each
  finished document, ``pad_id`` after;
- ``cu_seqlens`` int32 (S+1,): boundaries of the S sequences of the flattened R·L positions,
  every segment and each row's padding run (so the last entry is R·L), for varlen attention;
- ``seq_source`` int32 / ``seq_doc`` int64 (S,): the source and the document of each sequence,
  -1 for a padding run;
- ``max_seqlen``; with 2-D bucketing also ``second_lengths`` (R,) and ``max_second_len``.

**Fields** (:func:`expand`, or :func:`mixbatch.torch.to_device` on the device after the copy),
derived from the compact form by a few vectorised operations:

- ``input_ids`` as int64;
- ``labels`` (R, L) int64: ``input_ids`` with -100 at padding and at the first position of every
  segment, the convention of Hugging Face models that shift labels inside the loss
  (``DataCollatorWithFlattening``): no position is trained to predict across a document boundary;
- ``position_ids`` (R, L): 0, 1, ... restarting at every segment (0 on padding);
- ``source_ids`` / ``doc_ids`` (R, L): the source index and the document's index in its store,
  -1 on padding;
- ``cu_seqlens``, ``max_seqlen`` (and the second lengths) as in the compact form.

:func:`materialize` is the full form, every field (today's batch dict).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from numba import njit

from mixbatch.errors import ConfigError
from mixbatch.shape.base import StepPlan
from mixbatch.store import TokenStore

IGNORE_INDEX = -100

#: every field a batch can carry; ``fields="all"`` asks for these
ALL_FIELDS = ("input_ids", "labels", "position_ids", "source_ids", "doc_ids", "cu_seqlens",
              "max_seqlen")
#: the default: what a Hugging Face or varlen-attention trainer reads
DEFAULT_FIELDS = ("input_ids", "labels", "position_ids", "cu_seqlens", "max_seqlen")
#: keys of the compact form besides the fields it shares
COMPACT_KEYS = ("input_ids", "cu_seqlens", "seq_source", "seq_doc", "max_seqlen")
_PASS = ("step", "second_lengths", "max_second_len")


def resolve_fields(fields: str | Iterable[str] | None) -> tuple[str, ...]:
    """``None`` (the default set), ``"all"``, or names from :data:`ALL_FIELDS`."""
    if fields is None:
        return DEFAULT_FIELDS
    if isinstance(fields, str):
        if fields == "all":
            return ALL_FIELDS
        fields = [fields]
    out = tuple(fields)
    unknown = [f for f in out if f not in ALL_FIELDS]
    if unknown:
        raise ConfigError(f"fields: unknown field(s) {', '.join(map(repr, unknown))} "
                          f"(choose from {', '.join(ALL_FIELDS)}, or 'all')")
    if not out:
        raise ConfigError("fields: ask for at least one field")
    return out


def token_dtype(stores: Sequence[TokenStore], eod_id: int, pad_id: int) -> np.dtype:
    """The narrowest dtype that holds every store's tokens and the end and pad ids."""
    dt = np.result_type(*(s.tokens.dtype for s in stores)) if stores else np.dtype(np.int64)
    for v in (eod_id, pad_id):
        if not np.can_cast(np.min_scalar_type(v), dt):
            dt = np.promote_types(dt, np.min_scalar_type(v))
    return np.dtype(dt)


@njit(cache=True, nogil=True)
def _gather(out: np.ndarray, tokens: np.ndarray, doc_start: np.ndarray, pos: np.ndarray,
            doc: np.ndarray, start: np.ndarray, end: np.ndarray) -> None:
    """``out[pos[k] : pos[k] + n_k] = tokens[doc_start[doc[k]] + start[k] : ... + end[k]]``."""
    for k in range(pos.size):
        a = doc_start[doc[k]] + start[k]
        n = end[k] - start[k]
        p = pos[k]
        out[p:p + n] = tokens[a:a + n]  # one block copy per span, not an element loop


def materialize_compact(plan: StepPlan, stores: Sequence[TokenStore], eod_id: int,
                        pad_id: int, dtype: np.dtype | None = None,
                        out: np.ndarray | None = None) -> dict[str, Any]:
    """The compact batch of ``plan`` (module docstring); tokens are read for its segments only.
    ``out``: a 1-D array of the token dtype and ``rows * seq_len`` elements to hold the tokens
    (a worker's shared slot), else one is allocated."""
    R, L = plan.rows, plan.seq_len
    dt = token_dtype(stores, eod_id, pad_id) if dtype is None else dtype
    if out is None:
        flat = np.full(R * L, pad_id, dtype=dt)
    else:
        if out.dtype != dt or out.shape != (R * L,):
            raise ValueError(f"out: expected ({R * L},) {dt}, got {out.shape} {out.dtype}")
        flat = out
        flat.fill(pad_id)
    seg_start = plan.row.astype(np.int64) * L + plan.col
    n_tok = plan.end - plan.start
    sources = np.unique(plan.source) if len(plan.source) else plan.source
    for s in sources.tolist():
        m = plan.source == s
        start, end = plan.start[m], plan.end[m]
        # a local store hands out its memory map; a store at a URL the fetched spans
        tokens, doc_start, doc = stores[s].span_source(plan.doc[m], start, end)
        _gather(flat, tokens, doc_start, seg_start[m], doc, start, end)
    flat[(seg_start + n_tok)[plan.eod]] = eod_id
    # sequences: every segment that takes positions, then each row's padding run
    width = n_tok + plan.eod
    real = width > 0
    pad_rows = np.flatnonzero(plan.pad > 0)
    starts = np.concatenate([seg_start[real], pad_rows * L + (L - plan.pad[pad_rows])])
    src = np.concatenate([plan.source[real].astype(np.int32), np.full(len(pad_rows), -1, np.int32)])
    doc = np.concatenate([plan.doc[real], np.full(len(pad_rows), -1, np.int64)])
    order = np.argsort(starts, kind="stable")
    cu = np.empty(len(starts) + 1, dtype=np.int32)
    cu[:-1] = starts[order]
    cu[-1] = R * L
    if len(starts) and cu[0] != 0:  # positions no sequence covers (never produced by a shaper)
        cu = np.concatenate([[0], cu]).astype(np.int32)
        src = np.concatenate([[-1], src[order]]).astype(np.int32)
        doc = np.concatenate([[-1], doc[order]])
    else:
        src, doc = src[order], doc[order]
    out: dict[str, Any] = {
        "input_ids": flat.reshape(R, L),
        "cu_seqlens": cu,
        "seq_source": src,
        "seq_doc": doc,
        "max_seqlen": int(np.diff(cu).max()) if len(cu) > 1 else 0,
    }
    if plan.second is not None:
        per_row = np.bincount(plan.row, weights=plan.second, minlength=R).astype(np.int64)
        out["second_lengths"] = per_row
        out["max_second_len"] = int(per_row.max()) if R else 0
    return out


def split_compact(batch: dict[str, Any], rows: Sequence[int]) -> list[dict[str, Any]]:
    """A compact batch of several steps' rows (in order) cut back into one per step, as views
    (sequences never cross a row)."""
    ids, cu = batch["input_ids"], batch["cu_seqlens"]
    L = ids.shape[1]
    edges = np.cumsum([0, *rows])
    cut = np.searchsorted(cu, edges * L).tolist()
    lens = np.diff(cu)
    out = []
    for j in range(len(rows)):
        r0, r1, a, b = int(edges[j]), int(edges[j + 1]), cut[j], cut[j + 1]
        one = {"input_ids": ids[r0:r1], "cu_seqlens": cu[a:b + 1] - np.int32(r0 * L),
               "seq_source": batch["seq_source"][a:b], "seq_doc": batch["seq_doc"][a:b],
               "max_seqlen": int(lens[a:b].max()) if b > a else 0}
        if "second_lengths" in batch:
            one["second_lengths"] = batch["second_lengths"][r0:r1]
            one["max_second_len"] = int(one["second_lengths"].max()) if r1 > r0 else 0
        out.append(one)
    return out


@njit(cache=True, nogil=True)
def _expand(ids: np.ndarray, cu: np.ndarray, seq_source: np.ndarray, seq_doc: np.ndarray,
            ids64: np.ndarray, labels: np.ndarray, pos: np.ndarray, src: np.ndarray,
            doc: np.ndarray, want: np.ndarray) -> None:
    """Write the per-position fields asked for in ``want`` (input_ids as int64, labels,
    position_ids, source_ids, doc_ids); arrays not asked for may be empty. Simple loops over
    positions (vectorised by the compiler), then one pass over the sequences for what differs
    per sequence."""
    n = ids.size
    if want[0] and want[1]:
        for p in range(n):
            v = ids[p]
            ids64[p] = v
            labels[p] = v
    elif want[0]:
        for p in range(n):
            ids64[p] = ids[p]
    elif want[1]:
        for p in range(n):
            labels[p] = ids[p]
    for q in range(cu.size - 1):
        a = np.int64(cu[q])
        b = np.int64(cu[q + 1])
        s = seq_source[q]
        pad = s < 0
        if want[1]:
            if pad:
                labels[a:b] = IGNORE_INDEX
            elif b > a:
                labels[a] = IGNORE_INDEX
        if want[2]:
            if pad:
                pos[a:b] = 0
            else:
                for p in range(a, b):
                    pos[p] = p - a
        if want[3]:
            src[a:b] = s
        if want[4]:
            doc[a:b] = seq_doc[q]


#: the (R, L) fields, in the order :func:`expand` lays them out
PER_POSITION = ("input_ids", "labels", "position_ids", "source_ids", "doc_ids")
_PER_POSITION = PER_POSITION


def expand(compact: dict[str, Any], fields: str | Iterable[str] | None = "all",
           into: Callable[[int], np.ndarray | None] | None = None) -> dict[str, Any]:
    """The fields asked for (default: all), as NumPy arrays, from a compact batch. ``into(m)``
    (optional) gives the int64 array of ``m`` elements that the per-position fields are written
    to, one after the other in :data:`ALL_FIELDS` order (a worker's shared slot), or None to
    allocate it."""
    flags = _flags(fields if isinstance(fields, str) or fields is None else tuple(fields))
    ids = compact["input_ids"]
    R, L = ids.shape
    out: dict[str, Any] = {k: compact[k] for k in _PASS if k in compact}
    if flags.any():
        n = R * L
        f_count = int(flags.sum())
        block = into(f_count * n) if into is not None else None
        if block is None:
            block = np.empty(f_count * n, np.int64)
        made, j = [], 0
        for f in flags.tolist():
            made.append(block[j * n:(j + 1) * n] if f else _EMPTY)
            j += f
        _expand(np.ascontiguousarray(ids).reshape(-1), compact["cu_seqlens"],
                compact["seq_source"], compact["seq_doc"], *made, flags)
        for name, arr, f in zip(_PER_POSITION, made, flags.tolist(), strict=True):
            if f:
                out[name] = arr.reshape(R, L)
    want = _wanted(fields if isinstance(fields, str) or fields is None else tuple(fields))
    for k in ("cu_seqlens", "max_seqlen"):
        if k in want:
            out[k] = compact[k]
    return out


_EMPTY = np.empty(0, np.int64)


@functools.lru_cache(maxsize=64)
def _wanted(fields: str | tuple[str, ...] | None) -> tuple[str, ...]:
    return resolve_fields(fields)


@functools.lru_cache(maxsize=64)
def _flags(fields: str | tuple[str, ...] | None) -> np.ndarray:
    """Which per-position fields ``fields`` asks for (cached: resolved once per choice)."""
    want = _wanted(fields)
    flags = np.array([f in want for f in _PER_POSITION])
    flags.setflags(write=False)
    return flags


def per_position_fields(fields: str | Iterable[str] | None) -> int:
    """How many (R, L) int64 arrays :func:`expand` makes for ``fields``."""
    return int(_flags(fields if isinstance(fields, str) or fields is None
                      else tuple(fields)).sum())


def materialize(plan: StepPlan, stores: Sequence[TokenStore], eod_id: int,
                pad_id: int) -> dict[str, np.ndarray | int]:
    """Every field of the batch of ``plan`` (module docstring), as NumPy arrays."""
    return expand(materialize_compact(plan, stores, eod_id, pad_id), "all")
