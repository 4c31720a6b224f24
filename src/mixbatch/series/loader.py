"""The loader of a config of series sources: (context, horizon) windows, mixed exactly.

Every rank computes the same global stream: step ``t`` draws ``batch.batch_size`` windows with
:class:`~mixbatch.series.mix.SeriesMixer` (the planner's rule over the stores, with the
mixture's weights: ``mixture.weights``, or ``temperature`` over the stores' window counts; each
store in a seeded permutation per epoch) and rank ``r`` of ``W`` takes the rows
``r·B/W .. (r+1)·B/W − 1`` of it, reading only those windows. The state (step, the rule's
counters, windows taken per store) is the global stream's, the same on every rank, so a run
resumes exactly at any world size. Each batch:

- ``context`` ``float32 [b, C]`` and ``horizon`` ``float32 [b, H]`` (normalised);
- ``source_ids`` ``[b]`` (index into :attr:`SeriesLoader.names`), ``window_ids`` ``[b]`` (the
  window's row in its store), ``series_ids`` ``[b]`` (the series in its store: its
  ``mean`` / ``std`` undo the normalisation, :meth:`SeriesLoader.denormalise`), ``step``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixbatch.errors import ConfigError, StateError
from mixbatch.mixture.weights import temperature_weights, weights_from_mapping
from mixbatch.plan.state_checks import count, mapping
from mixbatch.series.mix import SeriesMixer
from mixbatch.series.windows import SeriesStore

__all__ = ["STATE_FORMAT", "SeriesDataLoader", "SeriesLoader", "SeriesStep"]

STATE_FORMAT = "mixbatch.series_loader/1"


@dataclass
class SeriesStep:
    """One global step: every row's store and window, and this rank's rows."""

    index: int
    source: np.ndarray  # [B] global rows
    window: np.ndarray  # [B]
    rows: np.ndarray  # this rank's rows


def series_weights(cfg: Any, stores: list[SeriesStore]) -> np.ndarray:
    """The mixture's weights over the series stores (in windows)."""
    names = list(cfg.sources)
    if cfg.mixture.weights is not None:
        w = weights_from_mapping(dict(cfg.mixture.weights), names, field="mixture.weights")
        return w / w.sum()
    tau = 1.0 if cfg.mixture.temperature is None else cfg.mixture.temperature
    return temperature_weights([len(s) for s in stores], tau, names, field="series windows")


class SeriesLoader:
    """This rank's windows of the mixed series stream; see the module docstring."""

    def __init__(self, cfg: Any, rank: int = 0, world_size: int = 1,
                 stores: dict[str, SeriesStore] | None = None) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} / world size {world_size}: need 0 <= rank < world size")
        B = cfg.batch.batch_size
        if B % world_size:
            raise ConfigError(f"batch.batch_size: {B} global windows cannot be split evenly "
                              f"over world size {world_size}")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.names = list(cfg.sources)
        given = stores or {}
        self.stores = [given.get(n) or SeriesStore(cfg.store_dir / n) for n in self.names]
        self.weights = series_weights(cfg, self.stores)
        self.batch_size = B
        self.reset()

    def reset(self) -> None:
        """Back to step 0."""
        self.mixer = SeriesMixer(dict(zip(self.names, self.stores, strict=True)), self.weights,
                                 self.cfg.seed)
        self.step = 0

    @property
    def context(self) -> int:
        return self.mixer.context

    @property
    def horizon(self) -> int:
        return self.mixer.horizon

    def next_step(self) -> SeriesStep:
        """Plan the next global step (no values read)."""
        source, window = self.mixer.draw(self.batch_size)
        b = self.batch_size // self.world_size
        rows = np.arange(self.rank * b, (self.rank + 1) * b, dtype=np.int64)
        step = SeriesStep(self.step, source, window, rows)
        self.step += 1
        return step

    def batch_of(self, step: SeriesStep) -> dict[str, Any]:
        """This rank's windows of ``step`` (module docstring)."""
        source, window = step.source[step.rows], step.window[step.rows]
        values = self.mixer.values(source, window)
        series = np.empty(source.size, dtype=np.int64)
        for i, store in enumerate(self.stores):
            sel = source == i
            series[sel] = store.series_ids[window[sel]]
        return {"context": values[:, :self.context], "horizon": values[:, self.context:],
                "source_ids": source.astype(np.int64), "window_ids": window,
                "series_ids": series, "step": step.index}

    def steps(self, n: int | None = None) -> Iterator[SeriesStep]:
        k = 0
        while n is None or k < n:
            yield self.next_step()
            k += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for step in self.steps():
            yield self.batch_of(step)

    def denormalise(self, values: np.ndarray, source_ids: np.ndarray,
                    window_ids: np.ndarray) -> np.ndarray:
        """Normalised ``values`` ``[b, ...]`` of a batch's windows back in series units."""
        out = np.asarray(values, dtype=np.float64).copy()
        for i, store in enumerate(self.stores):
            sel = source_ids == i
            if sel.any():
                out[sel] = store.denormalise(out[sel], window_ids[sel])
        return out

    # ---- state ---------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        return {"seed": self.cfg.seed, "batch_size": self.batch_size,
                "sources": [{"name": n, "windows": len(s), "context": s.context,
                             "horizon": s.horizon} for n, s in zip(self.names, self.stores,
                                                                   strict=True)]}

    def state_dict(self) -> dict[str, Any]:
        """The global stream's position (the same on every rank)."""
        return copy.deepcopy({"format": STATE_FORMAT, "fingerprint": self.fingerprint(),
                              "step": self.step, "mixer": self.mixer.state_dict()})

    def load_state_dict(self, state: Any) -> None:
        state = mapping("series loader state", state)
        if state.get("format") != STATE_FORMAT:
            raise StateError(f"series loader state: format {state.get('format')!r}, expected "
                             f"{STATE_FORMAT!r} (a state of a text loader?)")
        for key in ("fingerprint", "step", "mixer"):
            if key not in state:
                raise StateError(f"series loader state.{key}: missing")
        if state["fingerprint"] != self.fingerprint():
            raise StateError("series loader state belongs to another configuration (seed, "
                             "batch_size or the stores differ); resume with the saved ones")
        step = count("series loader state.step", state["step"])
        self.reset()
        try:
            self.mixer.load_state_dict(mapping("series loader state.mixer", state["mixer"]))
        except (KeyError, TypeError, ValueError) as e:
            raise StateError(f"series loader state.mixer: malformed ({type(e).__name__}: {e})"
                             ) from None
        self.step = step


class SeriesDataLoader:
    """The torch adapter for series configs: this rank's batches as tensors, with
    ``state_dict()`` after the last one handed out (any world size resumes it).

    Windows are read from memory-mapped stores in this process (a step is ``batch_size``
    small rows); ``num_workers`` is accepted and changes nothing in the stream. ``transform``
    runs on each batch (NumPy arrays) before it becomes tensors; ``device`` moves it there;
    the token adapter's ``fields`` and ``batch_format`` have no meaning here."""

    def __init__(self, cfg: Any, rank: int | None = None, world_size: int | None = None,
                 num_workers: int = 0, state: dict[str, Any] | None = None,
                 max_steps: int | None = None, fields: Any = None,
                 transform: Any = None, batch_format: str = "mixbatch", device: Any = None,
                 pin_memory: bool = False, prefetch_factor: int = 2,
                 non_blocking: bool = True) -> None:
        if fields is not None or batch_format != "mixbatch":
            raise ConfigError("fields / batch_format: series batches have their own fields "
                              "(context, horizon, source_ids, window_ids, series_ids, step)")
        del pin_memory, prefetch_factor
        if rank is None or world_size is None:
            from mixbatch.loader.loader import _dist_rank_world

            r, w = _dist_rank_world()
            rank = r if rank is None else rank
            world_size = w if world_size is None else world_size
        if max_steps is not None and (isinstance(max_steps, bool) or max_steps < 0):
            raise ConfigError(f"max_steps: must be an integer >= 0, got {max_steps!r}")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.num_workers, self.max_steps, self.device = num_workers, max_steps, device
        self.transform, self.non_blocking = transform, non_blocking
        self._state = copy.deepcopy(state)
        self._loader: SeriesLoader | None = None

    def __len__(self) -> int:
        if self.max_steps is None:
            raise TypeError("a series stream has no end: give max_steps for a length")
        return self.max_steps

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import torch

        loader = self._loader = SeriesLoader(self.cfg, self.rank, self.world_size)
        if self._state is not None:
            loader.load_state_dict(self._state)
        for step in loader.steps(self.max_steps):
            batch = loader.batch_of(step)
            if self.transform is not None:
                batch = self.transform(batch)
            out = {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray)
                   else v for k, v in batch.items()}
            if self.device is not None:
                out = {k: v.to(self.device, non_blocking=self.non_blocking) if isinstance(v, torch.Tensor)
                       else v for k, v in out.items()}
            self._state = loader.state_dict()
            yield out

    def state_dict(self) -> dict[str, Any] | None:
        return copy.deepcopy(self._state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = copy.deepcopy(mapping("series loader state", state))
