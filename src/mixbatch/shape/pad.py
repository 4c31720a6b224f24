"""``packing: pad``: one document, or one piece of a document, per row, padded to ``seq_len``.

In token mode the feed plans long documents as pieces of at most ``seq_len`` tokens
(:class:`mixbatch.loader.feed.MixedFeed`), so a long document is split over several rows (its
pieces in order, possibly with rows of other sources between them) instead of being truncated:
no token is dropped, and at every step boundary the tokens fed per source are the planner's,
within one piece (``seq_len`` tokens) of the target. A piece takes its tokens and, when it ends
its document and there is room, the end-of-document token; the rest of the row is padding.

In sample mode a row is one whole sample: a document longer than ``seq_len`` is truncated to its
first ``seq_len`` tokens (no end token), and the dropped tokens are counted in
``StepPlan.truncated``. The last step of a finite stream may hold empty (all-padding) rows.
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
        start, tokens = docs.span_start, docs.tokens
        end = start + np.minimum(tokens, L)
        eod = docs.span_eod & (tokens < L)
        pad = np.full(rows, L, np.int64)
        pad[:n] = L - (end - start) - eod
        truncated = int(np.maximum(tokens - L, 0).sum())
        return StepPlan(rows, L, np.arange(n, dtype=np.int32), np.zeros(n, np.int64),
                        docs.source, docs.doc, start, end, eod, pad, truncated)
