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
O(K) (plus one pair per run-time change) across a change, at any world size that divides it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixbatch.atomic import write_text
from mixbatch.config import Config, Packing, Unit
from mixbatch.errors import ConfigError, StateError
from mixbatch.limits import BLOCK_STEPS  # steps planned per block (concat)
from mixbatch.loader.blocks import Block, split_rows
from mixbatch.loader.feed import MixedFeed
from mixbatch.loader.mixture import MixtureSchedule, build_mixture
from mixbatch.loader.order import SourceOrder
from mixbatch.loader.stats import RunStats, block_counts
from mixbatch.mixture.schedule import Interpolation
from mixbatch.objectives.stage import check_objective_state, objective_stage
from mixbatch.plan.batch_schedule import RowsSchedule, budget_schedule_from, rows_schedule_from
from mixbatch.plan.interleave import WeightPath
from mixbatch.plan.partition import partition_batch
from mixbatch.plan.state_checks import count, mapping, screen, shown, weights
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

STATE_FORMAT = "mixbatch.loader/3"
#: formats this loader resumes from (/1 had no ``replay``, /2 no batch-size changes)
READS_FORMATS = ("mixbatch.loader/1", "mixbatch.loader/2", STATE_FORMAT)


#: packing modes where one step of n·R rows is exactly n steps of R rows (planned in blocks):
#: concat cuts one token line into rows; bfd hands out the rows of its windows in an order that
#: does not depend on the step size
BLOCKABLE = (Packing.CONCAT, Packing.BFD)
MAX_REPLAY_POSITIONS = 1 << 32  # a state's replay (steps x rows x seq_len) is at most this


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


class MixedLoader:
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

    # ---- the batch size ------------------------------------------------------------------
    @property
    def rows_per_step(self) -> int:
        """Global rows of the next step (a token-budget packing: the most a step has)."""
        if self.rows_schedule is None:
            return self.cfg.batch.step_positions // self.cfg.batch.seq_len
        if self.changes:
            return self.changes[-1][1]
        return self.rows_schedule.rows_at(self.step, self.tokens_planned)

    @property
    def max_rows_per_step(self) -> int | None:
        """The most global rows any step of this run can have: the largest of the schedule,
        or ``batch.max_batch_size`` (the bound of :meth:`set_batch_size`); a rank's rows are
        this over the world size, of ``seq_len`` positions each (what a buffer for one rank's
        step must hold). None for the token-budget packings: their rows vary with the
        lengths, a step holds at most ``batch.token_budget`` positions."""
        if self.rows_schedule is None:
            return None
        bound = (self.cfg.batch.max_batch_size or 0) // self.cfg.batch.grad_accum
        return max(self.rows_schedule.max_rows, bound)

    def _max_rows(self) -> int:
        largest = self.max_rows_per_step
        assert largest is not None  # fixed rows
        return largest

    @property
    def micro_batch_size(self) -> int:
        """This rank's rows of the next step (Hugging Face's and Lightning's batch size)."""
        return self.rows_per_step // self.world_size

    def set_batch_size(self, batch_size: int) -> None:
        """Change the global batch (rows per optimizer step, all ranks, as ``batch.batch_size``)
        from the next step on; it replaces the schedule from here, across resume too (the state
        keeps each change). The mixture stays exact: the row stream does not depend on it."""
        b = self.cfg.batch
        if self.rows_schedule is None:
            raise ConfigError(f"set_batch_size: packing {b.packing.value!r} sets each step's rows "
                              "by batch.token_budget (tokens per step), not by a batch size")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ConfigError(f"set_batch_size: {batch_size!r} is not a positive whole number")
        rows = _split_rows(int(batch_size), b.grad_accum, self.world_size, "set_batch_size")
        largest = self._max_rows()
        if rows > largest:
            raise ConfigError(f"set_batch_size: {batch_size} is above the largest batch this run "
                              f"allows ({largest * b.grad_accum}); raise batch.max_batch_size")
        if self.changes and rows == self.changes[-1][1]:
            return  # pinned at this size already
        self._drop_block()
        if self.changes and self.changes[-1][0] == self.step:
            self.changes.pop()
        self.changes.append([self.step, rows])
        self.feed.path = self.weight_path()

    @property
    def token_budget(self) -> int | None:
        """Tokens of the next step's budget (the token-budget packings; None for the others):
        the last run-time change, else the schedule's stage at this step."""
        if self.budget_schedule is None:
            return None
        if self.budget_changes:
            return self.budget_changes[-1][1]
        return self.budget_schedule.rows_at(self.step, self.tokens_planned)

    def set_token_budget(self, token_budget: int) -> None:
        """Change the tokens per step (``batch.token_budget``) from the next step on; it
        replaces the schedule from here, across resume too (the state keeps each change). The
        open window's steps not handed out yet are planned again with it, so the mixture stays
        exact at the window's end and every rank sees the same steps."""
        b = self.cfg.batch
        if self.budget_schedule is None:
            raise ConfigError(f"set_token_budget: packing {b.packing.value!r} has a batch size "
                              "(rows per step), not a token budget; use set_batch_size")
        if isinstance(token_budget, bool) or not isinstance(token_budget, (int, np.integer)) \
                or token_budget < 1:
            raise ConfigError(f"set_token_budget: {token_budget!r} is not a positive whole "
                              "number of tokens")
        budget = int(token_budget)
        if budget > b.largest_budget:
            raise ConfigError(f"set_token_budget: {budget} is above the largest budget this run "
                              f"allows ({b.largest_budget}); raise batch.max_token_budget")
        self.shaper.check_budget(budget, "set_token_budget")  # type: ignore[attr-defined]
        if self.budget_changes and budget == self.budget_changes[-1][1]:
            return
        if self.budget_changes and self.budget_changes[-1][0] == self.step:
            self.budget_changes.pop()
        self.budget_changes.append([self.step, budget])

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

    # ---- state ---------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the saved one (weights and schedule may change)."""
        return {
            "seed": self.cfg.seed,
            "unit": self.cfg.mixture.unit.value,
            "shuffle": self.cfg.mixture.shuffle,
            "holdout": [self.cfg.holdout, self.cfg.holdout_max],
            "packing": self.cfg.batch.packing.value,
            # a list, so that the order survives serialisers that sort keys
            "sources": [{"name": n, "documents": len(s), "tokens": s.num_tokens,
                         "tokenizer": s.meta["tokenizer"].get("hash"),
                         "max_epochs": self.cfg.sources[n].max_epochs}
                        for n, s in zip(self.names, self.stores, strict=True)],
        }

    def snapshot(self) -> tuple:
        """The position after the last step handed out, cheaply (no copies of the block's
        start, which is never changed): :meth:`state_from` turns it into a state dict. For
        callers that may need the state of any step (the torch adapter keeps one per batch)."""
        block = self._block  # open only between two steps of one block (next_step)
        if block is not None:
            where: tuple = ("replay", block.start, block.used, block.weights,
                            block.plans[0].rows)
        else:
            where = ("plain", self.feed.state_dict(), self.shaper.state_dict())
        override = None if self.override is None else self.override.tolist()
        return (self.step, self.tokens_planned, where, override, copy.copy(self.stats),
                [list(c) for c in self.changes],
                None if self.objectives is None else self.objectives.state_dict(),
                [list(c) for c in self.budget_changes])

    def state_from(self, snapshot: tuple) -> dict[str, Any]:
        """The state dict of a :meth:`snapshot` (a fresh copy: free to change)."""
        step, tokens, where, override, stats, changes, objectives, budgets = snapshot
        replay = None
        if where[0] == "replay":
            feed, shaper = where[1]["feed"], where[1]["shaper"]
            replay = {"steps": where[2], "weights": list(where[3]), "rows": where[4]}
        else:
            feed, shaper = where[1], where[2]
        return copy.deepcopy({
            "format": STATE_FORMAT,
            "fingerprint": self.fingerprint(),
            "step": step,
            "tokens_planned": tokens,
            "feed": feed,
            "shaper": shaper,
            "replay": replay,
            "weights_override": override,
            "batch_size_changes": changes,
            **({"token_budget_changes": budgets} if budgets else {}),
            "stats": stats.state_dict(),
            **({} if objectives is None else {"objectives": objectives}),
        })

    def state_dict(self, canonical: bool = False) -> dict[str, Any]:
        """The global stream's position: O(K) numbers, the same on every rank.

        Inside a block of planned steps the feed and shaper are already past the steps handed
        out, so the state holds their position at the block's start and ``replay``: the steps
        of the block already handed out and the weights they were planned with; loading it
        replays them (one plan call). ``canonical=True`` rewinds now instead and gives the
        plain step-boundary form (what a ``block_steps=1`` loader would save); both resume
        the same stream."""
        if canonical:
            self._drop_block()
        return self.state_from(self.snapshot())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from a state; every field is checked first (one :class:`StateError` line
        naming the field: :mod:`mixbatch.plan.state_checks`)."""
        if not isinstance(state, dict) or state.get("format") not in READS_FORMATS:
            got = shown(state.get("format")) if isinstance(state, dict) else type(state).__name__
            raise StateError(f"loader state: not a mixbatch loader state (format {got}, "
                             f"expected {STATE_FORMAT!r})")
        for key in ("fingerprint", "step", "tokens_planned", "feed", "shaper",
                    "weights_override", "stats"):
            if key not in state:
                raise StateError(f"loader state.{key}: missing")
        screen(state, "loader state")
        self._check_fingerprint(state["fingerprint"])
        step = count("loader state.step", state["step"])
        tokens = count("loader state.tokens_planned", state["tokens_planned"])
        feed = mapping("loader state.feed", state["feed"])
        shaper = mapping("loader state.shaper", state["shaper"])
        stats = mapping("loader state.stats", state["stats"])
        k = len(self.names)
        ov = state["weights_override"]
        override = None if ov is None else weights("loader state.weights_override", ov, k)
        replay = state.get("replay")
        if replay is not None:
            replay = mapping("loader state.replay", replay)
            for key in ("steps", "weights"):
                if key not in replay:
                    raise StateError(f"loader state.replay.{key}: missing")
            replay_steps = count("loader state.replay.steps", replay["steps"], lo=1)
            per_step = (self.max_rows_per_step or 0) * self.cfg.batch.seq_len
            if replay_steps * (per_step or self.cfg.batch.step_positions) > MAX_REPLAY_POSITIONS:
                raise StateError(f"loader state.replay.steps: {replay_steps} steps are more "
                                 "than a block of planned steps holds")
            replay_w = weights("loader state.replay.weights", replay["weights"], k,
                               unit_sum=True)
            replay_rows = (self.rows_per_step if "rows" not in replay  # before /3: one size
                           else count("loader state.replay.rows", replay["rows"], lo=1))
        changes = self._checked_changes(state.get("batch_size_changes") or [], step)
        budget_changes = self._checked_budgets(state.get("token_budget_changes") or [], step)
        self.reset()
        try:
            self.feed.load_state_dict(feed)
            self.shaper.load_state_dict(shaper)
            self._check_carry()
            self.step = step
            self.tokens_planned = tokens
            self.override = None if override is None else self.mixture.vector(override)
            self.stats.load_state_dict(stats)
            self.changes = changes
            self.budget_changes = budget_changes
            self.feed.path = self.weight_path()
            check_objective_state(self.objectives, state)
            if replay is not None:
                self._replay(replay_steps, replay_w, replay_rows)
        except StateError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise StateError(f"loader state: malformed ({type(e).__name__}: {e})") from None

    def _check_carry(self) -> None:
        """A carried piece (concat) must name a document of its store and lie within it."""
        carry = getattr(self.shaper, "carry", None)
        if carry is None:
            return
        s, d, _n, _off, end, _eod = carry
        if not 0 <= s < len(self.names) or not 0 <= d < len(self.stores[s]):
            raise StateError(f"loader state.shaper.carry: document {d} of source {s} does not "
                             "exist in this configuration")
        length = int(self.stores[s].lengths[d])
        if end > length:
            raise StateError(f"loader state.shaper.carry: a span up to token {end} lies beyond "
                             f"document {d} of source {self.names[s]} ({length} tokens)")

    def _replay(self, steps: int, weights: np.ndarray, rows: int) -> None:
        """Move the feed and shaper past ``steps`` steps of ``rows`` rows planned with
        ``weights`` (a state saved inside a block)."""
        if self.cfg.batch.packing not in BLOCKABLE:
            raise StateError(f"loader state: a block replay, but packing "
                             f"{self.cfg.batch.packing.value!r} plans no blocks")
        if rows % self.world_size:
            raise StateError(f"loader state.replay.rows: steps of {rows} rows cannot be split "
                             f"over world size {self.world_size}")
        self.feed.set_weights(weights)
        self.shaper.plan_step(self.feed, rows * steps)

    def _checked_changes(self, raw: Any, step: int) -> list[list[int]]:
        """The run-time batch sizes of a state: ``[step, rows]`` pairs, in step order, each
        within this run's bound and divisible by this world size."""
        if not isinstance(raw, list):
            raise StateError("loader state.batch_size_changes: not a list")
        if raw and self.rows_schedule is None:
            raise StateError("loader state.batch_size_changes: given, but packing "
                             f"{self.cfg.batch.packing.value!r} has no batch size")
        out: list[list[int]] = []
        for j, pair in enumerate(raw):
            where = f"loader state.batch_size_changes.{j}"
            if not isinstance(pair, list) or len(pair) != 2:
                raise StateError(f"{where}: expected [step, rows], got {shown(pair)}")
            at = count(f"{where}.step", pair[0])
            rows = count(f"{where}.rows", pair[1], lo=1)
            if (out and at <= out[-1][0]) or at > step:
                raise StateError(f"{where}.step: {at} is out of order (changes are by step, "
                                 f"up to the state's step {step})")
            if rows > self._max_rows():
                raise StateError(f"{where}.rows: {rows} rows are above this run's largest step "
                                 f"({self._max_rows()}); raise batch.max_batch_size")
            if rows % self.world_size:
                raise StateError(f"{where}.rows: {rows} global rows cannot be split over world "
                                 f"size {self.world_size}")
            out.append([at, rows])
        return out

    def _checked_budgets(self, raw: Any, step: int) -> list[list[int]]:
        """The run-time token budgets of a state: ``[step, budget]`` pairs, in step order,
        each one this run's shaper can plan with."""
        if not isinstance(raw, list):
            raise StateError("loader state.token_budget_changes: not a list")
        if raw and self.budget_schedule is None:
            raise StateError("loader state.token_budget_changes: given, but packing "
                             f"{self.cfg.batch.packing.value!r} has no token budget")
        out: list[list[int]] = []
        for j, pair in enumerate(raw):
            where = f"loader state.token_budget_changes.{j}"
            if not isinstance(pair, list) or len(pair) != 2:
                raise StateError(f"{where}: expected [step, budget], got {shown(pair)}")
            at = count(f"{where}.step", pair[0])
            budget = count(f"{where}.budget", pair[1], lo=1)
            if (out and at <= out[-1][0]) or at > step:
                raise StateError(f"{where}.step: {at} is out of order (changes are by step, "
                                 f"up to the state's step {step})")
            if budget > self.cfg.batch.largest_budget:
                raise StateError(f"{where}.budget: {budget} is above this run's largest budget "
                                 f"({self.cfg.batch.largest_budget}); raise "
                                 "batch.max_token_budget")
            try:
                self.shaper.check_budget(budget, f"{where}.budget")  # type: ignore[attr-defined]
            except ConfigError as e:
                raise StateError(str(e)) from None
            out.append([at, budget])
        return out

    def _check_fingerprint(self, saved: Any) -> None:
        now = self.fingerprint()
        if not isinstance(saved, dict):
            raise StateError("loader state.fingerprint: not a mapping; the state cannot be "
                             "checked against this configuration")
        changed = []
        for key in ("seed", "unit", "shuffle", "packing"):
            if saved.get(key) != now[key]:
                changed.append(f"{key} {saved.get(key)!r} -> {now[key]!r}")
        old_src, new_src = saved.get("sources", []), now["sources"]
        old_names = [s.get("name") for s in old_src if isinstance(s, dict)]
        new_names = [s["name"] for s in new_src]
        if old_names != new_names:
            changed.append(f"sources {old_names} -> {new_names}")
        else:
            for old, new in zip(old_src, new_src, strict=True):
                for k, v in new.items():
                    if old.get(k) != v:
                        changed.append(f"sources.{new['name']}.{k} {old.get(k)!r} -> {v!r}")
        if changed:
            raise StateError("loader state belongs to another configuration: "
                             + "; ".join(changed)
                             + " (weights and schedules may change on resume; these may not)")


def _split_rows(size: int, accum: int, world_size: int, where: str) -> int:
    """Rows of a loader step for a global batch of ``size``: ``size / accum``, a multiple of
    the world size (an error naming both otherwise)."""
    if size % (accum * world_size):
        raise ConfigError(f"{where}: global batch {size} cannot be split evenly over world size "
                          f"{world_size}" + (f" x batch.grad_accum {accum}" if accum > 1 else ""))
    return size // accum


def rows_schedule(cfg: Config, world_size: int) -> RowsSchedule:
    """The rows of each step at this world size; every size must split over the ranks, and an
    explicit ``micro_batch_size`` must agree with the global batch."""
    b = cfg.batch
    stages = b.stage_tuples(world_size)
    micro, size = b.micro_batch_size, b.global_size
    if micro is not None and isinstance(size, int) and micro * world_size * b.grad_accum != size:
        raise ConfigError(f"batch.micro_batch_size {micro} and batch.global_batch_size {size} "
                          f"disagree at world size {world_size} x grad_accum {b.grad_accum} "
                          f"(micro x world x grad_accum = {micro * world_size * b.grad_accum})")
    for j, (n, _, _) in enumerate(stages):
        where = "batch.batch_size" if len(stages) == 1 else f"batch.batch_size.{j}.batch_size"
        _split_rows(n, b.grad_accum, world_size, where)
    if b.max_batch_size is not None:
        _split_rows(b.max_batch_size, b.grad_accum, world_size, "batch.max_batch_size")
    if micro is not None and size is None and world_size > 1:  # the step grows with the world
        from mixbatch.limits import check_step_memory

        check_step_memory(cfg.model_copy(update={"batch": b.model_copy(
            update={"batch_size": micro * world_size})}))
    return rows_schedule_from(stages, b.grad_accum)


def save_state(state: dict[str, Any], path: str | Path) -> None:
    write_text(path, json.dumps(state, indent=1) + "\n")  # fsynced, whole or absent


def load_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StateError(f"{path}: state file not found") from None
    except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON, a 5,000-digit number
        raise StateError(f"{path}: corrupt state file ({e})") from None
    if not isinstance(data, dict):
        raise StateError(f"{path}: corrupt state file (not a JSON object)")
    return data
