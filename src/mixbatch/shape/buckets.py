r"""``packing: buckets``: dataset decomposition into power-of-two buckets, with a curriculum.

Pouransari et al., "Dataset Decomposition: Faster LLM Training with Variable Sequence Length
Curriculum", NeurIPS 2024 (arXiv 2405.13226); reference code ``apple/ml-dataset-decomposition``
(``scripts/make_dd_buckets.py``, ``open_lm.patch``), deterministic variant in OLMo-core
(``NumpyVSLDataset``).

**Decomposition** (paper Sec. 3.1). With ``L = seq_len = 2^max`` and ``min_len = 2^min``, a
document of ``n = q·L + r`` tokens becomes ``q`` pieces of ``L`` tokens and one piece per set
bit ``2^k >= min_len`` of ``r``, largest first: offsets ``0, L, ..., (q-1)·L``, then
``q·L + (r`` with bits ``0..k`` cleared``)``. The bits below ``min_len`` are the last
``r mod min_len`` tokens of the document; they are not trained on and are counted as
*truncated*. A piece is one whole row: no padding, no attention across documents, and **no
end-of-document token** (a row is one chunk of one document; in the paper the EOT closes the
document and usually falls into the dropped remainder anyway). As everywhere in mixbatch the
first label of a row is ignored (:func:`~mixbatch.shape.materialize.materialize`), so a row of
``2^k`` tokens trains ``2^k - 1`` predictions.

**Batches** (Sec. 3.2). Bucket ``D_k`` holds the pieces of length ``2^k``. A step takes one
bucket and ``token_budget / 2^k`` of its pieces, so *every step holds exactly token_budget
tokens*. ``token_budget`` must be a multiple of ``seq_len · row_multiple``; then every bucket's
row count is a multiple of ``row_multiple`` and no padding is ever needed.

**Curriculum** (Sec. 3.3). The paper's sampler (``MyRandomMix(longest=True)`` in the patch)
picks bucket ``i`` with probability ``∝ N_i·o_i`` among buckets not yet used up, where ``N_i``
is the bucket's number of batches in the cycle and ``o_i`` the curriculum's odds. Its expected
draws follow (fluid limit, in the time ``τ`` with ``dτ = dt / Σ_active N_j o_j``)

.. math:: D_i(τ) = N_i \min(1, o_i τ), \qquad t(τ) = \sum_i D_i(τ),

piecewise linear: short buckets with large odds run out first. We follow it exactly instead of
drawing at random: step ``n`` has target ``D_i(τ_n)`` with ``t(τ_n) = n``, and an
:class:`~mixbatch.plan.interleave.Interleaver` (sample mode, weights
``D_i(τ_n) - D_i(τ_{n-1})`` at step ``n``) keeps every bucket within one batch of its target on
every prefix (Tijdeman's bound). These increments are constant between the kinks, so the
interleaver is called once per run of equal increments (at most two per bucket), not per
step. Odds, bucket 0 the shortest of ``B``:

- ``uniform``: ``o_i = 1``; ``D_i ∝ N_i``, every batch equally likely, constant proportions.
- ``natural``: ``∝`` tokens in the bucket. Every batch holds ``token_budget`` tokens, so tokens
  are ``∝`` batches and ``natural`` *is the same schedule as* ``uniform``.
- ``grow_p2``: ``o_i = 2^(B-1-i)`` (the paper's ``32 16 8 4 2 1``); the share of long
  buckets grows through the cycle, which ends with the longest bucket alone.
- ``grow_linear``: ``o_i = B - i``.

``cycles`` repeats the curriculum: each window's batches of bucket ``i`` are spread evenly over
``cycles`` cycles, each run from the start of the curriculum. So the curriculum's period is
``window_tokens / cycles`` tokens: to follow the paper's "8 cycles over T tokens", use
``window_tokens = T`` and ``cycles = 8``, or ``window_tokens = T / 8`` and ``cycles = 1``.
The run's first step comes from the longest bucket that has a batch (its first batch moves to
the front, as in OLMo-core), so an out-of-memory error shows at step 0.

**Sources.** The curriculum fixes each step's bucket; which sources fill it is chosen so that
the mixture follows the target step by step (:func:`mixbatch.shape.follow.follow_counts`):
piece by piece, the step takes the next piece (in stream order) of the source furthest behind
``w_i · t`` at the step's end, where ``t`` counts the tokens fed and ``w`` are the feed's
weights when the window was pulled. The counts are planned twice: freely, then with no source
more than ``seq_len`` tokens ahead of its pace in a bucket (the free plan's share of the bucket,
spread evenly over its steps), so a bucket's last steps are not left with one source. What
is ahead or behind at a window's end (``drift`` in the state, ``K`` numbers) carries into the
next window's target. In token mode the feed plans pieces of at most ``seq_len`` tokens and
counts each for its tokens rounded down to a multiple of ``min_len`` (the tokens this mode
trains on), so tails below ``min_len`` do not bias the mixture. Still, the part of each bucket
that fills no whole batch is dropped per window, and it falls mostly on the sources that hold
the short buckets; the carried drift can only choose which pieces are dropped. Measured
(``benchmarks/bench_step_mixture.py``, real text, seq_len 512, budget 8 · 512, uniform
curriculum, seeds 0-2): at most 0.69 step's tokens off at any step boundary (31-153 steps
before); a
length curriculum (``grow_p2``) feeds the short buckets first, and when sources differ in
length the mixture follows the curriculum (tests: 22 steps off on synthetic sources).

**Window and leftovers.** The shaper pulls documents covering ``window_tokens`` tokens, plans
all of that window's steps at once, and hands them out one by one. A bucket's pieces that do
not fill a whole batch at the end of a window (fewer than ``token_budget`` tokens per bucket,
so at most ``B · token_budget`` per window) are counted as truncated. A window's truncated
tokens are reported in ``StepPlan.truncated`` of its first step and split in its ``stats``
(``window_tail``, ``window_leftover``, ``window_tokens``); a window without a step passes them
on, and at the end of a finite stream the rest is
:attr:`~mixbatch.shape.window.WindowReplay.unreported`. Larger windows leave less over and a
smaller ``min_len`` drops less; the measured shares are in ``benchmarks/RESULTS.md``
(bench_shaping).

**State** (:class:`~mixbatch.shape.window.WindowReplay`): the feed's position before the
window, the steps of the window already handed out, a few counters, the feed's weights when the
window was pulled and the ``drift`` per source at the window's start (``O(K)``). Resume replays
the window from the feed and skips the steps already handed out. A mixture change (schedule,
online policy) therefore takes effect at the next window. A change of ``token_budget`` (a
schedule of stages, or :meth:`BucketShaper.set_budget` at run time) takes effect at the next
step: the pieces of the open window's steps not handed out yet are cut into batches of the new
budget again (:class:`~mixbatch.shape.window.WindowReplay`), from the drift at that step; what
fills no whole batch of the new budget is counted as truncated, as at a window's end. A step's rows are
``token_budget / 2^k`` (a ``buckets`` batch takes no ``batch_size``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mixbatch.config import Curriculum
from mixbatch.errors import ConfigError, MixbatchInternalError, StateError
from mixbatch.limits import WINDOW_BUDGETS
from mixbatch.plan.interleave import Interleaver
from mixbatch.ranges import group_ranks
from mixbatch.shape.base import DocFeed, Docs, StepPlan
from mixbatch.shape.follow import Drift, follow_counts
from mixbatch.shape.pad_plan import step_picks
from mixbatch.shape.window import Budgeted, BudgetShaper, WindowReplay

__all__ = ["BucketShaper", "Pieces", "bucket_pieces", "bucket_schedule",
           "curriculum_odds", "curriculum_targets", "decompose", "interleave_sources"]

# ------------------------------------------------------------------------ decomposition


@dataclasses.dataclass(frozen=True)
class Pieces:
    """Pieces of documents in stream order (document, then offset): where each comes from and
    ``log2`` of its length."""

    source: np.ndarray  # int32
    doc: np.ndarray  # int64
    start: np.ndarray  # int64
    log2: np.ndarray  # int64

    def __len__(self) -> int:
        return int(self.source.shape[0])


def bucket_pieces(docs: Docs, seq_len: int,
                  min_len: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """The binary decomposition (module docstring) bucket by bucket: per bucket ``2^k``,
    shortest first, the index in ``docs`` and the start offset of each of its pieces, in
    stream order; also the tokens truncated per document (``length mod min_len`` of the part
    below ``seq_len``)."""
    kmax, kmin = seq_len.bit_length() - 1, min_len.bit_length() - 1
    n = docs.tokens
    base = docs.span_start  # a planned piece starts inside its document
    q = n >> kmax
    r = n & (seq_len - 1)
    out = []
    if kmax > kmin:
        # bit k of r (kmin <= k < kmax) is a piece of 2^k after the q pieces of seq_len and
        # the larger bits: row k - kmin holds the documents' bit k
        bits = ((r >> np.arange(kmin, kmax, dtype=np.int64)[:, None]) & 1).astype(bool)
        for k in range(kmin, kmax):
            has = np.flatnonzero(bits[k - kmin])
            out.append((has, base[has] + (q[has] << kmax) + ((r[has] >> (k + 1)) << (k + 1))))
    # q pieces of seq_len per document, at offsets 0, L, 2L, ...
    top = np.repeat(np.arange(len(n), dtype=np.int64), q)
    out.append((top, base[top] + (group_ranks(q) << kmax)))
    return out, r & (min_len - 1)


def decompose(docs: Docs, seq_len: int, min_len: int) -> tuple[Pieces, np.ndarray]:
    """Binary decomposition of every document (module docstring), all buckets in stream order
    (document, then offset); also the tokens truncated per document (``length mod min_len``
    of the part below ``seq_len``)."""
    kmin = min_len.bit_length() - 1
    parts, tails = bucket_pieces(docs, seq_len, min_len)
    parts = parts[::-1]  # longest first: a document's pieces by offset, once sorted by document
    d = np.concatenate([at for at, _ in parts])
    order = np.argsort(d, kind="stable")
    d = d[order]
    off = np.concatenate([start for _, start in parts])[order]
    k_all = np.repeat(np.arange(kmin + len(parts) - 1, kmin - 1, -1, dtype=np.int64),
                      [len(at) for at, _ in parts])[order]
    pieces = Pieces(docs.source.astype(np.int32, copy=False)[d],
                    docs.doc.astype(np.int64, copy=False)[d], off, k_all)
    return pieces, tails


def interleave_sources(source: np.ndarray, num_sources: int) -> np.ndarray:
    """A permutation of items (in stream order) whose sources interleave exactly by their
    counts: every prefix holds each source within one item of its share; each source's items
    keep their order."""
    n = len(source)
    counts = np.bincount(source, minlength=num_sources)
    if n == 0 or (counts > 0).sum() <= 1:
        return np.arange(n, dtype=np.int64)
    chosen = Interleaver(num_sources).choose(n, counts / n)
    if not np.array_equal(np.bincount(chosen, minlength=num_sources), counts):
        raise MixbatchInternalError("buckets: the source interleave missed its counts")
    first = np.cumsum(counts) - counts
    by_source = np.argsort(source, kind="stable")
    in_order = np.argsort(chosen, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[in_order] = np.arange(n) - np.repeat(first, counts)
    return by_source[first[chosen] + rank]


# ------------------------------------------------------------------------ curriculum


def curriculum_odds(curriculum: Curriculum | str, num_buckets: int) -> np.ndarray:
    """Odds ``o_i`` of bucket ``i`` (0 = shortest) for a curriculum; see the module docstring."""
    c = Curriculum(curriculum)
    i = np.arange(num_buckets, dtype=np.float64)
    if c in (Curriculum.UNIFORM, Curriculum.NATURAL):
        return np.ones(num_buckets)
    if c == Curriculum.GROW_P2:
        return 2.0 ** (num_buckets - 1 - i)
    return num_buckets - i  # GROW_LINEAR


def curriculum_targets(batches: np.ndarray, odds: np.ndarray) -> np.ndarray:
    """``D_i(τ_n)`` for ``n = 0..S`` (shape ``(S+1, B)``): expected draws of the paper's
    sampler after ``n`` steps, ``D_i(τ) = N_i·min(1, o_i τ)`` with ``Σ_i D_i(τ_n) = n``."""
    N = np.asarray(batches, dtype=np.int64)
    o = np.asarray(odds, dtype=np.float64)
    S = int(N.sum())
    if S == 0:
        return np.zeros((1, N.size))
    active = N > 0
    taus = np.unique(np.concatenate([[0.0], 1.0 / o[active]]))  # kinks of t(τ)
    t_at = (N[None, :] * np.minimum(1.0, o[None, :] * taus[:, None])).sum(axis=1)
    tau_n = np.interp(np.arange(S + 1, dtype=np.float64), t_at, taus)
    D = N[None, :] * np.minimum(1.0, o[None, :] * tau_n[:, None])
    D[-1] = N  # the cycle ends with every batch drawn (τ = 1 / min odds)
    return D


_RUN_RTOL = _RUN_ATOL = 1e-12  # steps whose normalised increments agree this closely share a run


def bucket_schedule(batches: np.ndarray, odds: np.ndarray) -> np.ndarray:
    """The bucket of every step of one cycle with ``batches[i]`` batches of bucket ``i``:
    within one batch of :func:`curriculum_targets` on every prefix, exact at the end.

    The targets are piecewise linear in the step, so their per-step increments are piecewise
    constant: steps are grouped into runs of equal increments (equal to a relative and
    absolute tolerance of 1e-12, which only absorbs rounding; a kink changes them by far more)
    and each run is one :meth:`Interleaver.choose` call with the run's mean increment, so the
    interleaver's target meets ``D`` at the end of every run. About ``2 B`` calls per cycle
    instead of one per step."""
    N = np.asarray(batches, dtype=np.int64)
    D = curriculum_targets(N, odds)
    S = int(N.sum())
    if S == 0:
        return np.empty(0, dtype=np.int64)
    w = np.maximum(np.diff(D, axis=0), 0.0)
    w /= w.sum(axis=1, keepdims=True)  # as Interleaver.choose normalises them
    prev, nxt = w[:-1], w[1:]
    same = (np.abs(nxt - prev) <= _RUN_ATOL + _RUN_RTOL * np.abs(prev)).all(axis=1)
    starts = np.flatnonzero(np.concatenate([[True], ~same]))
    ends = np.append(starts[1:], S)
    il = Interleaver(N.size)
    out = np.concatenate([
        il.choose(e - a, np.maximum(D[e] - D[a], 0.0) / (e - a))
        for a, e in zip(starts.tolist(), ends.tolist(), strict=True)])
    if not np.array_equal(np.bincount(out, minlength=N.size), N):
        raise MixbatchInternalError("buckets: the curriculum schedule missed its batch counts")
    return out


# ------------------------------------------------------------------------ the shaper


def _is_pow2(x: int) -> bool:
    return isinstance(x, int | np.integer) and x >= 1 and (x & (x - 1)) == 0


class BucketShaper(BudgetShaper):
    """``packing: buckets`` (module docstring).

    Args:
        seq_len: the longest bucket, ``2^max`` (``batch.seq_len``).
        token_budget: tokens of every step; a multiple of ``seq_len · row_multiple``.
        min_len: the shortest bucket, ``2^min``; shorter remainders are truncated.
        curriculum: ``uniform`` | ``natural`` | ``grow_p2`` | ``grow_linear``.
        cycles: curriculum cycles per window.
        row_multiple: every step's row count is a multiple of it.
        window_tokens: tokens planned at once (default ``256 ·`` the window's budget).
        budgets: the budgets of a ``token_budget`` schedule's stages (each checked; the first
            is ``token_budget``); :meth:`set_budget` changes the budget at run time.
    """

    name = "buckets"

    def __init__(self, seq_len: int, token_budget: int | None, min_len: int = 64,
                 curriculum: Curriculum | str = Curriculum.UNIFORM, cycles: int = 1,
                 row_multiple: int = 8, window_tokens: int | None = None,
                 budgets: list[int] | None = None) -> None:
        if not _is_pow2(seq_len):
            raise ConfigError(f"batch.seq_len: packing 'buckets' needs a power of two, got "
                              f"{seq_len!r} (buckets are 2^k for min_len <= 2^k <= seq_len)")
        if not _is_pow2(min_len):
            raise ConfigError(f"batch.min_len: packing 'buckets' needs a power of two, got "
                              f"{min_len!r}")
        if min_len > seq_len:
            raise ConfigError(f"batch.min_len: {min_len} is longer than batch.seq_len {seq_len}")
        if isinstance(row_multiple, bool) or not isinstance(row_multiple, int) or row_multiple < 1:
            raise ConfigError(f"batch.row_multiple: must be an integer >= 1, got {row_multiple!r}")
        self.seq_len, self.min_len, self.row_multiple = seq_len, min_len, row_multiple
        self.check_budget(token_budget)
        for j, b in enumerate(budgets or ()):
            self.check_budget(b, f"batch.token_budget.{j}.token_budget")
        assert token_budget is not None
        try:
            self.curriculum = Curriculum(curriculum)
        except ValueError:
            choices = ", ".join(repr(c.value) for c in Curriculum)
            raise ConfigError(f"batch.curriculum: got {curriculum!r}, expected one of "
                              f"{choices}") from None
        if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1:
            raise ConfigError(f"batch.cycles: must be an integer >= 1, got {cycles!r}")
        if window_tokens is not None and (isinstance(window_tokens, bool)
                                          or not isinstance(window_tokens, int)
                                          or window_tokens < token_budget):
            raise ConfigError(f"window_tokens: must be an integer >= token_budget "
                              f"({token_budget}), got {window_tokens!r}")
        self.window_tokens = window_tokens
        for b in budgets or ():
            self._check_window(b)
        self.token_budget = token_budget
        self.cycles = cycles
        self.kmin, self.kmax = min_len.bit_length() - 1, seq_len.bit_length() - 1
        self.odds = curriculum_odds(self.curriculum, self.kmax - self.kmin + 1)
        shown_window = WINDOW_BUDGETS * token_budget if window_tokens is None else window_tokens
        self.window = WindowReplay(window_tokens, 0, self.plan_window, settings={
            "seq_len": self.seq_len,
            "token_budget": self.token_budget if budgets is None else [int(b) for b in budgets],
            "min_len": self.min_len,
            "curriculum": self.curriculum.value, "cycles": self.cycles,
            "row_multiple": self.row_multiple, "window_tokens": shown_window},
            on_close=self._drift_close, budget=Budgeted(
                token_budget, self._use_budget, self.check_budget,
                lambda b: WINDOW_BUDGETS * b, self._replan))
        self._replan_offset: np.ndarray | None = None
        # tokens fed per source minus the target, window to window (module docstring: Sources)
        self.drift = Drift()

    def _drift_close(self) -> None:
        self.drift.close()

    def check_budget(self, budget: object, where: str = "batch.token_budget") -> None:
        """Raise :class:`ConfigError` for a budget that is not a whole multiple of ``seq_len ·
        row_multiple`` (then every bucket's batch splits evenly and needs no padding)."""
        unit = self.seq_len * self.row_multiple
        if budget is None:
            raise ConfigError(f"{where}: packing 'buckets' needs a token budget per step, a "
                              f"multiple of seq_len × row_multiple = {unit}")
        if isinstance(budget, bool) or not isinstance(budget, int | np.integer) \
                or budget < self.seq_len:
            raise ConfigError(f"{where}: {budget!r} tokens cannot hold one sequence of seq_len "
                              f"{self.seq_len}; use a multiple of seq_len × row_multiple = "
                              f"{unit}")
        if budget % unit:
            raise ConfigError(f"{where}: must be a multiple of seq_len × row_multiple = "
                              f"{self.seq_len} × {self.row_multiple} = {unit}, so that every "
                              f"bucket's batch of token_budget / 2^k rows splits evenly (got "
                              f"{budget})")
        if getattr(self, "window_tokens", None) is not None:
            self._check_window(int(budget))

    def _check_window(self, budget: int) -> None:
        if self.window_tokens is not None and self.window_tokens < budget:
            raise ConfigError(f"window_tokens: {self.window_tokens} is below a token_budget of "
                              f"{budget}; a window must hold at least one step")

    def _replan(self, done: list[StepPlan]) -> None:
        """The drift where the rest of the window is planned again: the window's start, plus
        what its steps handed out fed, minus their target."""
        k = max([len(self.window.weights or [])] + [int(p.source.max()) + 1 for p in done
                                                    if len(p.source)])
        fed = np.zeros(k)
        for p in done:
            np.add.at(fed, p.source.astype(np.int64), (p.end - p.start).astype(np.float64))
        w = Drift.weights(self.window.weights, np.arange(k), fed, k)
        self._replan_offset = self.drift.offset(k) + fed - w * fed.sum()

    # -- Shaper
    def plan_step(self, feed: DocFeed, rows: int) -> StepPlan | None:
        """The next step (``rows`` is ignored: a step has ``token_budget / 2^k`` rows)."""
        del rows
        return self.window.next(feed)

    def state_dict(self) -> dict[str, Any]:
        return {**self.window.state_dict(), "drift": self.drift.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window.load_state_dict(state)
        try:
            self.drift.load_state_dict(state.get("drift", []))
        except (TypeError, ValueError) as e:
            raise StateError(f"shaper state: malformed drift ({e})") from None

    @property
    def unreported_truncated(self) -> int:
        return self.window.unreported

    # -- planning (pure)
    def plan_window(self, docs: Docs, run_start: bool) -> tuple[list[StepPlan], int]:
        """All steps of one window, and the tokens it truncates (tails below ``min_len`` and
        bucket leftovers)."""
        parts, tails = bucket_pieces(docs, self.seq_len, self.min_len)
        n_src = int(docs.source.max()) + 1 if len(docs) else 1
        at_change, self._replan_offset = self._replan_offset, None
        if at_change is not None:  # the rest of a window, planned again with another budget
            n_src = max(n_src, len(at_change))
        sources = docs.source.astype(np.int32, copy=False)
        doc_ids = docs.doc.astype(np.int64, copy=False)
        B = self.kmax - self.kmin + 1
        batches = np.zeros(B, dtype=np.int64)
        avail = np.zeros((B, n_src), dtype=np.int64)
        leftover = 0
        # per bucket: its pieces grouped by source (each source's in stream order)
        per_bucket = []
        for b, (at, offset) in enumerate(parts):
            k = self.kmin + b
            source = sources[at]
            rows = self.token_budget >> k
            batches[b] = len(at) // rows
            leftover += (len(at) - int(batches[b]) * rows) << k
            by_source = np.argsort(source, kind="stable")
            avail[b] = np.bincount(source, minlength=n_src)
            first = np.cumsum(avail[b]) - avail[b]
            per_bucket.append((rows, 1 << k, at[by_source], offset[by_source], first))
        per_cycle = [batches // self.cycles + (c < batches % self.cycles)
                     for c in range(self.cycles)]
        order = np.concatenate([bucket_schedule(n, self.odds) for n in per_cycle])
        if run_start and order.size:  # the longest batch first: out-of-memory shows at step 0
            first = int(np.argmax(order == order.max()))
            order = np.concatenate([order[first:first + 1], order[:first], order[first + 1:]])
        # which sources fill each step: the ones furthest behind the planned stream (of the
        # tokens that are fed: tails excluded), so the mixture follows it step by step
        step_rows = np.array([per_bucket[b][0] for b in order.tolist()], dtype=np.int64)
        sizes = np.array([1 << (self.kmin + b) for b in range(B)], dtype=np.int64)
        drift = self.drift.offset(n_src) if at_change is None else at_change[:n_src]
        fed = docs.tokens - tails
        target = Drift.weights(self.window.weights, sources, fed, n_src)
        take = follow_counts(order, step_rows, sizes, avail, sources, fed, drift, target,
                             slack=self.seq_len) \
            if order.size else avail[:0]
        self.drift.planned(drift, (take * sizes[order][:, None]).sum(axis=0), target)
        truncated = int(tails.sum()) + leftover
        window_stats = {"window_tokens": int(docs.tokens.sum()),
                        "window_tail": int(tails.sum()), "window_leftover": leftover}
        most = self.token_budget >> self.kmin
        row_index = np.arange(most, dtype=np.int32)
        col, pad, eod = np.zeros(most, np.int64), np.zeros(most, np.int64), np.zeros(most, bool)
        # every step's pieces at once (compiled): per bucket its pieces grouped by source, a
        # step takes the next ones of each source it counts and keeps them in that order
        sizes_b = np.array([len(at) for _, _, at, _, _ in per_bucket], dtype=np.int64)
        base = np.cumsum(sizes_b) - sizes_b
        first_b = np.stack([f for _, _, _, _, f in per_bucket]) + base[:, None]
        at_all = np.concatenate([at for _, _, at, _, _ in per_bucket])
        off_all = np.concatenate([off for _, _, _, off, _ in per_bucket])
        pick, step_at = step_picks(order, take, first_b)
        entry, start = at_all[pick], off_all[pick]
        src_all, doc_all = sources[entry], doc_ids[entry]
        end_all = start + np.repeat(sizes[order], np.diff(step_at))
        plans = []
        fixed: dict[int, tuple[np.ndarray, ...]] = {}  # a step's constant arrays, by rows
        for j, (b, a, z) in enumerate(zip(order.tolist(), step_at[:-1].tolist(),
                                          step_at[1:].tolist(), strict=True)):
            rows, width = z - a, 1 << (self.kmin + b)
            same = fixed.get(rows)
            if same is None:
                same = fixed[rows] = (row_index[:rows], col[:rows], eod[:rows], pad[:rows])
            stats: dict[str, Any] = {"bucket_len": width}
            if j == 0:
                stats.update(window_stats)
            plans.append(StepPlan(rows, width, same[0], same[1], src_all[a:z], doc_all[a:z],
                                  start[a:z], end_all[a:z], same[2], same[3], 0, stats))
        return plans, truncated
