"""Helpers for tests of mixbatch stages (and of code built on them)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

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
