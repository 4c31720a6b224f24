"""Pair counts of a category sample at every step of a merge list, compiled (numba).

"Data Mixture Inference: What do BPE Tokenizers Reveal about their Training Data?" (Hayase,
Liu et al., 2024) needs c_{i,p}^{(t)}: how often pair p occurs in category i's sample after the
first t−1 merges. The reference computes it with a fork of the tokenizers trainer that applies
the given merges instead of choosing them; here each distinct pre-tokenised word (with its
count) is replayed on its own: at time t merge m(t) is applied to the word if the word holds
the pair (the global semantics of the trainer, so odd merge lists are handled the same way), and
the change of the word's pair multiset is recorded as events ``(t, pair, ±count)``. Time 0
holds the initial counts. Summing events of time < t gives c^{(t)}.

Cost: O(Σ_words L² log M) for words of L symbols and M merges; the events are aggregated per
(t, pair) with one sort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _grow(a: np.ndarray, n: int) -> np.ndarray:
    if n < len(a):
        return a
    b = np.empty(max(2 * len(a), n + 1), dtype=a.dtype)
    b[: len(a)] = a
    return b


@njit(cache=True, nogil=True)
def _replay_words(sym: np.ndarray, off: np.ndarray, cnt: np.ndarray, keys: np.ndarray,
                  rank: np.ndarray, left: np.ndarray, right: np.ndarray, result: np.ndarray,
                  n_sym: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Events ``(t, pair key, delta)`` of every word; ``keys`` sorted, ``rank`` 1-based."""
    cap = 1024
    ev_t = np.empty(cap, dtype=np.int64)
    ev_k = np.empty(cap, dtype=np.int64)
    ev_d = np.empty(cap, dtype=np.int64)
    n = 0
    nk = len(keys)
    maxlen = 2
    for w in range(len(off) - 1):
        maxlen = max(maxlen, off[w + 1] - off[w])
    buf = np.empty(maxlen, dtype=np.int64)
    tmp = np.empty(maxlen, dtype=np.int64)
    old = np.empty(maxlen, dtype=np.int64)
    new = np.empty(maxlen, dtype=np.int64)
    big = np.iinfo(np.int64).max
    for w in range(len(off) - 1):
        length = off[w + 1] - off[w]
        c = cnt[w]
        for j in range(length):
            buf[j] = sym[off[w] + j]
        for j in range(length - 1):
            if n + 1 >= len(ev_t):
                ev_t, ev_k, ev_d = _grow(ev_t, n + 1), _grow(ev_k, n + 1), _grow(ev_d, n + 1)
            ev_t[n] = 0
            ev_k[n] = buf[j] * n_sym + buf[j + 1]
            ev_d[n] = c
            n += 1
        last = 0
        while length >= 2:
            best = big
            at = -1
            for j in range(length - 1):
                k = buf[j] * n_sym + buf[j + 1]
                pos = np.searchsorted(keys, k)
                if pos < nk and keys[pos] == k:
                    r = rank[pos]
                    if last < r < best:
                        best = r
                        at = pos
            if at < 0:
                break
            a, b, x = left[at], right[at], result[at]
            for j in range(length - 1):
                old[j] = buf[j] * n_sym + buf[j + 1]
            m = 0
            j = 0
            while j < length:
                if j < length - 1 and buf[j] == a and buf[j + 1] == b:
                    tmp[m] = x
                    j += 2
                else:
                    tmp[m] = buf[j]
                    j += 1
                m += 1
            for j in range(m - 1):
                new[j] = tmp[j] * n_sym + tmp[j + 1]
            o = np.sort(old[: length - 1])
            q = np.sort(new[: max(m - 1, 0)])
            i1 = 0
            i2 = 0
            while i1 < len(o) or i2 < len(q):
                if n + 1 >= len(ev_t):
                    ev_t, ev_k, ev_d = _grow(ev_t, n + 1), _grow(ev_k, n + 1), _grow(ev_d, n + 1)
                if i1 < len(o) and i2 < len(q) and o[i1] == q[i2]:
                    i1 += 1
                    i2 += 1
                    continue
                if i2 >= len(q) or (i1 < len(o) and o[i1] < q[i2]):
                    ev_t[n] = best
                    ev_k[n] = o[i1]
                    ev_d[n] = -c
                    i1 += 1
                else:
                    ev_t[n] = best
                    ev_k[n] = q[i2]
                    ev_d[n] = c
                    i2 += 1
                n += 1
            for j in range(m):
                buf[j] = tmp[j]
            length = m
            last = best
    return ev_t, ev_k, ev_d, n


@dataclass
class MergeTable:
    """A merge list over integer symbols: pair key ``left * n_sym + right`` → 1-based rank."""

    keys: np.ndarray  # sorted pair keys
    rank: np.ndarray  # 1-based merge index of each key
    left: np.ndarray
    right: np.ndarray
    result: np.ndarray
    n_sym: int
    n_merges: int
    merge_key: np.ndarray  # pair key of merge t (index t-1)


def merge_table(merges: list[tuple[int, int, int]], n_sym: int) -> MergeTable:
    """``merges[t-1] = (left, right, result)`` symbol ids; a pair listed twice keeps its first
    rank."""
    arr = np.asarray(merges, dtype=np.int64).reshape(-1, 3)
    k = arr[:, 0] * n_sym + arr[:, 1]
    uniq, first = np.unique(k, return_index=True)
    return MergeTable(uniq, first.astype(np.int64) + 1, arr[first, 0], arr[first, 1],
                      arr[first, 2], n_sym, len(arr), k)


@dataclass
class PairEvents:
    """Aggregated events of one category: ``t`` ascending, then ``key``; ``pairs0`` = total
    pair count at time 0 (the normaliser)."""

    t: np.ndarray
    key: np.ndarray
    delta: np.ndarray
    pairs0: int
    bytes: int


def pair_events(words: np.ndarray, offsets: np.ndarray, counts: np.ndarray, table: MergeTable,
                n_bytes: int) -> PairEvents:
    """Replay ``table`` over the words (flat symbol ids, offsets, counts) of one sample."""
    ev_t, ev_k, ev_d, n = _replay_words(words, offsets, counts, table.keys, table.rank,
                                        table.left, table.right, table.result, table.n_sym)
    ev_t, ev_k, ev_d = ev_t[:n], ev_k[:n], ev_d[:n]
    order = np.lexsort((ev_k, ev_t))
    t, k, d = ev_t[order], ev_k[order], ev_d[order]
    if n:
        head = np.ones(n, dtype=bool)
        head[1:] = (t[1:] != t[:-1]) | (k[1:] != k[:-1])
        idx = np.flatnonzero(head)
        d = np.add.reduceat(d, idx)
        t, k = t[idx], k[idx]
        keep = d != 0
        t, k, d = t[keep], k[keep], d[keep]
    pairs0 = int(d[t == 0].sum())
    return PairEvents(t, k, d, pairs0, n_bytes)
