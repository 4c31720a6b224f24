"""The run report of a series stream (:class:`~mixbatch.audit.trace_series.SeriesTrace`):
realised vs target mixture in windows with the prefix deviation, epochs per source (windows fed
/ windows in the store), windows per rank and source, the weights, and windows per series
against their expected share (how evenly each source's series are drawn). The text report's
padding, truncation and token compute panels have no meaning here: the page says why."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np

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
from mixbatch.audit.trace_series import SeriesTrace

#: the page lists every series up to this many (report.json always holds them all)
SERIES_ROWS = 60


def plot_series_balance(st: SeriesTrace, path: Path) -> Path:
    """Per source: each series' windows drawn against its expected count (diagonal: exact)."""
    plt = pyplot()
    k = len(st.names)
    cols = min(k, 4)
    fig, axes = plt.subplots(math.ceil(k / cols), cols, figsize=(11, 3.2 * math.ceil(k / cols)),
                             squeeze=False)
    for i, n in enumerate(st.names):
        ax = axes[i // cols][i % cols]
        bal = st.series_balance(i)
        got = np.array([c for _, c, _ in bal], dtype=np.float64)
        if bal and bal[0][2] is not None:
            exp = np.array([e for _, _, e in bal], dtype=np.float64)
            ax.scatter(exp, got, s=12)
            top = max(float(exp.max(initial=0)), float(got.max(initial=0)), 1.0)
            ax.plot([0, top], [0, top], ls="--", color="k", lw=0.7)
            ax.set_xlabel("windows expected (share of the store)")
        else:
            ax.bar(range(len(got)), got)
            ax.set_xlabel("series (the log does not list the store's series)")
        ax.set_title(f"{n}: windows per series ({len(bal)} series)", fontsize=10)
        ax.set_ylabel("windows drawn")
    for j in range(k, axes.size):
        axes[j // cols][j % cols].axis("off")
    return save(fig, path)


def _figures(st: SeriesTrace, out: Path) -> list[tuple[str, Path]]:
    target = st.target_weights()
    figs = [("mixture", plot_shares(st.steps, st.names, [
                ("realised share by windows", st.shares(), target)], out / "mixture.png",
                ylabel="share of the windows fed")),
            ("prefix deviation", plot_lines(
                st.steps, st.names, st.deviation(),
                "prefix deviation c_i(t) − w_i·n(t) (windows)", out / "deviation.png",
                zero=True)),
            ("target weights", plot_stack(
                st.steps, st.names, target,
                f"weights per step ({st.weights_source()}; a series mixture has no schedule)",
                out / "weights.png"))]
    ep = st.epochs()
    if ep is not None:
        figs.append(("epochs", plot_lines(st.steps, st.names, ep,
                                          "epochs per source (windows fed / windows in the "
                                          "store)", out / "epochs.png")))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 3.4))
    stacked_bars(ax, [str(r) for r in st.ranks], st.names, st.rank_windows,
                 "windows per rank and source (logs given)", "rank")
    figs.append(("ranks", save(fig, out / "ranks.png")))
    figs.append(("windows per series", plot_series_balance(st, out / "series.png")))
    return figs


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def write_series_report(st: SeriesTrace, out: Path) -> dict[str, Any]:
    """Write ``report.html``, the PNGs and ``report.json`` into ``out``; return the numbers."""
    out.mkdir(parents=True, exist_ok=True)
    figs = _figures(st, out)
    data = st.to_dict()
    data["figures"] = {k: str(p) for k, p in figs}
    src = table(["source", "target (windows)", "share", "max |deviation| (windows)", "windows",
                 "store windows", "epochs", "series drawn / series", "max |gap| per series"],
                [[n, f"{s['target']:.4%}", f"{s['share']:.4%}",
                  f"{s['max_abs_prefix_deviation']:.2f}", f"{s['windows']:,}",
                  _num(s["store_windows"], ","), _num(s["epochs"], ".3f"),
                  f"{s['series_drawn']:,} / {s['series_count']:,}",
                  _num(s["series_max_abs_gap"], ".2f")] for n, s in data["sources"].items()])
    ranks = table(["rank", *st.names],
                  [[str(r), *(f"{v:,}" for v in st.rank_windows[j])]
                   for j, r in enumerate(st.ranks)])
    listed = [(n, name, v) for n, per in data["series"].items() for name, v in per.items()]
    series = table(["source", "series", "windows drawn", "expected"],
                   [[n, name, f"{v['windows']:,}", _num(v["expected"], ".2f")]
                    for n, name, v in listed[:SERIES_ROWS]])
    more = (para(f"{len(listed) - SERIES_ROWS:,} more series in report.json.")
            if len(listed) > SERIES_ROWS else "")
    bound = ("within one window by the planner's rule" if st.complete else
             f"not bounded here: the logs hold ranks {st.ranks} of {st.world_size}")
    facts = (f"series stream: steps {data['first_step']}..{data['last_step']} "
             f"({data['steps']} steps), {data['windows']:,} windows, ranks {data['ranks']} of "
             f"world size {data['world_size']}; prefix deviation {bound}.")
    logs = ", ".join(html.escape(p) for p in data["logs"])
    left = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>"
                   for k, v in data["left_out"].items())
    body = (f"<p>{logs}</p>{para(facts)}<h2>Mixture</h2>{src}"
            + "".join(img(p, k) for k, p in figs[:-2])
            + f"<h2>Ranks</h2>{ranks}{img(figs[-2][1], figs[-2][0])}"
            + "<h2>Windows per series</h2>"
            + para("Inside a store windows come in a seeded permutation per epoch: each series "
                   "should supply its share of the store's windows (exactly after whole "
                   "epochs).")
            + f"{series}{more}{img(figs[-1][1], figs[-1][0])}"
            + f"<h2>Not shown for series</h2><ul>{left}</ul>")
    return write_page(out, body, data)
