"""The linear program of BPE mixture inference, solved with HiGHS under lazy constraint
generation ("Data Mixture Inference: What do BPE Tokenizers Reveal about their Training Data?",
Hayase, Liu et al., 2024, section 3).

With c_{i,p}^{(t)} the count of pair p in category i's sample after t−1 merges, divided by the
sample's pair count at t = 0, the merge m(t) must have been the most frequent pair under the
mixture α. The relaxed program (per-merge slack v^{(t)}, per-pair slack v_p):

    minimise   Σ_t v^{(t)} + Σ_p v_p
    subject to Σ_i α_i (c_{i,m(t)}^{(t)} − c_{i,p}^{(t)}) + v^{(t)} + v_p ≥ 0   for all t, p ≠ m(t)
               Σ_i α_i = 1,  α ≥ 0,  v ≥ 0

has T × #pairs rows, so it is solved on a growing subset (the reference's lazy constraint
generation): replay the merges under the current α with a max-heap of mixed pair counts less
v_p, add the rows (t, p) that the current solution violates (at most ``per_step`` per step,
the pass stopping at ``per_pass`` rows), re-solve, until a pass adds nothing. With highspy the
program is one HiGHS model that grows by rows and is re-solved by the dual simplex from the
last basis; rows slack at an optimum are dropped now and then (the optimum does not move; a
dropped row comes back if a later replay finds it violated), which keeps the program a few
times smaller than the rows ever added. The α found is in pair-count units; byte proportions
are α_i · bytes_i / pairs_i, renormalised (the reference's ``score_solution``).
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
                vt: np.ndarray, vp: np.ndarray, tol: float, per_step: int, per_pass: int,
                present: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                          np.ndarray, int, int]:
    """Replay the merges under ``weight`` and return up to ``per_pass`` violated rows that are
    not in ``present`` (sorted keys ``t * n_pairs + p``) among the steps before ``limit``: their
    step, pair, the per-category counts of the pair and of the step's merge; also the last step
    replayed.

    The heap holds each pair's priority mixed count − v_p (the reference's queue), so the pops
    above the step's cutoff mixed(m(t)) + v^{(t)} + tol are exactly the violated rows; the replay
    stops at the step where ``per_pass`` rows are found."""
    cnt = np.zeros((n_cat, n_pairs), dtype=np.int64)
    mixed = np.zeros(n_pairs, dtype=np.float64)
    for k in range(off[0], off[1]):
        cnt[ev_c[k], ev_p[k]] += ev_d[k]
        mixed[ev_p[k]] += weight[ev_c[k]] * ev_d[k]
    heap = [(vp[p] - mixed[p], p) for p in range(n_pairs) if mixed[p] > 0]
    heapq.heapify(heap)
    cap = max(1, min(per_pass, per_step * (len(off) - 1)))
    out_t = np.empty(cap, dtype=np.int64)
    out_p = np.empty(cap, dtype=np.int64)
    out_cp = np.empty((cap, n_cat), dtype=np.int64)
    out_cm = np.empty((cap, n_cat), dtype=np.int64)
    n = 0
    steps = min(len(off) - 1, limit)
    t = 1
    n_present = len(present)
    while t < steps and n < per_pass:
        m = merge_p[t]
        if m >= 0 and cnt[:, m].sum() > 0:
            thr = mixed[m] + vt[t] + tol
            stash = []
            found = 0
            while len(heap) > 0 and found < per_step and n < per_pass:
                negv, p = heap[0]
                if -negv <= thr:
                    break
                heapq.heappop(heap)
                if vp[p] - mixed[p] != negv:
                    continue  # stale entry
                stash.append((negv, p))
                key = t * n_pairs + p
                at = np.searchsorted(present, key)
                if p == m or (at < n_present and present[at] == key):
                    continue
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
                heapq.heappush(heap, (vp[p] - mixed[p], p))
        t += 1
    return out_t[:n], out_p[:n], out_cp[:n], out_cm[:n], n, t


@njit(cache=True, nogil=True)
def _merges_used(off: np.ndarray, ev_p: np.ndarray, ev_d: np.ndarray, merge_p: np.ndarray,
                 n_pairs: int) -> int:
    """How many merges occur in some sample at their step (the others add no rows)."""
    total = np.zeros(n_pairs, dtype=np.int64)
    used = 0
    for t in range(len(off) - 1):
        m = merge_p[t]
        if t > 0 and m >= 0 and total[m] > 0:
            used += 1
        for k in range(off[t], off[t + 1]):
            total[ev_p[k]] += ev_d[k]
    return used


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
    constraints: int  # rows in the final LP
    passes: int
    converged: bool
    history: list[int] = field(default_factory=list)  # rows added per pass
    rows_added: int = 0  # all passes, including rows later dropped as slack
    rows_dropped: int = 0
    timing: dict[str, float] = field(default_factory=dict)  # seconds: replay, lp
    #: why the passes ended: "converged" (no violated row left), "stable" (the shares moved
    #: by at most ``stable_tol`` over ``stable_passes`` passes that swept every merge) or
    #: "max_passes"
    stopped: str = "converged"
    reached: list[int] = field(default_factory=list)  # last step each pass's replay reached


def _solve_lp(rows_t: np.ndarray, rows_p: np.ndarray, diff: np.ndarray, n_cat: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """One solve from scratch with ``scipy.optimize.linprog(method="highs")`` (no highspy):
    α, the v^{(t)} and v_p columns, each row's activity, objective."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix, hstack

    ts, ti = np.unique(rows_t, return_inverse=True)
    ps, pi = np.unique(rows_p, return_inverse=True)
    r = len(rows_t)
    ones = np.ones(r)
    a_ub = hstack([coo_matrix(-diff), coo_matrix((-ones, (np.arange(r), ti)), shape=(r, len(ts))),
                   coo_matrix((-ones, (np.arange(r), pi)), shape=(r, len(ps)))]).tocsr()
    n_var = n_cat + len(ts) + len(ps)
    c = np.concatenate([np.zeros(n_cat), np.ones(len(ts) + len(ps))])
    a_eq = np.concatenate([np.ones(n_cat), np.zeros(len(ts) + len(ps))])[None, :]
    bounds = [(0.0, 1.0)] * n_cat + [(0.0, None)] * (n_var - n_cat)
    res = linprog(c, A_ub=a_ub, b_ub=np.zeros(r), A_eq=a_eq, b_eq=[1.0], bounds=bounds,
                  method="highs-ds")
    if res.status != 0 or res.x is None:
        raise DataError(f"mixture LP: HiGHS found no solution ({res.message.strip()}); "
                        f"{r} constraints over {n_cat} categories")
    x = res.x
    vt, vp = x[n_cat:n_cat + len(ts)], x[n_cat + len(ts):]
    return (np.clip(x[:n_cat], 0.0, None), vt[ti], vp[pi], np.asarray(res.slack),
            float(res.fun))


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

    With highspy (the ``audit`` extra) rows are added to one model and HiGHS's dual simplex
    re-solves from the previous basis (added rows are cuts: the old basis stays dual feasible);
    rows that are slack at an optimum can be dropped (:meth:`drop_slack`: the solution stays
    optimal and the basis valid). Without highspy every pass solves from scratch with
    ``scipy.optimize.linprog(method="highs-ds")``."""

    def __init__(self, n_cat: int, n_steps: int, n_pairs: int, use_highspy: bool = True) -> None:
        self.n_cat, self.n_steps, self.n_pairs = n_cat, n_steps, n_pairs
        self.t_col = np.full(n_steps, -1, dtype=np.int64)
        self.p_col = np.full(n_pairs, -1, dtype=np.int64)
        self.rows_t = np.zeros(0, dtype=np.int64)
        self.rows_p = np.zeros(0, dtype=np.int64)
        self.rows_d = np.zeros((0, n_cat))
        self.activity = np.zeros(0)
        self.h = None
        if not use_highspy:
            return
        try:
            import highspy
        except ImportError:
            return
        with _quiet_stdout():  # HiGHS prints a banner from C++ when the model is created
            h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("solver", "simplex")
        h.setOptionValue("simplex_strategy", 1)  # dual: added rows keep the basis dual feasible
        self.inf = highspy.kHighsInf
        h.addCols(n_cat, np.zeros(n_cat), np.zeros(n_cat), np.ones(n_cat), 0,
                  np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0))
        h.addRows(1, np.array([1.0]), np.array([1.0]), n_cat, np.array([0], np.int32),
                  np.arange(n_cat, dtype=np.int32), np.ones(n_cat))
        self.h = h
        self.n_cols = n_cat

    @property
    def keys(self) -> np.ndarray:
        """Sorted keys ``t * n_pairs + p`` of the rows in the program."""
        return np.sort(self.rows_t * self.n_pairs + self.rows_p)

    def _columns(self, col_of: np.ndarray, keys: np.ndarray) -> int:
        new = np.unique(keys[col_of[keys] < 0])
        col_of[new] = self.n_cols + np.arange(len(new))
        self.n_cols += len(new)
        return len(new)

    def add(self, t: np.ndarray, p: np.ndarray, diff: np.ndarray) -> None:
        self.rows_t = np.concatenate([self.rows_t, t])
        self.rows_p = np.concatenate([self.rows_p, p])
        self.rows_d = np.concatenate([self.rows_d, diff])
        if self.h is None:
            return
        new_cols = self._columns(self.t_col, t) + self._columns(self.p_col, p)
        if new_cols:
            self.h.addCols(new_cols, np.ones(new_cols), np.zeros(new_cols),
                           np.full(new_cols, self.inf), 0, np.zeros(0, np.int32),
                           np.zeros(0, np.int32), np.zeros(0))
        r, k = len(t), self.n_cat
        idx = np.empty((r, k + 2), dtype=np.int32)
        idx[:, :k] = np.arange(k)
        idx[:, k] = self.t_col[t]
        idx[:, k + 1] = self.p_col[p]
        val = np.empty((r, k + 2))
        val[:, :k] = diff
        val[:, k:] = 1.0
        starts = np.arange(r, dtype=np.int32) * (k + 2)
        self.h.addRows(r, np.zeros(r), np.full(r, self.inf), r * (k + 2), starts,
                       idx.ravel(), val.ravel())

    def drop_slack(self, slack: float) -> int:
        """Remove the rows whose activity exceeds ``slack`` at the last optimum."""
        drop = self.activity > slack
        n = int(drop.sum())
        if n == 0:
            return 0
        if self.h is not None:  # row 0 is Σα = 1
            idx = (np.flatnonzero(drop) + 1).astype(np.int32)
            self.h.deleteRows(len(idx), idx)
        keep = ~drop
        self.rows_t, self.rows_p, self.rows_d = (self.rows_t[keep], self.rows_p[keep],
                                                 self.rows_d[keep])
        self.activity = self.activity[keep]
        return n

    def solve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """α, v^{(t)} per step, v_p per pair, objective."""
        vt = np.zeros(self.n_steps)
        vp = np.zeros(self.n_pairs)
        if self.h is None:
            alpha, xt, xp, self.activity, obj = _solve_lp(self.rows_t, self.rows_p, self.rows_d,
                                                          self.n_cat)
            vt[self.rows_t] = xt
            vp[self.rows_p] = xp
            return alpha, vt, vp, obj
        import highspy

        self.h.run()
        status = self.h.getModelStatus()
        if status != highspy.HighsModelStatus.kOptimal:
            raise DataError(f"mixture LP: HiGHS found no solution "
                            f"({self.h.modelStatusToString(status)}); {len(self.rows_t)} "
                            f"constraints over {self.n_cat} categories")
        sol = self.h.getSolution()
        x = np.asarray(sol.col_value)
        self.activity = np.asarray(sol.row_value)[1:]
        has = self.t_col >= 0
        vt[has] = x[self.t_col[has]]
        has = self.p_col >= 0
        vp[has] = x[self.p_col[has]]
        obj = float(self.h.getInfo().objective_function_value)
        return np.clip(x[:self.n_cat], 0.0, None), vt, vp, obj


def _shares(alpha: np.ndarray, replay: Replay) -> np.ndarray:
    """Byte proportions of pair-count weights (the reference's ``score_solution``)."""
    prop = alpha * replay.bytes / replay.pairs0
    return prop / prop.sum() if prop.sum() > 0 else np.full(len(alpha), 1.0 / len(alpha))


def solve_mixture(replay: Replay, per_step: int = 10, per_pass: int = 5000,
                  max_passes: int = 10_000, tol: float = 1e-4, drop_slack: bool = True,
                  use_highspy: bool = True, stable_passes: int = 0,
                  stable_tol: float = 1e-4, stages: tuple[float, ...] = ()) -> Solution:
    """Lazy constraint generation until a replay under the solution finds no violated row.

    Each pass replays the merges under the current α (uniform at first) and adds, for each step
    in order, up to ``per_step`` violated rows, stopping at ``per_pass`` rows (the reference
    adds 10 per step and 100 per pass; larger passes mean fewer re-solves of an LP that grows
    the same way). With ``drop_slack``, rows slack at the optimum are dropped once the program
    has doubled since the last drop: they come back if a later replay finds them violated.

    With ``stable_passes`` > 0 the passes also end on stable shares: once the byte shares have
    moved by at most ``stable_tol`` (largest absolute change) over the last ``stable_passes``
    solves, the next pass is a sweep (its replay runs to the last merge, adding up to
    ``per_step`` violated rows at every merge), and the passes end if the sweep's solve moves
    the shares by at most ``stable_tol`` as well (``stopped == "stable"``, ``converged``
    False); otherwise they go on. The rows still to add would raise the slack but, as far as
    that sweep shows, no longer move the shares. Many merges (10^4 and more) need thousands of
    exact passes, most of them after the shares have settled; the benchmark measures how far
    the stable shares are from the exact ones.

    With ``stages`` (fractions of the merges, e.g. ``(0.25, 0.5)``) the passes first take only
    the first quarter of the merges, then half, then all; each stage ends as the whole does
    (no violated row, or stable shares) and hands its rows and solution to the next. Without
    the stable stop the optimum is the whole program's.
    """
    import time

    n_cat = len(replay.pairs0)
    alpha = np.full(n_cat, 1.0 / n_cat)
    n_steps = len(replay.off) - 1
    vt = np.zeros(n_steps)
    vp = np.zeros(replay.n_pairs)
    used = _merges_used(replay.off, replay.pair, replay.delta, replay.merge_pair, replay.n_pairs)
    if used == 0:
        raise DataError("mixture LP: none of the merges occurs in any category's sample; the "
                        "samples are too small or the tokenizer is unrelated to them")
    program = _Program(n_cat, n_steps, replay.n_pairs, use_highspy)
    history: list[int] = []
    residual = 0.0
    converged = False
    added = dropped = 0
    last_size = 0
    timing = {"replay": 0.0, "lp": 0.0}
    norm = SCALE / replay.pairs0
    shares = [_shares(alpha, replay)]
    reached: list[int] = []
    stopped = "max_passes"
    sweep = False  # the next pass replays every merge (no per-pass cap)
    limits = sorted({max(2, min(n_steps, round(f * n_steps))) for f in stages if 0 < f < 1}
                    | {n_steps})
    stage = 0
    since = 0  # index in ``shares`` where the current stage began
    for _ in range(max_passes):
        limit = limits[stage]
        t0 = time.perf_counter()
        t, p, cp, cm, n, last = _violations(
            replay.off, replay.pair, replay.cat, replay.delta, replay.merge_pair, alpha * norm,
            n_cat, replay.n_pairs, vt, vp, tol, per_step,
            per_step * n_steps if sweep else per_pass, program.keys, limit)
        timing["replay"] += time.perf_counter() - t0
        history.append(n)
        reached.append(int(last))
        if n == 0:
            if stage + 1 < len(limits):  # this stage is exact: the next takes more merges
                stage, since, sweep = stage + 1, len(shares) - 1, False
                continue
            converged = True
            stopped = "converged"
            break
        added += n
        t0 = time.perf_counter()
        if drop_slack and len(program.rows_t) > max(2 * last_size, 4 * min(per_pass, 20_000)):
            dropped += program.drop_slack(tol)
            last_size = len(program.rows_t)
        program.add(t, p, (cm - cp) * norm[None, :])
        alpha, vt, vp, residual = program.solve()
        timing["lp"] += time.perf_counter() - t0
        s = alpha.sum()
        alpha = alpha / s if s > 0 else np.full(n_cat, 1.0 / n_cat)
        shares.append(_shares(alpha, replay))
        k = stable_passes
        if sweep:  # a sweep's rows are in: stop if they moved the shares by <= stable_tol
            if np.abs(shares[-1] - shares[-2]).max() <= stable_tol:
                if stage + 1 < len(limits):
                    stage, since, sweep = stage + 1, len(shares) - 1, False
                    continue
                stopped = "stable"
                break
            sweep = False
            continue
        is_stable = (k > 0 and len(shares) - 1 - since >= k
                     and np.abs(shares[-1] - shares[-1 - k]).max() <= stable_tol)
        sweep = is_stable  # stable so far: the next pass adds rows at every merge
    return Solution(alpha, shares[-1], residual, used, len(program.rows_t), len(history),
                    converged, history, added, dropped, timing, stopped, reached)
