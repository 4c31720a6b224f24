"""What a series run fed, step by step, rebuilt from its audit log(s) (``mixbatch stream
--emit`` on a config of ``kind: series`` sources, :mod:`mixbatch.series.stream`).

A series stream's sample is a window: :func:`read_series_trace` streams the logs once and keeps
``O(steps x sources + series)`` numbers: windows per step and source, per rank and source, and
per series. With ``c_i(t)`` the windows of source ``i`` fed in steps ``<= t`` and ``w`` the
mixture's weights (fixed for a series stream: the header's), the realised share is
``c_i(t) / Σ_j c_j(t)``, the prefix deviation ``c_i(t) − w_i·Σ_j c_j(t)`` (within one window
when the logs hold every rank: the planner's rule), and the epochs ``c_i(t) / N_i`` with
``N_i`` the windows in source ``i``'s store. Inside a store the windows come in a seeded
permutation per epoch, so series ``s`` with ``n_s`` of the store's windows should supply
``n_s / N_i`` of the source's windows (exactly so after whole epochs): the report sets each
series' windows drawn against that expectation.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mixbatch.audit.log import config_identity, iter_log
from mixbatch.audit.report_plots import prefix_share
from mixbatch.audit.trace import _load_summary, is_series_header
from mixbatch.errors import ConfigError, DataError


@dataclass
class SeriesTrace:
    """Per-step windows of a series run (``steps`` ascending; ``windows [steps, sources]``)."""

    names: list[str]
    steps: np.ndarray
    windows: np.ndarray
    weights: np.ndarray | None  # [sources], the mixture's (header), None when not logged
    rank_windows: np.ndarray  # [ranks, sources]
    ranks: list[int]
    world_size: int
    store_windows: list[int] | None  # windows in each source's store
    drawn: list[Counter[str]]  # per source: windows drawn per series name
    series: list[list[tuple[str, int]]] | None  # per source: (name, windows in the store)
    header: dict[str, Any] | None
    summary: dict[str, Any] | None
    logs: list[Path] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """The logs hold every rank's rows (the whole global stream)."""
        return len(self.ranks) >= self.world_size

    def weights_source(self) -> str:
        if self.weights is not None:
            return "the log's header"
        if self.summary and "sources" in self.summary:
            return "the summary's target"
        return "not logged: uniform"

    def target_weights(self) -> np.ndarray:
        """The mixture's weights per step: the header's, else the summary's, else uniform."""
        k, t = len(self.names), len(self.steps)
        w = self.weights
        if w is None and self.summary and "sources" in self.summary:
            w = np.array([self.summary["sources"].get(n, {}).get("target", 0.0)
                          for n in self.names], dtype=np.float64)
        if w is None or w.sum() <= 0:
            w = np.full(k, 1.0 / k)
        return np.broadcast_to(w / w.sum(), (t, k))

    def shares(self) -> np.ndarray:
        return prefix_share(np.cumsum(self.windows, axis=0))

    def deviation(self) -> np.ndarray:
        """``c_i(t) − w_i·n(t)`` in windows (the weights may differ per step: integrated)."""
        u = self.windows.sum(axis=1, keepdims=True).astype(np.float64)
        return np.cumsum(self.windows, axis=0) - np.cumsum(self.target_weights() * u, axis=0)

    def epochs(self) -> np.ndarray | None:
        """Windows fed / windows in the store, per step and source (None when not logged)."""
        if not self.store_windows:
            return None
        n = np.maximum(np.asarray(self.store_windows, dtype=np.float64), 1.0)
        return np.cumsum(self.windows, axis=0) / n

    def series_balance(self, i: int) -> list[tuple[str, int, float | None]]:
        """Source ``i``'s series: ``(name, windows drawn, windows expected)`` in store order
        (expected: the source's windows drawn x the series' share of the store's windows;
        None when the header does not list the series)."""
        got = self.drawn[i]
        if self.series is None:
            return [(n, c, None) for n, c in sorted(got.items())]
        listed = self.series[i]
        total = sum(n for _, n in listed)
        fed = sum(got.values())
        return [(n, got.get(n, 0), fed * w / total if total else 0.0) for n, w in listed]

    def to_dict(self) -> dict[str, Any]:
        sh, dev, ep = self.shares(), self.deviation(), self.epochs()
        w = self.target_weights()
        last = len(self.steps) - 1
        out: dict[str, Any] = {
            "kind": "series", "logs": [str(p) for p in self.logs], "unit": "windows",
            "steps": len(self.steps), "first_step": int(self.steps[0]),
            "last_step": int(self.steps[-1]), "ranks": self.ranks,
            "world_size": self.world_size, "all_ranks": self.complete,
            "windows": int(self.windows.sum()), "weights_from": self.weights_source(),
            "sources": {}, "series": {},
            "left_out": dict(LEFT_OUT)}
        for i, n in enumerate(self.names):
            bal = self.series_balance(i)
            gaps = [abs(c - e) for _, c, e in bal if e is not None]
            out["sources"][n] = {
                "windows": int(self.windows[:, i].sum()), "share": float(sh[last, i]),
                "target": float(w[last, i]),
                "max_abs_prefix_deviation": float(np.abs(dev[:, i]).max(initial=0.0)),
                "epochs": None if ep is None else float(ep[last, i]),
                "store_windows": None if not self.store_windows else self.store_windows[i],
                "ranks": {str(r): int(self.rank_windows[j, i])
                          for j, r in enumerate(self.ranks)},
                "series_count": len(bal), "series_drawn": sum(1 for _, c, _ in bal if c),
                "series_max_abs_gap": max(gaps) if gaps else None}
            out["series"][n] = {name: {"windows": c, "expected": e} for name, c, e in bal}
        return out


#: the text report's panels a series report leaves out, and why
LEFT_OUT = {
    "padding and truncation": "a series row is one whole window of context + horizon values: "
                              "nothing is padded or cut",
    "token compute balance": "every row costs the same (one window of a fixed width), so the "
                             "ranks' compute is equal by construction: windows per rank are "
                             "shown instead",
    "tokens and documents": "a series stream's sample is a window; windows per series stand "
                            "for documents",
}


def read_series_trace(paths: list[Path], cfg: Any = None) -> SeriesTrace:
    """Stream series logs (one per rank, or one) once into a :class:`SeriesTrace`; with
    ``cfg``, a log written under another config is refused."""
    header: dict[str, Any] | None = None
    names: list[str] = []
    index: dict[str, int] = {}
    per_step: dict[int, np.ndarray] = {}
    rank_win: dict[int, np.ndarray] = {}
    drawn: list[Counter[str]] = []
    sizes: list[int] | None = None
    for path in paths:
        seen_header = False
        for kind, rec in iter_log(path):
            if kind == "header":
                if not is_series_header(rec):
                    raise DataError(f"{path}: a text stream's log where a series stream's was "
                                    "expected (logs of different runs?)")
                seen_header = True
                if header is None:
                    header, names = rec, list(rec["sources"])
                    index = {n: i for i, n in enumerate(names)}
                    drawn = [Counter() for _ in names]
                    sizes = [int(x) for x in rec["windows"]] if "windows" in rec else None
                elif list(rec["sources"]) != names or rec.get("identity") != header.get(
                        "identity"):
                    raise DataError(f"{path}: sources or config differ from {paths[0]}'s: logs "
                                    "of different runs")
                continue
            if kind != "window":
                raise DataError(f"{path}: a {kind} record in a series stream's log (rows are "
                                "source, window, series): logs of different runs")
            if not seen_header:
                raise DataError(f"{path}: a series log without its header line (the first "
                                "line); was it cut at the front?")
            i = index.get(rec["source"])
            if i is None:
                raise DataError(f"{path}: step {rec['step']}: source {rec['source']!r} is not "
                                f"among the log's sources {names}")
            s, r, w = int(rec["step"]), int(rec["rank"]), int(rec["window"])
            if sizes is not None and not 0 <= w < sizes[i]:
                raise DataError(f"{path}: step {s}: window {w} of {rec['source']!r} is past its "
                                f"store's {sizes[i]} windows (the header's)")
            acc = per_step.get(s)
            if acc is None:
                acc = per_step[s] = np.zeros(len(names), dtype=np.int64)
            acc[i] += 1
            rw = rank_win.get(r)
            if rw is None:
                rw = rank_win[r] = np.zeros(len(names), dtype=np.int64)
            rw[i] += 1
            drawn[i][str(rec.get("series", "?"))] += 1
    if header is None:
        raise DataError(f"{paths[0]}: no series log header (an empty file?)")
    if not per_step:
        raise DataError(f"{paths[0]}: the audit log holds no rows")
    if cfg is not None:
        _check_config(paths[0], header, cfg)
    steps = np.array(sorted(per_step), dtype=np.int64)
    windows = np.stack([per_step[int(s)] for s in steps])
    ranks = sorted(rank_win)
    store = [int(x) for x in header["windows"]] if "windows" in header else None
    series = ([[(str(a), int(b)) for a, b in src] for src in header["series"]]
              if "series" in header else None)
    _check_windows(paths[0], store, series, drawn, names)
    weights = (np.asarray(header["weights"], dtype=np.float64) if "weights" in header
               else None)
    return SeriesTrace(names, steps, windows, weights,
                       np.stack([rank_win[r] for r in ranks]), ranks,
                       int(header.get("world_size", len(ranks))), store, drawn, series, header,
                       _load_summary(paths[0]), list(paths))


def _check_windows(path: Path, store: list[int] | None, series: list[list[tuple[str, int]]] |
                   None, drawn: list[Counter[str]], names: list[str]) -> None:
    """Series names the header does not list, or stores whose series do not add up."""
    if series is None:
        return
    for i, n in enumerate(names):
        known = {a for a, _ in series[i]}
        unknown = sorted(set(drawn[i]) - known)
        if unknown:
            raise DataError(f"{path}: source {n!r}: series {unknown[:3]} are not in the "
                            "header's list of its series: logs of different runs")
        if store is not None and sum(b for _, b in series[i]) != store[i]:
            raise DataError(f"{path}: source {n!r}: the header's series hold "
                            f"{sum(b for _, b in series[i])} windows, its store {store[i]}")


def _check_config(path: Path, header: dict[str, Any], cfg: Any) -> None:
    """Refuse a series log written under another config (one line naming what differs)."""
    declared = list(cfg.sources)
    if list(header["sources"]) != declared:
        raise ConfigError(f"{path}: the log's sources {header['sources']} are not the config's "
                          f"{declared}: a log from another config")
    from mixbatch.series.config import is_series_config

    if not is_series_config(cfg):
        raise ConfigError(f"{path}: a series stream's log, but the config's sources are text "
                          "sources: a log from another config")
    if "identity" in header and header["identity"] != config_identity(cfg):
        raise ConfigError(f"{path}: written under another config (seed, sources or batch "
                          f"settings differ: identity {header['identity']} vs "
                          f"{config_identity(cfg)})")
