"""The NumPy + heap form of the earliest-deadline rule: the reference the compiled kernels
(:mod:`mixbatch.plan.edf`) are checked against, decision for decision, and what
``Interleaver(compiled=False)`` runs. The rule itself is described in
:mod:`mixbatch.plan.interleave`: every job's release and deadline in closed form, vectorised,
and the EDF merge as one heap push and one heap pop per decision on precomputed integer ranks.
"""

from __future__ import annotations

import heapq

import numpy as np

from mixbatch.errors import MixbatchInternalError
from mixbatch.ranges import group_ranks

_NEVER = 1 << 53  # a release this late never comes (and float64 counts are exact below it)


def tijdeman_delta(k: int) -> float:
    """``1 / (2k - 2)`` for ``k >= 2`` sources of positive weight (0.5 for ``k = 1``)."""
    return 1.0 / (2 * k - 2) if k >= 2 else 0.5


def first_reach(base: np.ndarray, w: np.ndarray, level: np.ndarray, lo: int) -> np.ndarray:
    """Per lane, the smallest integer ``m >= lo`` with ``base + w * m >= level`` (float64).

    The closed form ``ceil((level - base) / w)`` is right but for rounding; lanes where it is
    off are settled by a vectorised binary search. ``_NEVER`` means not before ``2**53``.
    """
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        est = np.ceil((level - base) / w)
    est = np.where(np.isfinite(est), est, float(_NEVER))
    m = np.clip(est, lo, _NEVER).astype(np.int64)

    def reach(idx, x):
        return base[idx] + w[idx] * x.astype(np.float64) >= level[idx]

    lanes = np.arange(m.size)
    at = reach(lanes, m)
    ok = np.where(at, (m == lo) | ~reach(lanes, np.maximum(m - 1, lo)), m == _NEVER)
    bad = np.flatnonzero(~ok)
    if bad.size:
        low = np.full(bad.size, lo, dtype=np.int64)
        high = np.full(bad.size, _NEVER, dtype=np.int64)
        while True:
            open_ = low < high
            if not open_.any():
                break
            mid = (low + high) // 2
            hit = reach(bad, mid)
            high = np.where(open_ & hit, mid, high)
            low = np.where(open_ & ~hit, mid + 1, low)
        m[bad] = low
    return m


# ----------------------------------------------------------------------------- sample mode


def _jobs_samples(base, w, counts, m_hi, delta):
    """Jobs (source, index, release, deadline) released by decision ``m_hi``, plus one more
    per source (the first not released by then, for the rounding fallback)."""
    src = np.flatnonzero(w > 0)
    b, wi, c = base[src], w[src], counts[src].astype(np.float64)
    w_hi = b + wi * float(m_hi)

    def released_by_hi(k):  # job k (1-based count) released by m_hi
        return w_hi >= (k - 1.0) + delta

    kmax = np.maximum(np.floor(w_hi - delta) + 1.0, c)
    while True:
        up = released_by_hi(kmax + 1.0)
        if not up.any():
            break
        kmax = np.where(up, kmax + 1.0, kmax)
    while True:
        down = (kmax > c) & ~released_by_hi(kmax)
        if not down.any():
            break
        kmax = np.where(down, kmax - 1.0, kmax)
    per = (kmax - c).astype(np.int64) + 1  # released jobs, plus the next one
    job_src = np.repeat(src, per)
    k = np.repeat(c, per) + 1.0 + group_ranks(per)
    jb, jw = base[job_src], w[job_src]
    thresh = (k - 1.0) + delta
    return job_src, k, jb, jw, thresh


def choose_samples(base, w, counts, m0, n):
    """Sources of decisions ``m0 + 1 .. m0 + n`` of the current segment (see module doc)."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    positive = np.flatnonzero(w > 0)
    if positive.size == 1:  # every decision goes to it (directly, or by the fallback)
        return np.full(n, positive[0], dtype=np.int64)
    delta = tijdeman_delta(positive.size)
    m_lo, m_hi = m0 + 1, m0 + n
    job_src, k, jb, jw, thresh = _jobs_samples(base, w, counts, m_hi, delta)
    release = first_reach(jb, jw, thresh, m_lo)
    with np.errstate(over="ignore"):  # a weight near 1e-308 puts deadlines at +inf: fine
        deadline = ((k - delta) - jb) / jw
    rank_order = np.lexsort((k, job_src, deadline))  # EDF priority: deadline, source, index
    rank = np.empty_like(rank_order)
    rank[rank_order] = np.arange(rank_order.size)
    slot = release - m_lo  # 0-based decision within the chunk
    by_release = np.lexsort((rank, slot))
    slot_sorted = slot[by_release]
    due = np.bincount(slot_sorted[slot_sorted < n], minlength=n).tolist()
    slot_of_rank = slot[rank_order].tolist()
    released = iter(rank[by_release].tolist())  # ranks in order of release

    # One heap operation per decision: this loop is the EDF merge, everything else is numpy.
    heap: list[int] = []
    push, pop, pushpop = heapq.heappush, heapq.heappop, heapq.heappushpop
    out: list[int] = []
    take = out.append
    for d in due:  # d = jobs released at this decision (entries ahead may be lowered below)
        if d == 1:
            take(pushpop(heap, next(released)))
        elif d == 0:
            if heap:
                take(pop(heap))
            else:  # rounding left nothing released: take the job released soonest
                r = next(released, None)
                if r is None:
                    raise MixbatchInternalError("interleave: no job left to schedule")
                s = slot_of_rank[r]
                if s < n:
                    due[s] -= 1
                take(r)
        else:
            for _ in range(d - 1):
                push(heap, next(released))
            take(pushpop(heap, next(released)))
    return job_src[rank_order][np.array(out, dtype=np.int64)]


# ------------------------------------------------------------------------------ token mode


def choose_tokens(base, w, counts, tau0, upcoming, max_docs, final=None):
    """Sources of the next documents; stops early when a source's next length is unknown.

    ``final[i]`` says source ``i``'s list is all it has left (a capped source): its sentinel is
    never released, so the rule goes on with the other sources instead of stopping."""
    src = np.flatnonzero(w > 0)
    lens = [np.asarray(upcoming[i], dtype=np.int64) for i in src]
    per = np.array([x.size for x in lens], dtype=np.int64) + 1  # known docs + sentinel
    job_src = np.repeat(src, per)
    length = np.concatenate([np.append(x, 0) for x in lens])
    # Start offset of each document within its source, counted from the source's count.
    first = np.cumsum(per) - per
    exclusive = np.cumsum(length) - length
    start = np.repeat(counts[src], per) + exclusive - np.repeat(exclusive[first], per)
    sentinel = np.zeros(job_src.size, dtype=bool)
    sentinel[first + per - 1] = True
    jb, jw = base[job_src], w[job_src]
    s_f = start.astype(np.float64)
    release = first_reach(jb, jw, s_f, int(tau0))
    if final is not None:
        done = sentinel & np.asarray(final, dtype=bool)[job_src]
        release = np.where(done, np.int64(_NEVER), release)
    with np.errstate(over="ignore"):
        deadline = ((start + length).astype(np.float64) - jb) / jw
    deadline[sentinel] = np.inf
    # Sentinels rank after every real job; among real jobs: deadline, source, position.
    rank_order = np.lexsort((start, job_src, deadline, sentinel))
    rank = np.empty_like(rank_order)
    rank[rank_order] = np.arange(rank_order.size)
    n_real = int((~sentinel).sum())
    by_release = np.lexsort((rank, release))
    rel = release[by_release].tolist()
    ranks = rank[by_release].tolist()
    len_by_rank = length[rank_order].tolist()

    heap: list[int] = []
    push, pop = heapq.heappush, heapq.heappop
    out: list[int] = []
    clock = int(tau0)
    p, total = 0, len(ranks)
    stopped = False
    for _ in range(max_docs):
        while p < total and rel[p] <= clock:
            if ranks[p] >= n_real:
                stopped = True
                break
            push(heap, ranks[p])
            p += 1
        if stopped:
            break
        if heap:
            r = pop(heap)
        else:  # rounding left nothing released: take the job released soonest
            if p >= total or ranks[p] >= n_real:
                break
            r = ranks[p]
            p += 1
        out.append(r)
        clock += len_by_rank[r]
    chosen = rank_order[np.array(out, dtype=np.int64)]
    return job_src[chosen], length[chosen]
