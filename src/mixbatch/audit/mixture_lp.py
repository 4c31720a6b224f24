"""The linear program of BPE mixture inference, solved with HiGHS under lazy constraint
generation ("Data Mixture Inference: What do BPE Tokenizers Reveal about their Training Data?",
Hayase, Liu et al., 2024, section 3).

With c_{i,p}^{(t)} the count of pair p in category i's sample after t−1 merges, divided by the
sample's pair count at t = 0, the merge m(t) must have been the most frequent pair under the
mixture α. The relaxed program (per-merge slack v^{(t)}, per-pair slack v_p):

    minimise   Σ_t v^{(t)} + Σ_p v_p
    subject to Σ_i α_i (c_{i,m(t)}^{(t)} − c_{i,p}^{(t)}) + v^{(t)} + v_p ≥ 0   for all t, p ≠ m(t)
               Σ_i α_i = 1,  α ≥ 0,  v ≥ 0

has T × #pairs rows, so it is solved on a growing subset: replay the merges under the current
α with a max-heap of mixed pair counts, add the rows (t, p) that the current solution violates
(at most ``per_step`` per step and ``per_pass`` per pass), solve again with
``scipy.optimize.linprog(method="highs")``, until a pass adds nothing. The α found is in
pair-count units; byte proportions are α_i · bytes_i / pairs_i, renormalised (the reference's
``score_solution``).
"""

from __future__ import annotations

import heapq
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from mixbatch.audit.bpe_counts import PairEvents
from mixbatch.errors import DataError

#: counts are per 10^6 pairs of the category's sample, so that HiGHS's tolerances (1e-7) are
#: far below the differences between competing pairs
SCALE = 1e6


@njit(cache=True, nogil=True)
def _violations(off: np.ndarray, ev_p: np.ndarray, ev_c: np.ndarray, ev_d: np.ndarray,
                merge_p: np.ndarray, weight: np.ndarray, n_cat: int, n_pairs: int,
                vt: np.ndarray, vp: np.ndarray, tol: float, per_step: int, per_pass: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Replay the merges under ``weight`` and return the violated rows: their step, pair, the
    per-category counts of the pair and of the step's merge; also the merges used (the merge's
    pair occurs in some sample at its step)."""
    cnt = np.zeros((n_cat, n_pairs), dtype=np.int64)
    mixed = np.zeros(n_pairs, dtype=np.float64)
    for k in range(off[0], off[1]):
        cnt[ev_c[k], ev_p[k]] += ev_d[k]
        mixed[ev_p[k]] += weight[ev_c[k]] * ev_d[k]
    heap = [(-mixed[p], p) for p in range(n_pairs) if mixed[p] > 0]
    heapq.heapify(heap)
    cap = max(1, min(per_pass, per_step * (len(off) - 1)))
    out_t = np.empty(cap, dtype=np.int64)
    out_p = np.empty(cap, dtype=np.int64)
    out_cp = np.empty((cap, n_cat), dtype=np.int64)
    out_cm = np.empty((cap, n_cat), dtype=np.int64)
    n = 0
    used = 0
    steps = len(off) - 1
    for t in range(1, steps):
        m = merge_p[t]
        if m >= 0 and cnt[:, m].sum() > 0:
            used += 1
            if n < per_pass:
                big = mixed[m]
                thr = big + vt[t] + tol
                stash = []
                found = 0
                while len(heap) > 0 and found < per_step and n < per_pass:
                    negv, p = heap[0]
                    v = -negv
                    if v <= thr:
                        break
                    heapq.heappop(heap)
                    if mixed[p] != v:
                        continue  # stale entry
                    stash.append((negv, p))
                    if p == m:
                        continue
                    if v - big > vt[t] + vp[p] + tol:
                        out_t[n] = t
                        out_p[n] = p
                        out_cp[n, :] = cnt[:, p]
                        out_cm[n, :] = cnt[:, m]
                        n += 1
                        found += 1
                for e in stash:
                    heapq.heappush(heap, e)
        for k in range(off[t], off[t + 1]):
            p = ev_p[k]
            cnt[ev_c[k], p] += ev_d[k]
            mixed[p] += weight[ev_c[k]] * ev_d[k]
            if mixed[p] > 0:
                heapq.heappush(heap, (-mixed[p], p))
    return out_t[:n], out_p[:n], out_cp[:n], out_cm[:n], n, used


@dataclass
class Replay:
    """All categories' events on one pair index, grouped by step (``off[t]..off[t+1]``)."""

    off: np.ndarray
    pair: np.ndarray
    cat: np.ndarray
    delta: np.ndarray
    merge_pair: np.ndarray  # pair index of merge t (index t), -1 when absent; [0] unused
    n_pairs: int
    pairs0: np.ndarray
    bytes: np.ndarray


def build_replay(events: list[PairEvents], merge_key: np.ndarray) -> Replay:
    keys = np.unique(np.concatenate([e.key for e in events]))
    t = np.concatenate([e.t for e in events])
    cat = np.concatenate([np.full(len(e.t), i, dtype=np.int64) for i, e in enumerate(events)])
    pair = np.searchsorted(keys, np.concatenate([e.key for e in events]))
    delta = np.concatenate([e.delta for e in events])
    order = np.argsort(t, kind="stable")
    t, cat, pair, delta = t[order], cat[order], pair[order], delta[order]
    n_steps = len(merge_key) + 1
    off = np.searchsorted(t, np.arange(n_steps + 1)).astype(np.int64)
    pos = np.searchsorted(keys, merge_key)
    pos_c = np.minimum(pos, len(keys) - 1)
    mp = np.where((pos < len(keys)) & (keys[pos_c] == merge_key), pos_c, -1)
    merge_pair = np.concatenate([[-1], mp]).astype(np.int64)
    return Replay(off, pair.astype(np.int64), cat, delta.astype(np.int64), merge_pair, len(keys),
                  np.array([e.pairs0 for e in events], dtype=np.float64),
                  np.array([e.bytes for e in events], dtype=np.float64))


@dataclass
class Solution:
    """The inferred mixture and how the solver got there."""

    alpha: np.ndarray  # pair-count units
    proportions: np.ndarray  # bytes
    residual: float  # the LP objective: total slack, in counts per 10^6 pairs
    merges_used: int
    constraints: int
    passes: int
    converged: bool
    history: list[int] = field(default_factory=list)


def _solve_lp(rows_t: np.ndarray, rows_p: np.ndarray, diff: np.ndarray, n_cat: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix, hstack

    ts, ti = np.unique(rows_t, return_inverse=True)
    ps, pi = np.unique(rows_p, return_inverse=True)
    r = len(rows_t)
    a_alpha = coo_matrix(-diff)
    ones = np.ones(r)
    a_vt = coo_matrix((-ones, (np.arange(r), ti)), shape=(r, len(ts)))
    a_vp = coo_matrix((-ones, (np.arange(r), pi)), shape=(r, len(ps)))
    a_ub = hstack([a_alpha, a_vt, a_vp]).tocsr()
    n_var = n_cat + len(ts) + len(ps)
    c = np.concatenate([np.zeros(n_cat), np.ones(len(ts) + len(ps))])
    a_eq = np.concatenate([np.ones(n_cat), np.zeros(len(ts) + len(ps))])[None, :]
    bounds = [(0.0, 1.0)] * n_cat + [(0.0, None)] * (n_var - n_cat)
    res = linprog(c, A_ub=a_ub, b_ub=np.zeros(r), A_eq=a_eq, b_eq=[1.0], bounds=bounds,
                  method="highs")
    if res.status != 0 or res.x is None:
        raise DataError(f"mixture LP: HiGHS found no solution ({res.message.strip()}); "
                        f"{r} constraints over {n_cat} categories")
    x = res.x
    return (np.clip(x[:n_cat], 0.0, None), (ts, x[n_cat:n_cat + len(ts)]),
            (ps, x[n_cat + len(ts):]), float(res.fun))


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence file descriptor 1 (C-level prints) for the duration."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no real stdout (embedded): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


class _Program:
    """The growing LP: α, then v^{(t)} and v_p columns created as rows need them.

    With highspy (the ``audit`` extra) rows are added to one model and HiGHS re-solves from the
    previous basis (dual simplex, warm); without it every pass solves from scratch with
    ``scipy.optimize.linprog(method="highs")``."""

    def __init__(self, n_cat: int, n_steps: int, n_pairs: int) -> None:
        self.n_cat = n_cat
        self.t_col: dict[int, int] = {}
        self.p_col: dict[int, int] = {}
        self.rows_t: list[np.ndarray] = []
        self.rows_p: list[np.ndarray] = []
        self.rows_d: list[np.ndarray] = []
        self.n_steps, self.n_pairs = n_steps, n_pairs
        try:
            import highspy
        except ImportError:
            self.h = None
            return
        with _quiet_stdout():  # HiGHS prints a banner from C++ when the model is created
            h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        inf = highspy.kHighsInf
        self.inf = inf
        h.addCols(n_cat, np.zeros(n_cat), np.zeros(n_cat), np.ones(n_cat), 0,
                  np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0))
        h.addRows(1, np.array([1.0]), np.array([1.0]), n_cat, np.array([0], np.int32),
                  np.arange(n_cat, dtype=np.int32), np.ones(n_cat))
        self.h = h
        self.n_cols = n_cat

    def add(self, t: np.ndarray, p: np.ndarray, diff: np.ndarray) -> None:
        self.rows_t.append(t)
        self.rows_p.append(p)
        self.rows_d.append(diff)
        if self.h is None:
            return
        new_cols = 0
        for col_of, keys in ((self.t_col, t), (self.p_col, p)):
            for k in keys.tolist():
                if k not in col_of:
                    col_of[k] = self.n_cols + new_cols
                    new_cols += 1
        if new_cols:
            self.h.addCols(new_cols, np.ones(new_cols), np.zeros(new_cols),
                           np.full(new_cols, self.inf), 0, np.zeros(0, np.int32),
                           np.zeros(0, np.int32), np.zeros(0))
            self.n_cols += new_cols
        r = len(t)
        k = self.n_cat
        idx = np.empty((r, k + 2), dtype=np.int32)
        idx[:, :k] = np.arange(k)
        idx[:, k] = [self.t_col[x] for x in t.tolist()]
        idx[:, k + 1] = [self.p_col[x] for x in p.tolist()]
        val = np.empty((r, k + 2))
        val[:, :k] = diff
        val[:, k:] = 1.0
        starts = np.arange(r, dtype=np.int32) * (k + 2)
        self.h.addRows(r, np.zeros(r), np.full(r, self.inf), r * (k + 2), starts,
                       idx.ravel(), val.ravel())

    def solve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """α, v^{(t)} per step, v_p per pair, objective."""
        if self.h is None:
            alpha, (ts, xt), (ps, xp), obj = _solve_lp(
                np.concatenate(self.rows_t), np.concatenate(self.rows_p),
                np.concatenate(self.rows_d), self.n_cat)
        else:
            import highspy

            self.h.run()
            status = self.h.getModelStatus()
            if status != highspy.HighsModelStatus.kOptimal:
                raise DataError(f"mixture LP: HiGHS found no solution "
                                f"({self.h.modelStatusToString(status)}); "
                                f"{sum(map(len, self.rows_t))} constraints over {self.n_cat} "
                                "categories")
            x = np.asarray(self.h.getSolution().col_value)
            alpha = np.clip(x[:self.n_cat], 0.0, None)
            ts = np.fromiter(self.t_col.keys(), dtype=np.int64, count=len(self.t_col))
            xt = x[np.fromiter(self.t_col.values(), dtype=np.int64, count=len(self.t_col))]
            ps = np.fromiter(self.p_col.keys(), dtype=np.int64, count=len(self.p_col))
            xp = x[np.fromiter(self.p_col.values(), dtype=np.int64, count=len(self.p_col))]
            obj = float(self.h.getInfo().objective_function_value)
        vt = np.zeros(self.n_steps)
        vt[ts] = xt
        vp = np.zeros(self.n_pairs)
        vp[ps] = xp
        return alpha, vt, vp, obj


def solve_mixture(replay: Replay, per_step: int = 20, per_pass: int = 1 << 40,
                  max_passes: int = 100, tol: float = 1e-4) -> Solution:
    """Lazy constraint generation until a replay under the solution finds no violated row."""
    n_cat = len(replay.pairs0)
    alpha = np.full(n_cat, 1.0 / n_cat)
    n_steps = len(replay.off) - 1
    vt = np.zeros(n_steps)
    vp = np.zeros(replay.n_pairs)
    program = _Program(n_cat, n_steps, replay.n_pairs)
    seen: set[tuple[int, int]] = set()
    history: list[int] = []
    residual = 0.0
    used = 0
    converged = False
    norm = SCALE / replay.pairs0
    for _ in range(max_passes):
        weight = alpha * norm
        t, p, cp, cm, n, used = _violations(replay.off, replay.pair, replay.cat, replay.delta,
                                            replay.merge_pair, weight, n_cat, replay.n_pairs,
                                            vt, vp, tol, per_step, per_pass)
        fresh = [k for k in range(n) if (int(t[k]), int(p[k])) not in seen]
        history.append(len(fresh))
        if not fresh:
            converged = True
            break
        for k in fresh:
            seen.add((int(t[k]), int(p[k])))
        idx = np.asarray(fresh)
        program.add(t[idx], p[idx], (cm[idx] - cp[idx]) * norm[None, :])
        alpha, vt, vp, residual = program.solve()
        s = alpha.sum()
        alpha = alpha / s if s > 0 else np.full(n_cat, 1.0 / n_cat)
    if used == 0:
        raise DataError("mixture LP: none of the merges occurs in any category's sample; the "
                        "samples are too small or the tokenizer is unrelated to them")
    prop = alpha * replay.bytes / replay.pairs0
    prop = prop / prop.sum() if prop.sum() > 0 else np.full(n_cat, 1.0 / n_cat)
    return Solution(alpha, prop, residual, used, len(seen), len(history), converged, history)
