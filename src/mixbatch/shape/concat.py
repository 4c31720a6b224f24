"""``packing: concat``: documents back to back, each followed by an end-of-document token, cut
into rows of ``seq_len``.

The feed delivers documents, or in token mode *pieces* of them (at most ``seq_len`` tokens
each, a document's pieces in order; :class:`mixbatch.loader.feed.MixedFeed`). Entry ``k`` of
the step takes the positions ``[P_k, P_k + w_k)`` of the step's token line, ``w_k`` its tokens
plus one when its document's end token follows it (``P`` is the running sum of ``w``); a row
boundary every ``seq_len`` positions cuts it into segments. Consecutive pieces of one document
are laid out as one span (one segment per row it overlaps), so a document whose pieces the
planner chose back to back reads exactly as a whole document; when other sources' pieces come
between two pieces of a document, the document continues, in order, after them (a new segment:
its first label is ignored and its position ids restart, as at any segment start).

The token line follows the planned stream, so at every step boundary the tokens fed per source
are the planner's: within one piece (``seq_len`` tokens) of the target, plus the few end tokens
of the step (positions that hold no source's token).

The part of the last entry that does not fit is carried into the next step (``carry`` in the
state: source, document, length, how many of its positions are placed, the end of its span and
whether its end token follows), so no token is lost or repeated. Only the final step of a finite
stream is padded.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mixbatch.errors import StateError
from mixbatch.plan.state_checks import count, shown
from mixbatch.shape.base import DocFeed, Docs, StepPlan


def merge_continuing(docs: Docs) -> Docs:
    """Join consecutive entries that continue one another (same source and document, the next
    span starting where the previous one ended, no end token between) into one span."""
    if len(docs) <= 1 or not docs.pieces:
        return docs
    start, end, eod = docs.span_start, docs.span_end, docs.span_eod
    cont = np.zeros(len(docs), dtype=bool)
    cont[1:] = ((docs.source[1:] == docs.source[:-1]) & (docs.doc[1:] == docs.doc[:-1])
                & (start[1:] == end[:-1]) & ~eod[:-1])
    if not cont.any():
        return docs
    first = np.flatnonzero(~cont)
    last = np.append(first[1:] - 1, len(docs) - 1)
    return Docs(docs.source[first], docs.doc[first], docs.length[first],
                None if docs.second is None else docs.second[first],
                start[first], end[last], eod[last])


class ConcatShaper:
    name = "concat"

    def __init__(self, seq_len: int) -> None:
        self.seq_len = seq_len
        # source, doc, length, offset placed, span end, end token follows
        self.carry: tuple[int, int, int, int, int, int] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"carry": None if self.carry is None else list(self.carry)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "carry" not in state:
            raise StateError("loader state.shaper.carry: missing")
        c = state["carry"]
        if c is None:
            self.carry = None
            return
        if not isinstance(c, list | tuple) or len(c) not in (4, 6):
            raise StateError(f"loader state.shaper.carry: expected None or a list of 6 "
                             f"integers, got {shown(c)}")
        c = [count(f"loader state.shaper.carry[{i}]", x) for i, x in enumerate(c)]
        if len(c) == 4:  # a state saved before pieces: the rest of a whole document
            c += [c[2], 1]
        _s, _d, n, off, end, eod = c
        if not off <= end <= n or eod > 1:
            raise StateError(f"loader state.shaper.carry: expected source, document, length, "
                             f"start <= end <= length and an end flag 0/1, got {c}")
        self.carry = tuple(c)  # type: ignore[assignment]

    def plan_step(self, feed: DocFeed, rows: int) -> StepPlan | None:
        L = self.seq_len
        cap = rows * L
        if self.carry is not None:
            s, d, n, off, e, eod = self.carry
            head = Docs(np.array([s], np.int32), np.array([d], np.int64), np.array([n], np.int64),
                        None, np.array([off], np.int64), np.array([e], np.int64),
                        np.array([bool(eod)]))
            need = cap - (e - off + eod)
        else:
            head, need = Docs.empty(), cap
        docs = Docs.concat([head, feed.take_covering(need, 1)]) if need > 0 else head
        if len(docs) == 0:
            return None
        docs = merge_continuing(docs)
        off, stop, closes = docs.span_start, docs.span_end, docs.span_eod
        width = stop - off + closes
        start_pos = np.concatenate([[0], np.cumsum(width)[:-1]])
        end_pos = np.minimum(start_pos + width, cap)
        # segments: one per (entry, row) it overlaps
        r0 = start_pos // L
        r1 = (end_pos - 1) // L
        n_pieces = r1 - r0 + 1
        k = np.repeat(np.arange(len(docs)), n_pieces)
        j = np.arange(len(k)) - np.repeat(np.cumsum(n_pieces) - n_pieces, n_pieces)
        row = r0[k] + j
        g0 = np.maximum(start_pos[k], row * L)
        g1 = np.minimum(end_pos[k], (row + 1) * L)
        a = off[k] + (g0 - start_pos[k])  # doc coordinates; position `stop` is the end token
        b = off[k] + (g1 - start_pos[k])
        span_end = stop[k]
        eod = closes[k] & (a <= span_end) & (span_end < b)
        filled = int(end_pos[-1])
        # the last entry may not fit: carry the rest into the next step
        last_end = start_pos[-1] + width[-1]
        self.carry = None
        if last_end > cap:
            placed = off[-1] + (cap - start_pos[-1])
            self.carry = (int(docs.source[-1]), int(docs.doc[-1]), int(docs.length[-1]),
                          int(placed), int(stop[-1]), int(closes[-1]))
        pad = np.zeros(rows, np.int64)
        if filled < cap:  # the stream ended inside this step
            used = np.bincount(row, weights=(g1 - g0), minlength=rows).astype(np.int64)
            pad = L - used
        return StepPlan(rows, L, row.astype(np.int32), g0 - row * L, docs.source[k],
                        docs.doc[k], a, np.minimum(b, span_end), eod, pad)
