"""Where a window of documents starts in the feed, so that it can be pulled again on resume.

Shapers that plan many documents at once (``bfd``, ``buckets``, ``pad_buckets``) keep no list
of documents or pieces in their state. They keep the feed's O(K) state from just before the
window was pulled, and the mixture weights in force then; on resume they rewind the feed, pull
the same window again (the feed is deterministic) and re-plan it, which gives exactly what an
uninterrupted run planned. After the replay the feed is where it was after the first pull.

A replay is only exact with the settings the window was planned with (``seq_len``, budget,
buckets, ...): the state carries a digest of them, and loading a state whose window is still
open into a shaper with other settings is refused (at a window boundary they may change).

**Token budget changes** (a ``batch.token_budget`` schedule, or a run-time change): the budget
a shaper plans with may change inside a window. The steps already handed out stay; the pieces
of the steps not handed out yet (:func:`rest_of`) are planned again, as a window of their own,
with the new budget, and their steps replace the old ones from there. The open window's
budgets are in the state (``budgets``: ``[steps handed out when it took effect, budget]``
pairs, the first ``[0, budget the window was planned with]``), so a replay repeats every
re-plan exactly. Every piece of the window is still handed out in the window (or counted as
truncated), so the mixture at the window's end does not move.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from mixbatch.atomic import json_digest
from mixbatch.errors import ConfigError, StateError
from mixbatch.shape.base import DocFeed, Docs, StepPlan

#: ``(steps, truncated tokens)``, or ``(steps, truncated tokens, skipped documents)``
PlanWindow = Callable[[Docs, bool], tuple[Any, ...]]


def rest_of(plans: list[StepPlan]) -> tuple[Docs, int]:
    """The pieces of ``plans`` as a window of their own, in step order (each row one entry:
    its span, its end token, its second length), and the tokens the plans count as truncated
    beyond their rows (a cut document's rest; reported again by the steps that replace them).
    For shapers whose rows hold one piece each (``buckets``, ``pad_buckets``)."""
    if not plans:
        return Docs.empty(), 0
    start = np.concatenate([p.start for p in plans]).astype(np.int64)
    end = np.concatenate([p.end for p in plans]).astype(np.int64)
    second = None
    if all(p.second is not None for p in plans):
        second = np.concatenate([p.second for p in plans]).astype(np.int64)  # type: ignore[misc]
    docs = Docs(np.concatenate([p.source for p in plans]).astype(np.int32),
                np.concatenate([p.doc for p in plans]).astype(np.int64), end, second, start,
                end, np.concatenate([p.eod for p in plans]).astype(bool))
    return docs, int(sum(int(p.truncated) for p in plans))


_PLAIN = frozenset({int, float, str, bool, type(None)})


def copy_state(state: Any) -> Any:
    """A copy of a feed state (nested dicts, lists and tuples of plain values) that shares
    nothing mutable with it: ``copy.deepcopy`` without its memo, several times cheaper on the
    small O(K) states taken once per window; anything else (an array, an object) is
    deep-copied."""
    kind = type(state)
    if kind is dict:
        return {k: v if type(v) in _PLAIN else copy_state(v) for k, v in state.items()}
    if kind is list:
        return [v if type(v) in _PLAIN else copy_state(v) for v in state]
    if kind is tuple:
        return tuple(v if type(v) in _PLAIN else copy_state(v) for v in state)
    if kind in _PLAIN:
        return state
    return copy.deepcopy(state)


def feed_weights(feed: DocFeed) -> list[float] | None:
    """The feed's current mixture weights as a list (``None`` for a feed without a mixture)."""
    w = feed.weights
    return None if w is None else [float(x) for x in np.asarray(w, dtype=np.float64).ravel()]


def settings_digest(settings: dict[str, Any] | None) -> str | None:
    """A short, stable digest of a shaper's settings (``None`` for none)."""
    return None if settings is None else json_digest(settings)


@dataclasses.dataclass(frozen=True)
class Budgeted:
    """How a shaper plans with a changing token budget (module docstring).

    ``initial``: the budget of the run's start; ``use(b)``: plan with ``b`` from now on;
    ``check(b)``: raise :class:`ConfigError` for a budget the shaper cannot plan with;
    ``window(b)``: tokens of a window planned with ``b``; ``replan(done)``: called with the
    window's steps handed out before the rest of it is planned again (a shaper that carries
    something from step to step, e.g. a drift, updates it)."""

    initial: int
    use: Callable[[int | None], None]
    check: Callable[[int], None]
    window: Callable[[int], int]
    replan: Callable[[list[StepPlan]], None]


class BudgetShaper:
    """What every token-budget shaper does with a run-time budget change: ``set_budget`` hands
    it to the shaper's :class:`WindowReplay` (``self.window``), ``_use_budget`` (the
    :class:`Budgeted` ``use``) sets ``self.token_budget``."""

    token_budget: int | None
    window: WindowReplay

    def set_budget(self, budget: int) -> None:
        """Plan with ``budget`` from the next step on (checked by the caller with
        :meth:`check_budget`); the rest of an open window is planned again
        (:class:`~mixbatch.shape.window.WindowReplay`)."""
        self.window.want(budget)

    def _use_budget(self, budget: int | None) -> None:
        if budget is not None:
            self.token_budget = int(budget)


class WindowAnchor:
    """The feed's position and weights at the start of the current window (or none), and the
    digest of the settings that plan a window (module docstring)."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self.start: dict[str, Any] | None = None
        self.weights: list[float] | None = None
        self.settings = dict(settings) if settings is not None else None
        self.digest = settings_digest(settings)

    @property
    def open(self) -> bool:
        return self.start is not None

    def pull(self, feed: DocFeed, positions: int, extra_per_doc: int) -> Docs:
        """Remember where the window starts, then pull it; an empty pull leaves no window."""
        start, weights = copy_state(feed.state_dict()), feed_weights(feed)
        docs = feed.take_covering(positions, extra_per_doc)
        self.start, self.weights = (start, weights) if len(docs) else (None, None)
        return docs

    def replay(self, feed: DocFeed, positions: int, extra_per_doc: int) -> Docs:
        """Pull the remembered window again, with the weights it was first pulled with."""
        if self.start is None:
            raise StateError("shaper state: no window to replay")
        now = feed_weights(feed)
        feed.load_state_dict(copy_state(self.start))
        if self.weights is not None and now is not None:
            feed.set_weights(np.asarray(self.weights))
        docs = feed.take_covering(positions, extra_per_doc)
        if now is not None:
            feed.set_weights(np.asarray(now))
        return docs

    def close(self) -> None:
        self.start = self.weights = None

    def state_dict(self) -> dict[str, Any]:
        # the window's start is never changed once taken (a replay loads a copy of it), so it
        # is shared, not copied: a loader takes a state every step (MixedLoader.state_from
        # copies the whole state when it hands one out)
        return {"window_start": self.start,
                "window_weights": None if self.weights is None else list(self.weights),
                "settings": self.digest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Read ``window_start`` / ``window_weights``; raise ValueError/TypeError if malformed."""
        start, weights = state["window_start"], state.get("window_weights")
        if start is not None and not isinstance(start, dict):
            raise TypeError("window_start must be a feed state (a mapping) or null")
        saved = state.get("settings")
        if start is not None and saved is not None and self.digest is not None \
                and saved != self.digest:
            shown = ", ".join(f"{k} {v}" for k, v in (self.settings or {}).items())
            raise StateError("loader state: its open window was planned with other batch "
                             f"settings than these ({shown}); resume with the settings it was "
                             "saved with, or from a state saved at a window boundary")
        self.start = copy_state(start)
        self.weights = None if weights is None else [float(x) for x in weights]


class WindowReplay:
    """The resumable cursor of a shaper that plans a window of documents at once.

    ``plan(docs, run_start)`` turns a window into its steps and the tokens it truncated outside
    them (and, optionally, the documents it skipped outside them); it must be a pure function
    of its arguments, and its plans belong to the replay, which completes each in place when
    it hands it out. ``run_start`` is true when no step of
    the run came before the window. State: ``window_start`` (the feed's state before the
    window), ``window_weights`` (the feed's ``weights`` then, if it has any), ``emitted``
    (steps of the window handed out), ``windows`` and ``steps`` (counters), ``carry_truncated``
    and ``carry_skipped`` (truncated tokens and skipped documents of step-less windows not yet
    reported; a later step reports them). No documents, no pieces.
    """

    def __init__(self, window_tokens: int | None, extra_per_doc: int, plan: PlanWindow,
                 settings: dict[str, Any] | None = None,
                 on_close: Callable[[], None] | None = None,
                 budget: Budgeted | None = None) -> None:
        if window_tokens is None and budget is None:
            raise ValueError("WindowReplay: window_tokens is needed without a budget")
        self.window_tokens = window_tokens
        self.extra_per_doc = extra_per_doc
        self._plan = plan
        self._on_close = on_close
        self._budget = budget
        self.wanted = None if budget is None else budget.initial
        # the open window's budgets: [steps handed out when it took effect, budget]
        self._segments: list[list[int]] = []
        self._pending = 0  # truncated tokens of a re-plan, reported with its first step
        self._anchor = WindowAnchor(settings)
        self._emitted = 0
        self._windows = 0
        self._steps_done = 0
        self._carry = 0
        self._carry_skipped = 0
        self._window_truncated = 0
        self._plans: list[StepPlan] | None = None
        self._replay = False

    @property
    def unreported(self) -> int:
        """Truncated tokens of windows that had no step to report them on (stream end)."""
        return self._carry

    @property
    def unreported_skipped(self) -> int:
        """Skipped documents of windows that had no step to report them on (stream end)."""
        return self._carry_skipped

    def state_dict(self) -> dict[str, Any]:
        out = {**self._anchor.state_dict(), "emitted": self._emitted,
               "windows": self._windows, "steps": self._steps_done,
               "carry_truncated": self._carry, "carry_skipped": self._carry_skipped}
        if self._budget is not None:
            out["budgets"] = [list(x) for x in self._segments] if self._anchor.open else None
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            ints = [int(state[k]) for k in ("emitted", "windows", "steps", "carry_truncated")]
            ints.append(int(state.get("carry_skipped", 0)))
            if min(ints) < 0 or ints[0] > ints[2]:
                raise ValueError("counters must be >= 0 and emitted <= steps")
            self._anchor.load_state_dict(state)
            segments = self._checked_segments(state.get("budgets"), ints[0])
        except (KeyError, TypeError, ValueError) as e:
            raise StateError(f"shaper state: malformed ({type(e).__name__}: {e})") from None
        self._emitted, self._windows, self._steps_done, self._carry, self._carry_skipped = ints
        self._segments = segments
        self._plans = None
        self._pending = 0
        self._replay = self._anchor.open

    def _checked_segments(self, raw: Any, emitted: int) -> list[list[int]]:
        """The open window's budgets of a state (a state without them: the configured one)."""
        if self._budget is None or not self._anchor.open:
            return []
        if raw is None:  # saved before budgets were kept: the configured budget throughout
            return [[0, self._budget.initial]]
        if not isinstance(raw, list) or not raw:
            raise ValueError("budgets must be a non-empty list of [step, budget] pairs")
        out: list[list[int]] = []
        for pair in raw:
            if not isinstance(pair, list) or len(pair) != 2 or not all(
                    isinstance(x, int) and not isinstance(x, bool) for x in pair):
                raise ValueError(f"budgets: expected [step, budget] integers, got {pair!r}")
            at, b = pair
            if (not out and at != 0) or (out and not out[-1][0] < at <= emitted) or at < 0:
                raise ValueError(f"budgets: step {at} out of order (steps handed out: "
                                 f"{emitted})")
            try:
                self._budget.check(b)
            except ConfigError as e:
                raise ValueError(f"budgets: {e}") from None
            out.append([at, b])
        return out

    # -- stepping
    def want(self, budget: int) -> None:
        """Plan with ``budget`` from the next step on (module docstring: token budget changes);
        the shaper has checked it."""
        self.wanted = int(budget)

    def _size(self, budget: int | None) -> int:
        """Tokens of a window planned with ``budget``."""
        if self.window_tokens is not None:
            return self.window_tokens
        assert self._budget is not None and budget is not None
        return self._budget.window(budget)

    def next(self, feed: DocFeed) -> StepPlan | None:
        if self._replay:
            self._replay_window(feed)
        while True:
            if self._plans is not None and self._emitted < len(self._plans):
                if self.wanted is not None and self.wanted != self._segments[-1][1]:
                    self._rebudget(self.wanted)
                    continue
                return self._emit()
            if self._budget is not None:
                self._budget.use(self.wanted)
            docs = self._anchor.pull(feed, self._size(self.wanted), self.extra_per_doc)
            if len(docs) == 0:
                return None
            planned = self._plan(docs, self._steps_done == 0)
            self._segments = [[0, self.wanted]] if self._budget is not None else []
            self._plans, self._window_truncated = planned[0], planned[1]
            self._emitted = 0
            if not self._plans:  # nothing to hand out: report its losses with a later step
                self._carry += self._window_truncated
                self._carry_skipped += planned[2] if len(planned) > 2 else 0
                self._close()

    def _rebudget(self, budget: int) -> None:
        """Plan the steps not handed out yet again with ``budget`` (module docstring)."""
        assert self._plans is not None and self._budget is not None
        e = self._emitted
        self._segments.append([e, budget])
        self._plans = self._replanned(self._plans, e, budget)
        if e == len(self._plans):  # the rest fills no step: report its losses later
            self._carry += self._pending
            self._pending = 0
            self._close()

    def _replanned(self, plans: list[StepPlan], e: int, budget: int) -> list[StepPlan]:
        """``plans[:e]`` and the rest planned again with ``budget``; the rest's truncated
        tokens go to ``_pending``."""
        assert self._budget is not None
        self._budget.replan(plans[:e])
        self._budget.use(budget)
        rest, truncated = rest_of(plans[e:])
        planned = self._plan(rest, False) if len(rest) else ([], 0)
        self._pending += truncated + int(planned[1])
        return list(plans[:e]) + list(planned[0])

    def _emit(self) -> StepPlan:
        assert self._plans is not None
        plan = self._plans[self._emitted]
        extra = 0
        # a step is handed out once (a replay plans its window again): its plan is completed
        # in place
        stats = plan.stats
        stats.update(window=self._windows, window_step=self._emitted,
                     window_steps=len(self._plans))
        if self._pending:
            extra += self._pending
            self._pending = 0
        if self._emitted == 0:
            extra += self._window_truncated + self._carry
            self._carry = 0
            if self._carry_skipped:
                stats["skipped_docs"] = stats.get("skipped_docs", 0) + self._carry_skipped
                self._carry_skipped = 0
        plan.truncated += extra
        self._emitted += 1
        self._steps_done += 1
        if self._emitted == len(self._plans):
            self._close()
        return plan

    @property
    def weights(self) -> list[float] | None:
        """The feed's weights when the current window was pulled (None: the feed has none)."""
        return self._anchor.weights

    def _close(self) -> None:
        if self._on_close is not None:
            self._on_close()
        self._anchor.close()
        self._segments = []
        self._plans = None
        self._emitted = 0
        self._windows += 1
        self._window_truncated = 0

    def _replay_window(self, feed: DocFeed) -> None:
        """Pull the saved window again, exactly as the first time, and plan it again."""
        self._replay = False
        first = self._segments[0][1] if self._segments else None
        if self._budget is not None:
            self._budget.use(first)
        docs = self._anchor.replay(feed, self._size(first), self.extra_per_doc)
        planned = self._plan(docs, self._steps_done - self._emitted == 0)
        plans, truncated = planned[0], planned[1]
        for at, budget in self._segments[1:]:  # the re-plans, as they were made
            if at > len(plans):
                break
            plans = self._replanned(plans, at, budget)
        self._pending = 0  # reported before the state was saved
        if self._emitted > len(plans) or (self._emitted == len(plans) and plans):
            raise StateError(f"shaper state: {self._emitted} steps of the saved window were "
                             f"handed out, but replaying it gives {len(plans)}; the data or the "
                             "batch settings changed since the state was saved")
        self._plans, self._window_truncated = plans, truncated
