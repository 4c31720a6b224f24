"""The loader's state: what a resumed run must share with the saved one, the state of the
global stream at a step boundary (or inside a block), and resuming from it.

Split from :mod:`mixbatch.loader.loader`: :class:`LoaderState` is the part of
:class:`~mixbatch.loader.loader.MixedLoader` that takes the position of the stream
(:meth:`LoaderState.snapshot`, :meth:`LoaderState.state_from`, :meth:`LoaderState.state_dict`)
and resumes it (:meth:`LoaderState.load_state_dict`, every field checked first: one
:class:`~mixbatch.errors.StateError` line naming it); :func:`save_state` / :func:`load_state`
write and read a state file (JSON, whole or absent).

A state is O(K) numbers, the same on every rank: the feed's and the shaper's state, the step
and planned tokens, the weights override, the run statistics, the run-time batch-size and
token-budget changes, and, for a state taken inside a block of planned steps, ``replay``: the
block's start and the steps of it already handed out (loading it replays them).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mixbatch.atomic import write_text
from mixbatch.config import Config
from mixbatch.errors import StateError
from mixbatch.loader.blocks import BLOCKABLE, Block
from mixbatch.loader.feed import MixedFeed
from mixbatch.loader.mixture import MixtureSchedule
from mixbatch.loader.stats import RunStats
from mixbatch.objectives.stage import check_objective_state
from mixbatch.plan.state_checks import count, mapping, screen, shown, weights
from mixbatch.shape import Shaper
from mixbatch.store import TokenStore

__all__ = ["MAX_REPLAY_POSITIONS", "READS_FORMATS", "STATE_FORMAT", "LoaderState", "load_state",
           "save_state"]

STATE_FORMAT = "mixbatch.loader/3"
#: formats this loader resumes from (/1 had no ``replay``, /2 no batch-size changes)
READS_FORMATS = ("mixbatch.loader/1", "mixbatch.loader/2", STATE_FORMAT)
MAX_REPLAY_POSITIONS = 1 << 32  # a state's replay (steps x rows x seq_len) is at most this


class LoaderState:
    """The state of the loader's global stream and resuming from it (a mixin of the loader:
    it reads and sets the loader's config, stores, feed, shaper, clock, override, statistics
    and run-time changes)."""

    cfg: Config
    world_size: int
    names: list[str]
    stores: list[TokenStore]
    mixture: MixtureSchedule
    feed: MixedFeed
    shaper: Shaper
    step: int
    tokens_planned: int
    stats: RunStats
    override: np.ndarray | None
    changes: list[list[int]]
    budget_changes: list[list[int]]
    objectives: Any
    _block: Block | None

    if TYPE_CHECKING:  # the loader's (mixbatch.loader.loader) and its sizes' (loader.sizes)
        rows_per_step: int
        max_rows_per_step: int | None

        def reset(self) -> None: ...
        def weight_path(self) -> Any: ...
        def _drop_block(self) -> None: ...
        def _checked_changes(self, raw: Any, step: int) -> list[list[int]]: ...
        def _checked_budgets(self, raw: Any, step: int) -> list[list[int]]: ...

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
            self.changes = changes[-1:]  # older states kept every change; the last rules
            self.budget_changes = budget_changes[-1:]
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
