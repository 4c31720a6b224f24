r"""Hand out the rows (or batches) of a window so that the mixture follows the stream step by step.

A windowed shaper (``bfd``, ``pad_buckets``, ``buckets``) regroups the planned pieces of a window
into rows or batches whose order is free. Handed out in a random or length-sorted order, the
composition drifts away from the target inside the window (by up to the window's whole content
of one source) and comes back only at the window's end. Here the order follows the planned
stream instead.

**Target.** The window's pieces in stream order, ``(s_p, l_p)`` (source, tokens), define the
planned composition as a function of the tokens handed out, ``t``: ``C_i(t)`` is source
``i``'s tokens in the stream's first ``t`` tokens, a piece counted in proportion to the part of
it inside the prefix (continuous, piecewise linear). The planner keeps the stream within one
piece of the mixture target on every prefix (:mod:`mixbatch.plan.interleave`), so
``|c_i - W_i| <= |c_i - C_i(t)| + (one piece)`` after every item handed out.

**Rule** (greedy vector balancing; the deterministic, offline form of the "chairman assignment"
discrepancy problem of Tijdeman, "The chairman assignment problem", 1980, where every unit is a
whole vector of tokens per source). With ``c`` the tokens handed out per source and ``t`` their
sum, the next item is the one not yet handed out that minimises

.. math:: \max_i \big| c_i + x_{ji} - C_i(t + |x_j|) \big|,

ties broken by the sum of squares of the same differences, then by a keyed rank (so items of
equal composition keep a pseudo-random order). At the window's end every item is handed out,
so the window boundary is exact as before. The result is a pure function of the window.

**Repair** (``follow_order(..., repair=r)``; pad_buckets uses it). The greedy looks one item
ahead, so a window's last items are what it postponed: on real text pad_buckets' largest
deviation sat two steps before a window's end (2.07 ``seq_len``, benchmarks/RESULTS.md). A
local search then takes the worst step boundary (the window's end is exact and not counted)
and tries every swap of two items ``a < b`` around it, and every move of ``a`` to ``b``'s place
or of ``b`` to ``a``'s (the items between shift by one), where one of the two is at most ``r``
positions from the boundary; only the boundaries from ``a`` to ``b`` change. It makes the
change that lowers the largest deviation there the most, if it lowers it below the worst
boundary's and adds no group excess over the slack (below), and repeats (at most ``n`` times)
until no change helps or every boundary is within ``enough``. The largest deviation of the
window never grows. Every trial is built on the current order. Cost per round: at most
``O(r·n·span·K)``; :mod:`mixbatch.shape.follow_repair` finds the same changes rejecting most
trials at their first failing position without building them (measured ~0.02 ms per batch on
real text, benchmarks/RESULTS.md).

Cost: ``O(n·q·K)`` for ``n`` items of ``q`` kinds (items of the same composition, group and
size score alike, so only each kind's next item is a candidate; rows holding one full piece
of one source are one kind), compiled with numba; the stream's ``C_i(t)`` is located in a
table of its pieces. With one source every item scores 0 at every step (``c = t = C(t)``), so
the keyed rank alone orders them, without the greedy.
"""

from __future__ import annotations

import numba
import numpy as np

from mixbatch.shape.follow_repair import piece_table, repair_order, stream_piece

__all__ = ["Drift", "by_samples", "follow_counts", "follow_order", "plain_order",
           "stream_composition"]


def by_samples(feed: object) -> bool:
    """Whether the feed mixes by samples (documents) rather than by tokens: a windowed
    shaper then follows the stream's documents, not its tokens."""
    unit = getattr(feed, "unit", None)
    return getattr(unit, "value", unit) == "samples"


def stream_composition(source: np.ndarray, tokens: np.ndarray,
                       num_sources: int) -> tuple[np.ndarray, np.ndarray]:
    """``(cum_tokens, cum_source)``: the stream's tokens before each piece and at its end
    (``P + 1``), and per source (``(P + 1, K)``)."""
    return _stream_composition(np.ascontiguousarray(source, dtype=np.int64),
                               np.ascontiguousarray(tokens, dtype=np.float64), int(num_sources))


@numba.njit(cache=True, nogil=True)
def _stream_composition(src: np.ndarray, tok: np.ndarray,
                        k: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    p = src.shape[0]
    cum_t = np.zeros(p + 1)
    cum_s = np.zeros((p + 1, k))
    for j in range(p):
        cum_t[j + 1] = cum_t[j] + tok[j]
        cum_s[j + 1] = cum_s[j]
        cum_s[j + 1, src[j]] += tok[j]
    return cum_t, cum_s


@numba.njit(cache=True, nogil=True)
def _follow(comp: np.ndarray, total: np.ndarray, tie: np.ndarray, cum_t: np.ndarray,
            cum_s: np.ndarray, src: np.ndarray, group: np.ndarray, size: np.ndarray,
            share: np.ndarray, slack: np.ndarray, members: np.ndarray,
            first: np.ndarray) -> np.ndarray:  # pragma: no cover
    """The greedy over *kinds* of items: items of one kind (same composition, group and size)
    score the same, so only each kind's next member (lowest ``tie``) is a candidate; the
    members of kind ``q`` are ``members[first[q]:first[q + 1]]``, by ``tie``."""
    n, k = comp.shape
    n_kinds = first.shape[0] - 1
    nxt = first[:-1].copy()
    table, unit = piece_table(cum_t)
    p_last = src.shape[0]
    c = np.zeros(k, dtype=np.float64)
    g_count = np.zeros(share.shape[0], dtype=np.float64)
    out = np.empty(n, dtype=np.int64)
    # kinds of equal tokens reach the same point of the stream: its target once per step
    tot = np.empty(n_kinds)
    for q in range(n_kinds):
        tot[q] = total[members[first[q]]]
    order = np.argsort(tot)
    tid = np.empty(n_kinds, dtype=np.int64)
    n_tot = 0
    for r in range(n_kinds):
        if r == 0 or tot[order[r]] != tot[order[r - 1]]:
            n_tot += 1
        tid[order[r]] = n_tot - 1
    target = np.empty((n_tot, k))
    stamp = np.full(n_tot, -1, dtype=np.int64)
    t = 0.0
    for step in range(n):
        best = -1
        b_kind = -1
        b_max = np.inf
        b_sq = np.inf
        b_tie = 0
        b_held = True
        for q in range(n_kinds):
            if nxt[q] >= first[q + 1]:
                continue
            j = members[nxt[q]]
            # an item whose group would run more than its slack ahead of the group's share
            # waits, unless every item left is held back
            g = group[j]
            held = g_count[g] + size[j] - share[g] * (t + size[j]) > slack[g]
            if held and not b_held:
                continue
            x = tid[q]
            if stamp[x] != step:  # C(t + tokens of the item)
                stamp[x] = step
                p, inside = stream_piece(cum_t, table, unit, t + total[j])
                for i in range(k):
                    target[x, i] = cum_s[p, i]
                    if p < p_last and src[p] == i:
                        target[x, i] += inside
            first_held = b_held and not held
            worst = 0.0
            sq = 0.0
            for i in range(k):
                d = c[i] + comp[j, i] - target[x, i]
                if d < 0:
                    d = -d
                if d > worst:
                    worst = d
                    if worst > b_max and not first_held:
                        break  # no better than the best so far
                sq += d * d
            if first_held or worst < b_max or (
                    worst == b_max and (sq < b_sq or (sq == b_sq and tie[j] < b_tie))):
                best, b_kind, b_max, b_sq, b_tie, b_held = j, q, worst, sq, tie[j], held
        nxt[b_kind] += 1
        out[step] = best
        for i in range(k):
            c[i] += comp[best, i]
        t += total[best]
        g_count[group[best]] += size[best]
    return out


@numba.njit(cache=True, nogil=True)
def _row_order(key: np.ndarray) -> np.ndarray:  # pragma: no cover (compiled)
    """Row indices sorted by the rows of ``key`` (first column first), equal rows in index
    order: ``np.lexsort(key.T[::-1])``, as a bottom-up merge sort."""
    n, m = key.shape
    idx = np.arange(n)
    tmp = np.empty(n, dtype=np.int64)
    width = 1
    while width < n:
        for lo in range(0, n, 2 * width):
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            i, j, o = lo, mid, lo
            while i < mid and j < hi:
                a, b = idx[i], idx[j]
                take_b = False
                for c in range(m):
                    if key[b, c] != key[a, c]:
                        take_b = key[b, c] < key[a, c]
                        break
                if take_b:
                    tmp[o] = b
                    j += 1
                else:
                    tmp[o] = a
                    i += 1
                o += 1
            while i < mid:
                tmp[o] = idx[i]
                i += 1
                o += 1
            while j < hi:
                tmp[o] = idx[j]
                j += 1
                o += 1
        idx, tmp = tmp, idx
        width *= 2
    return idx


@numba.njit(cache=True, nogil=True)
def _packed(key: np.ndarray) -> np.ndarray:  # pragma: no cover (compiled)
    """The rows of ``key`` as one integer each, ordered as the rows (first column first), when
    every value is a non-negative integer and they fit in 62 bits; else an empty array."""
    n, m = key.shape
    bits = np.zeros(m, dtype=np.int64)
    total = 0
    for c in range(m):
        top = 0.0
        for r in range(n):
            x = key[r, c]
            if x < 0 or x != np.floor(x) or x >= 2.0 ** 62:
                return np.empty(0, dtype=np.int64)
            top = max(top, x)
        b = 0
        while 2.0 ** b <= top:
            b += 1
        bits[c] = b
        total += b
    if total > 62:
        return np.empty(0, dtype=np.int64)
    out = np.zeros(n, dtype=np.int64)
    for r in range(n):
        v = 0
        for c in range(m):
            v = (v << bits[c]) | np.int64(key[r, c])
        out[r] = v
    return out


@numba.njit(cache=True, nogil=True)
def _kinds(comp: np.ndarray, gid: np.ndarray, sizes: np.ndarray,
           tie: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover (compiled)
    """Items grouped by kind (composition, group, size), each kind's members by ``tie``:
    ``(members, first)`` as :func:`_follow` reads them; kinds numbered as ``np.unique(key,
    axis=0)`` numbers the rows of ``key = [comp | gid | size]``."""
    n, k = comp.shape
    key = np.empty((n, k + 2))
    key[:, :k] = comp
    key[:, k] = gid
    key[:, k + 1] = sizes
    packed = _packed(key)
    rows = np.argsort(packed, kind="mergesort") if packed.shape[0] else _row_order(key)
    kind = np.empty(n, dtype=np.int64)
    q = 0
    for r in range(n):
        if r > 0:
            for c in range(k + 2):
                if key[rows[r], c] != key[rows[r - 1], c]:
                    q += 1
                    break
        kind[rows[r]] = q
    by = np.empty((n, 2))
    by[:, 0] = kind
    by[:, 1] = tie
    packed = _packed(by)
    members = np.argsort(packed, kind="mergesort") if packed.shape[0] else _row_order(by)
    first = np.empty(q + 2, dtype=np.int64)
    at = 0
    for g in range(q + 2):
        while at < n and kind[members[at]] < g:
            at += 1
        first[g] = at
    return members, first


@numba.njit(cache=True, nogil=True)
def _all_zero(comp: np.ndarray, cum_t: np.ndarray, tie: np.ndarray) -> bool:  # pragma: no cover
    """Whether, with one source, every item scores 0 at every step: then the tokens handed out
    equal the stream's at every prefix (``c = t = C(t)``), exactly when every sum is an exact
    integer and the items hold no more than the stream, and the greedy hands the items out
    by ``tie`` alone (distinct ranks)."""
    held = 0.0
    for x in comp.ravel():
        if x != np.floor(x):
            return False
        held += x
    for x in cum_t:
        if x != np.floor(x):
            return False
    if held > cum_t[cum_t.shape[0] - 1] or cum_t[cum_t.shape[0] - 1] >= 2.0 ** 52:
        return False
    ranks = np.sort(tie)
    return bool(np.all(ranks[1:] != ranks[:-1]))


@numba.njit(cache=True, nogil=True)
def plain_order(comp: np.ndarray, total: np.ndarray, tie: np.ndarray, stream_source: np.ndarray,
                stream_tokens: np.ndarray) -> np.ndarray:  # pragma: no cover (compiled)
    """:func:`follow_order` without groups and without the repair, in one compiled call
    (``total``: each item's tokens, ``comp.sum(axis=1)``; at least two items)."""
    n, k = comp.shape
    cum_t, cum_s = _stream_composition(stream_source, stream_tokens, k)
    if k == 1 and _all_zero(comp, cum_t, tie):
        return np.argsort(tie, kind="mergesort")
    gid = np.zeros(n, dtype=np.int64)
    sizes = np.zeros(n)
    members, first = _kinds(comp, gid, sizes, tie)
    return _follow(comp, total, tie, cum_t, cum_s, stream_source, gid, sizes, np.zeros(1),
                   np.full(1, np.inf), members, first)


def follow_order(composition: np.ndarray, tie: np.ndarray, stream_source: np.ndarray,
                 stream_tokens: np.ndarray, group: np.ndarray | None = None,
                 size: np.ndarray | None = None, repair: int = 0,
                 enough: float = 0.0) -> np.ndarray:
    """The order in which to hand out items (rows or batches) so that their running composition
    follows the stream (module docstring).

    ``composition[j, i]``: tokens of source ``i`` in item ``j``; ``tie[j]``: the item's rank
    among equals (a keyed order); ``stream_source`` / ``stream_tokens``: the window's pieces in
    stream order. With ``group`` (e.g. each batch's length bucket) and ``size`` (what an item
    counts for its group, e.g. its positions), an item whose group would get more than one item
    (its group's largest) ahead of the group's share of the sizes handed out waits while
    another item can go: groups stay interleaved, and among the items allowed the sources
    decide. With ``repair > 0`` the greedy's order is then improved by the local search of the
    module docstring ("Repair"; ``repair`` is how near the worst boundary one of the two
    items moved must be, ``enough`` the deviation in the stream's units at which it stops).
    Returns a permutation of the items."""
    comp = np.ascontiguousarray(composition, dtype=np.float64)
    n = comp.shape[0]
    if n <= 1:
        return np.arange(n, dtype=np.int64)
    total = comp.sum(axis=1)
    tie = np.ascontiguousarray(tie, dtype=np.int64)
    src = np.ascontiguousarray(stream_source, dtype=np.int64)
    if group is None and repair <= 0:
        return plain_order(comp, total, tie, src,
                           np.ascontiguousarray(stream_tokens, dtype=np.float64))
    cum_t, cum_s = stream_composition(stream_source, stream_tokens, comp.shape[1])
    if comp.shape[1] == 1 and group is None and _all_zero(comp, cum_t, tie):
        return np.argsort(tie)
    if group is None:
        gid = np.zeros(n, dtype=np.int64)
        sizes = np.zeros(n)
        share = np.zeros(1)
        slack = np.full(1, np.inf)
    else:
        _, gid = np.unique(np.asarray(group), return_inverse=True)
        gid = gid.astype(np.int64).ravel()
        sizes = np.asarray(total if size is None else size, dtype=np.float64)
        per = np.bincount(gid, weights=sizes)
        share = per / max(per.sum(), 1e-300)
        slack = np.zeros(per.size)
        np.maximum.at(slack, gid, sizes)
        slack *= 2.0
    sizes = np.ascontiguousarray(sizes, dtype=np.float64)
    members, first = _kinds(comp, gid, sizes, tie)
    order = _follow(comp, total, tie, cum_t, cum_s, src, gid, sizes, share, slack, members,
                    first)
    if repair > 0:
        order = repair_order(order, int(repair), float(enough), comp, total, cum_t, cum_s,
                             src, gid, sizes, share, slack)
    return order


@numba.njit(cache=True, nogil=True)
def _follow_counts(step_group: np.ndarray, step_items: np.ndarray, item_tokens: np.ndarray,
                   avail: np.ndarray, cum_t: np.ndarray, cum_s: np.ndarray, src: np.ndarray,
                   c0: np.ndarray, weights: np.ndarray, pace: np.ndarray,
                   slack: float) -> np.ndarray:  # pragma: no cover (compiled)
    n_steps = step_group.shape[0]
    n_groups, k = avail.shape
    p_last = src.shape[0]
    linear = weights.shape[0] > 0
    left = avail.copy()
    # items each group hands out so far, against `pace` (what each source gives each group
    # over the window): a source may run ahead of its pace by at most `slack` tokens, so
    # that a group's last steps are not left with one source only
    group_done = np.zeros(n_groups, dtype=np.float64)
    held = np.zeros(n_groups, dtype=np.float64)
    for g in range(n_groups):
        for i in range(k):
            held[g] += pace[g, i]
    out = np.zeros((n_steps, k), dtype=np.int64)
    c = c0.copy()
    target = np.zeros(k, dtype=np.float64)
    t = 0.0
    for j in range(n_steps):
        g = step_group[j]
        size = item_tokens[g]
        t += step_items[j] * size
        if linear:
            for i in range(k):
                target[i] = weights[i] * t
        elif t >= cum_t[p_last]:
            for i in range(k):
                target[i] = cum_s[p_last, i]
        else:
            p = np.searchsorted(cum_t, t, side="right") - 1
            for i in range(k):
                target[i] = cum_s[p, i]
            target[src[p]] += t - cum_t[p]
        group_done[g] += step_items[j]
        share = group_done[g] / max(held[g], 1.0)
        for _ in range(step_items[j]):
            best = -1
            most = -np.inf
            for i in range(k):
                if left[g, i] <= 0:
                    continue
                ahead = (avail[g, i] - left[g, i] + 1 - pace[g, i] * share) * size
                score = target[i] - c[i]
                if ahead > slack:
                    score -= 1e18  # only when no source within its slack has items left
                if score > most:
                    best, most = i, score
            left[g, best] -= 1
            out[j, best] += 1
            c[best] += size
    return out


def follow_counts(step_group: np.ndarray, step_items: np.ndarray, item_tokens: np.ndarray,
                  avail: np.ndarray, stream_source: np.ndarray, stream_tokens: np.ndarray,
                  offset: np.ndarray | None = None, weights: np.ndarray | None = None,
                  slack: float = np.inf) -> np.ndarray:
    """How many items of each source every step takes, when the steps' groups are fixed.

    Step ``j`` takes ``step_items[j]`` items of group ``step_group[j]`` (e.g. a length bucket),
    each of ``item_tokens[group]`` tokens; ``avail[g, i]`` items of group ``g`` come from source
    ``i``. Item by item, the step gives the next one to the available source furthest behind
    its target at the step's end, so the running composition follows the target as closely as
    the groups' contents allow. The target is the stream's ``C_i(t)`` (module docstring), or
    ``weights[i] · t`` when ``weights`` are given; ``offset[i]`` is how far ahead of it source
    ``i`` already is (from earlier windows). With a finite ``slack`` (tokens) the counts are
    planned twice: first freely, then with no source more than ``slack`` ahead of its pace in
    a group, the pace being the first plan's share of that group spread evenly over the
    group's steps (so a group's last steps are not left with the sources nobody wanted).
    Returns ``(steps, K)`` counts;
    ``sum(step_items)`` must not exceed what the groups hold."""
    k = avail.shape[1]
    cum_t, cum_s = stream_composition(stream_source, stream_tokens, k)
    c0 = np.zeros(k) if offset is None else np.asarray(offset, dtype=np.float64)
    w = np.empty(0) if weights is None else np.asarray(weights, dtype=np.float64)
    args = (np.ascontiguousarray(step_group, dtype=np.int64),
            np.ascontiguousarray(step_items, dtype=np.int64),
            np.ascontiguousarray(item_tokens, dtype=np.float64),
            np.ascontiguousarray(avail, dtype=np.int64), cum_t, cum_s,
            np.ascontiguousarray(stream_source, dtype=np.int64),
            np.ascontiguousarray(c0), np.ascontiguousarray(w))
    # first without a pace: what each source would give each group over the window when it
    # follows the target alone; then with that as the pace, within `slack`
    free = _follow_counts(*args, np.ascontiguousarray(avail, dtype=np.float64), np.inf)
    if not np.isfinite(slack):
        return free
    pace = np.zeros(avail.shape, dtype=np.float64)
    np.add.at(pace, args[0], free)
    return _follow_counts(*args, pace, float(slack))


class Drift:
    """Tokens fed per source minus the mixture target, carried from window to window.

    A windowed shaper plans a window against ``w_i · t - drift_i`` (``t``: tokens it feeds in
    the window), where ``drift`` is what the windows before left over; after planning it knows
    the drift at the window's end, which becomes the next window's once the window closes.
    The state is ``K`` numbers (the drift at the current window's start)."""

    def __init__(self) -> None:
        self.start: list[float] = []
        self.end: list[float] = []

    def offset(self, k: int) -> np.ndarray:
        out = np.zeros(k)
        n = min(k, len(self.start))
        out[:n] = self.start[:n]
        return out

    @staticmethod
    def weights(feed_weights: list[float] | None, source: np.ndarray, tokens: np.ndarray,
                k: int) -> np.ndarray:
        """The target weights: the feed's when the window was pulled, else (a feed without
        weights) the window's own composition."""
        if feed_weights is not None and len(feed_weights) >= k and sum(feed_weights[:k]) > 0:
            w = np.asarray(feed_weights[:k], dtype=np.float64)
            return w / w.sum()
        w = np.bincount(source, weights=tokens, minlength=k).astype(np.float64)[:k]
        return w / max(w.sum(), 1.0)

    def planned(self, offset: np.ndarray, fed: np.ndarray, weights: np.ndarray) -> None:
        """The window's plan feeds ``fed`` tokens per source."""
        self.end = (offset + fed - weights * fed.sum()).tolist()

    def close(self) -> None:
        self.start = self.end

    def state_dict(self) -> list[float]:
        return list(self.start)

    def load_state_dict(self, value: object) -> None:
        """Raise ValueError / TypeError when malformed."""
        drift = [float(x) for x in value]  # type: ignore[attr-defined]
        if not all(np.isfinite(drift)):
            raise ValueError("drift must be finite numbers")
        self.start = self.end = drift
