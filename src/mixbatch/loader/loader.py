"""The loader: token stores + mixture + interleaving + shaper → batches, with exact resume.

Every rank and worker computes the same *global* stream of steps from (seed, config, state):
which documents, which spans, which rows. Only the tokens of its own rows are read. So the
state of the global stream at a step boundary resumes the job at any world size or worker
count, and it is small: the interleaver's counters, one counter per source, the shaper's carry.

Rows of a global step go to ranks so that every rank's micro-batch holds its share of every
source (each row counted under its main source) within one row; with ``batch.balance`` (the
default) the rows are also balanced by compute cost (:func:`mixbatch.shape.balance.balance_rows`),
else dealt round-robin (:func:`mixbatch.plan.partition.partition_batch`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixbatch.config import Config, Packing
from mixbatch.errors import ConfigError, StateError
from mixbatch.loader.feed import MixedFeed
from mixbatch.loader.mixture import MixtureSchedule, build_mixture
from mixbatch.loader.order import SourceOrder
from mixbatch.loader.stats import RunStats
from mixbatch.plan.partition import partition_batch
from mixbatch.shape import (
    BFDShaper,
    BucketShaper,
    ConcatShaper,
    PadBucketShaper,
    PadShaper,
    Shaper,
    StepPlan,
    materialize,
)
from mixbatch.shape.balance import balance_rows, row_costs
from mixbatch.store import TokenStore, open_store

STATE_FORMAT = "mixbatch.loader/1"


#: packing modes whose steps have a varying number of rows (a multiple of batch.row_multiple)
VARIABLE_ROWS = (Packing.BUCKETS, Packing.PAD_BUCKETS)


def build_shaper(cfg: Config) -> Shaper:
    b = cfg.batch
    packing = b.packing
    if packing == Packing.CONCAT:
        return ConcatShaper(b.seq_len)
    if packing == Packing.PAD:
        return PadShaper(b.seq_len)
    if packing == Packing.BFD:
        return BFDShaper(b.seq_len, b.pack_window)
    if packing == Packing.BUCKETS:
        return BucketShaper(b.seq_len, b.token_budget, b.min_len, b.curriculum, b.cycles,
                            b.row_multiple, b.window_tokens)
    if packing == Packing.PAD_BUCKETS:
        return PadBucketShaper(b.seq_len, b.token_budget, b.num_buckets, b.quadratic,
                               b.row_multiple, b.window_tokens, sort_pool=b.sort_pool,
                               second_buckets=b.second_buckets, second_weight=b.second_weight,
                               second_max=b.second_max, source_names=list(cfg.sources))
    raise ConfigError(f"batch.packing: {packing.value!r} is not available "
                      f"(choose one of {', '.join(p.value for p in Packing)})")


@dataclass
class Step:
    """One global step: its plan, and this rank's rows of it."""

    index: int
    plan: StepPlan  # global rows
    rows: np.ndarray  # this rank's rows (indices into the global plan), in micro-batch order
    weights: np.ndarray  # the target weights used for this step


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
            initialised and they are not given. ``batch.batch_size`` is the *global* batch and
            must be divisible by ``world_size``.
        stores: already opened stores by source name (else opened from ``cfg.store_dir``).
    """

    def __init__(self, cfg: Config, rank: int | None = None, world_size: int | None = None,
                 stores: dict[str, TokenStore] | None = None) -> None:
        if rank is None or world_size is None:
            r, w = _dist_rank_world()
            rank = r if rank is None else rank
            world_size = w if world_size is None else world_size
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} / world size {world_size}: need 0 <= rank < world size")
        if cfg.batch.packing in VARIABLE_ROWS:
            if cfg.batch.row_multiple % world_size:
                raise ConfigError(f"batch.row_multiple: steps of {cfg.batch.packing.value} have a "
                                  f"multiple of {cfg.batch.row_multiple} rows, which world size "
                                  f"{world_size} does not divide")
        elif cfg.batch.batch_size % world_size:
            raise ConfigError(f"batch.batch_size: {cfg.batch.batch_size} global rows cannot be "
                              f"split evenly over world size {world_size}")
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.names = list(cfg.sources)
        self.stores = [(stores or {}).get(n) or open_store(cfg.store_dir / n) for n in self.names]
        self._check_tokenizers()
        self._check_second_lengths()
        self.eod_id = self.stores[0].eod_id
        self.pad_id = int(self.stores[0].meta["tokenizer"].get("pad_id", self.eod_id))
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
        b = self.cfg.batch
        if not b.second_buckets:
            return
        if b.packing != Packing.PAD_BUCKETS:
            raise ConfigError(f"batch.second_buckets: 2-D bucketing is a pad_buckets option; "
                              f"packing is {b.packing.value!r}")
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
                              second=cfg.batch.second_buckets > 0)
        self.shaper = build_shaper(cfg)
        self.step = 0
        self.tokens_planned = 0
        self.stats = RunStats(len(self.names))
        self.override: np.ndarray | None = None

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
        self.override = self.mixture.vector(weights)

    def current_weights(self) -> np.ndarray:
        if self.override is not None:
            return self.override
        return self.mixture.weights_at(self.step, self.tokens_planned)

    # ---- iteration -----------------------------------------------------------------------
    def next_step(self) -> Step | None:
        """Plan the next global step (no tokens read); None at the end of the stream."""
        w = self.current_weights()
        self.feed.set_weights(w)
        plan = self.shaper.plan_step(self.feed, self.cfg.batch.batch_size)
        if plan is None:
            return None
        labels = plan.row_source(len(self.names))
        costs = row_costs(plan, self.cfg.batch.d_model)
        if self.cfg.batch.balance and self.world_size > 1:
            parts = balance_rows(labels, costs, self.world_size)
        else:
            labels[labels < 0] = len(self.names)  # empty rows: a group of their own
            parts = partition_batch(labels, self.world_size)
        rows = np.sort(parts[self.rank])
        self.stats.add(plan, np.array([costs[p].sum() for p in parts]))
        self.tokens_planned += int(plan.width.sum())
        step = Step(self.step, plan, np.asarray(rows, dtype=np.int64), w)
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

    def batch_of(self, step: Step, rows: np.ndarray | None = None) -> dict[str, Any]:
        """Read the tokens of this rank's rows (or of ``rows``) of a planned step."""
        sub = step.plan.select_rows(step.rows if rows is None else rows)
        batch = materialize(sub, self.stores, self.eod_id, self.pad_id)
        batch["step"] = step.index
        return batch

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

    def state_dict(self) -> dict[str, Any]:
        """The global stream's position: O(K) numbers, the same on every rank."""
        return {
            "format": STATE_FORMAT,
            "fingerprint": self.fingerprint(),
            "step": self.step,
            "tokens_planned": self.tokens_planned,
            "feed": self.feed.state_dict(),
            "shaper": self.shaper.state_dict(),
            "weights_override": None if self.override is None else self.override.tolist(),
            "stats": self.stats.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise StateError(f"loader state: not a mixbatch loader state (format {got!r}, "
                             f"expected {STATE_FORMAT!r})")
        self._check_fingerprint(state.get("fingerprint"))
        self.reset()
        try:
            self.feed.load_state_dict(state["feed"])
            self.shaper.load_state_dict(state["shaper"])
            self.step = int(state["step"])
            self.tokens_planned = int(state["tokens_planned"])
            ov = state["weights_override"]
            self.override = None if ov is None else self.mixture.vector(np.asarray(ov, float))
            self.stats.load_state_dict(state["stats"])
        except (KeyError, TypeError, ValueError) as e:
            raise StateError(f"loader state: malformed ({type(e).__name__}: {e})") from None

    def _check_fingerprint(self, saved: Any) -> None:
        now = self.fingerprint()
        if not isinstance(saved, dict):
            raise StateError("loader state: no config fingerprint; it cannot be checked")
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


def save_state(state: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def load_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StateError(f"{path}: state file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StateError(f"{path}: corrupt state file ({e})") from None
    if not isinstance(data, dict):
        raise StateError(f"{path}: corrupt state file (not a JSON object)")
    return data
