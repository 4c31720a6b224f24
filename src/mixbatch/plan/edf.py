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
off (the same definition as ``interleave._first_reach``).
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


@njit(cache=True, nogil=True)
def choose_tokens(base: np.ndarray, w: np.ndarray, counts: np.ndarray, tau0: np.int64,
                  lengths: np.ndarray, offsets: np.ndarray, final: np.ndarray,
                  max_docs: np.int64) -> tuple[np.ndarray, np.ndarray]:
    """Sources and lengths of up to ``max_docs`` next documents from clock ``tau0``.

    ``lengths[offsets[i]:offsets[i+1]]`` are source ``i``'s next document lengths (>= 1);
    ``final[i]``: that list is all source ``i`` has left."""
    k = base.size
    src_out = np.empty(max_docs, np.int64)
    len_out = np.empty(max_docs, np.int64)
    pos = offsets[:-1].copy()  # next listed document of each source
    start = counts.astype(np.int64).copy()
    rel = np.full(k, NEVER, np.int64)
    dl = np.full(k, np.inf)
    stop_at = np.int64(NEVER)  # the earliest release of a sentinel that is not final
    for i in range(k):
        if w[i] <= 0:
            continue
        total = np.int64(0)
        for j in range(offsets[i], offsets[i + 1]):
            total += lengths[j]
        if not final[i]:
            r = first_reach(base[i], w[i], float(start[i] + total), np.int64(0))
            r = max(r, tau0)
            if r < stop_at:
                stop_at = r
        if pos[i] < offsets[i + 1]:
            rel[i] = max(first_reach(base[i], w[i], float(start[i]), np.int64(0)), tau0)
            dl[i] = (float(start[i] + lengths[pos[i]]) - base[i]) / w[i]
    clock = tau0
    n = 0
    while n < max_docs:
        if stop_at <= clock:
            break
        best = -1
        for i in range(k):
            if rel[i] <= clock and (best < 0 or dl[i] < dl[best]):
                best = i
        if best < 0:  # nothing released: the job released soonest, unless it is a sentinel
            for i in range(k):
                if w[i] > 0 and pos[i] < offsets[i + 1] and (
                        best < 0 or rel[i] < rel[best]
                        or (rel[i] == rel[best] and dl[i] < dl[best])):
                    best = i
            if best < 0 or stop_at < rel[best]:  # at equal releases a real job goes first
                break
        ln = lengths[pos[best]]
        src_out[n] = best
        len_out[n] = ln
        n += 1
        clock += ln
        start[best] += ln
        pos[best] += 1
        if pos[best] < offsets[best + 1]:
            rel[best] = max(first_reach(base[best], w[best], float(start[best]), np.int64(0)),
                            tau0)
            dl[best] = (float(start[best] + lengths[pos[best]]) - base[best]) / w[best]
        else:
            rel[best] = NEVER
            dl[best] = np.inf
    return src_out[:n], len_out[:n]
