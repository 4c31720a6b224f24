"""Hard-batch replay ("Can we learn better with hard samples?"): keep the hardest batches seen
by their training loss, in bounded memory, and train on them again at a set rate.

The paper trains on the top ``⌊δ·b⌋`` batches by recorded loss and updates their losses as it
replays them. Here the stream goes on: :class:`HardBatchReplay` keeps the ``capacity`` batches
of highest recorded loss (a batch's loss is updated when it is replayed), and step ``k`` is a
replay when ``⌊(k+1)·rate⌋ > ⌊k·rate⌋`` (a ``rate`` share of the steps, evenly spread, the same
on every rank). A replayed batch's tokens are counted apart (:attr:`replayed_tokens`), so the
mixture can be accounted both ways: fresh tokens only, or every token trained.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from mixbatch.checks import integer, real
from mixbatch.errors import StateError

__all__ = ["HardBatchReplay", "payload_plan", "plan_payload"]


class HardBatchReplay:
    """The bounded memory of the hardest batches and the replay clock.

    Args:
        capacity: batches kept (the lowest loss is dropped first; ties: the older one).
        rate: the share of steps that replay a batch, in [0, 1).
        sources: the number of sources K (for the per-source token accounting).
    """

    def __init__(self, capacity: int, rate: float, sources: int) -> None:
        self.capacity = integer("replay.capacity", capacity, lo=1)
        self.rate = real("replay.rate", rate, lo=0, hi=1, hi_open=True)
        self.sources = integer("replay.sources", sources, lo=1)
        self.keys: list[int] = []  # the loader step each kept batch was first planned as
        self.losses: list[float] = []
        self.payloads: list[Any] = []  # what re-reads the batch (the caller's)
        self.replayed_tokens = np.zeros(sources, dtype=np.int64)
        self.replays = 0

    def due(self, step: int) -> bool:
        """Whether step ``step`` (0-based) replays a batch (and one is kept)."""
        return bool(self.keys) and math.floor((step + 1) * self.rate) > math.floor(step * self.rate)

    def wants(self, key: int, loss: float) -> bool:
        """Whether :meth:`record` would keep or update batch ``key`` at ``loss`` (so the caller
        builds the payload only then)."""
        if not math.isfinite(loss):
            return False
        return (key in self.keys or len(self.keys) < self.capacity
                or min(self.losses) < loss)

    def record(self, key: int, loss: float, payload: Any) -> None:
        """The training loss of batch ``key`` (new or replayed); keeps the ``capacity``
        hardest. A non-finite loss is not kept."""
        if not math.isfinite(loss):
            return
        if key in self.keys:
            i = self.keys.index(key)
            self.losses[i] = float(loss)
            return
        if len(self.keys) >= self.capacity:
            low = int(np.argmin(self.losses))  # first minimum: the oldest of the easiest
            if self.losses[low] >= loss:
                return
            for lst in (self.keys, self.losses, self.payloads):
                del lst[low]
        self.keys.append(int(key))
        self.losses.append(float(loss))
        self.payloads.append(payload)

    def hardest(self) -> tuple[int, Any]:
        """The kept batch of highest recorded loss (first kept on ties): its key and payload."""
        i = int(np.argmax(self.losses))
        return self.keys[i], self.payloads[i]

    def count(self, tokens_by_source: np.ndarray) -> None:
        """Count one replayed batch's real tokens per source (all ranks)."""
        self.replayed_tokens += np.asarray(tokens_by_source, dtype=np.int64)
        self.replays += 1

    def accounting(self, fresh_tokens: np.ndarray) -> dict[str, list[float]]:
        """The mixture two ways: the share of each source in fresh tokens only, and in every
        token trained (replays included)."""
        fresh = np.asarray(fresh_tokens, dtype=np.float64)
        both = fresh + self.replayed_tokens

        def share(x: np.ndarray) -> list[float]:
            return (x / x.sum()).tolist() if x.sum() > 0 else [0.0] * len(x)

        return {"without_replays": share(fresh), "with_replays": share(both),
                "replayed_tokens": self.replayed_tokens.tolist()}

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "rate": self.rate, "keys": list(self.keys),
                "losses": list(self.losses), "payloads": list(self.payloads),
                "replayed_tokens": self.replayed_tokens.tolist(), "replays": self.replays}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["capacity"], state["rate"]) != (self.capacity, self.rate):
            raise StateError(f"replay: saved with capacity {state['capacity']} and rate "
                             f"{state['rate']}, this run has {self.capacity} and {self.rate}")
        tokens = np.asarray(state["replayed_tokens"], dtype=np.int64)
        if tokens.shape != (self.sources,):
            raise StateError(f"replay: saved for {tokens.size} sources, this run has "
                             f"{self.sources}")
        self.keys = [int(k) for k in state["keys"]]
        self.losses = [float(v) for v in state["losses"]]
        self.payloads = list(state["payloads"])
        self.replayed_tokens, self.replays = tokens, int(state["replays"])


def plan_payload(index: int, plan: Any, rows: np.ndarray) -> dict[str, Any]:
    """A planned step (its :class:`~mixbatch.shape.base.StepPlan` and this rank's rows) as
    plain data, to keep and to checkpoint: ``(dtype, values)`` per array."""
    arrays = {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan)}
    out: dict[str, Any] = {"index": int(index),
                           "rank_rows": ("int64", np.asarray(rows).tolist())}
    for name, value in arrays.items():
        out[name] = ((str(value.dtype), value.tolist()) if isinstance(value, np.ndarray)
                     else value)
    return out


def payload_plan(payload: dict[str, Any], plan_cls: type) -> tuple[int, Any, np.ndarray]:
    """The step index, plan and rows kept by :func:`plan_payload`."""
    def arr(v: Any) -> Any:
        return np.asarray(v[1], dtype=v[0]) if isinstance(v, tuple | list) and len(v) == 2 \
            and isinstance(v[0], str) else v

    fields = {f.name: arr(payload[f.name]) for f in dataclasses.fields(plan_cls)
              if f.name in payload}
    return int(payload["index"]), plan_cls(**fields), arr(payload["rank_rows"])
