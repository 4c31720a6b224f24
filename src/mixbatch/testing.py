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


def assert_resumes(make: Callable[[], MixedLoader], total: int, cut_points: list[int]) -> None:
    """Straight run == run to a cut, save (through JSON), load into a fresh loader, continue.

    Also checks that the state stays O(K): at most ``20·K + 64`` numbers, whatever the step.
    """
    straight = step_signature(make(), total)
    for cut in cut_points:
        first = make()
        head = step_signature(first, cut)
        state = json.loads(json.dumps(first.state_dict()))
        k = len(first.names)
        if _leaves(state) > 20 * k + 64:
            raise AssertionError(f"state at step {cut} holds {_leaves(state)} numbers for {k} sources")
        second = make()
        second.load_state_dict(state)
        tail = step_signature(second, total - cut)
        if head + tail != straight:
            bad = next(i for i, (a, b) in enumerate(zip(head + tail, straight, strict=False))
                       if a != b)
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
