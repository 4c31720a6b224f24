"""Give the rows of a global step to ranks so that the slowest rank is as fast as possible.

**Cost of a row.** Per transformer layer and token, the dense part (QKV, output projection and
MLP) costs about ``24·d²`` FLOPs per token, i.e. ``24·d²·s`` for a sequence of ``s`` tokens,
and attention (``QKᵀ`` and ``AV``) costs ``4·d·s²``. Divided by ``24·d²``:
``cost(s) = s + s² / (6·d)``. Varlen attention never attends across segments, so the quadratic
term is per document piece: ``cost(row) = Σ_seg (s + s²/(6·d))`` with ``s`` the segment's width.
Padding is assumed skipped (padding-free / varlen kernels) and costs nothing. (Causal masking
halves the attention term; the form, as in ByteScale / FlexSP and Lhotse's
``quadratic_duration``, matters more than the constant.)

**Constraint** (DESIGN invariant 4). Each rank gets exactly ``n / world_size`` rows, and of every
label (the row's main source; -1, an empty row, is a label of its own) ``floor`` or ``ceil`` of
its share ``count / world_size``.

**Method.**

1. LPT (Graham 1969, longest processing time first) inside quotas: the quotas per (rank, label)
   are those of the round-robin deal (:func:`mixbatch.plan.partition.deal_by_source`); rows go,
   costliest first, to the least loaded rank that still has quota for their label.
2. Pairwise exchanges between the most loaded rank ``A`` and any other rank ``B``: swap a row
   ``x`` of ``A`` with a row ``y`` of ``B`` where ``0 < c(x) − c(y) < L_A − L_B`` and the label
   counts stay within floor/ceil (same label, or ``A`` holds a surplus of ``x``'s label and ``B``
   one of ``y``'s). Of all such swaps the one that lowers the sum of squared loads most
   (by ``2·d·(L_A − L_B − d)``, ``d = c(x) − c(y)``) is taken; that sum falls strictly, so it
   ends. It also stops once the max is within ``1e-4 · mean`` of the mean (a lower bound on
   the optimum) or within ``max_i c_i`` of it, whichever is smaller.
3. Should that end above the round-robin deal's max (rare), the same exchanges run from the
   deal and the better result is kept (lower max, then lower sum of squares). So the result is
   never worse than the round-robin deal.

Both phases are compiled (numba): a global batch of tens of rows over a few ranks costs a
few microseconds per step.

**Guarantee.** Whenever ``L_A > L_B`` there is a feasible swap with ``c(x) > c(y)`` (otherwise,
pairing rows label by label, ``L_A ≤ L_B``); when ``L_A − L_B > max_i c_i`` it improves. So the
exchanges end with ``max − min ≤ max_i c_i`` or by the stop above, and either way
``max ≤ mean + max_i c_i`` (the classic LPT bound).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from mixbatch.errors import ConfigError
from mixbatch.shape.base import StepPlan

__all__ = ["balance_rows", "balanced_owner", "row_costs", "row_labels_costs"]

_TOLERANCE = 1e-4  # exchanges stop once the max is within this fraction of the mean load


def row_costs(plan: StepPlan, d_model: int) -> np.ndarray:
    """Cost of each row of ``plan``: ``Σ_seg s + s²/(6·d_model)`` (module docstring)."""
    if isinstance(d_model, bool) or not isinstance(d_model, int | np.integer) or d_model < 1:
        raise ConfigError(f"batch.d_model: must be an integer >= 1, got {d_model!r}")
    s = plan.width.astype(np.float64)
    return np.bincount(plan.row, weights=s + s * s / (6.0 * d_model), minlength=plan.rows)


def _check(labels: np.ndarray, costs: np.ndarray, world_size: int) -> tuple[np.ndarray,
                                                                               np.ndarray, int]:
    lab = np.asarray(labels)
    cost = np.asarray(costs, dtype=np.float64)
    if lab.ndim != 1 or (lab.size and not np.issubdtype(lab.dtype, np.integer)):
        raise ConfigError("labels: expected a 1-D array of integer labels (-1 for empty rows)")
    if cost.shape != lab.shape:
        raise ConfigError(f"costs: expected {lab.size} costs, one per row, got shape {cost.shape}")
    if cost.size and (not np.all(np.isfinite(cost)) or cost.min() < 0):
        raise ConfigError("costs: every row cost must be finite and >= 0")
    if isinstance(world_size, bool) or not isinstance(world_size, int | np.integer) \
            or world_size < 1:
        raise ConfigError(f"world_size: must be an integer >= 1, got {world_size!r}")
    if lab.size % world_size:
        raise ConfigError(f"world_size: the global batch of {lab.size} rows does not split "
                          f"evenly over {world_size} ranks; use a batch size that is a multiple "
                          "of the world size")
    return lab.astype(np.int64), cost, int(world_size)


@njit(cache=True, nogil=True)
def _lpt(cost: np.ndarray, group: np.ndarray, quota: np.ndarray) -> np.ndarray:
    """Costliest row first, to the least loaded rank with quota left for its group (ties to
    the lower rank)."""
    p = quota.shape[0]
    left = quota.copy()  # left[r, g]: rows of group g that rank r may still take
    load = np.zeros(p)
    owner = np.zeros(cost.size, np.int64)
    for i in np.argsort(-cost, kind="mergesort"):  # stable: ties in row order
        g = group[i]
        best, least = -1, np.inf
        for r in range(p):
            if left[r, g] > 0 and load[r] < least:
                best, least = r, load[r]
        owner[i] = best
        left[best, g] -= 1
        load[best] += cost[i]
    return owner


@njit(cache=True, nogil=True)
def _exchange(owner_in: np.ndarray, cost: np.ndarray, group: np.ndarray, lo: np.ndarray,
              hi: np.ndarray, p: int) -> np.ndarray:
    """Improve ``owner`` by pairwise swaps from the most loaded rank (module doc, step 2)."""
    owner = owner_in.copy()
    n = cost.size
    load = np.zeros(p)
    count = np.zeros((p, lo.size), np.int64)
    for i in range(n):
        load[owner[i]] += cost[i]
        count[owner[i], group[i]] += 1
    mean = cost.sum() / p
    top = cost.max() if n else 0.0
    good_enough = mean + min(_TOLERANCE * mean, top)
    least_gain = 1e-4 * mean * mean  # less than a 0.01% move of the squared loads
    # a bounded number of swaps: most of the gain comes from the first few, and a training step
    # must not wait on the tail
    for _ in range(n + p):
        a = 0
        for r in range(1, p):  # the first of the most loaded
            if load[r] > load[a]:
                a = r
        la = load[a]
        if la <= good_enough:  # mean is a lower bound on the optimum
            break
        best = -1.0
        px, py = -1, -1
        for x in range(n):
            if owner[x] != a:
                continue
            cx, gx = cost[x], group[x]
            a_spare = count[a, gx] > lo[gx]
            for y in range(n):
                b = owner[y]
                if b == a:
                    continue
                d = cx - cost[y]
                if d <= 0:
                    continue
                spread = la - load[b]
                if d >= spread:
                    continue
                gy = group[y]
                if gx != gy and not (a_spare and count[b, gx] < hi[gx]
                                     and count[b, gy] > lo[gy] and count[a, gy] < hi[gy]):
                    continue
                # the swap that lowers the sum of squared loads most: by 2·d·(spread − d)
                gain = d * (spread - d)
                if gain > best:
                    best, px, py = gain, x, y
        if best < least_gain:  # no feasible swap (best < 0), or too small a one
            break
        b = owner[py]
        dd = cost[px] - cost[py]
        owner[px], owner[py] = b, a
        load[a] -= dd
        load[b] += dd
        count[a, group[px]] -= 1
        count[b, group[px]] += 1
        count[b, group[py]] -= 1
        count[a, group[py]] += 1
    return owner


@njit(cache=True, nogil=True)
def _balanced_owner(lab: np.ndarray, cost: np.ndarray, p: int) -> np.ndarray:
    """The rank of every row (module doc: quotas of the deal, LPT, exchanges, fallback)."""
    n = lab.size
    uniq = np.unique(lab)
    group = np.searchsorted(uniq, lab).astype(np.int64)
    n_groups = uniq.size
    per_group = np.bincount(group, minlength=n_groups)
    lo = per_group // p
    hi = -(-per_group // p)
    order = np.argsort(group, kind="mergesort")  # the round-robin deal, source by source
    dealt = np.empty(n, np.int64)
    for j in range(n):
        dealt[order[j]] = j % p
    quota = np.zeros((p, n_groups), np.int64)
    for i in range(n):
        quota[dealt[i], group[i]] += 1
    best = _exchange(_lpt(cost, group, quota), cost, group, lo, hi, p)
    if n:
        lb, ld = np.zeros(p), np.zeros(p)
        for i in range(n):
            lb[best[i]] += cost[i]
            ld[dealt[i]] += cost[i]
        if lb.max() > ld.max():  # rare: fall back on improving the deal
            other = _exchange(dealt, cost, group, lo, hi, p)
            lo_ = np.zeros(p)
            for i in range(n):
                lo_[other[i]] += cost[i]
            if lo_.max() < lb.max() or (lo_.max() == lb.max()
                                        and np.sum(lo_ * lo_) < np.sum(lb * lb)):
                best = other
    return best


@njit(cache=True, nogil=True)
def row_labels_costs(row: np.ndarray, source: np.ndarray, width: np.ndarray, rows: int,
                     k: int, d_model: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the source filling most positions (ties to the lower index; -1 for an empty
    row, as :meth:`StepPlan.row_source`) and the cost ``Σ_seg s + s²/(6·d_model)``."""
    counts = np.zeros((rows, max(k, 1)), np.int64)
    cost = np.zeros(rows)
    for j in range(row.size):
        s = width[j]
        counts[row[j], source[j]] += s
        cost[row[j]] += s + s * s / (6.0 * d_model)
    label = np.full(rows, -1, np.int64)
    for r in range(rows):
        best = 0
        total = 0
        for i in range(counts.shape[1]):
            total += counts[r, i]
            if counts[r, i] > counts[r, best]:
                best = i
        if total > 0:
            label[r] = best
    return label, cost


def balanced_owner(labels: np.ndarray, costs: np.ndarray, world_size: int) -> np.ndarray:
    """The rank of every row, as :func:`balance_rows` assigns them (one compiled call)."""
    lab, cost, p = _check(labels, costs, world_size)
    return _balanced_owner(lab, cost, p)


def balance_rows(labels: np.ndarray, costs: np.ndarray, world_size: int) -> list[np.ndarray]:
    """Each rank's rows (ascending) of a global batch: label quotas kept, max cost minimised.

    ``labels[j]`` is row ``j``'s label (source; -1 for an empty row), ``costs[j]`` its cost
    (:func:`row_costs`). Deterministic: a pure function of the inputs. Raises
    :class:`ConfigError` when the rows do not split evenly over ``world_size``.
    """
    best = balanced_owner(labels, costs, world_size)
    p = int(world_size)
    order = np.argsort(best, kind="stable")  # rows by rank, ascending inside each
    return np.split(order, np.cumsum(np.bincount(best, minlength=p))[:-1])
