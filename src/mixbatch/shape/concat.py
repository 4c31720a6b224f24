"""``packing: concat``: documents back to back, each followed by an end-of-document token, cut
into rows of ``seq_len``.

The feed delivers documents, or in token mode *pieces* of them (at most ``seq_len`` tokens
each, a document's pieces in order; :class:`mixbatch.loader.feed.MixedFeed`). Entries are laid
out in stream order on the step's rows, each taking its tokens plus one position when its
document's end token follows it; a row boundary cuts an entry into segments (one per row it
overlaps). Consecutive pieces of one document are laid out as one span, so a document whose
pieces the planner chose back to back reads exactly as a whole document; when other sources'
pieces come between two pieces of a document, the document continues, in order, after them (a
new segment: its first label is ignored and its position ids restart, as at any segment start).

**The end token is always trained.** A segment's first position is never a target (labels are
-100 there, and a model shifts labels inside its row), so an end token alone at the start of a
row would be fed and never trained. Two rules keep it with its document:

- when a row boundary falls right before a document's end token (its tokens fill the row
  exactly), the next row repeats the document's last token before the end token: the segment
  is ``[n - 1, n)`` with ``eod`` (two positions), so the end token is predicted from the token
  before it. The repeated token is the segment's first (its label ignored; the previous row
  already trained it), and it counts as fed twice;
- a one-token document never starts in a row's last position (its end token would open the
  next row, and repeating its token there would feed the document twice from its start): that
  position is padding and the document starts the next row.

So every document's end token is a target exactly once. (The first token of the part of a
document continued in the next row is still no target: that is what cutting rows costs, one
target per row boundary inside a document, as in any packing that cuts rows.)

The token line follows the planned stream, so at every step boundary the tokens fed per source
are the planner's: within one piece (``seq_len`` tokens) of the target, plus the few end tokens
of the step (positions that hold no source's token) and the rare repeated last tokens.

The part of the last entry that does not fit is carried into the next step (``carry`` in the
state: source, document, length, the next token to place, the end of its span and whether its
end token follows), so no token is lost; a carry that holds only the end token starts the next
step with the repeated last token. Besides the final step of a finite stream, a row is padded
only by the second rule above (its last position, before a one-token document).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from numba import njit

from mixbatch.errors import ConfigError, StateError
from mixbatch.plan.state_checks import count, shown
from mixbatch.shape.base import DocFeed, Docs, StepPlan


def merge_continuing(docs: Docs) -> Docs:
    """Join consecutive entries that continue one another (same source and document, the next
    span starting where the previous one ended, no end token between) into one span."""
    return _merge(docs)[0]


def _merge(docs: Docs) -> tuple[Docs, np.ndarray]:
    """:func:`merge_continuing`, and for each joined entry the index of its last entry in
    ``docs``."""
    if len(docs) <= 1 or not docs.pieces:
        return docs, np.arange(len(docs))
    start, end, eod = docs.span_start, docs.span_end, docs.span_eod
    cont = np.zeros(len(docs), dtype=bool)
    cont[1:] = ((docs.source[1:] == docs.source[:-1]) & (docs.doc[1:] == docs.doc[:-1])
                & (start[1:] == end[:-1]) & ~eod[:-1])
    if not cont.any():
        return docs, np.arange(len(docs))
    first = np.flatnonzero(~cont)
    last = np.append(first[1:] - 1, len(docs) - 1)
    return Docs(docs.source[first], docs.doc[first], docs.length[first],
                None if docs.second is None else docs.second[first],
                start[first], end[last], eod[last]), last


@njit(cache=True, nogil=True)
def _lay_out(off: np.ndarray, stop: np.ndarray, closes: np.ndarray, L: int, cap: int,
             row: np.ndarray, col: np.ndarray, ent: np.ndarray, a_out: np.ndarray,
             b_out: np.ndarray, eod_out: np.ndarray, used: np.ndarray) -> tuple[int, int, int, int]:
    """Lay entries (tokens ``[off, stop)``, then the end token when ``closes``) out in order on
    ``cap // L`` rows of ``L`` positions, with the two rules of the module docstring.

    Writes the segments into ``row`` .. ``eod_out`` (room for ``len(off) + 2 * cap // L``) and
    the positions each row uses into ``used``. Returns ``(segments, positions consumed, entry
    carried or -1, its next token)``: the first entry that did not fit, if any, stops the
    layout; fewer than ``cap`` positions consumed and no carry means the entries ran out."""
    pos = 0
    n = 0
    for k in range(off.size):
        a = off[k]
        t_end = stop[k]
        e = 1 if closes[k] else 0
        while True:
            t = t_end - a
            if t == 0 and not e:
                break  # the entry is placed (or held nothing)
            if pos >= cap:
                return n, pos, k, a
            r = pos // L
            c = pos - r * L
            room = L - c
            if t == 0 and a > 0 and room >= 2:  # only the end token is left: repeat the last
                row[n], col[n], ent[n], a_out[n], b_out[n], eod_out[n] = r, c, k, a - 1, a, True
                n += 1  # token before it (a row's start: the previous row ended with it)
                used[r] += 2
                pos += 2
                break
            if room == 1 and a == 0 and t == 1 and e:  # a one-token document at a row's end:
                pos += 1  # pad that position, the document starts the next row (its end token
                continue  # would else open that row alone after a repeat of its first token)
            w = min(t + e, room)
            tok = min(t, w)
            row[n], col[n], ent[n], a_out[n], b_out[n] = r, c, k, a, a + tok
            eod_out[n] = w > t
            n += 1
            used[r] += w
            pos += w
            a += tok
            if w > t:
                break  # the end token is placed
    return n, pos, -1, 0


class ConcatShaper:
    name = "concat"

    def __init__(self, seq_len: int) -> None:
        if isinstance(seq_len, bool) or not isinstance(seq_len, int | np.integer) or seq_len < 2:
            raise ConfigError(f"batch.seq_len: concat packing needs rows of at least 2 "
                              f"positions (a token and the one it predicts), got {seq_len!r}")
        self.seq_len = int(seq_len)
        # source, doc, length, next token to place, span end, end token follows
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
        # The entries' widths cover the step, but the two rules may take a few positions more
        # (then more entries are taken) and leave entries pulled past the first one that does
        # not fit (then the feed is rewound and exactly the entries placed are taken again).
        mark = copy.deepcopy(feed.state_dict()) if need > 0 else None
        raw = Docs.concat([head, feed.take_covering(need, 1)]) if need > 0 else head
        while True:
            if len(raw) == 0:
                return None
            docs, last = _merge(raw)
            out = self._lay_out(docs, rows)
            segs, pos, carried = out[0], out[1], out[2]
            if carried >= 0:
                keep = int(last[carried]) + 1
                if keep < len(raw):  # entries pulled past the carried one: pull them later
                    assert mark is not None
                    feed.load_state_dict(copy.deepcopy(mark))
                    raw = Docs.concat([head, feed.take(keep - len(head))])
                    docs = _merge(raw)[0]
                break
            if pos >= cap:
                break
            more = feed.take_covering(cap - pos, 1)
            if len(more) == 0:
                break  # the stream ended inside this step
            raw = Docs.concat([raw, more])
        row, col, k, a, b, eod, used = segs
        self.carry = None
        if carried >= 0:
            self.carry = (int(docs.source[carried]), int(docs.doc[carried]),
                          int(docs.length[carried]), int(out[3]), int(docs.span_end[carried]),
                          int(docs.span_eod[carried]))
        return StepPlan(rows, L, row, col, docs.source[k], docs.doc[k], a, b, eod, L - used)

    def _lay_out(self, docs: Docs, rows: int) -> tuple:
        """The segments of ``docs`` on ``rows`` rows (:func:`_lay_out`), in StepPlan's dtypes."""
        L = self.seq_len
        room = len(docs) + 2 * rows
        row = np.empty(room, np.int32)
        col, ent, a, b = (np.empty(room, np.int64) for _ in range(4))
        eod = np.empty(room, np.bool_)
        used = np.zeros(rows, np.int64)
        n, pos, carried, nxt = _lay_out(docs.span_start.astype(np.int64, copy=False),
                                        docs.span_end.astype(np.int64, copy=False),
                                        docs.span_eod, L, rows * L, row, col, ent, a, b, eod,
                                        used)
        return (row[:n], col[:n], ent[:n], a[:n], b[:n], eod[:n], used), pos, carried, nxt
