"""``packing: pad``: one document per row, cut to ``seq_len`` and padded.

A document shorter than ``seq_len`` is followed by an end-of-document token and padding; a longer
one is truncated to its first ``seq_len`` tokens (no end token), and the dropped tokens are counted
in ``StepPlan.truncated``. The last step of a finite stream may hold empty (all-padding) rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mixbatch.shape.base import DocFeed, StepPlan


class PadShaper:
    name = "pad"

    def __init__(self, seq_len: int) -> None:
        self.seq_len = seq_len

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def plan_step(self, feed: DocFeed, rows: int) -> StepPlan | None:
        L = self.seq_len
        docs = feed.take(rows)
        n = len(docs)
        if n == 0:
            return None
        end = np.minimum(docs.length, L)
        eod = docs.length < L
        pad = np.full(rows, L, np.int64)
        pad[:n] = L - end - eod
        truncated = int(np.maximum(docs.length - L, 0).sum())
        return StepPlan(rows, L, np.arange(n, dtype=np.int32), np.zeros(n, np.int64),
                        docs.source, docs.doc, np.zeros(n, np.int64), end, eod, pad, truncated)
