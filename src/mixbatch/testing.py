"""Helpers for tests of mixbatch stages (and of code built on them)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from mixbatch.loader.loader import MixedLoader


def step_signature(loader: MixedLoader, n: int) -> list[tuple]:
    """What the next ``n`` steps feed: per step, every segment and padding of this rank."""
    out = []
    for step in loader.steps(n):
        p = step.plan.select_rows(step.rows)
        out.append((step.index, p.row.tolist(), p.source.tolist(), p.doc.tolist(),
                    p.start.tolist(), p.end.tolist(), p.eod.tolist(), p.pad.tolist()))
    return out


def plan_signature(p: Any) -> tuple:
    """Everything a :class:`~mixbatch.shape.StepPlan` feeds, as plain values (for ``==``)."""
    return (p.rows, p.seq_len, p.row.tolist(), p.col.tolist(), p.source.tolist(),
            p.doc.tolist(), p.start.tolist(), p.end.tolist(), p.eod.tolist(), p.pad.tolist(),
            p.truncated)


class ShaperRun:
    """A shaper and its feed as one resumable stage (for :func:`assert_resumes`).

    ``step(n)`` plans the next ``n`` steps (fewer at the stream's end) and returns their
    :func:`plan_signature`; ``before_step(run, index)``, if given, runs before each step (e.g.
    to set the feed's weights as a schedule would). The state is the loader's: the feed's, then
    the shaper's.
    """

    def __init__(self, shaper: Any, feed: Any, rows: int = 8,
                 before_step: Callable[[ShaperRun, int], None] | None = None) -> None:
        self.shaper, self.feed, self.rows = shaper, feed, rows
        self.before_step = before_step
        self.index = 0

    def step(self, n: int) -> list[tuple]:
        out = []
        for _ in range(n):
            if self.before_step is not None:
                self.before_step(self, self.index)
            p = self.shaper.plan_step(self.feed, self.rows)
            if p is None:
                break
            out.append(plan_signature(p))
            self.index += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index, "feed": self.feed.state_dict(),
                "shaper": self.shaper.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index = state["index"]
        self.feed.load_state_dict(state["feed"])  # the loader's order: feed, then shaper
        self.shaper.load_state_dict(state["shaper"])


def _run(stage: Any, n: int) -> list:
    return step_signature(stage, n) if isinstance(stage, MixedLoader) else stage.step(n)


def assert_resumes(make: Callable[[], Any], total: int, cut_points: list[int], *,
                   max_numbers: int | None = None) -> None:
    """Straight run == run to a cut, save (through JSON), load into a fresh stage, continue.

    ``make()`` builds a fresh stage: a :class:`~mixbatch.loader.MixedLoader`, or anything with
    ``step(n) -> list`` (records of the next ``n`` steps, fewer at the stream's end),
    ``state_dict()`` and ``load_state_dict()``, such as :class:`ShaperRun`. Also checks that
    the state stays small: at most ``max_numbers`` numbers (default for a loader ``20·K + 64``
    with ``K`` sources, whatever the step).
    """
    straight = _run(make(), total)
    for cut in cut_points:
        cut = min(cut, len(straight))
        first = make()
        head = _run(first, cut)
        state = json.loads(json.dumps(first.state_dict()))
        limit = max_numbers
        if limit is None and isinstance(first, MixedLoader):
            limit = 20 * len(first.names) + 64
        if limit is not None and _leaves(state) > limit:
            raise AssertionError(f"state at step {cut} holds {_leaves(state)} numbers "
                                 f"(at most {limit} expected)")
        second = make()
        second.load_state_dict(state)
        tail = _run(second, len(straight) - cut)
        if head + tail != straight:
            bad = next((i for i, (a, b) in enumerate(zip(head + tail, straight, strict=False))
                        if a != b), min(len(head + tail), len(straight)))
            raise AssertionError(f"resume at step {cut} differs from the straight run at step {bad}")


def _leaves(obj: Any) -> int:
    if isinstance(obj, dict):
        return sum(_leaves(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_leaves(v) for v in obj)
    return 1


# ---- test doubles for shapers ------------------------------------------------------------------
class ListFeed:
    """A finite document stream with a resumable position: a :class:`~mixbatch.shape.DocFeed`
    for shaper tests. ``pulls`` records the (first, end) documents of every ``take_covering``."""

    def __init__(self, source, doc, length, second=None) -> None:
        from mixbatch.shape.base import Docs

        self.docs = Docs(np.asarray(source, np.int32), np.asarray(doc, np.int64),
                         np.asarray(length, np.int64),
                         None if second is None else np.asarray(second, np.int64))
        self.i = 0
        self.pulls: list[tuple[int, int]] = []

    def take(self, n: int):
        out = self.docs.slice(self.i, self.i + n)
        self.i += len(out)
        return out

    def take_covering(self, positions: int, extra_per_doc: int):
        w = np.cumsum(self.docs.length[self.i:] + extra_per_doc)
        k = int(np.searchsorted(w, positions)) + 1
        first = self.i
        out = self.take(k)
        self.pulls.append((first, self.i))
        return out

    def state_dict(self) -> dict:
        return {"i": self.i}

    def load_state_dict(self, state: dict) -> None:
        self.i = int(state["i"])

    weights = None  # a fixed list: no mixture to set

    def set_weights(self, weights: np.ndarray) -> None:
        raise TypeError("ListFeed has no mixture weights")


def toy_stores(lengths_per_source: list[list[int]]):
    """In-memory stores whose token at position p of any document of source s is 1000·s + p + 1."""
    from mixbatch.store import TokenStore

    stores = []
    for s, lens in enumerate(lengths_per_source):
        lens_a = np.asarray(lens, np.int64)
        starts = np.concatenate([[0], np.cumsum(lens_a)[:-1]]).astype(np.int64)
        tokens = (np.concatenate([np.arange(n) + 1 + 1000 * s for n in lens_a]) if len(lens)
                  else np.empty(0, np.int64))
        meta = {"tokens": int(lens_a.sum()), "tokenizer": {"eod_id": 0, "vocab_size": 10**6}}
        stores.append(TokenStore(f"s{s}", None, tokens.astype(np.int64), starts, lens_a, meta))
    return stores


def feed_from_items(items, k: int = 3) -> tuple[ListFeed, list[list[int]]]:
    """A feed of ``(source, length)`` items, documents numbered per source in order."""
    per_source: list[list[int]] = [[] for _ in range(k)]
    src, doc, length = [], [], []
    for s, n in items:
        src.append(s)
        doc.append(len(per_source[s]))
        length.append(n)
        per_source[s].append(n)
    return ListFeed(src, doc, length), per_source
