"""The loader: token stores + mixture + interleaving + shaper → batches, with exact resume.

Every rank and worker computes the same *global* stream of steps from (seed, config, state):
which documents, which spans, which rows. Only the tokens of its own rows are read. So the
state of the global stream at a step boundary resumes the job at any world size or worker
count, and it is small: the interleaver's counters, one counter per source, the shaper's carry.

Steps are planned in *blocks* where the shaper allows it (``concat``: a step of ``n·R`` rows is
``n`` steps of ``R`` rows of the same token line): one feed call and one token read cover up to
``block_steps`` steps while the weights stay the same (blocks grow 8, 16, 32, ... from a start
or a resume, so the first batch comes quickly). The state stays the state of a step
boundary: a block's planned but unused steps are dropped (and the feed rewound by replaying the
used ones from the block's start) before a state is taken or the weights change, so the stream
is the same for every block size (the tests check it against ``block_steps=1``).

Rows of a global step go to ranks so that every rank's micro-batch holds its share of every
source (each row counted under its main source) within one row; with ``batch.balance`` (the
default) the rows are also balanced by compute cost (:func:`mixbatch.shape.balance.balance_rows`),
else dealt round-robin (:func:`mixbatch.plan.partition.partition_batch`).

The rows of a step follow ``batch.batch_size`` (a number or a schedule of stages,
:mod:`mixbatch.plan.batch_schedule`) and :meth:`MixedLoader.set_batch_size` (a run-time change,
kept in the state). A loader step is one forward on every rank: with ``batch.grad_accum = k`` a
step has ``global / k`` rows and an optimizer step is ``k`` loader steps. The row stream of the
fixed-row packings does not depend on the step size, so the mixture stays exact and the state
O(K) (plus the last run-time change) across a change, at any world size that divides it.
The token-budget packings take ``batch.token_budget`` the same way (a number or stages, and
:meth:`MixedLoader.set_token_budget`); both live in :mod:`mixbatch.loader.sizes`.

The state (:meth:`MixedLoader.state_dict`, :meth:`MixedLoader.load_state_dict`, the
fingerprint a resume is checked against, :func:`save_state` / :func:`load_state`) lives in
:mod:`mixbatch.loader.state`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixbatch.config import Config, Packing, Unit
from mixbatch.errors import ConfigError
from mixbatch.limits import BLOCK_STEPS  # steps planned per block (concat)
from mixbatch.loader.blocks import BLOCKABLE, Block, split_rows
from mixbatch.loader.feed import MixedFeed
from mixbatch.loader.mixture import MixtureSchedule, build_mixture
from mixbatch.loader.order import SourceOrder
from mixbatch.loader.sizes import StepSizes, _split_rows, rows_schedule  # noqa: F401 (re-exported)
from mixbatch.loader.state import (  # noqa: F401 (re-exported: the names' home before state.py)
    MAX_REPLAY_POSITIONS,
    READS_FORMATS,
    STATE_FORMAT,
    LoaderState,
    load_state,
    save_state,
)
from mixbatch.loader.stats import RunStats, block_counts
from mixbatch.mixture.schedule import Interpolation
from mixbatch.objectives.stage import objective_stage
from mixbatch.plan.batch_schedule import budget_schedule_from
from mixbatch.plan.interleave import WeightPath
from mixbatch.plan.partition import partition_batch
from mixbatch.series.config import reject_series
from mixbatch.shape import (
    BFDShaper,
    BucketShaper,
    ConcatShaper,
    PadBucketShaper,
    PadShaper,
    Shaper,
    StepPlan,
)
from mixbatch.shape.balance import balanced_owner, row_labels_costs
from mixbatch.shape.materialize import expand, materialize_compact, token_dtype
from mixbatch.store import TokenStore, open_store, prefetch_plan
from mixbatch.store_meta import token_data_root


def build_shaper(cfg: Config) -> Shaper:
    b = cfg.batch
    packing = b.packing
    if packing == Packing.CONCAT:
        return ConcatShaper(b.seq_len)
    if packing == Packing.PAD:
        return PadShaper(b.seq_len)
    if packing == Packing.BFD:
        return BFDShaper(b.seq_len, b.pack_window)
    if packing in (Packing.BUCKETS, Packing.PAD_BUCKETS):
        stages = b.budget_tuples()
        budgets = None if isinstance(b.token_budget, int) else [x for x, _, _ in stages]
        if packing == Packing.BUCKETS:
            return BucketShaper(b.seq_len, b.first_budget, b.min_len, b.curriculum, b.cycles,
                                b.row_multiple, b.window_tokens, budgets=budgets)
        return PadBucketShaper(b.seq_len, b.first_budget, b.num_buckets, b.quadratic,
                               b.row_multiple, b.window_tokens, sort_pool=b.sort_pool,
                               second_buckets=b.second_buckets, second_weight=b.second_weight,
                               second_max=b.second_max, source_names=list(cfg.sources),
                               budgets=budgets)
    raise ConfigError(f"batch.packing: {packing.value!r} is not available "
                      f"(choose one of {', '.join(p.value for p in Packing)})")


@dataclass
class Step:
    """One global step: its plan, and this rank's rows of it."""

    index: int
    plan: StepPlan  # global rows
    rows: np.ndarray  # this rank's rows (indices into the global plan), in micro-batch order
    weights: np.ndarray  # the target weights used for this step
    block: Block | None = None  # the block it was planned in (its tokens are read at once)
    offset: int = 0  # its place in the block
    objective: Any = None  # each global row's objective (`objectives:`, mixbatch.objectives.stage)


def _dist_rank_world() -> tuple[int, int]:
    try:
        import torch.distributed as dist
    except ImportError:  # torch is optional for the core loader
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class MixedLoader(StepSizes, LoaderState):
    """Iterate the batches of one rank; see the module docstring.

    Args:
        cfg: the validated config (``sources``, ``mixture``, ``batch``, ``seed``).
        rank, world_size: this process's place; read from ``torch.distributed`` when it is
            initialised and they are not given. ``batch.batch_size`` is the *global* batch (rows
            per optimizer step, all ranks): every size of its schedule must be divisible by
            ``world_size · batch.grad_accum``.
        stores: already opened stores by source name (else opened from ``cfg.store_dir``).
    """

    def __init__(self, cfg: Config, rank: int | None = None, world_size: int | None = None,
                 stores: dict[str, TokenStore] | None = None,
                 block_steps: int = BLOCK_STEPS) -> None:
        if rank is None or world_size is None:
            r, w = _dist_rank_world()
            rank = r if rank is None else rank
            world_size = w if world_size is None else world_size
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} / world size {world_size}: need 0 <= rank < world size")
        reject_series(cfg, "the token loader (MixedLoader)")
        if cfg.batch.variable_rows and cfg.batch.row_multiple % world_size:
            raise ConfigError(f"batch.row_multiple: steps of {cfg.batch.packing.value} have a "
                              f"multiple of {cfg.batch.row_multiple} rows, which world size "
                              f"{world_size} does not divide")
        self.rows_schedule = None if cfg.batch.variable_rows else rows_schedule(cfg, world_size)
        #: tokens per step of the token-budget packings (None for the fixed-row ones)
        self.budget_schedule = (budget_schedule_from(cfg.batch.budget_tuples())
                                if cfg.batch.variable_rows else None)
        if isinstance(block_steps, bool) or not isinstance(block_steps, int) or block_steps < 1:
            raise ConfigError(f"block_steps: must be an integer >= 1, got {block_steps!r}")
        self.cfg = cfg
        self.block_steps = block_steps
        self.rank, self.world_size = rank, world_size
        self.names = list(cfg.sources)
        given = stores or {}
        self.stores = [given.get(n) or open_store(cfg.store_dir / n, root=token_data_root(cfg, n))
                       for n in self.names]  # token data read in place: inside its folder
        self._check_tokenizers()
        self._check_second_lengths()
        self.eod_id = self.stores[0].eod_id
        self.pad_id = int(self.stores[0].meta["tokenizer"].get("pad_id", self.eod_id))
        self.token_dtype = token_dtype(self.stores, self.eod_id, self.pad_id)
        self.remote = any(not isinstance(s.tokens, np.ndarray) for s in self.stores)
        self.mixture: MixtureSchedule = build_mixture(cfg, self.stores)
        self.reset()

    def _check_tokenizers(self) -> None:
        hashes = {n: s.meta["tokenizer"].get("hash") for n, s in zip(self.names, self.stores,
                                                                      strict=True)}
        if len(set(hashes.values())) > 1:
            shown = ", ".join(f"{n}: {h}" for n, h in hashes.items())
            raise ConfigError(f"sources were prepared with different tokenizers ({shown}); "
                              "prepare them all with one tokenizer")

    def _check_second_lengths(self) -> None:
        if not self.cfg.batch.two_d:
            return
        missing = [n for n, s in zip(self.names, self.stores, strict=True)
                   if s.second_lengths is None]
        if missing:
            raise ConfigError(f"batch.second_buckets: source(s) {', '.join(missing)} have no "
                              "second lengths; set `second_field` on them and run "
                              "`mixbatch prepare`")

    # ---- construction of the stream ------------------------------------------------------
    def reset(self) -> None:
        """Back to step 0."""
        cfg = self.cfg
        orders = [SourceOrder(n, len(s), cfg.seed, cfg.mixture.shuffle,
                              cfg.sources[n].max_epochs, cfg.holdout_docs(len(s)))
                  for n, s in zip(self.names, self.stores, strict=True)]
        self.feed = MixedFeed(self.stores, orders, cfg.mixture.unit, cfg.mixture.on_exhausted,
                              second=cfg.batch.two_d,
                              chunk=1024, piece_len=cfg.batch.seq_len,  # pieces: <= seq_len
                              unit_multiple=cfg.batch.unit_multiple)
        self.shaper = build_shaper(cfg)
        self.step = 0
        self.tokens_planned = 0
        self.stats = RunStats(len(self.names))
        self.override: np.ndarray | None = None
        self._block: Block | None = None
        self._grow = min(8, self.block_steps)  # the next block's size (doubles to block_steps)
        self.changes: list[list[int]] = []  # run-time batch sizes: [step, global rows]
        self.budget_changes: list[list[int]] = []  # run-time token budgets: [step, budget]
        self.feed.path = self.weight_path()
        self.objectives = objective_stage(cfg, self.stores[0].vocab_size, self.pad_id)

    @property
    def fed_tokens(self) -> np.ndarray:
        """Real tokens fed per source so far (all ranks)."""
        return np.asarray(self.stats.tokens, dtype=np.int64)

    @property
    def fed_docs(self) -> np.ndarray:
        """Documents started per source so far (all ranks)."""
        return np.asarray(self.stats.docs, dtype=np.int64)

    def heldout(self) -> dict[str, np.ndarray]:
        """The validation documents of each source (never fed by this loader)."""
        return {n: o.heldout() for n, o in zip(self.names, self.feed.orders, strict=True)}

    def set_weights(self, weights: dict[str, float] | np.ndarray) -> None:
        """Replace the target weights from the next step on (online policies use this).

        The interleaver keeps integrating its target from the current counts: no jump, no
        restart. The weights stay in force, across resume too, until set again."""
        w = self.mixture.vector(weights)
        self._drop_block()
        self.override = w
        self.feed.path = None  # the schedule no longer applies

    def weight_path(self) -> WeightPath | None:
        """The schedule's stages in the planner's own clock, for the rule to read ahead, where
        the two clocks are the same: a schedule by tokens in token mode (its boundaries then
        count the planned tokens of documents: no end-of-document tokens, no padding), or by
        steps in sample mode with ``packing: pad`` (``batch_size`` decisions a step). None for
        other schedules and for linear interpolation: those are told the weights step by step
        (README: which bound holds when)."""
        sched = self.mixture.schedule
        if sched is None or sched.interpolation is Interpolation.LINEAR or self.override is not None:
            return None
        unit = self.cfg.mixture.unit
        if self.mixture.by_tokens and unit == Unit.TOKENS:
            scale = 1
        elif (not self.mixture.by_tokens and unit == Unit.SAMPLES
              and self.cfg.batch.packing == Packing.PAD and self.rows_schedule is not None
              and self.rows_schedule.constant and not self.changes):
            scale = self.rows_schedule.rows[0]  # steps are decisions only at one batch size
        else:
            return None
        bounds = list(sched.boundaries)
        starts = [0] + [b * scale for b in bounds]
        return WeightPath(np.array(starts, np.int64),
                          np.stack([sched.weights_at(t) for t in [0, *bounds]]))

    def current_weights(self) -> np.ndarray:
        if self.override is not None:
            return self.override
        return self.mixture.weights_at(self.step, self.tokens_planned)

    # ---- iteration -----------------------------------------------------------------------
    def next_step(self) -> Step | None:
        """Plan the next global step (no tokens read); None at the end of the stream."""
        block = self._block
        if block is None or block.used >= len(block.plans):
            self._block = block = self._plan_block()
            if block is None:
                return None
        w = self.current_weights()
        plan = block.plans[block.used]
        offset = block.used
        block.used += 1
        if block.used == len(block.plans):  # the feed is at this step's end: nothing to rewind
            self._block = None
        return self._emit(plan, w, block, offset)

    def _plan_block(self) -> Block | None:
        """Plan the next steps: a block of them where the packing and the weights allow."""
        w = self.current_weights()
        self.feed.set_weights(w)
        R = self.rows_per_step  # buckets: the rows of a token budget
        n = 1
        if self.cfg.batch.packing in BLOCKABLE and self.block_steps > 1:
            # blocks grow 8, 16, 32, ... up to block_steps: the first batch after a start or a
            # resume comes quickly
            size = self._grow
            self._grow = min(2 * size, self.block_steps)
            ahead = self.override is not None or self.feed.path is not None  # no step-wise change
            per_step = R * self.cfg.batch.seq_len
            n = (size if ahead else self.mixture.steps_constant(
                self.step, self.tokens_planned, size, per_step))
            if self.rows_schedule is not None and not self.changes:  # one size in a block
                n = self.rows_schedule.steps_constant(self.step, self.tokens_planned, n,
                                                      per_step)
        start = ({"feed": self.feed.state_dict(), "shaper": self.shaper.state_dict()}
                 if n > 1 else {})
        budget = self.token_budget
        if budget is not None:
            self.shaper.set_budget(budget)  # type: ignore[attr-defined]
        plan = self.shaper.plan_step(self.feed, R * n)
        if plan is None:
            return None
        if self.remote:  # stores at a URL: start fetching the block's documents now
            prefetch_plan(self.stores, plan)
        plans = [plan] if n == 1 else split_rows(plan, R)
        counts = None if n == 1 else block_counts(plan, R, len(plans), len(self.names))
        return Block(start, plan, plans, [float(x) for x in w], counts)

    def _drop_block(self) -> None:
        """Forget the planned steps not handed out yet; rewind the feed and the shaper to the
        end of the last step handed out (replaying the used steps from the block's start)."""
        block, self._block = self._block, None  # an open block has used 1 .. len - 1 steps
        if block is None:
            return
        self.feed.load_state_dict(copy.deepcopy(block.start["feed"]))
        self.shaper.load_state_dict(copy.deepcopy(block.start["shaper"]))
        self._replay(block.used, np.asarray(block.weights, np.float64), block.plans[0].rows)

    def _emit(self, plan: StepPlan, w: np.ndarray, block: Block | None, offset: int) -> Step:
        R = plan.rows
        if self.world_size == 1:
            rows = np.arange(R, dtype=np.int64)
            costs = None
        else:
            labels, row_cost = row_labels_costs(plan.row, plan.source, plan.width, R,
                                                len(self.names), self.cfg.batch.d_model)
            if self.cfg.batch.balance:
                owner = balanced_owner(labels, row_cost, self.world_size)
                rows = np.flatnonzero(owner == self.rank)
                costs = np.bincount(owner, weights=row_cost, minlength=self.world_size)
            else:
                labels[labels < 0] = len(self.names)  # empty rows: a group of their own
                parts = partition_batch(labels, self.world_size)
                rows = np.sort(parts[self.rank]).astype(np.int64)
                costs = np.array([row_cost[p].sum() for p in parts])
        counts = None if block is None or block.counts is None else block.counts[offset]
        self.tokens_planned += self.stats.add(plan, costs, counts)
        step = Step(self.step, plan, rows, w, block, offset,
                    None if self.objectives is None else self.objectives.assign(R))
        self.step += 1
        return step

    def steps(self, n: int | None = None) -> Iterator[Step]:
        k = 0
        while n is None or k < n:
            step = self.next_step()
            if step is None:
                return
            yield step
            k += 1

    def compact_of(self, step: Step, rows: np.ndarray | None = None) -> dict[str, Any]:
        """The compact batch (:func:`mixbatch.shape.materialize.materialize_compact`) of this
        rank's rows (or of ``rows``) of a planned step; tokens in the stores' dtype."""
        block = step.block
        if rows is None and block is not None and self.world_size == 1:
            if block.batches is None:  # one read for every step of the block
                block.read(self.stores, self.eod_id, self.pad_id, self.token_dtype,
                           step.plan.rows)
            assert block.batches is not None
            batch = dict(block.batches[step.offset])
        else:
            sub = step.plan.select_rows(step.rows if rows is None else rows)
            batch = materialize_compact(sub, self.stores, self.eod_id, self.pad_id,
                                        self.token_dtype)
        batch["step"] = step.index
        return batch

    def batch_of(self, step: Step, rows: np.ndarray | None = None,
                 fields: str | Sequence[str] | None = "all") -> dict[str, Any]:
        """Read the tokens of this rank's rows (or of ``rows``) of a planned step: the fields
        asked for (default: all) as NumPy arrays."""
        if step.objective is not None:  # the objective's layout (needs every field)
            return self.objectives.apply(expand(self.compact_of(step, rows), "all"),
                                         step.objective, step.rows if rows is None else rows)
        return expand(self.compact_of(step, rows), fields)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for step in self.steps():
            yield self.batch_of(step)
