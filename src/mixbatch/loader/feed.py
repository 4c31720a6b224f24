"""The planned document stream: the exact interleaving rule over each source's reading order.

:class:`MixedFeed` is what shapers pull from (:class:`mixbatch.shape.DocFeed`). Its whole state
is the interleaver's counters and integrated targets plus one counter of documents drawn per
source: O(K), no buffer. To take "enough documents to cover P positions" it plans a chunk from
the current state, finds how many it needs, restores the state and plans exactly that many, so
the state after the call is the state after exactly those decisions (the rule's choices for a
prefix do not depend on how long the chunk is).

A source reaches its cap (``max_epochs``) or is empty: with ``on_exhausted: renormalize`` it is
dropped and the others' weights are renormalised (a source of weight 0 stays at 0); the stream
ends when no source with positive weight is left. With ``on_exhausted: stop`` the stream ends
when the first source with positive weight is exhausted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mixbatch.config import OnExhausted, Unit
from mixbatch.errors import MixbatchInternalError, StateError
from mixbatch.loader.order import SourceOrder
from mixbatch.plan.interleave import Interleaver
from mixbatch.shape.base import Docs
from mixbatch.store import TokenStore


class MixedFeed:
    """Documents of K sources, interleaved to follow the weights exactly (see module doc)."""

    def __init__(self, stores: list[TokenStore], orders: list[SourceOrder], unit: Unit,
                 on_exhausted: OnExhausted = OnExhausted.RENORMALIZE, chunk: int = 256,
                 second: bool = False) -> None:
        self.stores = stores
        self.orders = orders
        self.unit = unit
        self.on_exhausted = on_exhausted
        self.chunk = chunk
        self.max_look = 1 << 16
        self.K = len(stores)
        self.planner = Interleaver(self.K, unit=unit.value)
        self.consumed = np.zeros(self.K, dtype=np.int64)
        self.weights = np.full(self.K, 1.0 / self.K)
        self.ended = False
        self.max_deviation = 0.0  # largest |c_i(n) - W_i(n)| seen after any decision (in units)
        self._lengths = [np.asarray(s.lengths) for s in stores]
        # second lengths travel with the documents only for 2-D bucketing (``second``), which
        # the loader allows only when every store has them
        self._second = [np.asarray(s.second_lengths) for s in stores] if second else None
        self._mean_len = max(1.0, float(np.mean([max(s.num_tokens, 1) / max(len(s), 1)
                                                 for s in stores])))

    # ---- weights and availability --------------------------------------------------------
    def set_weights(self, weights: np.ndarray) -> None:
        self.weights = np.asarray(weights, dtype=np.float64)

    def _effective_weights(self) -> np.ndarray | None:
        """Weights over the sources still available, or None when the stream has ended."""
        avail = np.array([o.available(int(c)) != 0 for o, c in zip(self.orders, self.consumed,
                                                                     strict=True)])
        w = np.where(avail, self.weights, 0.0)
        if self.on_exhausted == OnExhausted.STOP and np.any(~avail & (self.weights > 0)):
            return None
        total = w.sum()
        return None if total <= 0 else w / total

    # ---- planning ------------------------------------------------------------------------
    def _plan(self, n: int, w: np.ndarray, look: int | None = None
              ) -> tuple[np.ndarray, list[np.ndarray], int]:
        """Choose up to ``n`` sources (mutates the planner); returns them, the upcoming doc ids
        and the look-ahead used.

        In token mode the rule needs to know the lengths of every document a source could be
        owed: when a source is behind by more than its listed documents, the rule stops early
        and we list twice as many. A prefix of choices does not depend on the look-ahead once
        the rule has not stopped, so a replan of fewer choices gives the same prefix."""
        look = n if look is None else look
        while True:
            upcoming = [o.upcoming(int(c), look) if w[i] > 0 else np.empty(0, np.int64)
                        for i, (o, c) in enumerate(zip(self.orders, self.consumed, strict=True))]
            if self.unit != Unit.TOKENS:
                return np.asarray(self.planner.choose(n, w), dtype=np.int32), upcoming, look
            saved = self.planner.state_dict()
            # an empty document (possible in token data read in place) still takes one position
            lens = [np.maximum(self._lengths[i][u], 1) for i, u in enumerate(upcoming)]
            final = [o.available(int(c)) is not None and len(u) == o.available(int(c))
                     for o, c, u in zip(self.orders, self.consumed, upcoming, strict=True)]
            src = self.planner.choose_tokens(w, lens, n, final=final)
            listed_all = all(len(u) < look for i, u in enumerate(upcoming) if w[i] > 0)
            if len(src) >= n or listed_all or look >= self.max_look:
                return np.asarray(src, dtype=np.int32), upcoming, look
            self.planner.load_state_dict(saved)
            look *= 2

    def _docs_for(self, src: np.ndarray, upcoming: list[np.ndarray]) -> Docs:
        """Which document each choice reads: the j-th choice of source s is its j-th upcoming."""
        order = np.argsort(src, kind="stable")
        counts = np.bincount(src, minlength=self.K)
        rank_in_source = np.empty(len(src), dtype=np.int64)
        rank_in_source[order] = np.arange(len(src)) - np.repeat(np.cumsum(counts) - counts, counts)
        doc = np.empty(len(src), dtype=np.int64)
        for s in np.flatnonzero(counts):
            m = src == s
            doc[m] = upcoming[s][rank_in_source[m]]
        length = np.empty(len(src), dtype=np.int64)
        second = None if self._second is None else np.empty(len(src), dtype=np.int64)
        for s in np.flatnonzero(counts):
            m = src == s
            length[m] = self._lengths[s][doc[m]]
            if second is not None:
                second[m] = self._second[s][doc[m]]  # type: ignore[index]
        return Docs(src, doc, length, second)

    def _cut_at_exhaustion(self, src: np.ndarray, upcoming: list[np.ndarray]) -> int:
        """How many choices are valid: stop right after a source's last available document."""
        cut = len(src)
        for s in range(self.K):
            if self.orders[s].available(int(self.consumed[s])) is None:
                continue
            picks = np.flatnonzero(src == s)
            if len(picks) >= len(upcoming[s]) and len(picks) > 0 and len(upcoming[s]) > 0:
                cut = min(cut, int(picks[len(upcoming[s]) - 1]) + 1)
            elif len(upcoming[s]) == 0 and len(picks) > 0:
                cut = min(cut, int(picks[0]))
        return cut

    def _take(self, n_max: int, need_positions: int | None, extra: int) -> Docs:
        parts: list[Docs] = []
        got = 0
        covered = 0
        while not self.ended:
            w = self._effective_weights()
            if w is None:
                self.ended = True
                break
            if need_positions is None:
                n = n_max - got
            else:
                est = int((need_positions - covered) / (self._mean_len + extra)) + 8
                n = min(max(est, 8), self.chunk)
            if n <= 0:
                break
            saved = self.planner.state_dict()
            c0, t0 = self.planner.counts, self.planner.target
            src, upcoming, look = self._plan(n, w)
            if len(src) == 0:
                # nothing can be chosen: only capped sources were left and they are used up
                if all(o.available(int(c)) is not None for o, c, wi in
                       zip(self.orders, self.consumed, w, strict=True) if wi > 0):
                    self.ended = True
                    break
                raise MixbatchInternalError("feed: the planner chose nothing from sources that "
                                            "are not capped; please report this")
            k = self._cut_at_exhaustion(src, upcoming)
            docs = self._docs_for(src[:k], upcoming)
            if need_positions is not None:
                cum = np.cumsum(docs.length + extra)
                hit = int(np.searchsorted(cum, need_positions - covered))
                if hit < len(docs):
                    k = hit + 1
            if k < len(src):  # replan exactly k choices so the state reflects only those
                self.planner.load_state_dict(saved)
                src, upcoming, _ = self._plan(k, w, look=look)
                docs = self._docs_for(src[:k], upcoming)
            docs = docs.slice(0, k)
            self._track_deviation(docs, w, c0, t0)
            self.consumed += np.bincount(docs.source, minlength=self.K)
            parts.append(docs)
            got += len(docs)
            covered += int((docs.length + extra).sum())
            if need_positions is None and got >= n_max:
                break
            if need_positions is not None and covered >= need_positions:
                break
        return Docs.concat(parts)

    def _track_deviation(self, docs: Docs, w: np.ndarray, c0: np.ndarray, t0: np.ndarray) -> None:
        """Largest |c_i(n) - W_i(n)| over every prefix of these decisions (vectorised)."""
        if len(docs) == 0:
            return
        units = (np.maximum(docs.length, 1) if self.unit == Unit.TOKENS
                 else np.ones(len(docs), np.int64))
        onehot = np.zeros((len(docs), self.K))
        onehot[np.arange(len(docs)), docs.source] = units
        c = c0.astype(np.float64) + np.cumsum(onehot, axis=0)
        target = t0 + np.cumsum(units)[:, None] * w[None, :]
        self.max_deviation = max(self.max_deviation, float(np.abs(c - target).max()))

    # ---- DocFeed -------------------------------------------------------------------------
    def take(self, n: int) -> Docs:
        return self._take(n, None, 0)

    def take_covering(self, positions: int, extra_per_doc: int) -> Docs:
        return self._take(0, positions, extra_per_doc)

    # ---- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"planner": self.planner.state_dict(), "consumed": self.consumed.tolist(),
                "ended": self.ended, "max_deviation": self.max_deviation}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            consumed = np.asarray(state["consumed"], dtype=np.int64)
            if consumed.shape != (self.K,) or np.any(consumed < 0):
                raise ValueError(f"consumed must be {self.K} counts >= 0")
            self.planner.load_state_dict(state["planner"])
            self.ended = bool(state["ended"])
            self.max_deviation = float(state["max_deviation"])
        except (KeyError, TypeError, ValueError) as e:
            raise StateError(f"loader state: stream section is malformed ({e})") from None
        self.consumed = consumed
