"""Compiled parts of ``packing: bfd``'s window packing (:mod:`mixbatch.shape.bfd`).

A window is packed in one compiled call (:func:`pack_window`): :func:`pack_front` cuts the
window's spans into pieces (:func:`cut`), packs them by best-fit decreasing (:func:`bfd_bins`) and counts each
row's tokens per source; the rows get their keyed ranks and their hand-out order
(:func:`mixbatch.shape.follow.plain_order`); :func:`pack_back` lays the rows out in that order
(pieces by row, then column; each row's padding) and links the pieces of every cut document.
Each does what the NumPy steps it replaced did, with the same results.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

from mixbatch.shape.follow import plain_order
from mixbatch.shape.kernels import by_key, keyed_groups

__all__ = ["bfd_bins", "cut", "pack_back", "pack_front", "pack_window", "place"]


@numba.njit(cache=True, nogil=True)
def place(left: np.ndarray, n_wide: int,
          capacity: int) -> tuple[np.ndarray, int]:  # pragma: no cover (compiled)
    """The bins of the items in packing order (``left``: what each leaves of a bin of its own,
    ascending; the first ``n_wide`` open a bin each) and the number of bins.

    The open bins of each remaining capacity ``c`` form a stack, kept as a linked list:
    ``top[c]`` is its last bin to arrive (-1: none), ``below[b]`` the bin under ``b``; capacity
    ``capacity`` is the inexhaustible stack of fresh bins ``n_wide, n_wide + 1, ...``. A bitset
    marks the capacities with an open bin, so "the smallest remaining capacity that fits
    ``w``" is a scan of at most ``capacity / 64`` words."""
    n = left.shape[0]
    top = np.full(capacity + 1, -1, dtype=np.int64)
    below = np.arange(1, n + 1, dtype=np.int64)
    bits = np.zeros((capacity >> 6) + 1, dtype=np.uint64)
    one = np.uint64(1)
    out = np.empty(n, dtype=np.int64)
    for b in range(n_wide):  # a stack per capacity, in bin order
        c = left[b]
        below[b] = top[c]
        top[c] = b
        bits[c >> 6] |= one << np.uint64(c & 63)
        out[b] = b
    top[capacity] = n_wide
    bits[capacity >> 6] |= one << np.uint64(capacity & 63)
    for j in range(n_wide, n):
        w = capacity - left[j]
        word = w >> 6
        x = bits[word] & ~((one << np.uint64(w & 63)) - one)
        while x == 0:
            word += 1
            x = bits[word]
        c = (word << 6) + np.int64(trailing_zeros(x))  # the smallest remaining that fits w
        b = top[c]  # the last bin to reach c
        top[c] = below[b]
        if top[c] < 0:  # no open bin is left with capacity c
            bits[c >> 6] &= ~(one << np.uint64(c & 63))
        out[j] = b
        c -= w
        below[b] = top[c]
        top[c] = b
        bits[c >> 6] |= one << np.uint64(c & 63)
    return out, top[capacity]


@numba.njit(cache=True, nogil=True)
def cut(span_start: np.ndarray, span_end: np.ndarray, span_eod: np.ndarray,
        seq_len: int) -> tuple[np.ndarray, ...]:  # pragma: no cover (compiled)
    """The pieces of :func:`mixbatch.shape.bfd.cut_spans`, in stream order: ``(span, start,
    end, eod)``."""
    n_spans = span_start.shape[0]
    n = 0
    for s in range(n_spans):
        n += (span_end[s] - span_start[s] + span_eod[s] + seq_len - 1) // seq_len
    k = np.empty(n, dtype=np.int64)
    a = np.empty(n, dtype=np.int64)
    b = np.empty(n, dtype=np.int64)
    last = np.empty(n, dtype=np.bool_)
    at = 0
    for s in range(n_spans):
        pieces = (span_end[s] - span_start[s] + span_eod[s] + seq_len - 1) // seq_len
        for j in range(pieces):
            x = span_start[s] + j * seq_len
            y = min(x + seq_len, span_end[s])
            end_token = span_eod[s] and j == pieces - 1
            if x == y and end_token and j > 0:
                x -= 1  # no lone end token: the last token comes with it
            k[at], a[at], b[at], last[at] = s, x, y, end_token
            at += 1
    return k, a, b, last


@numba.njit(cache=True, nogil=True)
def bfd_bins(width: np.ndarray, capacity: int
             ) -> tuple[np.ndarray, np.ndarray, int]:  # pragma: no cover (compiled)
    """The packing of :func:`mixbatch.shape.bfd.best_fit_decreasing` in packing order:
    ``(order, bin, n_bins)``, ``order`` the items widest first (ties in input order) and
    ``bin[j]`` the bin of item ``order[j]``."""
    left = capacity - width  # what an item leaves of a bin of its own
    order = by_key(left, capacity + 1)  # widest first, ties in input order
    left_sorted = left[order]
    # wide items (> capacity / 2) come first and each opens a bin of its own, in order
    n_wide = np.searchsorted(left_sorted, (capacity + 1) // 2)
    bins, n_bins = place(left_sorted, n_wide, capacity)
    return order, bins, n_bins


@numba.njit(cache=True, nogil=True)
def pack_front(span_start: np.ndarray, span_end: np.ndarray, span_eod: np.ndarray,
               source: np.ndarray, seq_len: int, samples: bool,
               n_src: int) -> tuple[np.ndarray, ...]:  # pragma: no cover (compiled)
    """Cut the spans into pieces of at most ``seq_len`` positions (:func:`cut`) and pack them
    (:func:`bfd_bins`). Returns per piece in stream order ``(span, start, end, eod, width)``,
    per packing position ``(order, bin)``, and ``comp[row, source]``: the tokens (or, by
    ``samples``, the documents started) of each row."""
    k, a, b, last = cut(span_start, span_end, span_eod, seq_len)
    n = k.shape[0]
    width = b - a + last
    order, bins, n_rows = bfd_bins(width, seq_len)
    comp = np.zeros((n_rows, n_src))
    for j in range(n):
        p = order[j]
        if samples:
            unit = 1.0 if a[p] == span_start[k[p]] else 0.0
        else:
            repeat = p > 0 and k[p] == k[p - 1] and a[p] < b[p - 1]
            unit = float(b[p] - a[p] - repeat)
        comp[bins[j], source[k[p]]] += unit
    return k, a, b, last, width, order, bins, comp


@numba.njit(cache=True, nogil=True)
def pack_back(handed: np.ndarray, order: np.ndarray, bins: np.ndarray, width: np.ndarray,
              k: np.ndarray, doc_key: np.ndarray, cut: np.ndarray,
              seq_len: int) -> tuple[np.ndarray, ...]:  # pragma: no cover (compiled)
    """Lay the rows out in the hand-out order ``handed``: per piece sorted by (row, column)
    ``(piece, row, col, seen)`` and per row ``(ptr, pad)``. ``seen[j]``: the position of the
    previous piece of the same document (``doc_key`` of its span) when its span is ``cut``
    (a document of ``seq_len`` tokens or more), -1 for its first, ``n`` for other pieces."""
    n = order.shape[0]
    n_rows = handed.shape[0]
    row_of_bin = np.empty(n_rows, dtype=np.int64)
    for r in range(n_rows):
        row_of_bin[handed[r]] = r
    row_by_pos = np.empty(n, dtype=np.int64)
    for j in range(n):
        row_by_pos[j] = row_of_bin[bins[j]]
    by_row = by_key(row_by_pos, n_rows)  # (row, packing order), i.e. (row, col)
    piece = np.empty(n, dtype=np.int64)
    row = np.empty(n, dtype=np.int32)
    col = np.empty(n, dtype=np.int64)
    ptr = np.zeros(n_rows + 1, dtype=np.int64)
    pad = np.full(n_rows, seq_len, dtype=np.int64)
    seen = np.full(n, n, dtype=np.int64)
    m = 0
    for i in range(n):
        p = order[by_row[i]]
        r = row_by_pos[by_row[i]]
        piece[i] = p
        row[i] = r
        col[i] = seq_len - pad[r]
        pad[r] -= width[p]
        ptr[r + 1] = i + 1
        m += cut[k[p]]
    # the pieces of cut documents by (document, position): each one's previous is the one
    # before it there when it has the same document
    at = np.empty(m, dtype=np.int64)
    key = np.empty(m, dtype=np.int64)
    m = 0
    for i in range(n):
        if cut[k[piece[i]]]:
            at[m] = i
            key[m] = doc_key[k[piece[i]]]
            m += 1
    by_doc = np.argsort(key, kind="mergesort")
    for j in range(m):
        i = at[by_doc[j]]
        if j > 0 and key[by_doc[j]] == key[by_doc[j - 1]]:
            seen[i] = at[by_doc[j - 1]]
        else:
            seen[i] = -1
    return piece, row, col, ptr, pad, seen


@numba.njit(cache=True, nogil=True)
def pack_window(span_start: np.ndarray, span_end: np.ndarray, span_eod: np.ndarray,
                source: np.ndarray, seq_len: int, samples: bool, n_src: int,
                key_first: np.ndarray, stream_tokens: np.ndarray, doc_key: np.ndarray,
                cut: np.ndarray) -> tuple[np.ndarray, ...]:  # pragma: no cover (compiled)
    """A whole window in one call: :func:`pack_front`, the rows' keyed ranks
    (``key_first``: the SplitMix64 start of the window's key), their hand-out order
    (:func:`mixbatch.shape.follow.plain_order`, the stream's ``stream_tokens``) and
    :func:`pack_back`. Returns per piece in stream order ``(span, start, end, eod)``, then
    ``(piece, row, col, ptr, pad, seen)`` as :func:`pack_back` gives them."""
    k, a, b, last, width, order, bins, comp = pack_front(span_start, span_end, span_eod,
                                                         source, seq_len, samples, n_src)
    n_rows = comp.shape[0]
    ranks = keyed_groups(key_first, np.full(1, n_rows, dtype=np.int64))
    tie = np.empty(n_rows, dtype=np.int64)
    for r in range(n_rows):
        tie[ranks[r]] = r
    if n_rows <= 1:
        handed = np.arange(n_rows)
    else:
        total = np.zeros(n_rows)  # whole tokens: exact in any order
        for r in range(n_rows):
            for i in range(n_src):
                total[r] += comp[r, i]
        handed = plain_order(comp, total, tie, source, stream_tokens)
    piece, row, col, ptr, pad, seen = pack_back(handed, order, bins, width, k, doc_key, cut,
                                                seq_len)
    return k, a, b, last, piece, row, col, ptr, pad, seen
