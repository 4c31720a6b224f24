"""``packing: bfd``: best-fit decreasing packing with document boundaries.

Implements the packing of Ding et al. 2024, "Fewer Truncations Improve Language Modeling"
(ICML 2024, arXiv 2404.10830), over a window of the planned stream:

1. A *window* is the fewest next documents that cover ``pack_window * seq_len`` positions; a
   document of ``n`` tokens takes ``n + 1`` positions (its tokens and one end-of-document token).
2. Every document is cut into pieces of at most ``seq_len`` positions, and these are the only
   cuts: ``ceil((n + 1) / seq_len)`` pieces, all of ``seq_len`` positions but the last, which
   holds the end token (it may hold the end token only). A document shorter than ``seq_len`` is
   never cut.
3. Pieces are packed into rows of ``seq_len`` positions by best-fit decreasing: widest piece
   first (ties in stream order); each goes into the open row with the smallest remaining space
   that still fits it, else into a new row. The query "smallest remaining space >= w" is a
   descent in a max segment tree over the capacities ``0..seq_len`` (the paper's OBFD), so a
   window of N pieces packs in O(N log seq_len).

Rows are handed out in a keyed pseudo-random order within the window (BFD creates the rows of the
longest pieces first, which would otherwise feed long documents first), ``rows`` per step; a step
may end one window and start the next. Inside a row, segments keep their packing order; the rest is padding.

**Mixture bound.** The planner keeps the document stream within its bound over every prefix
(DESIGN invariant 1). BFD only reorders documents *inside* a window, so once the rows of a window
are all fed, exactly the documents of the stream up to that window's end have been fed: at every
window boundary the composition is exactly the planner's, and inside a window it differs from it
by at most the documents of that window.

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
from mixbatch.plan.permutation import derive_key, permute
from mixbatch.shape.base import DocFeed, Docs, StepPlan
from mixbatch.shape.window import WindowAnchor

__all__ = ["BFDShaper", "best_fit_decreasing", "cut_pieces"]


def cut_pieces(length: np.ndarray, seq_len: int) -> tuple[np.ndarray, ...]:
    """Cut documents of ``length`` tokens (+1 end token each) into pieces of <= ``seq_len``.

    Returns per piece, in stream order: ``(doc index, start, end, eod)``; the piece holds tokens
    ``[start, end)`` and, when ``eod``, the end token after them."""
    length = np.asarray(length, dtype=np.int64)
    n_pieces = (length + seq_len) // seq_len  # ceil((n + 1) / seq_len)
    k = np.repeat(np.arange(len(length), dtype=np.int64), n_pieces)
    j = np.arange(len(k), dtype=np.int64) - np.repeat(np.cumsum(n_pieces) - n_pieces, n_pieces)
    start = j * seq_len
    end = np.minimum(start + seq_len, length[k])
    eod = j == n_pieces[k] - 1
    return k, start, end, eod


def best_fit_decreasing(width: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Pack items of ``width`` (1..capacity) into bins of ``capacity`` by best-fit decreasing.

    Returns ``(bin, offset, n_bins)``: each item's bin (bins numbered in creation order) and its
    offset inside the bin (items of a bin are laid out in packing order). Items go widest first,
    ties in input order; among bins with the same remaining space the last one to reach it wins.
    A max segment tree over remaining capacities ``0..capacity`` (leaf ``c`` holds ``c`` while
    some bin has exactly ``c`` left, else 0) answers "smallest remaining >= w" by one descent.
    """
    width = np.asarray(width, dtype=np.int64)
    n = len(width)
    order = np.argsort(-width, kind="stable")
    out_bin = np.empty(n, dtype=np.int64)
    offset = np.zeros(n, dtype=np.int64)
    # full-width items come first and each fills a bin of its own
    n_full = int(np.count_nonzero(width == capacity))
    out_bin[order[:n_full]] = np.arange(n_full)
    n_bins = n_full
    size = 1 << capacity.bit_length()  # leaves 0..capacity
    tree = [0] * (2 * size)
    bins: list[list[int]] = [[] for _ in range(capacity + 1)]
    rest = order[n_full:]
    bin_of: list[int] = []
    off_of: list[int] = []
    for w in width[rest].tolist():
        if tree[1] >= w:
            node = 1
            while node < size:
                node <<= 1
                if tree[node] < w:
                    node += 1
            c = node - size
            stack = bins[c]
            b = stack.pop()
            if not stack:  # capacity c has no bin left: clear its leaf
                tree[node] = 0
                node >>= 1
                while node:
                    left = tree[2 * node]
                    right = tree[2 * node + 1]
                    tree[node] = left if left > right else right
                    node >>= 1
        else:
            b, c = n_bins, capacity
            n_bins += 1
        bin_of.append(b)
        off_of.append(capacity - c)
        left_over = c - w
        if left_over > 0:
            stack = bins[left_over]
            if not stack:  # first bin with this capacity: set its leaf
                node = size + left_over
                tree[node] = left_over
                node >>= 1
                while node and tree[node] < left_over:
                    tree[node] = left_over
                    node >>= 1
            stack.append(b)
    out_bin[rest] = np.asarray(bin_of, dtype=np.int64)
    offset[rest] = np.asarray(off_of, dtype=np.int64)
    return out_bin, offset, n_bins


@dataclass(frozen=True)
class _Window:
    """The packed rows of one window; pieces sorted by (row, col), ``ptr`` indexes rows."""

    n_rows: int
    ptr: np.ndarray  # (n_rows + 1,) piece offsets of each row
    col: np.ndarray
    source: np.ndarray
    doc: np.ndarray
    start: np.ndarray
    end: np.ndarray
    eod: np.ndarray
    cut: np.ndarray  # the piece's document has more than one piece
    doc_key: np.ndarray  # the document's index in the window
    filled: np.ndarray  # per row

    @staticmethod
    def pack(docs: Docs, seq_len: int) -> _Window:
        k, start, end, eod = cut_pieces(docs.length, seq_len)
        width = end - start + eod
        row, col, n_rows = best_fit_decreasing(width, seq_len)
        # BFD creates the rows of the longest pieces first; hand rows out in a keyed order so
        # that a window does not feed its long documents first. The key comes from the window's
        # own documents: no extra state, the same order on replay.
        key = derive_key(0, "bfd-rows", int(docs.source[0]), int(docs.doc[0]), len(docs),
                         int(docs.length.sum()))
        row = permute(row, n_rows, key)
        order = np.lexsort((col, row))
        counts = np.bincount(k, minlength=len(docs))
        ptr = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=n_rows))])
        filled = np.bincount(row, weights=width, minlength=n_rows).astype(np.int64)
        k = k[order]
        return _Window(n_rows, ptr, col[order], docs.source[k], docs.doc[k], start[order],
                       end[order], eod[order], counts[k] > 1, k, filled)


class BFDShaper:
    """Best-fit decreasing packing over windows of the stream; see the module docstring."""

    name = "bfd"

    def __init__(self, seq_len: int, pack_window: int) -> None:
        for field, value in (("seq_len", seq_len), ("pack_window", pack_window)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ConfigError(f"batch.{field}: must be an integer >= 1, got {value!r}")
        self.seq_len = int(seq_len)
        self.pack_window = int(pack_window)
        self._anchor = WindowAnchor()
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
        self._window = _Window.pack(docs, self.seq_len) if len(docs) else None
        return self._window is not None

    def _replay_window(self, feed: DocFeed) -> None:
        """Rebuild the saved window: rewind the feed, pull and pack it again (module doc)."""
        docs = self._anchor.replay(feed, self.pack_window * self.seq_len, 1)
        self._replay = False
        window = _Window.pack(docs, self.seq_len) if len(docs) else None
        if window is None or self._emitted > window.n_rows:
            rows = 0 if window is None else window.n_rows
            raise StateError(f"loader state: the bfd window holds {rows} rows but "
                             f"{self._emitted} were already handed out; the stream does not "
                             "match the saved state")
        self._window = window

    # ---- steps ---------------------------------------------------------------------------
    def plan_step(self, feed: DocFeed, rows: int) -> StepPlan | None:
        if isinstance(rows, bool) or not isinstance(rows, int | np.integer) or rows < 1:
            raise ConfigError(f"rows: must be an integer >= 1, got {rows!r}")
        L = self.seq_len
        if self._replay:
            self._replay_window(feed)
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
            # used up exactly: the next step starts a new window from the feed's position
            self._window = None
            self._anchor.close()
            self._emitted = 0
        if got == 0:
            return None
        return self._assemble(parts, rows, L, windows)

    @staticmethod
    def _assemble(parts: list[tuple[_Window, int, int]], rows: int, L: int,
                  windows: int) -> StepPlan:
        fields: dict[str, list[np.ndarray]] = {k: [] for k in (
            "row", "col", "source", "doc", "start", "end", "eod")}
        pad = np.full(rows, L, dtype=np.int64)
        split_docs = 0
        base = 0
        for win, r0, r1 in parts:
            a, b = int(win.ptr[r0]), int(win.ptr[r1])
            per_row = np.diff(win.ptr[r0:r1 + 1])
            fields["row"].append(np.repeat(np.arange(base, base + r1 - r0), per_row))
            for name in ("col", "source", "doc", "start", "end", "eod"):
                fields[name].append(getattr(win, name)[a:b])
            split_docs += len(np.unique(win.doc_key[a:b][win.cut[a:b]]))
            pad[base:base + r1 - r0] = L - win.filled[r0:r1]
            base += r1 - r0
        cat = {k: np.concatenate(v) for k, v in fields.items()}
        return StepPlan(rows, L, cat["row"].astype(np.int32), cat["col"].astype(np.int64),
                        cat["source"].astype(np.int32), cat["doc"].astype(np.int64),
                        cat["start"], cat["end"], cat["eod"].astype(bool), pad,
                        stats={"pieces": len(cat["row"]), "split_docs": split_docs,
                               "windows": windows})
