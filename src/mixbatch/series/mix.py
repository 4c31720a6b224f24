"""Series stores mixed with exact weights into (context, horizon) batches.

The planner's rule (:class:`mixbatch.plan.interleave.Interleaver`, sample mode) picks the store
of every window, so after ``n`` windows each store has supplied ``w_i·n`` of them to within one;
inside a store windows come in a seeded permutation per epoch
(``permute(k, N, source_epoch_key(seed, name, epoch))``), a new order every pass. The state
(the rule's counts and each store's position) is a small dict: a resumed mixer continues
exactly. Each batch reports the stores and window ids it drew, for an audit record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mixbatch.errors import ConfigError, StateError
from mixbatch.plan.interleave import Interleaver
from mixbatch.plan.permutation import permute, source_epoch_key
from mixbatch.series.windows import SeriesStore

__all__ = ["SeriesMixer"]


class SeriesMixer:
    """``stores`` by name, mixed with ``weights`` (one per store, in the same order)."""

    def __init__(self, stores: Mapping[str, SeriesStore], weights: Sequence[float],
                 seed: int) -> None:
        self.names = list(stores)
        self.stores = [stores[n] for n in self.names]
        shapes = {(s.context, s.horizon) for s in self.stores}
        if len(shapes) != 1:
            raise ConfigError(f"series sources: (context, horizon) differ between stores: "
                              f"{sorted(shapes)}; prepare them with the same window")
        for name, store in zip(self.names, self.stores, strict=True):
            if len(store) == 0:
                raise ConfigError(f"series source {name!r}: its store has no windows")
        self.context, self.horizon = shapes.pop()
        self.seed = seed
        self.rule = Interleaver(len(self.stores))
        self.rule.set_weights(np.asarray(weights, dtype=np.float64))
        self.taken = np.zeros(len(self.stores), dtype=np.int64)

    def draw(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``size`` windows (advances the state): each one's store ``source [B]`` and
        its row ``window [B]`` in that store."""
        source = self.rule.choose(size)
        window = np.empty(size, dtype=np.int64)
        for i, store in enumerate(self.stores):
            rows = np.flatnonzero(source == i)
            if rows.size == 0:
                continue
            k = self.taken[i] + np.arange(rows.size)
            n = len(store)
            epoch = k // n
            ids = np.empty(rows.size, dtype=np.int64)
            for e in np.unique(epoch):  # one permutation per epoch touched (usually one)
                sel = epoch == e
                key = source_epoch_key(self.seed, self.names[i], int(e))
                ids[sel] = permute(k[sel] % n, n, key)
            self.taken[i] += rows.size
            window[rows] = ids
        return source, window

    def values(self, source: np.ndarray, window: np.ndarray) -> np.ndarray:
        """``float32 [B, context + horizon]``: the (normalised) values of the windows drawn."""
        values = np.empty((source.size, self.context + self.horizon), dtype=np.float32)
        for i, store in enumerate(self.stores):
            rows = np.flatnonzero(source == i)
            if rows.size:
                ids = window[rows]
                order = np.argsort(ids)  # a memory map is read in increasing row order
                values[rows[order]] = store.windows[ids[order]]
        return values

    def next_batch(self, size: int) -> dict[str, np.ndarray]:
        """``context [B, C]``, ``horizon [B, H]`` (float32, normalised), ``source [B]`` and
        ``window [B]`` (the window's row in its store)."""
        source, window = self.draw(size)
        values = self.values(source, window)
        return {"context": values[:, :self.context], "horizon": values[:, self.context:],
                "source": source, "window": window}

    def state_dict(self) -> dict[str, Any]:
        return {"names": self.names, "seed": self.seed, "taken": self.taken.tolist(),
                "rule": self.rule.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("names") != self.names or state.get("seed") != self.seed:
            raise StateError("series mixer state: saved for other sources or seed "
                             f"({state.get('names')}, seed {state.get('seed')})")
        self.rule.load_state_dict(dict(state["rule"]))
        self.taken = np.array(state["taken"], dtype=np.int64)
