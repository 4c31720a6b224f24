r"""``packing: pad_buckets``: one document per row, padded, in length buckets (Lhotse / NeMo).

After Lhotse's ``DynamicBucketingSampler`` (``lhotse/dataset/sampling/dynamic_bucketing.py``:
``estimate_duration_buckets``, ``TimeConstraint``) and the 2-D bucketing of NeMo Canary
(Żelasko et al., "Training and Inference Efficiency of Encoder-Decoder Speech Models", arXiv
2503.05931: buckets over input length × output tokens, ``estimate_duration_bins_2d.py``).

**Rows.** As in ``packing: pad``: one document, or in token mode one planned piece of at most
``seq_len`` tokens, per row; it takes its tokens and, when it ends its document and there is
room, an end-of-document token (``e = n + 1`` positions, else ``e = n``). A longer one (a whole
document in sample mode) is cut to its first ``seq_len`` tokens without an end token (``e =
seq_len``), the rest counted in ``StepPlan.truncated``. 2-D bucketing keeps documents whole. A
step's rows are as wide as its longest row, rounded up to a multiple of ``pad_to`` (8) but
never past ``seq_len``: ``StepPlan.seq_len`` changes from step to step.

**Bucket edges** (Lhotse's ``estimate_duration_buckets``). Per window, from the window's own
row lengths: sort ``e``, and cut where the running sum of ``e`` passes ``j/num_buckets`` of the
total, ``j = 1..num_buckets-1``, so every bucket holds about the same number of tokens;
duplicate edges merge (fewer buckets on skewed data). Bucket ``b`` holds ``edge_{b-1} < e <=
edge_b``. Edges are a pure function of the window, so a resume recomputes them; they follow
the data when the mixture changes.

**Second dimension** (``second_buckets > 0``; NeMo's 2-D buckets). Every document also has a
second length ``s`` (``second_lengths.npy`` of its store, e.g. the length of a target that the
caller pads in its own collate). Inside every length bucket, the documents are cut again into
``second_buckets`` sub-buckets by the same equal-token rule on ``s``, and a row costs both
dimensions (below). ``s`` is never truncated: a document with ``s > second_max`` is skipped and
counted (``stats["skipped_docs"]``, its tokens in ``truncated``); without ``second_max`` a
document whose ``row_multiple`` rows alone exceed the budget is an error naming it.

**Batches** (Lhotse's ``TimeConstraint`` with ``quadratic_duration``). Inside a bucket,
documents fill a batch greedily while

.. math:: R(b) \cdot \big(c(m) + \lambda\, c(m_2)\big) \le \text{token\_budget}, \qquad
          c(x) = x + q\,x^2, \qquad R(b) = \lceil b / r \rceil r,

with ``m`` the padded width of the batch so far, ``m_2`` its longest second length (0 in one
dimension), ``q = quadratic`` (the attention term), ``λ = second_weight`` and ``r =
row_multiple``: rows are always a multiple of ``row_multiple``, the missing ones empty
(padding = whole row, counted) and costed. When the next document does not fit and the batch
is not a whole number of ``r`` rows, it closes at the last multiple of ``r`` and the others
open the next batch. Unlike Lhotse, whose batch takes the document that breaks the budget
before it stops, a batch never costs more than ``token_budget``.
``row_multiple · c(seq_len) <= token_budget`` is required.

**Sorted pools** (``sort_pool``; the "megabatch" of length-grouped samplers). With
``sort_pool = P > 0`` a bucket's documents are taken in stream order in pools of about ``P``
budgets of tokens; each pool is sorted by length (then second length; ties in stream order)
before it is cut into batches, and the pool's batches are handed out in a keyed random order.
Rows of a batch then have nearly equal lengths. A pool's last batch, when it has room for
``row_multiple`` more rows, is not handed out as is: the window's such leftovers are sorted
together and cut again (``stats["bucket"] = -1``), so a window has about one part-filled
batch, not one per bucket. ``sort_pool: 0`` keeps stream order in each bucket and every
bucket's own last batch (as Lhotse). ``benchmarks/bench_shaping.py`` measures the padding of
both against Lhotse's bucketing sampler (``benchmarks/RESULTS.md``).

**Order and mixture.** The batches of a window are handed out so that the sources follow the
planned stream step by step (:func:`mixbatch.shape.follow.follow_order`: next the batch that
keeps the largest difference between the tokens fed per source and the stream's first tokens
smallest, then a local search of swaps and moves around the worst step boundary until every
boundary is within ``REPAIR_ENOUGH`` = 1.25 ``seq_len`` of the stream or nothing helps), while
the buckets stay interleaved: a batch whose bucket would get more than two
batches ahead of the bucket's share of the window's fed tokens (the mixture's unit: end tokens
and padding not counted) waits while another can go; among equal choices, the exact
interleaving of the buckets by tokens (:class:`~mixbatch.plan.interleave.Interleaver`)
decides. In token mode the feed plans long documents as pieces of at most ``seq_len`` tokens,
so a long document fills several rows (pieces in order) instead of being truncated. Every
document of a window is fed inside the window (no leftovers), so at every window boundary the
mixture is the feed's (within one piece of the target).

**What bound holds inside a window.** A step is one whole batch: with ``x_i`` its tokens of
source ``i``, it moves ``D_i = c_i - w_i n`` by ``x_i - w_i |x|`` by itself, so with
``s = max_j max_i |x_{ji} - w_i |x_j||`` over the window's batches, *every* order of them has
a step boundary with ``|D_i| >= s / 2``. A ``2 · seq_len`` bound therefore cannot hold for
every corpus: source A with only documents of many rows (its pieces fill whole rows of
``seq_len``: one bucket, batches of 8 full rows) and source B with only one-token documents,
weights 0.2 / 0.8, budget ``8 · seq_len``: an A step alone moves A by ``0.8 · 8 · seq_len =
6.4 · seq_len``, so some boundary is ``>= 3.2 · seq_len`` off (tests:
``test_pad_buckets_counterexample_to_two_seq_len``, measured 4.8). Mixing sources inside
such a batch would need B's rows at A's width (padding ``> 95 %`` of those rows) or A's pieces
cut to B's length. What holds, exactly: the window boundary (above). What the property tests
check on random corpora with documents far longer than ``seq_len`` (and what the real-text
benchmark met, ``benchmarks/bench_step_mixture.py``, seeds 0-2: 1.93 / 1.51 / 1.39 ``seq_len``
against one-step imbalances of 3.41 / 2.49 / 2.01; the greedy alone 2.07 / 1.90 / 1.42):
``|D_i| <= max(2 · seq_len, s)`` at every step boundary; this is measured, not proven: the
order is a greedy and a local search.

**Padding** per step is in ``StepPlan.pad`` and ``stats["pad_fraction"]``
(``1 - real positions / (rows · width)``); in two dimensions also ``stats["second_padding"]``
and ``stats["second_width"]``; bench_shaping compares it with ``packing: pad``.

**State** is :class:`~mixbatch.shape.window.WindowReplay`'s (``O(K)``). ``plan_step``'s
``rows`` (the configured ``batch_size``) is ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mixbatch.errors import ConfigError, DataError
from mixbatch.limits import WINDOW_BUDGETS
from mixbatch.plan.permutation import derive_key
from mixbatch.ranges import span_positions
from mixbatch.shape.base import DocFeed, Docs, StepPlan
from mixbatch.shape.follow import by_samples, follow_order
from mixbatch.shape.pad_plan import (
    counting_argsort,
    cut_runs,
    interleave_by_tokens,
    keyed_orders,
    pool_parts,
)
from mixbatch.shape.window import Budgeted, BudgetShaper, WindowReplay

__all__ = ["PadBucketShaper", "equal_token_edges"]

#: the order's local search (:func:`mixbatch.shape.follow.follow_order`): one of the two
#: batches moved is within this many steps of the worst boundary ...
REPAIR_NEAR = 8
#: ... and it stops once every boundary is within this many ``seq_len`` of the stream
REPAIR_ENOUGH = 1.25


def equal_token_edges(e: np.ndarray, num_buckets: int) -> np.ndarray:
    """Upper edges (inclusive) of buckets holding about equal tokens; the last bucket is
    open above. ``np.searchsorted(edges, e, side="left")`` gives each length's bucket."""
    if len(e) == 0 or num_buckets <= 1:
        return np.empty(0, dtype=np.int64)
    e = np.asarray(e, dtype=np.int64)
    s = np.sort(e.astype(np.uint16)).astype(np.int64) if e.min() >= 0 and e.max() < 1 << 16 \
        else np.sort(e)
    cum = np.cumsum(s)
    targets = cum[-1] * np.arange(1, num_buckets, dtype=np.float64) / num_buckets
    pos = np.minimum(np.searchsorted(cum, targets, side="left"), len(s) - 1)
    return np.unique(s[pos])


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


class PadBucketShaper(BudgetShaper):
    """``packing: pad_buckets`` (module docstring).

    Args:
        seq_len: longest row; longer documents are truncated (``batch.seq_len``).
        token_budget: most cost per step, ``rows · (c(width) + second_weight · c(m_2))``.
        num_buckets: length buckets per window (``batch.num_buckets``).
        quadratic: weight ``q`` of the attention term ``c(x) = x + q x²`` (``batch.quadratic``).
        row_multiple: every step's row count is a multiple of it.
        window_tokens: tokens planned at once (default ``256 · token_budget``).
        pad_to: row widths are rounded up to a multiple of it (capped at ``seq_len``).
        sort_pool: budgets of a bucket's documents sorted together (0: stream order).
        second_buckets: sub-buckets per length bucket on the second length (0: one dimension).
        second_weight: ``λ``, the cost of one second-length position in first-length positions.
        second_max: documents with a longer second length are skipped and counted.
        source_names: names for error messages (index ``i`` names source ``i``).
        budgets: the budgets of a ``token_budget`` schedule's stages (each checked; the first
            is ``token_budget``); :meth:`set_budget` changes the budget at run time.
    """

    name = "pad_buckets"

    def __init__(self, seq_len: int, token_budget: int | None, num_buckets: int = 16,
                 quadratic: float = 0.0, row_multiple: int = 8,
                 window_tokens: int | None = None, pad_to: int = 8, sort_pool: int = 16,
                 second_buckets: int = 0, second_weight: float = 1.0,
                 second_max: int | None = None,
                 source_names: Sequence[str] | None = None,
                 budgets: Sequence[int] | None = None) -> None:
        for field, v in (("batch.seq_len", seq_len), ("batch.num_buckets", num_buckets),
                         ("batch.row_multiple", row_multiple), ("pad_to", pad_to)):
            if not _is_int(v) or v < 1:
                raise ConfigError(f"{field}: must be an integer >= 1, got {v!r}")
        for field, v in (("batch.sort_pool", sort_pool),
                         ("batch.second_buckets", second_buckets)):
            if not _is_int(v) or v < 0:
                raise ConfigError(f"{field}: must be an integer >= 0, got {v!r}")
        for field, v in (("batch.quadratic", quadratic), ("batch.second_weight", second_weight)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0 \
                    or not np.isfinite(v):
                raise ConfigError(f"{field}: must be a finite number >= 0, got {v!r}")
        if second_max is not None and (not _is_int(second_max) or second_max < 0):
            raise ConfigError(f"batch.second_max: must be an integer >= 0, got {second_max!r}")
        self.seq_len, self.num_buckets, self.quadratic = seq_len, num_buckets, float(quadratic)
        self.row_multiple, self.pad_to, self.sort_pool = row_multiple, pad_to, sort_pool
        self.second_buckets, self.second_weight = second_buckets, float(second_weight)
        self.second_max = second_max
        self.source_names = list(source_names) if source_names is not None else None
        self.check_budget(token_budget)
        self.token_budget = int(token_budget)  # type: ignore[arg-type]
        for j, b in enumerate(budgets or ()):
            self.check_budget(b, f"batch.token_budget.{j}.token_budget")
        if window_tokens is not None and (not _is_int(window_tokens) or window_tokens < 1):
            raise ConfigError(f"window_tokens: must be an integer >= 1, got {window_tokens!r}")
        self.window_tokens = None if window_tokens is None else int(window_tokens)
        shown_window = (WINDOW_BUDGETS * self.token_budget if window_tokens is None
                        else int(window_tokens))
        self.window = WindowReplay(self.window_tokens, 1, self.plan_window, settings={
            "seq_len": seq_len,
            "token_budget": self.token_budget if budgets is None else [int(b) for b in budgets],
            "num_buckets": num_buckets,
            "quadratic": self.quadratic, "row_multiple": row_multiple,
            "window_tokens": shown_window, "pad_to": pad_to, "sort_pool": sort_pool,
            "second_buckets": second_buckets, "second_weight": self.second_weight,
            "second_max": second_max}, budget=Budgeted(
                self.token_budget, self._use_budget, self.check_budget,
                lambda b: WINDOW_BUDGETS * b, lambda done: None))
        self._samples = False  # the feed mixes by samples: follow its documents, not tokens

    def check_budget(self, budget: Any, where: str = "batch.token_budget") -> None:
        """Raise :class:`ConfigError` for a budget that cannot hold ``row_multiple`` rows of
        ``seq_len`` (and of ``second_max`` in two dimensions)."""
        r, L = self.row_multiple, self.seq_len
        least = r * self.cost(L)
        if budget is None or not _is_int(budget) or budget < least:
            raise ConfigError(f"{where}: {budget!r} cannot hold row_multiple = {r} rows of "
                              f"seq_len {L} (cost {least:g} with quadratic "
                              f"{self.quadratic:g}); raise it to at least {int(np.ceil(least))}")
        if self.second_buckets and self.second_max is not None:
            most = r * (self.cost(L) + self.second_weight * self.cost(self.second_max))
            if most > budget:
                raise ConfigError(f"batch.second_max: {r} rows of seq_len {L} and second length "
                                  f"{self.second_max} cost {most:g} > {where} {budget}; lower "
                                  f"second_max or raise the budget to {int(np.ceil(most))}")

    def cost(self, width: Any) -> Any:
        """``c(x) = x + quadratic · x²`` (scalar or array): one row of ``width`` positions."""
        return width + self.quadratic * width * width

    def width(self, longest: int) -> int:
        """Row width of a batch whose longest row has ``longest`` positions."""
        return min(-(-longest // self.pad_to) * self.pad_to, self.seq_len)

    def widths(self, e: np.ndarray) -> np.ndarray:
        """:meth:`width` of every entry (vectorised)."""
        return np.minimum(-(-np.asarray(e, np.int64) // self.pad_to) * self.pad_to, self.seq_len)

    # -- Shaper
    def plan_step(self, feed: DocFeed, rows: int) -> StepPlan | None:
        """The next step (``rows`` is ignored: the budget decides a step's rows)."""
        del rows
        self._samples = by_samples(feed)
        return self.window.next(feed)

    def state_dict(self) -> dict[str, Any]:
        return self.window.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window.load_state_dict(state)

    # -- planning (pure)
    def _row_costs(self, e: np.ndarray, second: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray | None]:
        """Each row's cost at its own width, and its second length's (two dimensions)."""
        cost = self.cost(self.widths(e).astype(np.float64))
        if second is None:
            return cost, None
        return cost, self.second_weight * self.cost(np.asarray(second, np.float64))

    def cut_batches(self, e: np.ndarray, second: np.ndarray | None = None
                    ) -> list[tuple[int, int]]:
        """``[start, end)`` of each batch of one bucket's rows (lengths ``e``, and ``second``
        lengths in two dimensions), in the given order (module docstring: Batches).

        The cost of the first ``b`` rows only grows with ``b``, so each batch is the longest
        prefix that fits (compiled: :func:`mixbatch.shape.pad_plan.cut_runs`)."""
        e = np.asarray(e, dtype=np.int64)
        cost, cost2 = self._row_costs(e, second)
        starts, _ = cut_runs(cost, cost2, np.array([0, len(e)]), self.row_multiple,
                             self.token_budget)
        return list(zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True))

    def _check_second(self, docs: Docs, e: np.ndarray) -> np.ndarray:
        """Which documents are kept (second length within ``second_max``); raise on one that
        cannot fit the budget at all."""
        s = docs.second
        if s is None:
            raise ConfigError("batch.second_buckets: the documents have no second lengths; "
                              "set `second_field` on every source and run `mixbatch prepare`")
        keep = np.ones(len(docs), bool) if self.second_max is None else s <= self.second_max
        alone = self.row_multiple * (self.cost(self.widths(e).astype(np.float64))
                                     + self.second_weight * self.cost(s.astype(np.float64)))
        bad = np.flatnonzero(keep & (alone > self.token_budget))
        if bad.size:
            k = int(bad[0])
            src = int(docs.source[k])
            name = self.source_names[src] if self.source_names else f"#{src}"
            raise DataError(f"pad_buckets: document {int(docs.doc[k])} of source {name!r} has "
                            f"second length {int(s[k])}: {self.row_multiple} rows of it cost "
                            f"{alone[k]:g} > token_budget {self.token_budget}; raise "
                            "batch.token_budget, or set batch.second_max to skip (and count) "
                            f"such documents ({bad.size} in this window)")
        return keep

    def _buckets(self, e: np.ndarray, s: np.ndarray | None) -> np.ndarray:
        """Bucket id of every row: by ``e``, then (two dimensions) by ``s`` inside each."""
        bucket = np.searchsorted(equal_token_edges(e, self.num_buckets), e, side="left")
        if s is None or self.second_buckets <= 1:
            return bucket.astype(np.int64)
        sub = np.zeros(len(e), dtype=np.int64)
        for b in np.unique(bucket).tolist():
            m = bucket == b
            sub[m] = np.searchsorted(equal_token_edges(s[m], self.second_buckets), s[m],
                                     side="left")
        return bucket * self.second_buckets + sub

    def _full(self, e_max: np.ndarray, s_max: np.ndarray | None, n: np.ndarray) -> np.ndarray:
        """Per batch (longest row ``e_max``, longest second length ``s_max``, ``n`` rows):
        whether ``row_multiple`` more rows as wide would break the budget."""
        r = self.row_multiple
        rows = -(-n // r) * r + r
        cost = self.cost(self.widths(e_max).astype(np.float64))
        if s_max is not None:
            cost = cost + self.second_weight * self.cost(s_max.astype(np.float64))
        return rows * cost > self.token_budget

    def _sorted(self, idx: np.ndarray, e: np.ndarray, s: np.ndarray | None,
                part: np.ndarray | None = None) -> np.ndarray:
        """``idx`` sorted by (``part``,) length, then second length, ties in the given order
        (``idx`` ascending)."""
        if s is None and len(idx) and int(idx.min()) >= 0 and (
                np.all(idx[1:] > idx[:-1]) if part is None else True):
            # idx ascending within each part: a stable counting sort by (part, length)
            top = int(e[idx].max()) + 1
            key = e[idx].astype(np.int64) if part is None else part * top + e[idx]
            bound = int(key.max()) + 1
            if bound <= 4 * len(idx) + (1 << 16):
                return idx[counting_argsort(key, bound)]
        keys: tuple[np.ndarray, ...] = (idx, e[idx]) if s is None else (idx, s[idx], e[idx])
        if part is not None:
            keys = (*keys, part)
        # one integer key when the fields fit in 63 bits (unique, so any sort gives the order)
        bits = [max(int(k.max()), 0).bit_length() if len(k) else 0 for k in keys]
        if len(idx) and min(int(k.min()) for k in keys) >= 0 and sum(bits) <= 63:
            combined = np.zeros(len(idx), dtype=np.int64)
            shift = 0
            for k, b in zip(keys, bits, strict=True):
                combined |= k.astype(np.int64) << shift
                shift += b
            return idx[np.argsort(combined)]
        return idx[np.lexsort(keys)]

    def _batches(self, docs: Docs, e: np.ndarray, s: np.ndarray | None, weight: np.ndarray,
                 bucket: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
        """The window's batches before their hand-out order (module docstring: Batches,
        Sorted pools): ``(documents, rows per batch, bucket per batch)``, each batch's
        documents back to back; every bucket's pools in order, each pool's batches in its
        keyed order, then the pools' part-filled leftovers cut again (bucket -1)."""
        key = derive_key(0, "pad-buckets", int(docs.source[0]), int(docs.doc[0]), len(docs),
                         int(docs.length.sum()))
        runs = kept[counting_argsort(bucket[kept], int(bucket.max()) + 1)]  # by bucket
        rb = bucket[runs]
        run_start = np.flatnonzero(np.concatenate([[True], rb[1:] != rb[:-1], [True]]))
        pooled = self.sort_pool > 0
        part = pool_parts(weight[runs], run_start, float(self.sort_pool) * self.token_budget,
                          pooled)
        ordered = self._sorted(runs, e, s, part) if pooled else runs
        n_parts = int(part[-1]) + 1
        part_start = np.concatenate([[0], np.cumsum(np.bincount(part, minlength=n_parts))])
        s_o = None if s is None else s[ordered]
        starts, bpart = cut_runs(*self._row_costs(e[ordered], s_o), part_start,
                                 self.row_multiple, self.token_budget)
        size = np.diff(starts)
        part_bucket = bucket[ordered[part_start[:-1]]]
        if not pooled:
            return ordered, size, part_bucket[bpart]
        e_max = np.maximum.reduceat(e[ordered], starts[:-1])
        s_max = None if s_o is None else np.maximum.reduceat(s_o, starts[:-1])
        last = np.concatenate([bpart[1:] != bpart[:-1], [True]])
        left = last & ~self._full(e_max, s_max, size)  # a pool's part-filled last batch
        # each pool's other batches in its keyed order
        kb = np.flatnonzero(~left)
        per_part = np.bincount(bpart[kb], minlength=n_parts)
        ordinal = np.arange(n_parts) - np.searchsorted(part_bucket, part_bucket, side="left")
        keys = [derive_key(key, b, p) if c > 1 else 0 for b, p, c in zip(
            part_bucket.tolist(), ordinal.tolist(), per_part.tolist(), strict=True)]
        kb = kb[np.repeat(np.cumsum(per_part) - per_part, per_part)
                + keyed_orders(keys, per_part)]
        docs_out = [ordered[span_positions(starts[kb], size[kb])]]
        sizes, buckets = [size[kb]], [part_bucket[bpart[kb]]]
        lb = np.flatnonzero(left)
        if lb.size:  # sorted together and cut again: a few full batches, not one per pool
            rest = self._sorted(np.sort(ordered[span_positions(starts[lb], size[lb])]), e, s)
            r_starts, _ = cut_runs(*self._row_costs(e[rest], None if s is None else s[rest]),
                                   np.array([0, len(rest)]), self.row_multiple,
                                   self.token_budget)
            r_size = np.diff(r_starts)
            pick = keyed_orders([derive_key(key, "rest") if len(r_size) > 1 else 0],
                                np.array([len(r_size)]))
            docs_out.append(rest[span_positions(r_starts[pick], r_size[pick])])
            sizes.append(r_size[pick])
            buckets.append(np.full(len(pick), -1, dtype=np.int64))
        return np.concatenate(docs_out), np.concatenate(sizes), np.concatenate(buckets)

    def plan_window(self, docs: Docs, run_start: bool) -> tuple[Any, ...]:
        """All steps of one window; skipped documents (and their tokens, as truncated) are
        reported with its first step, or with a later window's when every one is skipped."""
        del run_start
        L = self.seq_len
        tokens, start = docs.tokens, docs.span_start
        e = np.minimum(tokens + docs.span_eod, L)
        eod = docs.span_eod & (tokens < L)
        end = start + np.minimum(tokens, L)
        cut = np.maximum(tokens - L, 0)
        two_d = self.second_buckets > 0
        s = docs.second if two_d else None
        keep = self._check_second(docs, e) if two_d else np.ones(len(docs), bool)
        kept = np.flatnonzero(keep)
        skipped_docs = len(docs) - len(kept)
        skipped_tokens = int(tokens[~keep].sum())
        weight = e.astype(np.float64)
        if s is not None:
            weight = weight + self.second_weight * s
        bucket = np.full(len(docs), -1, dtype=np.int64)
        bucket[kept] = self._buckets(e[kept], None if s is None else s[kept])
        plans: list[StepPlan] = []
        if not len(kept):
            return plans, skipped_tokens, skipped_docs
        flat, counts, batch_bucket = self._batches(docs, e, s, weight, bucket, kept)
        firsts = np.cumsum(counts) - counts
        batch_tokens = np.add.reduceat(weight[flat], firsts).astype(np.int64)
        by_bucket = interleave_by_tokens(batch_bucket, batch_tokens)
        # hand the batches out so that the sources follow the planned stream step by step
        # (mixbatch.shape.follow); among equal choices, in the buckets' interleaving
        n_src = int(docs.source.max()) + 1
        # by tokens a batch counts its tokens; by samples its documents
        fed = np.where(keep, 1 if self._samples else end - start, 0)
        n_b = len(counts)
        which = np.repeat(np.arange(n_b), counts)
        comp = np.bincount(which * n_src + docs.source[flat].astype(np.int64),
                           weights=fed[flat], minlength=n_b * n_src).reshape(n_b, n_src)
        tie = np.empty(n_b, dtype=np.int64)
        tie[by_bucket] = np.arange(n_b)
        # then repaired (local search) until every boundary is within 1.25 seq_len of the
        # stream (measured on real text; the module docstring)
        order = follow_order(comp, tie, docs.source, fed, group=batch_bucket,
                             repair=REPAIR_NEAR,
                             enough=REPAIR_ENOUGH * (1 if self._samples else L))
        # every per-document array once, in step order; a step's arrays are slices of them
        flat = flat[span_positions(firsts[order], counts[order])]
        counts = counts[order]
        firsts = np.cumsum(counts) - counts
        e_f = e[flat]
        rows_of = -(-counts // self.row_multiple) * self.row_multiple
        width_of = self.widths(np.maximum.reduceat(e_f, firsts))
        pad_f = np.repeat(width_of, counts) - e_f
        padding_of = rows_of * width_of - np.add.reduceat(e_f, firsts)
        cut_of = np.add.reduceat(cut[flat], firsts)
        src_f, doc_f, end_f, eod_f = docs.source[flat], docs.doc[flat], end[flat], eod[flat]
        start_f = start[flat]
        cost_of = rows_of * self.cost(width_of.astype(np.float64))
        if s is not None:
            s_f = s[flat].astype(np.int64)
            w2_of = np.maximum.reduceat(s_f, firsts)
            pos2_of = rows_of * w2_of
            pad2_of = pos2_of - np.add.reduceat(s_f, firsts)
            cost_of = cost_of + rows_of * self.second_weight * self.cost(w2_of.astype(np.float64))
        most = int(counts.max())
        row_ids = np.arange(most, dtype=np.int32)
        zeros = np.zeros(most, dtype=np.int64)
        # every step's pad (its rows, then its empty rows), back to back
        row_first = np.cumsum(rows_of) - rows_of
        pad_all = np.repeat(width_of, rows_of)
        pad_all[span_positions(row_first, counts)] = pad_f
        buckets = batch_bucket[order].tolist()
        cost_l = cost_of.tolist()
        if s is not None:
            second2 = list(zip(w2_of.tolist(), pad2_of.tolist(), pos2_of.tolist(), strict=True))
        for j, (a, n, rows, rf, width, padding, truncated) in enumerate(zip(
                firsts.tolist(), counts.tolist(), rows_of.tolist(), row_first.tolist(),
                width_of.tolist(), padding_of.tolist(), cut_of.tolist(), strict=True)):
            z = a + n
            stats: dict[str, Any] = {"bucket": buckets[j], "padding": padding,
                                     "pad_fraction": padding / (rows * width),
                                     "empty_rows": rows - n, "cost": cost_l[j]}
            second = None
            if s is not None:
                second = s_f[a:z]
                w2, pad2, pos2 = second2[j]
                stats.update(second_width=w2, second_padding=pad2, second_positions=pos2)
            if j == 0:
                truncated += skipped_tokens
                if skipped_docs:
                    stats["skipped_docs"] = skipped_docs
            plans.append(StepPlan(rows, width, row_ids[:n], zeros[:n], src_f[a:z], doc_f[a:z],
                                  start_f[a:z], end_f[a:z], eod_f[a:z], pad_all[rf:rf + rows],
                                  truncated, stats, second))
        return plans, 0

