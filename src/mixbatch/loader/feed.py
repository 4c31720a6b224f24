"""The planned document stream: the exact interleaving rule over each source's reading order.

:class:`MixedFeed` is what shapers pull from (:class:`mixbatch.shape.DocFeed`). Its whole state
is the interleaver's counters and integrated targets plus one counter of documents drawn per
source: O(K), no buffer. To take "enough documents to cover P positions" it plans a chunk from
the current state, finds how many it needs, restores the state and plans exactly that many, so
the state after the call is the state after exactly those decisions (the rule's choices for a
prefix do not depend on how long the chunk is).

**Pieces** (token mode, ``piece_len = seq_len``). The planner's bound in token mode is one
planning unit (:mod:`mixbatch.plan.interleave`), and documents of 10^5-10^6 tokens are common;
so a document of ``n`` tokens is planned as ``max(1, ceil(n / piece_len))`` consecutive pieces
of the same source, tokens ``[j·piece_len, min((j+1)·piece_len, n))``, the last one followed
by the end-of-document token. Each piece is one decision of the rule, so every prefix of the
stream holds every source within one piece (at most ``piece_len`` tokens) of its target. A
source's pieces come in order, a document's pieces in order, but other sources' pieces may
come between them. The state gains one counter per source, ``part``: the pieces of the
document at the source's cursor already taken (``consumed`` counts finished documents). In
sample mode (and with ``piece_len=None``) the units are whole documents, and the bound is one
document (one sample) as before. With ``unit_multiple = m`` (``packing: buckets``, ``m =
min_len``) a piece counts for its tokens rounded down to a multiple of ``m``: the tokens that
shaper trains on, so the planned mixture is the fed one.

A source reaches its cap (``max_epochs``) or is empty: with ``on_exhausted: renormalize`` it is
dropped and the others' weights are renormalised (a source of weight 0 stays at 0); the stream
ends when no source with positive weight is left. With ``on_exhausted: stop`` the stream ends
when the first source with positive weight is exhausted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixbatch.config import OnExhausted, Unit
from mixbatch.errors import ConfigError, MixbatchInternalError, StateError
from mixbatch.loader.order import SourceOrder
from mixbatch.plan.interleave import Interleaver, WeightPath
from mixbatch.ranges import group_ranks
from mixbatch.shape.base import Docs
from mixbatch.store import TokenStore


@dataclass(frozen=True)
class _Pieces:
    """A source's next planning units: per unit, its document's place among the listed
    documents (``k``, 0 = the document at the source's cursor), the document, its token span
    ``[start, end)`` and whether it is the document's last piece (its end token follows)."""

    k: np.ndarray
    doc: np.ndarray
    start: np.ndarray
    end: np.ndarray
    last: np.ndarray

    def __len__(self) -> int:
        return int(self.k.shape[0])

    def slice(self, a: int, b: int) -> _Pieces:
        return _Pieces(self.k[a:b], self.doc[a:b], self.start[a:b], self.end[a:b],
                       self.last[a:b])

    @staticmethod
    def empty() -> _Pieces:
        z = np.empty(0, np.int64)
        return _Pieces(z, z, z, z, np.empty(0, bool))


class MixedFeed:
    """Documents of K sources, interleaved to follow the weights exactly (see module doc)."""

    def __init__(self, stores: list[TokenStore], orders: list[SourceOrder], unit: Unit,
                 on_exhausted: OnExhausted = OnExhausted.RENORMALIZE, chunk: int = 256,
                 second: bool = False, piece_len: int | None = None,
                 unit_multiple: int = 1) -> None:
        if piece_len is not None and (isinstance(piece_len, bool) or piece_len < 1):
            raise ConfigError(f"piece_len: must be an integer >= 1, got {piece_len!r}")
        self.stores = stores
        self.orders = orders
        self.unit = unit
        self.on_exhausted = on_exhausted
        self.chunk = chunk
        self.max_look = 1 << 16
        self.K = len(stores)
        self.planner = Interleaver(self.K, unit=unit.value)
        self.consumed = np.zeros(self.K, dtype=np.int64)  # documents finished, per source
        # token mode plans pieces of at most piece_len tokens; part[i]: pieces of source i's
        # document at its cursor already taken (0 when the cursor is at a document's start)
        # (2-D bucketing keeps documents whole: a document and its second sequence are one
        # sample)
        self.piece_len = int(piece_len) if piece_len is not None and unit == Unit.TOKENS \
            and not second else None
        self.part = np.zeros(self.K, dtype=np.int64)
        # what a piece counts for the mixture: its tokens rounded down to a multiple of this
        # (``packing: buckets`` trains on pieces of 2^k >= min_len only, and drops the rest)
        self.unit_multiple = max(int(unit_multiple), 1)
        self.weights = np.full(self.K, 1.0 / self.K)
        # a schedule's stages in the planner's clock, read ahead by the rule (set by the loader
        # when the schedule's clock is the planner's); its weights then replace ``weights``
        self.path: WeightPath | None = None
        self._avail = np.ones(self.K, dtype=bool)
        self.ended = False
        self.max_deviation = 0.0  # largest |c_i(n) - W_i(n)| seen after any decision (in units)
        self._lengths = [np.asarray(s.lengths) for s in stores]
        # second lengths travel with the documents only for 2-D bucketing (``second``), which
        # the loader allows only when every store has them
        self._second = [np.asarray(s.second_lengths) for s in stores] if second else None
        self._mean_len = max(1.0, float(np.mean([max(s.num_tokens, 1) / max(len(s), 1)
                                                 for s in stores])))
        if self.piece_len is not None:
            self._mean_len = min(self._mean_len, float(self.piece_len))

    # ---- weights and availability --------------------------------------------------------
    def set_weights(self, weights: np.ndarray) -> None:
        self.weights = np.asarray(weights, dtype=np.float64)

    def _effective_weights(self) -> np.ndarray | None:
        """Weights over the sources still available, or None when the stream has ended."""
        avail = np.array([o.available(int(c)) != 0 for o, c in zip(self.orders, self.consumed,
                                                                     strict=True)])
        self._avail = avail
        base = self.weights if self.path is None else self.path.at(self.planner.total)
        w = np.where(avail, base, 0.0)
        if self.on_exhausted == OnExhausted.STOP and np.any(~avail & (base > 0)):
            return None
        total = w.sum()
        return None if total <= 0 else w / total

    # ---- planning ------------------------------------------------------------------------
    def _upcoming(self, i: int, look: int) -> tuple[_Pieces, bool]:
        """Source ``i``'s next ``look`` planning units (pieces, or whole documents) and whether
        they are all it has left (a capped source listed to its end)."""
        o, c = self.orders[i], int(self.consumed[i])
        part = int(self.part[i])
        docs = o.upcoming(c, look)
        left = o.available(c)
        lens = self._lengths[i][docs].astype(np.int64, copy=False)
        L = self.piece_len
        if L is None:
            units = _Pieces(np.arange(len(docs), dtype=np.int64), docs, np.zeros(len(docs),
                            np.int64), lens, np.ones(len(docs), bool))
            return units, left is not None and len(docs) == left
        per = np.maximum((lens + L - 1) // L, 1)  # pieces of <= L tokens, at least one
        enough = int(np.searchsorted(np.cumsum(per), part + look)) + 1  # documents needed
        if enough < len(docs):
            docs, lens, per = docs[:enough], lens[:enough], per[:enough]
        k = np.repeat(np.arange(len(docs), dtype=np.int64), per)
        j = group_ranks(per)
        start = j * L
        end = np.minimum(start + L, lens[k])
        last = j == per[k] - 1
        units = _Pieces(k, docs[k], start, end, last).slice(part, part + look)
        whole = part + look >= len(k)
        return units, left is not None and len(docs) == left and whole

    def _plan(self, n: int, w: np.ndarray, look: int | None = None
              ) -> tuple[np.ndarray, list[_Pieces], int]:
        """Choose up to ``n`` sources (mutates the planner); returns them, the upcoming units
        (pieces or documents) of every source and the look-ahead used.

        In token mode the rule needs to know the lengths of every unit a source could be
        owed: when a source is behind by more than its listed units, the rule stops early
        and we list twice as many. A prefix of choices does not depend on the look-ahead once
        the rule has not stopped, so a replan of fewer choices gives the same prefix."""
        look = n if look is None else look
        path, avail = self.path, self._avail
        live = w > 0 if path is None else (w > 0) | ((path.weights > 0).any(axis=0) & avail)
        while True:
            listed = [self._upcoming(i, look) if live[i] else (_Pieces.empty(), False)
                      for i in range(self.K)]
            upcoming = [u for u, _ in listed]
            if self.unit != Unit.TOKENS:
                src = self.planner.choose(n, w, avail if path is not None else None, path=path)
                return np.asarray(src, dtype=np.int32), upcoming, look
            saved = self.planner.state_dict()
            # an empty document (possible in token data read in place) still takes one position
            lens = [self._units(u.end - u.start) for u in upcoming]
            final = [f for _, f in listed]
            src = self.planner.choose_tokens(w, lens, n, avail if path is not None else None,
                                             final=final, path=path)
            listed_all = all(len(u) < look for i, u in enumerate(upcoming) if live[i])
            if len(src) >= n or listed_all or look >= self.max_look:
                return np.asarray(src, dtype=np.int32), upcoming, look
            self.planner.load_state_dict(saved)
            look *= 2

    def _units(self, tokens: np.ndarray) -> np.ndarray:
        """What each unit counts for the mixture in token mode: its tokens (rounded down to a
        multiple of ``unit_multiple``), at least 1 (an empty document still takes a decision)."""
        if self.unit_multiple > 1:
            tokens = tokens - tokens % self.unit_multiple
        return np.maximum(tokens, 1)

    def _docs_for(self, src: np.ndarray, upcoming: list[_Pieces]) -> Docs:
        """What each choice reads: the j-th choice of source s is its j-th upcoming unit."""
        order = np.argsort(src, kind="stable")
        counts = np.bincount(src, minlength=self.K)
        rank_in_source = np.empty(len(src), dtype=np.int64)
        rank_in_source[order] = group_ranks(counts)
        doc = np.empty(len(src), dtype=np.int64)
        start = np.empty(len(src), dtype=np.int64)
        end = np.empty(len(src), dtype=np.int64)
        eod = np.empty(len(src), dtype=bool)
        length = np.empty(len(src), dtype=np.int64)
        second = None if self._second is None else np.empty(len(src), dtype=np.int64)
        for s in np.flatnonzero(counts):
            m = src == s
            u, r = upcoming[s], rank_in_source[m]
            doc[m] = d = u.doc[r]
            start[m], end[m], eod[m] = u.start[r], u.end[r], u.last[r]
            length[m] = self._lengths[s][d]
            if second is not None:
                second[m] = self._second[s][d]  # type: ignore[index]
        if self.piece_len is None:
            return Docs(src, doc, length, second)
        return Docs(src, doc, length, second, start, end, eod)

    def _cut_at_exhaustion(self, src: np.ndarray, upcoming: list[_Pieces]) -> int:
        """How many choices are valid: stop right after a source's last available unit."""
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

    def _advance(self, src: np.ndarray, upcoming: list[_Pieces]) -> None:
        """Move every source's cursor (documents finished, pieces of the next one taken) past
        the units just taken."""
        counts = np.bincount(src, minlength=self.K)
        for s in np.flatnonzero(counts):
            u, m = upcoming[s], int(counts[s])
            k, last, j = int(u.k[m - 1]), bool(u.last[m - 1]), int(u.start[m - 1])
            if self.piece_len is None or last:
                self.consumed[s] += k + 1
                self.part[s] = 0
            else:
                # k documents before it are finished; of this one, pieces up to j are taken
                self.consumed[s] += k
                self.part[s] = j // self.piece_len + 1

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
                cum = np.cumsum(docs.positions(extra))
                hit = int(np.searchsorted(cum, need_positions - covered))
                if hit < len(docs):
                    k = hit + 1
            if k < len(src):  # replan exactly k choices so the state reflects only those
                self.planner.load_state_dict(saved)
                src, upcoming, _ = self._plan(k, w, look=look)
                docs = self._docs_for(src[:k], upcoming)
            docs = docs.slice(0, k)
            self._track_deviation(docs, w, c0, t0)
            self._advance(src[:k], upcoming)
            parts.append(docs)
            got += len(docs)
            covered += int(docs.positions(extra).sum())
            if need_positions is None and got >= n_max:
                break
            if need_positions is not None and covered >= need_positions:
                break
        return Docs.concat(parts)

    def _track_deviation(self, docs: Docs, w: np.ndarray, c0: np.ndarray, t0: np.ndarray) -> None:
        """Largest |c_i(n) - W_i(n)| over every prefix of these decisions (vectorised)."""
        if len(docs) == 0:
            return
        units = (self._units(docs.tokens) if self.unit == Unit.TOKENS
                 else np.ones(len(docs), np.int64))
        onehot = np.zeros((len(docs), self.K))
        onehot[np.arange(len(docs)), docs.source] = units
        c = c0.astype(np.float64) + np.cumsum(onehot, axis=0)
        if self.path is None:
            target = t0 + np.cumsum(units)[:, None] * w[None, :]
        else:  # the stages read ahead: the target bends where they change
            u0 = int(c0.sum())
            clocks = u0 + np.cumsum(units)
            g = self.path.integral(np.concatenate([[u0], clocks]), self._avail)
            target = t0 + (g[1:] - g[0])
        self.max_deviation = max(self.max_deviation, float(np.abs(c - target).max()))

    # ---- DocFeed -------------------------------------------------------------------------
    def take(self, n: int) -> Docs:
        return self._take(n, None, 0)

    def take_covering(self, positions: int, extra_per_doc: int) -> Docs:
        return self._take(0, positions, extra_per_doc)

    # ---- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"planner": self.planner.state_dict(), "consumed": self.consumed.tolist(),
                "part": self.part.tolist(), "ended": self.ended,
                "max_deviation": self.max_deviation}

    def _counts(self, value: Any, where: str) -> np.ndarray:
        """``K`` integer counts >= 0 (never a float, a bool or a number past int64)."""
        if not isinstance(value, list | tuple) or len(value) != self.K or any(
                isinstance(v, bool) or not isinstance(v, int | np.integer) or not 0 <= v < 2**63
                for v in value):
            raise StateError(f"{where}: expected {self.K} integer counts >= 0, got "
                             f"{str(value)[:80]}")
        return np.asarray(value, dtype=np.int64)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        where = "loader state.feed"
        if not isinstance(state, dict):
            raise StateError(f"{where}: expected a mapping, got {type(state).__name__}")
        missing = [k for k in ("consumed", "planner", "ended", "max_deviation") if k not in state]
        if missing:
            raise StateError(f"{where}: missing {', '.join(missing)}")
        consumed = self._counts(state["consumed"], f"{where}.consumed")
        part = self._counts(state.get("part", [0] * self.K), f"{where}.part")
        if self.piece_len is None and np.any(part > 0):
            raise StateError(f"{where}.part: pieces in a state of a stream without pieces")
        if not isinstance(state["ended"], bool):
            raise StateError(f"{where}.ended: expected true or false, got {state['ended']!r}")
        dev = state["max_deviation"]
        if isinstance(dev, bool) or not isinstance(dev, int | float) or not math.isfinite(dev) \
                or dev < 0:
            raise StateError(f"{where}.max_deviation: expected a finite number >= 0, got {dev!r}")
        try:
            self.planner.load_state_dict(state["planner"])
        except (KeyError, TypeError, ValueError) as e:
            raise StateError(f"{where}.planner: malformed ({e})") from None
        self.ended = state["ended"]
        self.max_deviation = float(dev)
        self.consumed = consumed
        self.part = part
