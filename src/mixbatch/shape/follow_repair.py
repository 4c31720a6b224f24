"""The local search that repairs a hand-out order (:mod:`mixbatch.shape.follow`, "Repair").

The search is the one the module docstring of :mod:`mixbatch.shape.follow` describes: take the
worst step boundary ``at``, try every swap of two items ``a <= at < b`` and every move of ``a``
to ``b``'s place or of ``b`` to ``a``'s (one of the two within ``near`` of the boundary), make
the change that lowers the largest deviation over ``a..b`` the most (first one found among
equals) if it adds no group excess, and repeat. This module finds the same change with far
fewer evaluations, by rejecting a trial as soon as *one* of its positions ``a..b`` is at or over
the best deviation found so far (such a trial can never be taken), without building it:

- a trial only shifts the states between ``a`` and ``b``: after position ``m`` of a swap the
  tokens per source are ``S(m+1) - x_a + x_b`` (``S``: the state after the first ``m`` items
  of the current order, ``x``: an item's tokens per source), after a move of ``a`` to ``b``
  they are ``S(m+2) - x_a``, after a move of ``b`` to ``a`` ``S(m) + x_b``, and at ``b`` they
  are ``S(b+1)`` in all three; so one position is one lookup of the stream's composition;
- a move of ``a`` shifts every position by the same ``x_a`` whatever ``b`` is, a move of ``b``
  by the same ``x_b`` whatever ``a`` is: the first failing position of each ``a`` (scanned
  forward) and the last of each ``b`` (scanned backward) are kept for the round and decide
  every other ``b`` (``a``) at once;
- a swap is tried at the worst boundary first, then at the position where the last swap
  failed, then outward from the boundary.

Only a trial that passes every position is built and scored in full (its deviation and its
group excess) exactly as before, so the search takes the same changes in the same order as the
plain search. With integer tokens (every shaper's case) all sums are exact in float64; with
fractional ones a position rejects only when it is over the best by more than the rounding of
``n`` sums can explain. The stream's composition ``C_i(t)`` is located in a lookup table of
the pieces (``O(1)`` for pieces of similar size) instead of a bisection.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["locate", "piece_table", "repair_order"]


@numba.njit(cache=True, nogil=True)
def piece_table(cum_t: np.ndarray) -> tuple[np.ndarray, float]:  # pragma: no cover (compiled)
    """``(table, q)``: ``table[x]`` is the last piece that starts at or before ``x · q`` tokens
    (``q``: the pieces' mean tokens, at least 1), where :func:`locate` starts its walk."""
    pieces = cum_t.shape[0] - 1
    total = cum_t[pieces]
    q = max(total / max(pieces, 1), 1.0)
    size = int(total / q) + 2
    table = np.empty(size, dtype=np.int64)
    p = 0
    for x in range(size):
        g = x * q
        while p < pieces and cum_t[p + 1] <= g:
            p += 1
        table[x] = p
    return table, q


@numba.njit(cache=True, nogil=True)
def _rounding(comp: np.ndarray, cum_t: np.ndarray) -> float:  # pragma: no cover (compiled)
    """How far over the best a position must be to reject a trial: 0 when every sum is exact
    (integer tokens, below 2^50), else a bound on the rounding of the sums."""
    scale = cum_t[cum_t.shape[0] - 1]
    exact = True
    for x in cum_t:
        if x != np.floor(x):
            exact = False
            break
    for j in range(comp.shape[0]):
        for i in range(comp.shape[1]):
            x = comp[j, i]
            scale += abs(x)
            if x != np.floor(x):
                exact = False
    if exact and scale < 2.0 ** 50:
        return 0.0
    return 1e-9 * (1.0 + scale)


@numba.njit(cache=True, nogil=True, inline="always")
def locate(cum_t: np.ndarray, table: np.ndarray, q: float,
            t: float) -> int:  # pragma: no cover (compiled)
    """``searchsorted(cum_t, t, side="right") - 1`` for ``0 <= t < cum_t[-1]``."""
    x = int(t / q)  # t >= 0: truncation is the floor
    if x >= table.shape[0]:
        x = table.shape[0] - 1
    p = table[x]
    while cum_t[p + 1] <= t:
        p += 1
    while p > 0 and cum_t[p] > t:  # never for exact sums; guards a rounding of t // q
        p -= 1
    return p


@numba.njit(cache=True, nogil=True, inline="always")
def stream_piece(cum_t: np.ndarray, table: np.ndarray, q: float,
                 t: float) -> tuple[int, float]:  # pragma: no cover (compiled)
    """Where token ``t`` of the stream lies: the piece ``p`` and the tokens of it before ``t``
    (``len(cum_t) - 1`` and 0 at or past the stream's end), so that the stream's composition
    is ``C_i(t) = cum_s[p, i] + inside`` for the piece's source ``i = src[p]``."""
    p_last = cum_t.shape[0] - 1
    if t >= cum_t[p_last]:
        return p_last, 0.0
    p = locate(cum_t, table, q, t)
    return p, t - cum_t[p]


@numba.njit(cache=True, nogil=True)
def _devs(order: np.ndarray, a: int, b: int, c0: np.ndarray, t0: float, comp: np.ndarray,
          total: np.ndarray, cum_t: np.ndarray, cum_s: np.ndarray, src: np.ndarray,
          group: np.ndarray, size: np.ndarray, share: np.ndarray, slack: np.ndarray,
          g0: np.ndarray, stop: float) -> tuple[float, float]:  # pragma: no cover
    """From the state before position ``a`` (``c0``, ``t0``, ``g0``), the largest
    ``|c_i - C_i(t)|`` after each of positions ``a..b`` and the summed group excess over the
    slack there (an infinite excess once the deviation reaches ``stop``)."""
    k = comp.shape[1]
    p_last = src.shape[0]
    c = c0.copy()
    g = g0.copy()
    t = t0
    worst = 0.0
    excess = 0.0
    for m in range(a, b + 1):
        j = order[m]
        gj = group[j]
        over = g[gj] + size[j] - share[gj] * (t + size[j]) - slack[gj]
        if over > 0:
            excess += over
        g[gj] += size[j]
        t += total[j]
        if t >= cum_t[p_last]:
            p = p_last
            inside = 0.0
        else:
            p = np.searchsorted(cum_t, t, side="right") - 1
            inside = t - cum_t[p]
        for i in range(k):
            c[i] += comp[j, i]
            target = cum_s[p, i]
            if p < p_last and src[p] == i:
                target += inside
            d = abs(c[i] - target)
            if d > worst:
                worst = d
        if worst >= stop:
            return worst, np.inf
    return worst, excess


@numba.njit(cache=True, nogil=True, inline="always")
def _trial_dev(how: int, m: int, a: int, b: int, ja: int, jb: int, cs: np.ndarray,
               ts: np.ndarray, comp: np.ndarray, total: np.ndarray, cum_t: np.ndarray,
               cum_s: np.ndarray, src: np.ndarray, table: np.ndarray,
               q: float) -> float:  # pragma: no cover (compiled)
    """The deviation after position ``m`` (``a <= m <= b``) of trial ``how`` (0: swap ``a``
    and ``b``; 1: move ``a`` to ``b``; 2: move ``b`` to ``a``), from the current order's states
    (module docstring): the state ``cs[row] + sa · x_ja + sb · x_jb`` at ``t``."""
    sa = sb = 0.0
    if m == b:
        row = b + 1
    elif how == 0:
        row, sa, sb = m + 1, -1.0, 1.0
    elif how == 1:
        row, sa = m + 2, -1.0
    else:
        row, sb = m, 1.0
    t = ts[row] + sa * total[ja] + sb * total[jb]
    k = cs.shape[1]
    p_last = src.shape[0]
    p, inside = stream_piece(cum_t, table, q, t)
    worst = 0.0
    for i in range(k):
        target = cum_s[p, i]
        if p < p_last and src[p] == i:
            target += inside
        d = cs[row, i] + sa * comp[ja, i] + sb * comp[jb, i] - target
        if d < 0:
            d = -d
        if d > worst:
            worst = d
    return worst

@numba.njit(cache=True, nogil=True)
def _first_fail1(a: int, at: int, ja: int, bar: float, cs: np.ndarray, ts: np.ndarray,
                 comp: np.ndarray, total: np.ndarray, cum_t: np.ndarray, cum_s: np.ndarray,
                 src: np.ndarray, table: np.ndarray, q: float) -> int:  # pragma: no cover
    """Moving ``a`` past the worst boundary ``at``: a failing position in ``a..at`` (scanned
    down from ``at``, where the deviations are largest), else ``n`` (positions above ``at``
    are scanned as ``b`` grows)."""
    n = cs.shape[0] - 1
    for m in range(at, a - 1, -1):
        if _trial_dev(1, m, a, n, ja, ja, cs, ts, comp, total, cum_t, cum_s, src, table,
                      q) >= bar:
            return m
    return n


@numba.njit(cache=True, nogil=True)
def _last_fail2(b: int, at: int, lo: int, jb: int, bar: float, cs: np.ndarray, ts: np.ndarray,
                comp: np.ndarray, total: np.ndarray, cum_t: np.ndarray, cum_s: np.ndarray,
                src: np.ndarray, table: np.ndarray, q: float) -> int:  # pragma: no cover
    """Moving ``b`` before the worst boundary ``at``, to ``lo`` or later: a failing position in
    ``at..b-1`` (any rejects every ``a``), else the highest one in ``lo..at-1``, else -1."""
    for m in range(at, b):
        if _trial_dev(2, m, lo, b, jb, jb, cs, ts, comp, total, cum_t, cum_s, src, table,
                      q) >= bar:
            return m
    for m in range(at - 1, lo - 1, -1):
        if _trial_dev(2, m, lo, b, jb, jb, cs, ts, comp, total, cum_t, cum_s, src, table,
                      q) >= bar:
            return m
    return -1


@numba.njit(cache=True, nogil=True)
def _repair(order: np.ndarray, near: int, enough: float, comp: np.ndarray, total: np.ndarray,
            cum_t: np.ndarray, cum_s: np.ndarray, src: np.ndarray, group: np.ndarray,
            size: np.ndarray, share: np.ndarray,
            slack: np.ndarray) -> np.ndarray:  # pragma: no cover (compiled)
    """The local search (module docstring)."""
    n, k = comp.shape
    order = order.copy()
    trial = order.copy()
    n_groups = share.shape[0]
    cs = np.zeros((n + 1, k))
    gs = np.zeros((n + 1, n_groups))
    ts = np.zeros(n + 1)
    devm = np.zeros(n)
    exm = np.zeros(n)
    # per b (move b to a): its highest failing position (-1: none, -2: not scanned yet)
    fail2 = np.zeros(n, dtype=np.int64)
    e_at = np.zeros(k)
    table = np.zeros(1, dtype=np.int64)
    q = eps = 0.0
    for _ in range(n):
        trial[:] = order  # a trial is built on the current order (the plain search read the
        # order before the last change at the round's first trial: same result on every
        # window measured, benchmarks/RESULTS.md)
        # the state before every position, the deviation after it and its group excess
        for m in range(n):
            j = order[m]
            cs[m + 1] = cs[m]
            gs[m + 1] = gs[m]
            for i in range(k):
                cs[m + 1, i] += comp[j, i]
            gs[m + 1, group[j]] += size[j]
            ts[m + 1] = ts[m] + total[j]
        for m in range(n):
            devm[m], exm[m] = _devs(order, m, m, cs[m], ts[m], comp, total, cum_t, cum_s, src,
                                    group, size, share, slack, gs[m], np.inf)
        at = int(np.argmax(devm[:n - 1]))  # the last boundary is the window's end: exact
        best_w = devm[at]
        if best_w <= enough:
            break
        if q == 0.0:  # the first round with work: the lookup table and the rounding margin
            table, q = piece_table(cum_t)
            eps = _rounding(comp, cum_t)
        best_a = best_b = best_how = -1
        # the signed deviation at the worst boundary: a swap moves it by x_b - x_a and the
        # stream's C_i by at most |t_b - t_a| (a cheap bound before the lookup)
        p, inside = stream_piece(cum_t, table, q, ts[at + 1])
        for i in range(k):
            e_at[i] = cs[at + 1, i] - cum_s[p, i]
            if p < len(src) and src[p] == i:
                e_at[i] -= inside
        fail2[:] = -2  # not scanned yet
        witness = -1  # where the last swap failed
        for a in range(at + 1):
            ox = exm[a:at + 1].sum()
            ja = order[a]
            # move a to b: positions a..b-1 shift by -x_a whatever b is: a failure at or
            # below the worst boundary rejects every b, one above it every b past it
            fail1, next1 = _first_fail1(a, at, ja, best_w + eps, cs, ts, comp, total, cum_t,
                                        cum_s, src, table, q), at + 1
            for b in range(at + 1, n):
                ox += exm[b]
                if at - a > near and b - at - 1 > near:
                    continue  # one of the two items within `near` of the worst boundary
                if devm[b] >= best_w + eps:
                    continue  # position b keeps its state in every trial
                jb = order[b]
                for how in range(3):
                    if how == 0:
                        dt = total[jb] - total[ja]
                        up, down = max(dt, 0.0), min(dt, 0.0)
                        bad = False
                        for i in range(k):
                            x = e_at[i] + comp[jb, i] - comp[ja, i]
                            if x - up >= best_w + eps or down - x >= best_w + eps:
                                bad = True
                                break
                        bad = bad or _trial_dev(0, at, a, b, ja, jb, cs, ts, comp, total, cum_t,
                                                cum_s, src, table, q) >= best_w + eps
                        if not bad and a <= witness < b:
                            bad = _trial_dev(0, witness, a, b, ja, jb, cs, ts, comp, total,
                                             cum_t, cum_s, src, table, q) >= best_w + eps
                        lo, hi = at - 1, at + 1
                        while not bad and (lo >= a or hi < b):
                            if lo >= a:
                                if _trial_dev(0, lo, a, b, ja, jb, cs, ts, comp, total, cum_t,
                                              cum_s, src, table, q) >= best_w + eps:
                                    bad = True
                                    witness = lo
                                lo -= 1
                            if not bad and hi < b:
                                if _trial_dev(0, hi, a, b, ja, jb, cs, ts, comp, total, cum_t,
                                              cum_s, src, table, q) >= best_w + eps:
                                    bad = True
                                    witness = hi
                                hi += 1
                    elif how == 1:
                        while fail1 == n and next1 < b:
                            if _trial_dev(1, next1, a, n, ja, ja, cs, ts, comp, total, cum_t,
                                          cum_s, src, table, q) >= best_w + eps:
                                fail1 = next1
                            next1 += 1
                        bad = fail1 < b
                    else:
                        if fail2[b] == -2:  # first visit: the highest failing position
                            fail2[b] = _last_fail2(b, at, 0 if b - at - 1 <= near else a, jb,
                                                   best_w + eps, cs, ts, comp, total, cum_t,
                                                   cum_s, src, table, q)
                        bad = fail2[b] >= a
                    if bad:
                        continue
                    if how == 0:
                        trial[a], trial[b] = order[b], order[a]
                    elif how == 1:
                        trial[a:b] = order[a + 1:b + 1]
                        trial[b] = order[a]
                    else:
                        trial[a + 1:b + 1] = order[a:b]
                        trial[a] = order[b]
                    nw, nx = _devs(trial, a, b, cs[a], ts[a], comp, total, cum_t, cum_s, src,
                                   group, size, share, slack, gs[a], best_w)
                    trial[a:b + 1] = order[a:b + 1]
                    if nw < best_w and nx <= ox + 1e-9:
                        best_w, best_a, best_b, best_how = nw, a, b, how
                        # a lower bar: what passed before is scanned again
                        fail2[:] = -2
                        fail1, next1 = _first_fail1(a, at, ja, best_w + eps, cs, ts, comp,
                                                    total, cum_t, cum_s, src, table, q), at + 1
        if best_a < 0:
            break
        a, b = best_a, best_b
        seg = order[a:b + 1].copy()
        if best_how == 0:
            order[a], order[b] = seg[-1], seg[0]
        elif best_how == 1:
            order[a:b] = seg[1:]
            order[b] = seg[0]
        else:
            order[a + 1:b + 1] = seg[:-1]
            order[a] = seg[-1]
    return order


def repair_order(order: np.ndarray, near: int, enough: float, comp: np.ndarray,
                 total: np.ndarray, cum_t: np.ndarray, cum_s: np.ndarray, src: np.ndarray,
                 group: np.ndarray, size: np.ndarray, share: np.ndarray,
                 slack: np.ndarray) -> np.ndarray:
    """The repaired order (module docstring); the arguments as :func:`mixbatch.shape.follow.
    follow_order` prepares them."""
    return _repair(order, int(near), float(enough), comp, total, cum_t, cum_s, src, group,
                   size, share, slack)
