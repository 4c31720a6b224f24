r"""``packing: pad_buckets``: one document per row, padded, in length buckets (Lhotse / NeMo).

After Lhotse's ``DynamicBucketingSampler`` (``lhotse/dataset/sampling/dynamic_bucketing.py``:
``estimate_duration_buckets``, ``TimeConstraint``) and the bucketing of NeMo Canary (Żelasko et
al., "Training and Inference Efficiency of Encoder-Decoder Speech Models", arXiv 2503.05931).

**Rows.** As in ``packing: pad``: a document shorter than ``seq_len`` takes its tokens and an
end-of-document token (``e = n + 1`` positions); a longer one is cut to its first ``seq_len``
tokens without an end token (``e = seq_len``), the rest counted in ``StepPlan.truncated``. A
step's rows are as wide as its longest row, rounded up to a multiple of ``pad_to`` (8) but
never past ``seq_len``: ``StepPlan.seq_len`` changes from step to step.

**Bucket edges** (Lhotse's ``estimate_duration_buckets``). Per window, from the window's own
row lengths: sort ``e``, and cut where the running sum of ``e`` passes ``j/num_buckets`` of the
total, ``j = 1..num_buckets-1``, so every bucket holds about the same number of tokens;
duplicate edges merge (fewer buckets on skewed data). Bucket ``b`` holds ``edge_{b-1} < e <=
edge_b``. Edges are a pure function of the window, so a resume recomputes them; they follow
the data when the mixture changes.

**Batches** (Lhotse's ``TimeConstraint`` with ``quadratic_duration``). Inside a bucket,
documents stay in stream order and fill a batch greedily while

.. math:: R(b) \cdot (m + q\,m^2) \le \text{token\_budget}, \qquad R(b) = \lceil b / r \rceil r,

with ``m`` the padded width of the batch so far, ``q = quadratic`` (the attention term) and
``r = row_multiple``: rows are always a multiple of ``row_multiple``, the missing ones empty
(padding = whole row, counted) and costed. When the next document does not fit and the batch
is not a whole number of ``r`` rows, it closes at the last multiple of ``r`` and the others
open the next batch, so empty rows appear only in a bucket's last batch of a window.
``row_multiple · (seq_len + q·seq_len²) <= token_budget`` is required.

**Order and mixture.** The batches of a window are handed out in an exact interleaving of the
buckets by tokens (:class:`~mixbatch.plan.interleave.Interleaver`, token mode, one batch = one
indivisible unit, weights = each bucket's share of the window's tokens): after any step, every
bucket has fed its share of the tokens so far within one batch. Every document of a window is
fed inside the window (no leftovers), so at every window boundary the documents fed are exactly
those the feed planned, and the mixture is the feed's (within one document of the target).
Inside a window a source can run ahead by at most what the buckets' order shifts; the tests
measure it.

**Padding** per step is in ``StepPlan.pad`` and ``stats["pad_fraction"]``
(``1 - real positions / (rows · width)``). Measured on log-normal lengths (median 300, σ 1.0,
seq_len 4096, 200k documents, budget 4096·64 tokens, row_multiple 8): ``packing: pad`` pads
88 % of positions; ``pad_buckets`` 23 % with 8 buckets, 13 % with 16, 7.8 % with 32.
With budget 4096·16 and windows of 64 budgets, a source strayed inside a window at most about
one budget of tokens from its share when one source's documents were 3× longer (0.7 budget
with windows of 16 budgets, 1.7 with 256).

**State** is :class:`~mixbatch.shape.buckets.WindowReplay`'s (``O(K)``). ``plan_step``'s
``rows`` (the configured ``batch_size``) is ignored.

**Not built: a second length dimension** (NeMo's 2D buckets of input length × output tokens,
``estimate_duration_bins_2d.py``). Token stores hold one length per document, so it would need
a second length array per source passed to the shaper; the edges would be cut per top-level
bucket on the second length, and the batch cost would take both maxima.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mixbatch.errors import ConfigError, MixbatchInternalError
from mixbatch.plan.interleave import Interleaver
from mixbatch.shape.base import DocFeed, Docs, StepPlan
from mixbatch.shape.buckets import WindowReplay

__all__ = ["PadBucketShaper", "equal_token_edges"]

WINDOW_BUDGETS = 256  # budgets per window: larger windows leave fewer part-filled batches


def equal_token_edges(e: np.ndarray, num_buckets: int) -> np.ndarray:
    """Upper edges (inclusive) of buckets holding about equal tokens; the last bucket is
    open above. ``np.searchsorted(edges, e, side="left")`` gives each length's bucket."""
    if len(e) == 0 or num_buckets <= 1:
        return np.empty(0, dtype=np.int64)
    s = np.sort(np.asarray(e, dtype=np.int64))
    cum = np.cumsum(s)
    targets = cum[-1] * np.arange(1, num_buckets, dtype=np.float64) / num_buckets
    pos = np.minimum(np.searchsorted(cum, targets, side="left"), len(s) - 1)
    return np.unique(s[pos])


class PadBucketShaper:
    """``packing: pad_buckets`` (module docstring).

    Args:
        seq_len: longest row; longer documents are truncated (``batch.seq_len``).
        token_budget: most cost per step, ``rows · (width + quadratic · width²)``.
        num_buckets: length buckets per window (``batch.num_buckets``).
        quadratic: weight of the attention term (``batch.quadratic``).
        row_multiple: every step's row count is a multiple of it.
        window_tokens: tokens planned at once (default ``64 · token_budget``).
        pad_to: row widths are rounded up to a multiple of it (capped at ``seq_len``).
    """

    name = "pad_buckets"

    def __init__(self, seq_len: int, token_budget: int | None, num_buckets: int = 8,
                 quadratic: float = 0.0, row_multiple: int = 8,
                 window_tokens: int | None = None, pad_to: int = 8) -> None:
        for field, v in (("batch.seq_len", seq_len), ("batch.num_buckets", num_buckets),
                         ("batch.row_multiple", row_multiple), ("pad_to", pad_to)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{field}: must be an integer >= 1, got {v!r}")
        if not isinstance(quadratic, int | float) or not quadratic >= 0 \
                or not np.isfinite(quadratic):
            raise ConfigError(f"batch.quadratic: must be a finite number >= 0, got {quadratic!r}")
        self.seq_len, self.num_buckets, self.quadratic = seq_len, num_buckets, float(quadratic)
        self.row_multiple, self.pad_to = row_multiple, pad_to
        least = row_multiple * self.cost(seq_len)
        if token_budget is None or isinstance(token_budget, bool) \
                or not isinstance(token_budget, int) or token_budget < least:
            raise ConfigError(f"batch.token_budget: {token_budget!r} cannot hold row_multiple = "
                              f"{row_multiple} rows of seq_len {seq_len} (cost "
                              f"{least:g} with quadratic {self.quadratic:g}); raise it to at "
                              f"least {int(np.ceil(least))}")
        self.token_budget = token_budget
        window_tokens = WINDOW_BUDGETS * token_budget if window_tokens is None else window_tokens
        if isinstance(window_tokens, bool) or not isinstance(window_tokens, int) \
                or window_tokens < 1:
            raise ConfigError(f"window_tokens: must be an integer >= 1, got {window_tokens!r}")
        self.window = WindowReplay(window_tokens, 1, self.plan_window)

    def cost(self, width: int) -> float:
        """Cost of one row of ``width`` positions: ``width + quadratic · width²``."""
        return width + self.quadratic * width * width

    def width(self, longest: int) -> int:
        """Row width of a batch whose longest row has ``longest`` positions."""
        return min(-(-longest // self.pad_to) * self.pad_to, self.seq_len)

    # -- Shaper
    def plan_step(self, feed: DocFeed, rows: int) -> StepPlan | None:
        """The next step (``rows`` is ignored: the budget decides a step's rows)."""
        del rows
        return self.window.next(feed)

    def state_dict(self) -> dict[str, Any]:
        return self.window.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window.load_state_dict(state)

    # -- planning (pure)
    def cut_batches(self, e: np.ndarray) -> list[tuple[int, int]]:
        """``[start, end)`` of each batch of one bucket's rows (lengths ``e``, stream order)."""
        el = [int(x) for x in e]
        n, r, budget = len(el), self.row_multiple, self.token_budget
        out = []
        i = 0
        while i < n:
            m = b = 0
            j = i
            while j < n:
                m2 = max(m, el[j])
                if -(-(b + 1) // r) * r * self.cost(self.width(m2)) > budget:
                    break
                m, b, j = m2, b + 1, j + 1
            if b == 0:  # excluded by the check of token_budget in __init__
                raise MixbatchInternalError("pad_buckets: a row does not fit the budget")
            if j < n and b % r and b > r:
                b -= b % r
            out.append((i, i + b))
            i += b
        return out

    def plan_window(self, docs: Docs, run_start: bool) -> tuple[list[StepPlan], int]:
        """All steps of one window (nothing is truncated outside the steps)."""
        del run_start
        L = self.seq_len
        e = np.minimum(docs.length + 1, L)
        eod = docs.length < L
        end = np.minimum(docs.length, L)
        cut = np.maximum(docs.length - L, 0)
        edges = equal_token_edges(e, self.num_buckets)
        bucket = np.searchsorted(edges, e, side="left")
        members: list[np.ndarray] = []  # per batch: document indices in the window
        batch_bucket: list[int] = []
        for b in np.unique(bucket).tolist():
            idx = np.flatnonzero(bucket == b)
            for a, z in self.cut_batches(e[idx]):
                members.append(idx[a:z])
                batch_bucket.append(b)
        tokens = np.array([int(e[m].sum()) for m in members], dtype=np.int64)
        order = _interleave_by_tokens(np.asarray(batch_bucket, dtype=np.int64), tokens)
        plans = []
        for k in order.tolist():
            m = members[k]
            n = len(m)
            rows = -(-n // self.row_multiple) * self.row_multiple
            width = self.width(int(e[m].max()))
            pad = np.full(rows, width, dtype=np.int64)
            pad[:n] = width - e[m]
            padding = int(pad.sum())
            stats = {"bucket": batch_bucket[k], "padding": padding,
                     "pad_fraction": padding / (rows * width),
                     "cost": rows * self.cost(width), "empty_rows": rows - n}
            plans.append(StepPlan(rows, width, np.arange(n, dtype=np.int32),
                                  np.zeros(n, np.int64), docs.source[m], docs.doc[m],
                                  np.zeros(n, np.int64), end[m], eod[m], pad,
                                  int(cut[m].sum()), stats))
        return plans, 0


def _interleave_by_tokens(bucket: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Batch indices in an exact interleaving of buckets by tokens (module docstring);
    each bucket's batches keep their order."""
    if bucket.size == 0:
        return np.empty(0, dtype=np.int64)
    K = int(bucket.max()) + 1
    groups = [np.flatnonzero(bucket == b) for b in range(K)]
    weights = np.bincount(bucket, weights=tokens, minlength=K)
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
