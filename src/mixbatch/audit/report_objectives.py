"""Objective shares in the run report: what the rows of a run with ``objectives:`` were turned
into, against the exact weights the planner mixed them with.

Under ``objectives:`` (UL2's mixture of denoisers, :mod:`mixbatch.objectives`) every row of the
global stream is one sample, given its objective by the planner's interleaving rule: after
``n`` rows objective ``j`` has had ``w_j·n`` of them to within one. From the rows' ``objective``
in the audit log the report counts, per step, the rows and the tokens (the document tokens the
row held before its denoiser) of each objective: the realised share after step ``t`` is
``c_j(t) / Σ c(t)`` by rows and by tokens, and the prefix deviation ``c_j(t) − w_j·n(t)`` in rows
(``n(t)``: rows fed by then) is within one row when the logs hold every rank. Tokens have no such
bound (the rule counts rows): their share is shown against the same weights for reference.
Per source and objective: the source's tokens and documents started in rows of that objective.
The weights come from the log's header (``stream --emit`` writes them), else from ``--config``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixbatch.audit.report_plots import (
    plot_lines,
    plot_shares,
    prefix_share,
    pyplot,
    save,
    stacked_bars,
)
from mixbatch.errors import ConfigError, DataError


@dataclass
class ObjectiveTrace:
    """Rows and tokens per step and objective (``[steps, m]``), per source and objective."""

    names: list[str]
    steps: np.ndarray
    rows: np.ndarray
    tokens: np.ndarray
    weights: np.ndarray | None  # [m], summing to 1; None when neither header nor config says
    source_tokens: np.ndarray  # [sources, m]
    source_samples: np.ndarray  # [sources, m]
    complete: bool  # the logs hold every rank (the deviation's bound holds)

    def shares(self, by: str) -> np.ndarray:
        return prefix_share(np.cumsum(self.rows if by == "rows" else self.tokens, axis=0))

    def target(self) -> np.ndarray | None:
        if self.weights is None:
            return None
        return np.broadcast_to(self.weights, (len(self.steps), len(self.names)))

    def deviation(self) -> np.ndarray | None:
        """``c_j(t) − w_j·n(t)`` in rows, or None without weights."""
        if self.weights is None:
            return None
        c = np.cumsum(self.rows, axis=0)
        return c - self.weights[None, :] * c.sum(axis=1, keepdims=True)

    def to_dict(self, sources: list[str]) -> dict[str, Any]:
        sh_r, sh_t = self.shares("rows"), self.shares("tokens")
        dev = self.deviation()
        last = len(self.steps) - 1
        out: dict[str, Any] = {
            "names": self.names, "rows": int(self.rows.sum()),
            "weights_known": self.weights is not None, "all_ranks": self.complete,
            "objectives": {}, "by_source": {}}
        for j, n in enumerate(self.names):
            out["objectives"][n] = {
                "rows": int(self.rows[:, j].sum()), "tokens": int(self.tokens[:, j].sum()),
                "rows_share": float(sh_r[last, j]), "tokens_share": float(sh_t[last, j]),
                "target": None if self.weights is None else float(self.weights[j]),
                "max_abs_prefix_deviation": None if dev is None
                else float(np.abs(dev[:, j]).max(initial=0.0))}
        for i, s in enumerate(sources):
            out["by_source"][s] = {n: {"tokens": int(self.source_tokens[i, j]),
                                       "samples": int(self.source_samples[i, j])}
                                   for j, n in enumerate(self.names)}
        return out


class ObjectiveCounter:
    """Counts each row's objective while :func:`mixbatch.audit.trace.read_trace` streams the
    log (one pass, ``O(steps x objectives)`` numbers)."""

    def __init__(self) -> None:
        self.per_step: dict[int, dict[str, list[int]]] = {}
        self.by_source: dict[tuple[str, str], list[int]] = {}
        self.order: dict[str, int] = {}
        self.with_objective = 0
        self.without = 0

    def add(self, step: int, rec: dict[str, Any]) -> None:
        obj = rec.get("objective")
        if obj is None:
            self.without += 1
            return
        self.with_objective += 1
        self.order.setdefault(obj, len(self.order))
        acc = self.per_step.setdefault(step, {}).setdefault(obj, [0, 0])
        acc[0] += 1
        for name, _doc, a, e in rec["segments"]:
            acc[1] += e - a
            cell = self.by_source.setdefault((name, obj), [0, 0])
            cell[0] += e - a
            cell[1] += int(a == 0 and e > 0)

    def finish(self, path: Path, steps: np.ndarray, sources: list[str],
               header: dict[str, Any] | None, cfg: Any, complete: bool) -> ObjectiveTrace | None:
        """The trace (None when no row has an objective and the config has none); a log and a
        config that disagree on objectives is a log from another config."""
        spec = getattr(cfg, "objectives", None) if cfg is not None else None
        head = (header or {}).get("objectives")
        if not self.with_objective:
            if spec is not None:
                raise ConfigError(f"{path}: the config has `objectives:` but the log's rows "
                                  "carry none: a log from another config")
            return None
        if self.without:
            raise DataError(f"{path}: {self.without} row(s) without an objective among "
                            f"{self.with_objective} with one: logs of different runs")
        names, weights = _declared(head, spec)
        if cfg is not None and spec is None:
            raise ConfigError(f"{path}: the log's rows carry objectives "
                              f"({', '.join(self.order)}) but the config has no `objectives:`: "
                              "a log from another config")
        if spec is not None and head is not None:
            mine = [d.name for d in spec.build()]
            if mine != list(head["names"]) or not np.allclose(spec.weight_vector(),
                                                              head["weights"]):
                raise ConfigError(f"{path}: the log's objectives {head['names']} (weights "
                                  f"{head['weights']}) are not the config's: a log from "
                                  "another config")
        if names is None:
            names = list(self.order)
        unknown = [n for n in self.order if n not in names]
        if unknown:
            raise ConfigError(f"{path}: objective(s) {unknown} in the log are not among "
                              f"{names}: a log from another config")
        col = {n: j for j, n in enumerate(names)}
        pos = {int(s): t for t, s in enumerate(steps)}
        rows = np.zeros((len(steps), len(names)), dtype=np.int64)
        tokens = np.zeros_like(rows)
        for s, d in self.per_step.items():
            for n, (r, tok) in d.items():
                rows[pos[s], col[n]], tokens[pos[s], col[n]] = r, tok
        src = {n: i for i, n in enumerate(sources)}
        st = np.zeros((len(sources), len(names)), dtype=np.int64)
        ss = np.zeros_like(st)
        for (s, n), (tok, smp) in self.by_source.items():
            st[src[s], col[n]], ss[src[s], col[n]] = tok, smp
        return ObjectiveTrace(names, steps, rows, tokens, weights, st, ss, complete)


def _declared(head: dict[str, Any] | None, spec: Any) -> tuple[list[str] | None,
                                                              np.ndarray | None]:
    """The objectives' names and weights from the header, else from the config."""
    if head is not None:
        return list(head["names"]), np.asarray(head["weights"], dtype=np.float64)
    if spec is not None:
        return [d.name for d in spec.build()], spec.weight_vector()
    return None, None


def objective_figures(ot: ObjectiveTrace, sources: list[str],
                      out: Path) -> list[tuple[str, Path]]:
    """Shares by rows and by tokens, the deviation in rows, tokens per source and objective."""
    target = ot.target()
    figs = [("objective shares", plot_shares(ot.steps, ot.names, [
        ("objective share by rows (samples)", ot.shares("rows"), target),
        ("objective share by tokens", ot.shares("tokens"), target)],
        out / "objectives.png"))]
    dev = ot.deviation()
    if dev is not None:
        figs.append(("objective prefix deviation", plot_lines(
            ot.steps, ot.names, dev, "objective prefix deviation c_j(t) − w_j·n(t) (rows)",
            out / "objectives_deviation.png", zero=True)))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 3.4))
    stacked_bars(ax, sources, ot.names, ot.source_tokens,
                 "tokens per source, by the objective of their rows", "source")
    figs.append(("tokens per source and objective", save(fig, out / "objectives_sources.png")))
    return figs


def objective_note(data: dict[str, Any]) -> str:
    """One line under the objectives' table: where the target came from, what bounds it."""
    if not data["weights_known"]:
        return ("Target weights unknown (the log has no header with them, e.g. a training "
                "run's log): give --config CONFIG to compare against them.")
    bound = ("within one row by the planner's rule" if data["all_ranks"] else
             "not bounded here: the logs do not hold every rank's rows")
    return (f"{data['rows']:,} rows. Prefix deviation in rows ({bound}); the token share is "
            "shown against the same weights for reference (the rule counts rows, not tokens).")
