"""``mixbatch prepare`` for series sources: CSV / Parquet columns into window stores.

Each source's files (a path, glob or folder, relative to the config; local files) are read with
:func:`~mixbatch.series.read.read_series` (``columns``, ``group_by``, ``on_error``: a column that
is not numeric or a series with missing values stops with one line, or is skipped and counted)
and written by :func:`~mixbatch.series.windows.prepare_series` to ``store/NAME``: float32
windows of ``context + horizon`` values every ``stride``, each series z-normalised with its own
statistics (kept in ``series.json``). With several files a series is named ``file:column``. The
report is the one ``prepare`` prints for text sources: series count as documents, windows as
tokens, skips per reason with examples.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from mixbatch.errors import ConfigError
from mixbatch.io import OnError
from mixbatch.io.files import expand_paths
from mixbatch.io.fs import is_url
from mixbatch.io.skips import SkipCounter
from mixbatch.prepare import PrepareReport, SourceReport
from mixbatch.series.config import SeriesSourceConfig
from mixbatch.series.read import read_series
from mixbatch.series.windows import prepare_series

__all__ = ["prepare_series_sources", "read_source"]


def read_source(cfg: Any, name: str, on_error: OnError | None = None,
                skips: SkipCounter | None = None) -> tuple[dict[str, np.ndarray], int]:
    """The series of source ``name`` (``{series name: values}``) and its file count."""
    src: SeriesSourceConfig = cfg.sources[name]
    for p in src.patterns:
        if is_url(p):
            raise ConfigError(f"sources.{name}.path: {p!r}: series sources read local files")
    files = expand_paths(src.patterns, cfg.base_dir, None)
    series: dict[str, np.ndarray] = {}
    for f in files:
        got = read_series(Path(str(f)), src.columns, src.group_by, on_error or src.on_error,
                          skips)
        prefix = f"{Path(str(f)).name}:" if len(files) > 1 else ""
        series.update({prefix + k: v for k, v in got.items()})
    return series, len(files)


def prepare_series_sources(cfg: Any, force: bool = False,
                           on_error: OnError | None = None) -> PrepareReport:
    """Write every series source's window store under ``cfg.store_dir``; see the module
    docstring. ``force`` is accepted for the command's sake: a store is always rebuilt (series
    stores are small)."""
    del force
    if is_url(cfg.store):
        raise ConfigError(f"store: {cfg.store!r}: series stores are written to a local folder")
    t0 = time.perf_counter()
    reports = {}
    for name, src in cfg.sources.items():
        skips = SkipCounter()
        series, n_files = read_source(cfg, name, on_error, skips)
        meta = prepare_series(series, cfg.store_dir / name, src.context, src.horizon,
                              src.stride, skips)
        reports[name] = SourceReport(
            name=name, files=n_files, documents=len(meta["series"]),
            tokens=sum(s["windows"] for s in meta["series"]), skipped=dict(skips.counts),
            examples={k: list(v) for k, v in skips.examples.items()}, units_done=n_files,
            units_total=n_files)
    return PrepareReport(reports, seconds=time.perf_counter() - t0, units_run=len(reports))
