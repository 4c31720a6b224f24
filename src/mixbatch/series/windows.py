"""A store of float32 series windows with per-series normalisation statistics.

:func:`prepare_series` z-normalises each series with its own mean and standard deviation
(``(x − mean) / std``, ``std = 1`` for a constant series), cuts it into windows of
``context + horizon`` values every ``stride`` values (vectorised, ``sliding_window_view``) and
writes, atomically, ``windows.npy`` (``float32 [N, context + horizon]``), ``series.npy``
(``int32 [N]``, each window's series) and ``series.json`` (the statistics per series, the
window settings, the skips). A series shorter than one window is counted (``too_short``), never
silently lost. :class:`SeriesStore` opens the folder (memory-mapped) and undoes the
normalisation per series (:meth:`SeriesStore.denormalise`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mixbatch.atomic import save_npy, write_json
from mixbatch.checks import integer
from mixbatch.errors import StoreError
from mixbatch.io.skips import SkipCounter

__all__ = ["SeriesStore", "prepare_series"]

FORMAT = "mixbatch.series/1"


def prepare_series(series: dict[str, np.ndarray], out: str | Path, context: int, horizon: int,
                   stride: int = 1, skips: SkipCounter | None = None) -> dict[str, Any]:
    """Write the windows of ``series`` to the folder ``out``; returns ``series.json``'s data."""
    integer("context", context, lo=1)
    integer("horizon", horizon, lo=1)
    integer("stride", stride, lo=1)
    skips = skips if skips is not None else SkipCounter()
    width = context + horizon
    blocks, ids, stats = [], [], []
    for name, values in series.items():
        x = np.asarray(values, dtype=np.float64)
        if x.size < width:
            skips.add("too_short", 1, f"series {name!r}: {x.size} values, a window needs {width}")
            continue
        mean, std = float(x.mean()), float(x.std())
        std = std if std > 0 else 1.0
        w = np.lib.stride_tricks.sliding_window_view((x - mean) / std, width)[::stride]
        blocks.append(w.astype(np.float32))
        ids.append(np.full(len(w), len(stats), dtype=np.int32))
        stats.append({"name": name, "mean": mean, "std": std, "length": int(x.size),
                      "windows": len(w)})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_npy(out / "windows.npy", np.concatenate(blocks) if blocks
             else np.zeros((0, width), dtype=np.float32))
    save_npy(out / "series.npy", np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32))
    meta = {"format": FORMAT, "context": context, "horizon": horizon, "stride": stride,
            "series": stats, "skipped": skips.counts}
    write_json(out / "series.json", meta)
    return meta


class SeriesStore:
    """A prepared folder: ``windows`` ``[N, context + horizon]`` float32, ``series_ids`` ``[N]``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.meta = json.loads((self.path / "series.json").read_text())
            self.windows = np.load(self.path / "windows.npy", mmap_mode="r", allow_pickle=False)
            self.series_ids = np.load(self.path / "series.npy", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise StoreError(f"{self.path}: not a series store ({type(e).__name__}: {e})"
                             ) from None
        if self.meta.get("format") != FORMAT:
            raise StoreError(f"{self.path}/series.json: format {self.meta.get('format')!r}, "
                             f"expected {FORMAT!r}")
        self.context, self.horizon = int(self.meta["context"]), int(self.meta["horizon"])
        n = sum(s["windows"] for s in self.meta["series"])
        if self.windows.shape != (n, self.context + self.horizon) or self.series_ids.shape != (n,):
            raise StoreError(f"{self.path}: windows {self.windows.shape} and series ids "
                             f"{self.series_ids.shape} do not match series.json ({n} windows)")
        self.mean = np.array([s["mean"] for s in self.meta["series"]])
        self.std = np.array([s["std"] for s in self.meta["series"]])

    def __len__(self) -> int:
        return int(self.series_ids.size)

    def denormalise(self, values: np.ndarray, window_ids: np.ndarray) -> np.ndarray:
        """Normalised ``values`` ``[B, ...]`` of windows ``window_ids`` back in series units."""
        s = self.series_ids[window_ids]
        shape = (-1,) + (1,) * (np.ndim(values) - 1)
        return values * self.std[s].reshape(shape) + self.mean[s].reshape(shape)
