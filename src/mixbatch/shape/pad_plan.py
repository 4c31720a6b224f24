"""Compiled steps of ``packing: pad_buckets``' window plan (:mod:`mixbatch.shape.pad_buckets`).

Each function does, for every bucket or pool of a window at once, what the shaper's module
docstring describes for one: the sorted pools of a bucket (``pool_parts``, then
``counting_argsort``), the greedy cut of a sorted run of rows into batches within the budget
(``cut_runs``), and the keyed order in which a pool's batches are handed out
(``keyed_orders``, the same order as :func:`mixbatch.plan.permutation.keyed_order`). One call
per window instead of one Python iteration per bucket, pool or batch. Also the buckets'
interleaving by tokens (``interleave_by_tokens``), and ``step_picks`` for ``packing: buckets``
(every step's pieces at once).
"""

from __future__ import annotations

import numba
import numpy as np

from mixbatch.errors import MixbatchInternalError
from mixbatch.plan.interleave import Interleaver
from mixbatch.plan.permutation import _splitmix_first
from mixbatch.shape.kernels import by_key, keyed_groups

__all__ = ["counting_argsort", "cut_runs", "interleave_by_tokens", "keyed_orders", "pool_parts",
           "step_picks"]


@numba.njit(cache=True, nogil=True)
def _pool_parts(weight: np.ndarray, run_start: np.ndarray, per: float,
                sort: bool) -> np.ndarray:  # pragma: no cover (compiled)
    """Part number (from 0, over the whole window) of every entry of runs laid out back to
    back (``run_start``: each run's first entry and the end): a run is cut where the pool
    ``min((cum - w) // per, last)`` changes, ``cum`` its running sum of ``weight`` and
    ``last = max(round(total / per), 1) - 1``; without ``sort`` (or for a run of one entry)
    a run is one part."""
    n_runs = run_start.shape[0] - 1
    out = np.empty(run_start[n_runs], dtype=np.int64)
    part = -1
    for r in range(n_runs):
        a, z = run_start[r], run_start[r + 1]
        part += 1
        if not sort or z - a <= 1:
            out[a:z] = part
            continue
        total = 0.0
        for m in range(a, z):
            total += weight[m]
        last = max(np.round(total / per), 1.0) - 1.0
        cum = 0.0
        prev = -1.0
        for m in range(a, z):
            cum += weight[m]
            pool = min((cum - weight[m]) // per, last)
            if m > a and pool != prev:
                part += 1
            prev = pool
            out[m] = part
    return out


def pool_parts(weight: np.ndarray, run_start: np.ndarray, per: float, sort: bool) -> np.ndarray:
    """See :func:`_pool_parts`."""
    return _pool_parts(np.ascontiguousarray(weight, dtype=np.float64),
                       np.ascontiguousarray(run_start, dtype=np.int64), float(per), bool(sort))


@numba.njit(cache=True, nogil=True)
def _cut_runs(cost: np.ndarray, cost2: np.ndarray, two: bool, run_start: np.ndarray, r: int,
              budget: float) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover (compiled)
    """Batch bounds of every run: each batch the longest prefix of the rest of its run whose
    ``ceil(b / r) r · (max cost + max cost2)`` stays within ``budget``, closed at a whole
    number of ``r`` rows when more rows follow. ``(starts, run of each batch)``, the starts
    followed by the end; a start of -1 when a row fits no batch."""
    n_runs = run_start.shape[0] - 1
    n = run_start[n_runs]
    starts = np.empty(n + 1, dtype=np.int64)
    runs = np.empty(n, dtype=np.int64)
    nb = 0
    for g in range(n_runs):
        i, end = run_start[g], run_start[g + 1]
        while i < end:
            c1 = -np.inf
            c2 = -np.inf
            j = i
            while j < end:
                if cost[j] > c1:
                    c1 = cost[j]
                c = c1
                if two:
                    if cost2[j] > c2:
                        c2 = cost2[j]
                    c = c1 + c2
                b = j - i + 1
                if ((b + r - 1) // r) * r * c > budget:
                    break
                j += 1
            k = j - i
            if k == 0:
                starts[0] = -1
                return starts[:1], runs[:0]
            if i + k < end and k % r and k > r:
                k -= k % r
            starts[nb] = i
            runs[nb] = g
            nb += 1
            i += k
    starts[nb] = n
    return starts[:nb + 1].copy(), runs[:nb].copy()


def cut_runs(cost: np.ndarray, cost2: np.ndarray | None, run_start: np.ndarray, r: int,
             budget: int) -> tuple[np.ndarray, np.ndarray]:
    """See :func:`_cut_runs`; raise when a row fits no batch (the budget checks exclude it)."""
    two = cost2 is not None
    starts, runs = _cut_runs(np.ascontiguousarray(cost, dtype=np.float64),
                             np.ascontiguousarray(cost2 if two else cost, dtype=np.float64),
                             two, np.ascontiguousarray(run_start, dtype=np.int64), int(r),
                             float(budget))
    if len(starts) and starts[0] < 0:
        raise MixbatchInternalError("pad_buckets: a row does not fit the budget")
    return starts, runs


def keyed_orders(keys: list[int], count: np.ndarray) -> np.ndarray:
    """:func:`mixbatch.plan.permutation.keyed_order` ``(count[g], keys[g])`` for every group,
    concatenated (offsets within each group)."""
    first = np.array([_splitmix_first(int(k)) for k in keys], dtype=np.uint64)
    return keyed_groups(first, np.ascontiguousarray(count, dtype=np.int64))


@numba.njit(cache=True, nogil=True)
def _step_picks(bucket: np.ndarray, take: np.ndarray,
                first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    n_steps, k = take.shape
    taken = np.zeros(first.shape, dtype=np.int64)
    at = np.zeros(n_steps + 1, dtype=np.int64)
    for j in range(n_steps):
        at[j + 1] = at[j] + take[j].sum()
    out = np.empty(at[n_steps], dtype=np.int64)
    for j in range(n_steps):
        b = bucket[j]
        o = at[j]
        for i in range(k):
            lo = first[b, i] + taken[b, i]
            for m in range(take[j, i]):
                out[o] = lo + m
                o += 1
            taken[b, i] += take[j, i]
        out[at[j]:at[j + 1]] = np.sort(out[at[j]:at[j + 1]])
    return out, at


def step_picks(bucket: np.ndarray, take: np.ndarray,
               first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``packing: buckets`` (:mod:`mixbatch.shape.buckets`): step ``j`` of bucket
    ``bucket[j]`` takes ``take[j, i]`` items of source ``i``, the next ones after those the
    bucket's earlier steps took, from its items ``first[b, i], first[b, i] + 1, ...``; every
    step's items ascending. Returns ``(items, starts)``: every step's items back to back and
    where each step's begin (then the end)."""
    return _step_picks(np.ascontiguousarray(bucket, dtype=np.int64),
                       np.ascontiguousarray(take, dtype=np.int64),
                       np.ascontiguousarray(first, dtype=np.int64))


def counting_argsort(key: np.ndarray, bound: int) -> np.ndarray:
    """``np.argsort(key, kind="stable")`` for integers in ``[0, bound)`` (a compiled counting
    sort, ``O(n + bound)``)."""
    return by_key(np.ascontiguousarray(key, dtype=np.int64), int(bound))


def interleave_by_tokens(bucket: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Batch indices in an exact interleaving of buckets by tokens (pad_buckets' module
    docstring: Order and mixture); each bucket's batches keep their order."""
    if bucket.size == 0:
        return np.empty(0, dtype=np.int64)
    ids, dense = np.unique(bucket, return_inverse=True)
    K = len(ids)
    groups = [np.flatnonzero(dense == b) for b in range(K)]
    weights = np.bincount(dense, weights=tokens, minlength=K)
    il = Interleaver(K, unit="tokens")
    taken = np.zeros(K, dtype=np.int64)
    out: list[int] = []
    while len(out) < bucket.size:
        left = np.array([len(g) for g in groups]) - taken
        upcoming = [tokens[g[t:]] for g, t in zip(groups, taken.tolist(), strict=True)]
        got = il.choose_tokens(weights, upcoming, int(left.sum()), available=left > 0)
        if got.size == 0:
            raise MixbatchInternalError("pad_buckets: the bucket interleave stalled")
        for b in got.tolist():
            out.append(int(groups[b][taken[b]]))
            taken[b] += 1
    return np.asarray(out, dtype=np.int64)
