"""``packing: concat``: documents back to back, each followed by an end-of-document token, cut
into rows of ``seq_len``.

Document ``k`` of the step takes the positions ``[P_k, P_k + len_k + 1)`` of the step's token
line (``P`` is the running sum of ``len + 1``); a row boundary every ``seq_len`` positions cuts it
into pieces. The part of the last document that does not fit is carried into the next step
(``carry`` in the state: source, document, length and how many of its positions are placed), so
no token is lost or repeated. Only the final step of a finite stream is padded.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mixbatch.shape.base import DocFeed, Docs, StepPlan


class ConcatShaper:
    name = "concat"

    def __init__(self, seq_len: int) -> None:
        self.seq_len = seq_len
        self.carry: tuple[int, int, int, int] | None = None  # source, doc, length, offset

    def state_dict(self) -> dict[str, Any]:
        return {"carry": None if self.carry is None else list(self.carry)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        c = state["carry"]
        self.carry = None if c is None else tuple(int(x) for x in c)  # type: ignore[assignment]

    def plan_step(self, feed: DocFeed, rows: int) -> StepPlan | None:
        L = self.seq_len
        cap = rows * L
        if self.carry is not None:
            s, d, n, off = self.carry
            head = Docs(np.array([s], np.int32), np.array([d], np.int64), np.array([n], np.int64))
            head_off = off
            need = cap - (n - off + 1)
        else:
            head, head_off, need = Docs.empty(), 0, cap
        docs = Docs.concat([head, feed.take_covering(need, 1)]) if need > 0 else head
        if len(docs) == 0:
            return None
        off = np.zeros(len(docs), np.int64)
        if len(head):
            off[0] = head_off
        width = docs.length - off + 1
        start_pos = np.concatenate([[0], np.cumsum(width)[:-1]])
        end_pos = np.minimum(start_pos + width, cap)
        # pieces: one per (document, row) it overlaps
        r0 = start_pos // L
        r1 = (end_pos - 1) // L
        n_pieces = r1 - r0 + 1
        k = np.repeat(np.arange(len(docs)), n_pieces)
        j = np.arange(len(k)) - np.repeat(np.cumsum(n_pieces) - n_pieces, n_pieces)
        row = r0[k] + j
        g0 = np.maximum(start_pos[k], row * L)
        g1 = np.minimum(end_pos[k], (row + 1) * L)
        a = off[k] + (g0 - start_pos[k])  # doc coordinates; position `length` is the end token
        b = off[k] + (g1 - start_pos[k])
        length = docs.length[k]
        eod = (a <= length) & (length < b)
        filled = int(end_pos[-1])
        # the last document may not fit: carry the rest into the next step
        last_end = start_pos[-1] + width[-1]
        self.carry = None
        if last_end > cap:
            placed = off[-1] + (cap - start_pos[-1])
            self.carry = (int(docs.source[-1]), int(docs.doc[-1]), int(docs.length[-1]),
                          int(placed))
        pad = np.zeros(rows, np.int64)
        if filled < cap:  # the stream ended inside this step
            used = np.bincount(row, weights=(g1 - g0), minlength=rows).astype(np.int64)
            pad = L - used
        return StepPlan(rows, L, row.astype(np.int32), g0 - row * L, docs.source[k],
                        docs.doc[k], a, np.minimum(b, length), eod, pad)
