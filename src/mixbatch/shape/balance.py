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

**Guarantee.** Whenever ``L_A > L_B`` there is a feasible swap with ``c(x) > c(y)`` (otherwise,
pairing rows label by label, ``L_A ≤ L_B``); when ``L_A − L_B > max_i c_i`` it improves. So the
exchanges end with ``max − min ≤ max_i c_i`` or by the stop above, and either way
``max ≤ mean + max_i c_i`` (the classic LPT bound).
"""

from __future__ import annotations

import numpy as np

from mixbatch.errors import ConfigError
from mixbatch.plan.partition import deal_by_source
from mixbatch.shape.base import StepPlan

__all__ = ["balance_rows", "row_costs"]

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


def _lpt(cost: np.ndarray, group: np.ndarray, quota: np.ndarray) -> np.ndarray:
    """Costliest row first, to the least loaded rank with quota left for its group (ties to
    the lower rank). A global batch has tens of rows over a few ranks: plain Python lists beat
    a NumPy call per row here."""
    p = quota.shape[0]
    left = quota.T.tolist()  # left[g][r]: rows of group g that rank r may still take
    load = [0.0] * p
    owner = [0] * len(cost)
    c, g = cost.tolist(), group.tolist()
    ranks = range(p)
    for i in np.argsort(-cost, kind="stable").tolist():
        q = left[g[i]]
        best, least = -1, float("inf")
        for r in ranks:
            if q[r] > 0 and load[r] < least:
                best, least = r, load[r]
        owner[i] = best
        q[best] -= 1
        load[best] += c[i]
    return np.asarray(owner, dtype=np.int64)


def _exchange(owner: list[int], cost: list[float], group: list[int], lo: list[int],
              hi: list[int], p: int) -> list[int]:
    """Improve ``owner`` by pairwise swaps from the most loaded rank (module doc, step 2).

    Plain Python over lists: a global batch has tens of rows over a few ranks, where a NumPy
    call per candidate matrix costs more than the loop over the pairs."""
    owner = list(owner)
    n = len(cost)
    load = [0.0] * p
    count = [[0] * len(lo) for _ in range(p)]
    for i in range(n):
        load[owner[i]] += cost[i]
        count[owner[i]][group[i]] += 1
    mean = sum(cost) / p
    good_enough = mean + min(_TOLERANCE * mean, max(cost, default=0.0))
    least_gain = 1e-4 * mean * mean  # less than a 0.01% move of the squared loads
    # a bounded number of swaps: most of the gain comes from the first few, and a training step
    # must not wait on the tail
    for _ in range(n + p):
        a = max(range(p), key=load.__getitem__)  # the first of the most loaded
        la = load[a]
        if la <= good_enough:  # mean is a lower bound on the optimum
            break
        ca = count[a]
        best = -1.0
        pick = (-1, -1)
        for x in range(n):
            if owner[x] != a:
                continue
            cx, gx = cost[x], group[x]
            a_spare = ca[gx] > lo[gx]
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
                if gx != gy and not (a_spare and count[b][gx] < hi[gx]
                                     and count[b][gy] > lo[gy] and ca[gy] < hi[gy]):
                    continue
                # the swap that lowers the sum of squared loads most: by 2·d·(spread − d)
                gain = d * (spread - d)
                if gain > best:
                    best, pick = gain, (x, y)
        if best < least_gain:  # no feasible swap (best < 0), or too small a one
            break
        x, y = pick
        b = owner[y]
        dd = cost[x] - cost[y]
        owner[x], owner[y] = b, a
        load[a] -= dd
        load[b] += dd
        count[a][group[x]] -= 1
        count[b][group[x]] += 1
        count[b][group[y]] -= 1
        count[a][group[y]] += 1
    return owner


def balance_rows(labels: np.ndarray, costs: np.ndarray, world_size: int) -> list[np.ndarray]:
    """Each rank's rows (ascending) of a global batch: label quotas kept, max cost minimised.

    ``labels[j]`` is row ``j``'s label (source; -1 for an empty row), ``costs[j]`` its cost
    (:func:`row_costs`). Deterministic: a pure function of the inputs. Raises
    :class:`ConfigError` when the rows do not split evenly over ``world_size``.
    """
    lab, cost, p = _check(labels, costs, world_size)
    _, group = np.unique(lab, return_inverse=True)
    group = group.astype(np.int64).ravel()
    n_groups = int(group.max()) + 1 if group.size else 0
    per_group = np.bincount(group, minlength=n_groups)
    lo, hi = per_group // p, -(-per_group // p)
    dealt = np.empty(len(group), dtype=np.int64)
    for r, rows in enumerate(deal_by_source(group, p)):
        dealt[rows] = r
    quota = np.zeros((p, n_groups), dtype=np.int64)
    np.add.at(quota, (dealt, group), 1)
    def key(owner: np.ndarray) -> tuple[float, float]:
        load = np.bincount(owner, weights=cost, minlength=p)
        return float(load.max()), float(np.sum(load * load))

    c, g, lo_l, hi_l = cost.tolist(), group.tolist(), lo.tolist(), hi.tolist()
    best = np.asarray(_exchange(_lpt(cost, group, quota).tolist(), c, g, lo_l, hi_l, p),
                      dtype=np.int64)
    if len(cost) and key(best)[0] > key(dealt)[0]:  # rare: fall back on improving the deal
        other = np.asarray(_exchange(dealt.tolist(), c, g, lo_l, hi_l, p), dtype=np.int64)
        if key(other) < key(best):
            best = other
    order = np.argsort(best, kind="stable")  # rows by rank, ascending inside each
    return np.split(order, np.cumsum(np.bincount(best, minlength=p))[:-1])
