"""The run report: PNG figures and one self-contained HTML page (images inlined as data URIs,
no script, no server) from a :class:`~mixbatch.audit.trace.RunTrace` (a text stream or a
training run; with ``objectives:``, the objectives' shares too,
:mod:`mixbatch.audit.report_objectives`) or a series stream's
:class:`~mixbatch.audit.trace_series.SeriesTrace` (:mod:`mixbatch.audit.report_series`).
:func:`build_report` reads the logs and picks the kind from the first log's header."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from mixbatch.audit.report_objectives import objective_figures, objective_note
from mixbatch.audit.report_plots import (
    img,
    para,
    plot_lines,
    plot_shares,
    plot_stack,
    pyplot,
    save,
    stacked_bars,
    table,
    write_page,
)
from mixbatch.audit.trace import RunTrace

__all__ = ["build_report", "pyplot", "write_report"]


def plot_mixture(tr: RunTrace, path: Path) -> Path:
    """Realised share per source after each step, by tokens and by samples, against the target
    share integrated over the schedule."""
    integ = tr.integrated_target()
    tot = integ.sum(axis=1, keepdims=True)
    target = np.divide(integ, tot, out=np.zeros_like(integ), where=tot > 0)
    return plot_shares(tr.steps, tr.names, [
        (f"realised share by {by}", tr.shares(by), target if by == tr.unit else None)
        for by in ("tokens", "samples")], path)


def plot_deviation(tr: RunTrace, path: Path) -> Path:
    return plot_lines(tr.steps, tr.names, tr.deviation(),
                      f"prefix deviation c_i(t) − W_i(t) ({tr.unit})", path, zero=True)


def plot_weights(tr: RunTrace, path: Path) -> Path:
    return plot_stack(tr.steps, tr.names, tr.target_weights(),
                      "target weights per step" + ("" if tr.weights is not None
                                                   else " (not logged: the summary's target)"),
                      path)


def plot_epochs(tr: RunTrace, path: Path) -> Path | None:
    ep = tr.epochs()
    if ep is None:
        return None
    return plot_lines(tr.steps, tr.names, ep,
                      "epochs per source (documents started / documents)", path)


def plot_padding(tr: RunTrace, path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    frac = np.divide(tr.pad, tr.positions, out=np.zeros(len(tr.pad)), where=tr.positions > 0)
    axes[0].plot(tr.steps, frac, label="padding")
    if (tr.truncated >= 0).all():
        real = tr.tokens.sum(axis=1) + tr.truncated
        tfrac = np.divide(tr.truncated, real, out=np.zeros(len(real)), where=real > 0)
        axes[0].plot(tr.steps, tfrac, label="truncated")
    axes[0].set_title("padding and truncation per step (fraction)")
    axes[0].set_xlabel("step")
    axes[0].legend(fontsize=8)
    buckets = tr.padding_by_bucket()
    axes[1].bar([str(b) for b in buckets], list(buckets.values()))
    axes[1].set_title("padding per bucket (row length)")
    axes[1].set_xlabel("row length")
    return save(fig, path)


def plot_ranks(tr: RunTrace, path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    stacked_bars(axes[0], [str(r) for r in tr.ranks], tr.names, tr.rank_tokens,
                 "tokens per rank and source (logs given)", "rank")
    axes[1].plot(tr.steps, tr.rank_balance())
    axes[1].set_title("rank compute balance per step", fontsize=10)
    axes[1].set_ylabel(tr.balance_kind(), fontsize=7)
    axes[1].set_xlabel("step")
    return save(fig, path)


def _objectives_section(tr: RunTrace, data: dict[str, Any], out: Path,
                        figs: dict[str, str]) -> str:
    """The page's section on objective shares (empty without objectives)."""
    if tr.objectives is None:
        return ""
    od = data["objectives"]
    rows = [[n, "-" if o["target"] is None else f"{o['target']:.4%}", f"{o['rows_share']:.4%}",
             f"{o['tokens_share']:.4%}",
             "-" if o["max_abs_prefix_deviation"] is None
             else f"{o['max_abs_prefix_deviation']:.2f}", f"{o['rows']:,}", f"{o['tokens']:,}"]
            for n, o in od["objectives"].items()]
    share = table(["objective", "target (rows)", "rows share", "tokens share",
                   "max |deviation| (rows)", "rows", "tokens"], rows)
    names = od["names"]
    cross = table(["source", *(f"{n} tokens / docs" for n in names)],
                  [[s, *(f"{v[n]['tokens']:,} / {v[n]['samples']:,}" for n in names)]
                   for s, v in od["by_source"].items()])
    pics = objective_figures(tr.objectives, tr.names, out)
    figs.update({k: str(p) for k, p in pics})
    return (f"<h2>Objectives</h2>{share}{para(objective_note(od))}"
            + "".join(img(p, k) for k, p in pics)
            + f"<h3>Per source and objective</h3>{cross}")


def write_report(tr: RunTrace, out: Path) -> dict[str, Any]:
    """Write ``report.html``, the PNGs and ``report.json`` into ``out``; return the numbers."""
    out.mkdir(parents=True, exist_ok=True)
    figs = [("mixture", plot_mixture(tr, out / "mixture.png")),
            ("prefix deviation", plot_deviation(tr, out / "deviation.png")),
            ("target weights", plot_weights(tr, out / "weights.png")),
            ("epochs", plot_epochs(tr, out / "epochs.png")),
            ("padding and truncation", plot_padding(tr, out / "padding.png")),
            ("ranks", plot_ranks(tr, out / "ranks.png"))]
    data = tr.to_dict()
    data["figures"] = {k: str(p) for k, p in figs if p is not None}
    rows = []
    for n, s in data["sources"].items():
        rows.append([n, f"{s['target']:.4%}", f"{s['tokens_share']:.4%}", f"{s['samples_share']:.4%}",
                     f"{s['max_abs_prefix_deviation']:.2f}", f"{s['tokens']:,}", f"{s['samples']:,}",
                     "-" if s["epochs"] is None else f"{s['epochs']:.3f}"])
    src_table = table(["source", f"target ({tr.unit})", "tokens share", "samples share",
                       f"max |deviation| ({tr.unit})", "tokens", "samples", "epochs"], rows)
    rank_table = table(["rank", *tr.names, "cost"],
                       [[str(r), *(f"{v:,}" for v in tr.rank_tokens[j]),
                         f"{tr.rank_cost[j].sum():,.0f}"] for j, r in enumerate(tr.ranks)])
    bucket_table = table(["row length", "padding"],
                         [[k, f"{v:.2%}"] for k, v in data["padding_by_bucket"].items()])
    trunc = data["truncated_tokens"]
    facts = (f"steps {data['first_step']}..{data['last_step']} ({data['steps']} steps), ranks "
             f"{data['ranks']} of world size {data['world_size']}, unit {tr.unit}; padding "
             f"{data['padding_fraction']:.2%}; truncated "
             f"{'not logged' if trunc is None else f'{trunc:,} tokens'}; rank balance "
             f"({data['rank_balance_kind']}): max {data['rank_cost_imbalance']['max']:.3f}")
    logs = ", ".join(html.escape(p) for p in data["logs"])
    body = (f"<p>{logs}</p>{para(facts)}"
            f"<h2>Mixture</h2>{src_table}"
            + "".join(img(p, k) for k, p in figs[:4] if p is not None)
            + _objectives_section(tr, data, out, data["figures"])
            + f"<h2>Padding and truncation</h2>{bucket_table}{img(figs[4][1], figs[4][0])}"
            + f"<h2>Ranks</h2>{rank_table}{img(figs[5][1], figs[5][0])}")
    return write_page(out, body, data)


def build_report(paths: list[Path], out: Path, cfg: Any = None,
                 weights_by_source: dict[str, dict[int, float]] | None = None
                 ) -> tuple[dict[str, Any], Any]:
    """Read the logs (a series stream's when the first log's header says so, else a text
    stream's or a training run's) and write their report into ``out``; returns the report's
    numbers and the trace."""
    from mixbatch.audit.trace import is_series_header, peek_header, read_trace

    if is_series_header(peek_header(paths[0])):
        from mixbatch.audit.report_series import write_series_report
        from mixbatch.audit.trace_series import read_series_trace

        st = read_series_trace(paths, cfg)
        return write_series_report(st, out), st
    tr = read_trace(paths, cfg, weights_by_source)
    return write_report(tr, out), tr
