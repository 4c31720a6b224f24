r"""The earliest-deadline rule of :mod:`mixbatch.plan.interleave`, compiled (numba).

Both kernels make exactly the decisions of the module's NumPy + heap implementation (kept
there as the reference, ``reference=True``, and checked decision for decision by the tests),
but keep only one job per source: a source's jobs are released and fall due in order, so the
earliest-deadline job among the released ones is always some source's *next* job. A decision
is then one pass over the ``K`` sources (release test, deadline comparison) and one update of
the chosen source's next job: O(K) arithmetic, no Python, no sort of a job list.

Sample mode, decision ``m`` (1-based in the weight segment): source ``i``'s next job is unit
``c_i + 1``; it is released when ``base_i + w_i m >= c_i + delta`` and due at
``((c_i + 1) - delta - base_i) / w_i``. Among released sources the earliest deadline wins
(ties: lowest index); when rounding leaves none released, the job released soonest (ties:
deadline, then index).

Token mode, clock ``T`` (tokens since the segment began): source ``i``'s next document starts
at its token count ``s_i`` and is released when ``base_i + w_i T >= s_i``; its deadline is
``(s_i + l_i - base_i) / w_i``. A source whose listed lengths are used up has a *sentinel*:
once the sentinel is released (its start is the count after every listed document), the rule
stops and asks for more lengths, unless the source is ``final``.

The release of a level is the smallest integer ``m`` with ``base + w m >= level`` in float64,
computed in closed form and corrected by a binary search where rounding makes the estimate
off (the same definition as ``reference.first_reach``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

NEVER = 1 << 53  # a release this late never comes (float64 counts are exact below it)


@njit(cache=True, nogil=True, inline="always")
def _reach(base: float, w: float, level: float, m: np.int64) -> bool:
    return base + w * float(m) >= level


@njit(cache=True, nogil=True)
def first_reach(base: float, w: float, level: float, lo: np.int64) -> np.int64:
    """Smallest integer ``m >= lo`` with ``base + w * m >= level`` (``NEVER`` if none)."""
    q = (level - base) / w
    if not np.isfinite(q):
        est = np.int64(NEVER)
    else:
        e = np.ceil(q)
        if e >= NEVER:
            est = np.int64(NEVER)
        elif e <= lo:
            est = lo
        else:
            est = np.int64(e)
    at = _reach(base, w, level, est)
    if at:
        if est == lo or not _reach(base, w, level, est - 1):
            return est
    elif est == NEVER:
        return est
    low, high = lo, np.int64(NEVER)
    while low < high:
        mid = (low + high) // 2
        if _reach(base, w, level, mid):
            high = mid
        else:
            low = mid + 1
    return low


@njit(cache=True, nogil=True)
def choose_samples(base: np.ndarray, w: np.ndarray, counts: np.ndarray, m0: np.int64,
                   n: np.int64, delta: float) -> np.ndarray:
    """Sources of decisions ``m0 + 1 .. m0 + n`` of the current weight segment.

    One pass over the sources per decision (measured faster than two heaps up to K of about
    100: ``benchmarks/bench_interleave.py``)."""
    k = base.size
    out = np.empty(n, np.int64)
    rel = np.full(k, NEVER, np.int64)
    dl = np.full(k, np.inf)
    c = counts.astype(np.float64)
    for i in range(k):
        if w[i] > 0:
            rel[i] = first_reach(base[i], w[i], c[i] + delta, np.int64(0))
            dl[i] = ((c[i] + 1.0 - delta) - base[i]) / w[i]
    for t in range(n):
        m = m0 + 1 + t
        best = -1
        best_dl = np.inf
        for i in range(k):
            if rel[i] <= m and (best < 0 or dl[i] < best_dl):
                best = i
                best_dl = dl[i]
        if best < 0:  # rounding left nothing released: the job released soonest
            for i in range(k):
                if w[i] > 0 and (best < 0 or rel[i] < rel[best]
                                 or (rel[i] == rel[best] and dl[i] < dl[best])):
                    best = i
        out[t] = best
        c[best] += 1.0
        rel[best] = first_reach(base[best], w[best], c[best] + delta, np.int64(0))
        dl[best] = ((c[best] + 1.0 - delta) - base[best]) / w[best]
    return out


# ------------------------------------------------------------------ weights known in advance
#
# A *path* gives the weights ahead: after the absolute clock ``pb[s]`` (units since the stream
# began: decisions, or tokens) the weights are ``pw[s]``. Segment 0 is the planner's current one
# (it began at clock ``c0`` with target ``base`` and weights ``w``); segment ``s >= 1`` begins at
# ``pb[s - 1]`` with the target reached there. The target of source ``i`` is piecewise linear,
# ``T_i(u) = A[s, i] + W[s, i] (u - c[s])`` on segment ``s``, and releases and deadlines are read
# off it, so the rule anticipates every change on the path (Tijdeman's theorem is for weights
# that vary over time and are known in advance: the bound holds across the changes). A deadline
# is the pair (clock where its segment begins, offset inside it), so that it is computed the same
# whichever segment a call starts in.


@njit(cache=True, nogil=True)
def _segments(base: np.ndarray, w: np.ndarray, c0: np.int64, pb: np.ndarray,
              pw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Starts ``c`` (S+1,), targets at the starts ``A`` (S+1, K) and weights ``W`` (S+1, K)."""
    s_n = pb.size + 1
    k = base.size
    c = np.empty(s_n, np.int64)
    a = np.empty((s_n, k))
    ww = np.empty((s_n, k))
    c[0] = c0
    a[0] = base
    ww[0] = w
    for s in range(1, s_n):
        c[s] = pb[s - 1]
        length = float(c[s] - c[s - 1])
        for i in range(k):
            a[s, i] = a[s - 1, i] + ww[s - 1, i] * length
            ww[s, i] = pw[s - 1, i]
    return c, a, ww


@njit(cache=True, nogil=True)
def _path_segment(a: np.ndarray, ww: np.ndarray, s_n: int, i: int, level: float,
                  s0: int) -> int:
    """The first segment from ``s0`` in which ``T_i`` reaches ``level`` (-1 if none)."""
    for s in range(s0, s_n):
        if s < s_n - 1 and a[s + 1, i] < level:
            continue
        if ww[s, i] <= 0 and a[s, i] < level:
            continue
        return s
    return -1


@njit(cache=True, nogil=True)
def _path_release(c: np.ndarray, a: np.ndarray, ww: np.ndarray, i: int, level: float,
                  s0: int) -> tuple[np.int64, int]:
    """First integer clock where ``T_i`` reaches ``level`` (``NEVER`` if never), searching from
    segment ``s0``; also the segment it lies in."""
    s = _path_segment(a, ww, c.size, i, level, s0)
    if s < 0:
        return np.int64(NEVER), c.size - 1
    if ww[s, i] <= 0:
        return c[s], s
    m = first_reach(a[s, i], ww[s, i], level, np.int64(0))
    if m >= NEVER:
        return np.int64(NEVER), s
    return c[s] + m, s


@njit(cache=True, nogil=True)
def _path_deadline(c: np.ndarray, a: np.ndarray, ww: np.ndarray, i: int, level: float,
                   s0: int) -> tuple[np.int64, float]:
    """Where ``T_i`` reaches ``level``: (start of its segment, offset inside it); (NEVER, inf)
    if never."""
    s = _path_segment(a, ww, c.size, i, level, s0)
    if s < 0:
        return np.int64(NEVER), np.inf
    if ww[s, i] <= 0:
        return c[s], 0.0
    return c[s], (level - a[s, i]) / ww[s, i]


@njit(cache=True, nogil=True)
def _earlier(sa: np.int64, va: float, sb: np.int64, vb: float) -> bool:
    return sa < sb or (sa == sb and va < vb)


@njit(cache=True, nogil=True)
def choose_samples_path(base: np.ndarray, w: np.ndarray, counts: np.ndarray, units: np.int64,
                        c0: np.int64, n: np.int64, delta: float, live: np.ndarray,
                        pb: np.ndarray, pw: np.ndarray) -> np.ndarray:
    """Sources of the next ``n`` decisions with the weights ahead on a path (see above).

    ``units``: decisions so far (the absolute clock); ``c0``: where the current segment began;
    ``live``: the sources the path ever gives weight (a source at 0 now may still be owed or
    ahead by less than a unit: it stays in the rule, with no hand-over)."""
    k = base.size
    c, a, ww = _segments(base, w, c0, pb, pw)
    out = np.empty(n, np.int64)
    rel = np.full(k, NEVER, np.int64)
    dseg = np.full(k, NEVER, np.int64)
    dval = np.full(k, np.inf)
    seg = np.zeros(k, np.int64)
    cnt = counts.astype(np.float64)
    for i in range(k):
        if live[i]:
            rel[i], seg[i] = _path_release(c, a, ww, i, cnt[i] + delta, 0)
            dseg[i], dval[i] = _path_deadline(c, a, ww, i, cnt[i] + 1.0 - delta, 0)
    for t in range(n):
        u = units + 1 + t
        best = -1
        for i in range(k):
            if rel[i] <= u and (best < 0 or _earlier(dseg[i], dval[i], dseg[best], dval[best])):
                best = i
        if best < 0:
            for i in range(k):
                if live[i] and (best < 0 or rel[i] < rel[best] or (
                        rel[i] == rel[best] and _earlier(dseg[i], dval[i], dseg[best],
                                                         dval[best]))):
                    best = i
        out[t] = best
        cnt[best] += 1.0
        rel[best], seg[best] = _path_release(c, a, ww, best, cnt[best] + delta, seg[best])
        dseg[best], dval[best] = _path_deadline(c, a, ww, best, cnt[best] + 1.0 - delta, 0)
    return out


@njit(cache=True, nogil=True)
def choose_tokens(base: np.ndarray, w: np.ndarray, counts: np.ndarray, units: np.int64,
                  c0: np.int64, lengths: np.ndarray, offsets: np.ndarray, final: np.ndarray,
                  max_docs: np.int64, live: np.ndarray, pb: np.ndarray,
                  pw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sources and lengths of up to ``max_docs`` next documents (token mode; module doc), with
    the weights ahead on a path (none: constant weights). ``units``: tokens so far; ``c0``:
    where the current segment began; ``lengths[offsets[i]:offsets[i+1]]``: source ``i``'s
    next document lengths (>= 1); ``final[i]``: that list is all source ``i`` has left."""
    k = base.size
    c, a, ww = _segments(base, w, c0, pb, pw)
    src_out = np.empty(max_docs, np.int64)
    len_out = np.empty(max_docs, np.int64)
    pos = offsets[:-1].copy()
    start = counts.astype(np.int64).copy()
    rel = np.full(k, NEVER, np.int64)
    dseg = np.full(k, NEVER, np.int64)
    dval = np.full(k, np.inf)
    seg = np.zeros(k, np.int64)
    stop_at = np.int64(NEVER)
    for i in range(k):
        if not live[i]:
            continue
        total = np.int64(0)
        for j in range(offsets[i], offsets[i + 1]):
            total += lengths[j]
        if not final[i]:
            r, _ = _path_release(c, a, ww, i, float(start[i] + total), 0)
            if r < stop_at:
                stop_at = r
        if pos[i] < offsets[i + 1]:
            rel[i], seg[i] = _path_release(c, a, ww, i, float(start[i]), 0)
            dseg[i], dval[i] = _path_deadline(c, a, ww, i, float(start[i] + lengths[pos[i]]), 0)
    clock = units
    n = 0
    while n < max_docs:
        if stop_at <= clock:
            break
        best = -1
        for i in range(k):
            if rel[i] <= clock and (best < 0 or _earlier(dseg[i], dval[i], dseg[best],
                                                         dval[best])):
                best = i
        if best < 0:
            for i in range(k):
                if live[i] and pos[i] < offsets[i + 1] and (
                        best < 0 or rel[i] < rel[best]
                        or (rel[i] == rel[best] and _earlier(dseg[i], dval[i], dseg[best],
                                                             dval[best]))):
                    best = i
            if best < 0 or stop_at < rel[best]:
                break
        ln = lengths[pos[best]]
        src_out[n] = best
        len_out[n] = ln
        n += 1
        clock += ln
        start[best] += ln
        pos[best] += 1
        if pos[best] < offsets[best + 1]:
            rel[best], seg[best] = _path_release(c, a, ww, best, float(start[best]), seg[best])
            dseg[best], dval[best] = _path_deadline(c, a, ww, best,
                                                    float(start[best] + lengths[pos[best]]), 0)
        else:
            rel[best] = NEVER
            dseg[best], dval[best] = np.int64(NEVER), np.inf
    return src_out[:n], len_out[:n]
