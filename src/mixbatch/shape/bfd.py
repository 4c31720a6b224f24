"""``packing: bfd``: best-fit decreasing packing with document boundaries.

Implements the packing of Ding et al. 2024, "Fewer Truncations Improve Language Modeling"
(ICML 2024, arXiv 2404.10830), over a window of the planned stream:

1. A *window* is the fewest next documents that cover ``pack_window * seq_len`` positions; a
   document of ``n`` tokens takes ``n + 1`` positions (its tokens and one end-of-document token).
2. Every document (or planned piece, :func:`cut_spans`) is cut into pieces of at most
   ``seq_len`` positions, and these are the only cuts: ``ceil((n + 1) / seq_len)`` pieces,
   all of ``seq_len`` positions but the last, which holds the end token. A document shorter
   than ``seq_len`` is never cut. When the tokens fill the other pieces exactly (``n`` a
   multiple of ``seq_len``), the last piece is not the end token alone, which would be fed and
   never trained (a segment's first position is no target): it repeats the document's last
   token before it, tokens ``[n - 1, n)`` and the end token, so the end token is predicted from
   the token before it (the repeated token's label is ignored; its first piece trained it).
3. Pieces are packed into rows of ``seq_len`` positions by best-fit decreasing: widest piece
   first (ties in stream order); each goes into the open row with the smallest remaining space
   that still fits it (among rows with equal space, the last to reach it), else into a new
   row. Pieces wider than ``seq_len / 2`` open a row each; for the rest, the query "smallest
   remaining space >= w" scans a bitset of the remaining spaces that have an open row (the
   paper's OBFD uses a segment tree over the same ``0..seq_len``): at most ``seq_len / 64``
   words per piece (:func:`best_fit_decreasing`; a window is cut, packed, ordered and laid out
   in one compiled call, :mod:`mixbatch.shape.bfd_pack`).

Rows are handed out, ``rows`` per step, in the order that keeps the mixture on the planned
stream (:func:`mixbatch.shape.follow.follow_order`: next the row that keeps the largest
difference between the tokens handed out per source and the stream's first tokens smallest;
rows of equal composition in a keyed pseudo-random order, so that a window does not feed its
long documents first). A step may end one window and start the next. Inside a row, segments
keep their packing order; the rest is padding. A window is packed once into per-piece arrays
sorted by (row, column), in :class:`StepPlan`'s dtypes; a step inside one window is views of
them (a step across windows concatenates them).

**Mixture bound.** In token mode the feed plans documents as pieces of at most ``seq_len``
tokens, and keeps every prefix of the stream within one piece of the target (DESIGN invariant
1); a planned piece is cut here at most once more (before its end token). Once the rows of a
window are all fed, exactly the pieces of the stream up to that window's end have been fed, so
every window boundary is the planner's. Inside a window the row order follows the stream: on
real text (``benchmarks/bench_step_mixture.py``: man pages, Python files, C headers, seq_len
512, 8 rows) the largest deviation at a step boundary was 0.99 ``seq_len`` (it was 281
``seq_len`` with whole documents and a keyed order); the property tests check
``2 · seq_len`` at every step boundary.

**State (O(K)).** The packed rows are not saved. ``state_dict()`` holds the feed's position taken
just before the current window was pulled (``window_start``), the feed's weights at that moment
when the feed has any (``window_weights``; a schedule or policy may change them mid-window), and
how many of the window's rows were handed out (``emitted``). After ``load_state_dict`` the next
:meth:`BFDShaper.plan_step` rewinds the feed to ``window_start``, pulls the same window again
(the pull is a pure function of the feed's state), packs it again (deterministic), skips
``emitted`` rows and continues; the feed is then back where it was after the first pull. When a
step uses up its window exactly, the window is dropped and the state says "no window".

**Stats** (``StepPlan.stats``): ``pieces``, the segments of the step; ``split_docs``, documents of
the step cut into more than one piece (counted once per step that holds a piece of them);
``windows``, windows packed during this step (0, 1, or more for tiny windows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mixbatch.errors import ConfigError, StateError
from mixbatch.plan.permutation import _splitmix_first, derive_key
from mixbatch.shape.base import DocFeed, Docs, StepPlan
from mixbatch.shape.bfd_pack import bfd_bins, cut, pack_window
from mixbatch.shape.follow import by_samples
from mixbatch.shape.kernels import by_key
from mixbatch.shape.window import WindowAnchor

__all__ = ["BFDShaper", "best_fit_decreasing", "cut_pieces", "cut_spans"]


def cut_pieces(length: np.ndarray, seq_len: int) -> tuple[np.ndarray, ...]:
    """Cut documents of ``length`` tokens (+1 end token each) into pieces of <= ``seq_len``.

    Returns per piece, in stream order: ``(doc index, start, end, eod)``; the piece holds tokens
    ``[start, end)`` and, when ``eod``, the end token after them."""
    length = np.asarray(length, dtype=np.int64)
    return cut_spans(np.zeros(len(length), np.int64), length, np.ones(len(length), bool),
                     seq_len)


def cut_spans(start: np.ndarray, end: np.ndarray, eod: np.ndarray,
              seq_len: int) -> tuple[np.ndarray, ...]:
    """Cut spans (tokens ``[start, end)`` of a document, then its end token when ``eod``) into
    pieces of <= ``seq_len`` positions, as :func:`cut_pieces` cuts whole documents; a piece
    the feed planned (at most ``seq_len`` tokens) is cut at most once, before its last token
    (which the end token's piece repeats; module docstring, 2.).

    Returns per piece, in stream order: ``(span index, start, end, eod)``."""
    return cut(np.asarray(start, dtype=np.int64), np.asarray(end, dtype=np.int64),
               np.asarray(eod, dtype=bool), int(seq_len))


def best_fit_decreasing(width: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Pack items of ``width`` (1..capacity) into bins of ``capacity`` by best-fit decreasing.

    Returns ``(bin, offset, n_bins)``: each item's bin (bins numbered in creation order) and its
    offset inside the bin (items of a bin are laid out in packing order). Items go widest first,
    ties in input order; among bins with the same remaining space the last one to reach it wins.

    Items wider than ``capacity / 2`` never share a bin with each other, and every bin they
    open has less than ``capacity / 2`` left, so they open one bin each. The rest go one by
    one (compiled, :func:`mixbatch.shape.bfd_pack.place`): a bitset marks the remaining
    capacities that have an open bin, so "smallest remaining >= w" is a scan of at most
    ``capacity / 64`` words; each capacity's bins are a stack (a linked list over the bins;
    ``capacity`` itself is the stack of fresh bins). Offsets are computed afterwards,
    vectorised: the widths of the items packed before into the same bin.
    """
    width = np.asarray(width, dtype=np.int64)
    n = len(width)
    if n and (width.min() < 1 or width.max() > capacity):
        raise ValueError(f"width: items must be 1..{capacity} wide, got "
                         f"{width.min()}..{width.max()}")
    order, bins, n_bins = bfd_bins(width, int(capacity))
    by_bin = order[by_key(bins, n_bins)]  # items by (bin, packing order)
    w = width[by_bin]
    before = np.cumsum(w) - w
    counts = np.bincount(bins, minlength=n_bins)
    first = np.cumsum(counts) - counts
    out_bin = np.empty(n, dtype=np.int64)
    out_bin[order] = bins
    offset = np.empty(n, dtype=np.int64)
    offset[by_bin] = before - np.repeat(before[first], counts)
    return out_bin, offset, n_bins


@dataclass(frozen=True)
class _Window:
    """The packed rows of one window in :class:`StepPlan`'s dtypes; pieces sorted by
    (row, col), ``ptr`` indexes rows, ``row`` is each piece's row in the window. For a piece
    ``j`` of a document cut into several pieces, ``seen[j]`` is the position (in this order)
    of the document's previous piece, -1 for its first; ``len(row)`` for other pieces. So
    ``count(seen[a:b] < a)`` is the number of cut documents with a piece in ``[a, b)``."""

    n_rows: int
    ptr: list[int]  # (n_rows + 1) piece offsets of each row
    row: np.ndarray  # int32
    col: np.ndarray  # int64
    source: np.ndarray  # int32
    doc: np.ndarray  # int64
    start: np.ndarray  # int64
    end: np.ndarray  # int64
    eod: np.ndarray  # bool
    seen: np.ndarray  # int64
    pad: np.ndarray  # int64, per row

    @staticmethod
    def pack(docs: Docs, seq_len: int, samples: bool = False) -> _Window:
        """Cut, pack and order one window (:func:`cut_spans`, :func:`best_fit_decreasing`,
        :func:`mixbatch.shape.follow.follow_order`; compiled in
        :mod:`mixbatch.shape.bfd_pack`)."""
        source = np.ascontiguousarray(docs.source, dtype=np.int64)
        n_src = int(source.max()) + 1
        # Hand the rows out so that the mixture follows the planned stream step by step
        # (mixbatch.shape.follow), equal rows in a keyed order; the key comes from the
        # window's own documents: no extra state, the same order on replay. By tokens a row
        # counts its tokens; by samples (``samples``) the documents it starts.
        key = derive_key(0, "bfd-rows", int(docs.source[0]), int(docs.doc[0]), len(docs),
                         int(docs.length.sum()))
        # a document's pieces may be several entries of the window (planned pieces)
        doc = np.ascontiguousarray(docs.doc, dtype=np.int64)
        span = int(doc.max()) + 1
        if n_src < (1 << 62) // span and int(doc.min()) >= 0:
            doc_key = source * span + doc
        else:
            _, doc_key = np.unique(np.stack([source, doc]), axis=1, return_inverse=True)
            doc_key = doc_key.ravel().astype(np.int64)
        k, start, end, eod, piece, row, col, ptr, pad, seen = pack_window(
            np.ascontiguousarray(docs.span_start, dtype=np.int64),
            np.ascontiguousarray(docs.span_end, dtype=np.int64),
            np.ascontiguousarray(docs.span_eod, dtype=bool), source, seq_len, samples, n_src,
            np.array([_splitmix_first(key)], dtype=np.uint64),
            np.ones(len(docs)) if samples else docs.tokens.astype(np.float64),
            doc_key, np.asarray(docs.length >= seq_len))
        k = k[piece]
        return _Window(len(pad), ptr.tolist(), row, col,
                       docs.source.astype(np.int32, copy=False)[k], doc[k], start[piece],
                       end[piece], eod[piece], seen, pad)


class BFDShaper:
    """Best-fit decreasing packing over windows of the stream; see the module docstring."""

    name = "bfd"

    def __init__(self, seq_len: int, pack_window: int) -> None:
        for field, value, lo in (("seq_len", seq_len, 2), ("pack_window", pack_window, 1)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
                raise ConfigError(f"batch.{field}: must be an integer >= {lo}, got {value!r}")
        self.seq_len = int(seq_len)
        self.pack_window = int(pack_window)
        self._anchor = WindowAnchor({"seq_len": self.seq_len, "pack_window": self.pack_window})
        self._emitted = 0
        self._window: _Window | None = None  # a cache of the packed rows, rebuilt on resume
        self._replay = False

    # ---- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**self._anchor.state_dict(), "emitted": self._emitted}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self._anchor.load_state_dict(state)
            emitted = int(state["emitted"])
            if emitted < 0 or (not self._anchor.open and emitted != 0):
                raise ValueError(f"emitted {emitted} does not fit window_start")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise StateError(f"loader state: shaper section (bfd) is malformed ({e})") from None
        self._emitted = emitted
        self._window = None
        self._replay = self._anchor.open

    # ---- windows -------------------------------------------------------------------------
    def _next_window(self, feed: DocFeed) -> bool:
        """Pull and pack the next window; False when the stream has ended."""
        docs = self._anchor.pull(feed, self.pack_window * self.seq_len, 1)
        self._emitted = 0
        self._window = _Window.pack(docs, self.seq_len, by_samples(feed)) if len(docs) \
            else None
        return self._window is not None

    def _replay_window(self, feed: DocFeed) -> None:
        """Rebuild the saved window: rewind the feed, pull and pack it again (module doc)."""
        docs = self._anchor.replay(feed, self.pack_window * self.seq_len, 1)
        self._replay = False
        window = _Window.pack(docs, self.seq_len, by_samples(feed)) if len(docs) else None
        if window is None or self._emitted > window.n_rows:
            rows = 0 if window is None else window.n_rows
            raise StateError(f"loader state: the bfd window holds {rows} rows but "
                             f"{self._emitted} were already handed out; the stream does not "
                             "match the saved state")
        self._window = window

    # ---- steps ---------------------------------------------------------------------------
    def plan_step(self, feed: DocFeed, rows: int) -> StepPlan | None:
        if type(rows) is not int:
            if isinstance(rows, bool) or not isinstance(rows, np.integer):
                raise ConfigError(f"rows: must be an integer >= 1, got {rows!r}")
            rows = int(rows)
        if rows < 1:
            raise ConfigError(f"rows: must be an integer >= 1, got {rows!r}")
        if self._replay:
            self._replay_window(feed)
        win, r0 = self._window, self._emitted
        if win is not None and r0 + rows <= win.n_rows:  # the common step: inside one window
            self._emitted = r1 = r0 + rows
            if r1 == win.n_rows:
                self._close_window()
            return self._one_window(win, r0, r1, 0)
        parts: list[tuple[_Window, int, int]] = []
        got = windows = 0
        while got < rows:
            if self._window is None or self._emitted >= self._window.n_rows:
                if not self._next_window(feed):
                    break
                windows += 1
            win = self._window
            assert win is not None
            take = min(rows - got, win.n_rows - self._emitted)
            parts.append((win, self._emitted, self._emitted + take))
            self._emitted += take
            got += take
        if self._window is not None and self._emitted >= self._window.n_rows:
            self._close_window()
        if got == 0:
            return None
        if len(parts) == 1 and got == rows:
            return self._one_window(*parts[0], windows)
        return self._assemble(parts, rows, self.seq_len, windows)

    def _close_window(self) -> None:
        """The window is used up exactly: the next step starts a new window from the feed."""
        self._window = None
        self._anchor.close()
        self._emitted = 0

    def _one_window(self, win: _Window, r0: int, r1: int, windows: int) -> StepPlan:
        """The common step: ``rows`` rows of one window, as views of its arrays."""
        a, b = win.ptr[r0], win.ptr[r1]
        row = win.row[a:b]
        if r0:
            row = row - np.int32(r0)
        split_docs = int(np.count_nonzero(win.seen[a:b] < a))
        return StepPlan(r1 - r0, self.seq_len, row, win.col[a:b], win.source[a:b],
                        win.doc[a:b], win.start[a:b], win.end[a:b], win.eod[a:b],
                        win.pad[r0:r1], stats={"pieces": b - a, "split_docs": split_docs,
                                               "windows": windows})

    @staticmethod
    def _assemble(parts: list[tuple[_Window, int, int]], rows: int, L: int,
                  windows: int) -> StepPlan:
        """A step from the rows of several windows (or fewer rows than asked, at the end)."""
        pad = np.full(rows, L, dtype=np.int64)
        spans = []
        split_docs = base = 0
        for win, r0, r1 in parts:
            a, b = win.ptr[r0], win.ptr[r1]
            spans.append((win, a, b, base - r0))
            split_docs += int(np.count_nonzero(win.seen[a:b] < a))
            pad[base:base + r1 - r0] = win.pad[r0:r1]
            base += r1 - r0

        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(win, name)[a:b] for win, a, b, _ in spans])

        row = np.concatenate([win.row[a:b] + np.int32(shift) for win, a, b, shift in spans])
        return StepPlan(rows, L, row, cat("col"), cat("source"), cat("doc"), cat("start"),
                        cat("end"), cat("eod"), pad,
                        stats={"pieces": len(row), "split_docs": split_docs,
                               "windows": windows})
