"""``mixbatch stream`` for series sources: run the loader, log (source, window) per row.

The audit log (``--emit``) is JSONL: a header ``{"audit_log": "series/2", "sources": [...],
"windows": [...], "series": [[[name, windows], ...] per source], "strides": [...], "weights",
"identity", "seed", "batch_size", "context", "horizon", "world_size", "rank"}`` (``windows``:
each store's windows; ``series``: each store's series in store order with their windows, so a
window's series and its place in it follow from the window's row; ``weights``: the mixture's,
fixed for the whole stream since a series mixture has no schedule and a resumed state keeps
the weights it was saved with; ``identity``: the digest of the data-defining config sections,
:func:`mixbatch.audit.log.config_identity`), then one record per row this rank was fed,
``{"step", "rank", "row", "source", "window", "series"}`` (``series``: the series' name in its
store). Logs of ``series/1`` lack ``series``, ``strides``, ``weights`` and ``identity``;
readers treat them as unknown. Saving and resuming follow the text stream
(:mod:`mixbatch.audit.stream`): with ``save_every`` the log is ``fsync``-ed before the state is
saved, and a resumed run cuts the log back to its state's step
(:func:`mixbatch.audit.log.cut_log`) before appending, so a resumed log equals an
uninterrupted one row for row.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

import numpy as np
from rich.table import Table

from mixbatch.atomic import write_json
from mixbatch.errors import ConfigError
from mixbatch.series.loader import SeriesLoader, SeriesStep

__all__ = ["SeriesAuditWriter", "run_series_stream", "series_table"]

LOG_VERSION = "series/2"


class SeriesAuditWriter:
    """Appends each step's rows (source, window, series) to a JSONL file."""

    def __init__(self, path: str | Path, loader: SeriesLoader, append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not append or not self.path.exists() or self.path.stat().st_size == 0
        self._f: IO[str] = open(self.path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
        self.loader = loader
        self.series_names = [[s["name"] for s in st.meta["series"]] for st in loader.stores]
        if fresh:
            from mixbatch.audit.log import config_identity

            self._put([{"audit_log": LOG_VERSION, "sources": loader.names,
                        "windows": [len(s) for s in loader.stores],
                        "series": [[[x["name"], int(x["windows"])] for x in st.meta["series"]]
                                   for st in loader.stores],
                        "strides": [int(st.meta.get("stride", 1)) for st in loader.stores],
                        "weights": [float(x) for x in loader.mixer.rule.weights],
                        "identity": config_identity(loader.cfg), "seed": loader.cfg.seed,
                        "batch_size": loader.batch_size, "context": loader.context,
                        "horizon": loader.horizon, "world_size": loader.world_size,
                        "rank": loader.rank}])

    def _put(self, records: list[dict[str, Any]]) -> None:
        self._f.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
        self._f.flush()

    def write_step(self, step: SeriesStep, series_ids: np.ndarray) -> None:
        src, win = step.source[step.rows].tolist(), step.window[step.rows].tolist()
        rank, names = self.loader.rank, self.loader.names
        self._put([{"step": step.index, "rank": rank, "row": r, "source": names[s],
                    "window": w, "series": self.series_names[s][int(k)]}
                   for r, (s, w, k) in enumerate(zip(src, win, series_ids.tolist(),
                                                     strict=True))])

    def sync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def run_series_stream(cfg: Any, steps: int, rank: int | None, world_size: int | None,
                      state_in: str | None, state_out: str | None, emit: str | None,
                      progress: bool = False, save_every: int | None = None) -> dict[str, Any]:
    """Run the series loader for ``steps`` steps; the summary ``stream`` prints."""
    from mixbatch.audit.log import cut_log, summary_path
    from mixbatch.audit.stream import run_steps
    from mixbatch.loader.loader import load_state

    if save_every is not None and (save_every < 1 or not state_out):
        raise ConfigError("--save-every: needs --state-out and a number of steps >= 1")
    del progress  # no bar for series streams (yet)
    loader = SeriesLoader(cfg, rank or 0, world_size or 1)
    if state_in:
        loader.load_state_dict(load_state(state_in))
    first = loader.step
    cut = cut_log(emit, first) if emit and state_in else None
    writer = SeriesAuditWriter(emit, loader, append=bool(state_in)) if emit else None

    def feed(step: SeriesStep) -> tuple[int, int]:
        batch = loader.batch_of(step)
        if writer is not None:
            writer.write_step(step, batch["series_ids"])
        return len(step.rows), int(batch["source_ids"].size)

    done, fed, seconds = run_steps(loader, steps, feed, writer, state_out, save_every, False)
    summary = series_summary(loader, first, done, fed, seconds)
    if emit:
        write_json(summary_path(emit), summary)
    if cut is not None and (cut.records or cut.torn_bytes):
        summary["log_cut"] = {"records": cut.records, "torn_bytes": cut.torn_bytes}
    return summary


def series_summary(loader: SeriesLoader, first: int, done: int, fed: int,
                   seconds: float) -> dict[str, Any]:
    """Target and realised shares (windows, the whole stream), epochs, speed of this call."""
    mixer = loader.mixer
    taken = mixer.taken.astype(float)
    total = taken.sum()
    sources = {n: {"target": float(loader.weights[i]),
                   "realised": float(taken[i] / total) if total else 0.0,
                   "windows": int(taken[i]), "epochs": float(taken[i] / len(loader.stores[i]))}
               for i, n in enumerate(loader.names)}
    return {"kind": "series", "unit": "windows", "steps": done, "first_step": first,
            "rank": loader.rank, "world_size": loader.world_size, "sources": sources,
            "max_prefix_deviation": float(np.abs(taken - loader.weights * total).max()),
            "windows_fed_this_rank": fed, "seconds": seconds,
            "windows_per_second": fed / seconds if seconds else 0.0}


def series_table(summary: dict[str, Any]) -> Table:
    """The table ``stream`` prints for a series config."""
    first, last = summary["first_step"], summary["first_step"] + summary["steps"] - 1
    table = Table(title=f"stream (series): mixture of steps 0 to {last:,}; this call ran steps "
                  f"{first:,} to {last:,} (rank {summary['rank']} of {summary['world_size']})",
                  caption=f"largest deviation {summary['max_prefix_deviation']:.2f} windows · "
                          f"this call {summary['windows_per_second']:,.0f} windows/s")
    for c in ("source", "target", "realised", "windows", "epochs"):
        table.add_column(c, justify="left" if c == "source" else "right")
    for name, s in summary["sources"].items():
        table.add_row(name, f"{s['target']:.4%}", f"{s['realised']:.4%}", f"{s['windows']:,}",
                      f"{s['epochs']:.3f}")
    return table
