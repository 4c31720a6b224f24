"""The run report: PNG figures and one self-contained HTML page (images inlined as data URIs,
no script, no server) from a :class:`~mixbatch.audit.trace.RunTrace`."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from mixbatch.audit.trace import RunTrace


def pyplot():
    """matplotlib.pyplot with the Agg backend (no display), imported late."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    pyplot().close(fig)
    return path


def plot_mixture(tr: RunTrace, path: Path) -> Path:
    """Realised share per source after each step, by tokens and by samples, against the target
    share integrated over the schedule."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    integ = tr.integrated_target()
    tot = integ.sum(axis=1, keepdims=True)
    target = np.divide(integ, tot, out=np.zeros_like(integ), where=tot > 0)
    for ax, by in zip(axes, ("tokens", "samples"), strict=True):
        sh = tr.shares(by)
        for i, n in enumerate(tr.names):
            (line,) = ax.plot(tr.steps, sh[:, i], label=f"{n}")
            if by == tr.unit:
                ax.plot(tr.steps, target[:, i], ls="--", color=line.get_color(), lw=1)
        ax.set_title(f"realised share by {by}" + (" (dashed: target)" if by == tr.unit else ""))
        ax.set_xlabel("step")
    axes[0].set_ylabel("share of the prefix")
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def plot_deviation(tr: RunTrace, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 3.4))
    dev = tr.deviation()
    for i, n in enumerate(tr.names):
        ax.plot(tr.steps, dev[:, i], label=n)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_title(f"prefix deviation c_i(t) − W_i(t) ({tr.unit})")
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_weights(tr: RunTrace, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 3.2))
    w = tr.target_weights()
    ax.stackplot(tr.steps, w.T, labels=tr.names)
    ax.set_ylim(0, 1)
    ax.set_title("target weights per step" + ("" if tr.weights is not None
                                              else " (not logged: the summary's target)"))
    ax.set_xlabel("step")
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, path)


def plot_epochs(tr: RunTrace, path: Path) -> Path | None:
    ep = tr.epochs()
    if ep is None:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 3.2))
    for i, n in enumerate(tr.names):
        ax.plot(tr.steps, ep[:, i], label=n)
    ax.set_title("epochs per source (documents started / documents)")
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    return _save(fig, path)


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
    return _save(fig, path)


def plot_ranks(tr: RunTrace, path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    bottom = np.zeros(len(tr.ranks))
    labels = [str(r) for r in tr.ranks]
    for i, n in enumerate(tr.names):
        axes[0].bar(labels, tr.rank_tokens[:, i], bottom=bottom, label=n)
        bottom += tr.rank_tokens[:, i]
    axes[0].set_title("tokens per rank and source (logs given)")
    axes[0].set_xlabel("rank")
    axes[0].legend(fontsize=8)
    axes[1].plot(tr.steps, tr.rank_balance())
    axes[1].set_title("rank compute balance per step", fontsize=10)
    axes[1].set_ylabel(tr.balance_kind(), fontsize=7)
    axes[1].set_xlabel("step")
    return _save(fig, path)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


_CSS = ("body{font-family:sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}th{background:#f3f3f3}img{max-width:100%}")


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
    src_table = _table(["source", f"target ({tr.unit})", "tokens share", "samples share",
                        f"max |deviation| ({tr.unit})", "tokens", "samples", "epochs"], rows)
    rank_table = _table(["rank", *tr.names, "cost"],
                        [[str(r), *(f"{v:,}" for v in tr.rank_tokens[j]),
                          f"{tr.rank_cost[j].sum():,.0f}"] for j, r in enumerate(tr.ranks)])
    bucket_table = _table(["row length", "padding"],
                          [[k, f"{v:.2%}"] for k, v in data["padding_by_bucket"].items()])
    trunc = data["truncated_tokens"]
    facts = (f"steps {data['first_step']}..{data['last_step']} ({data['steps']} steps), ranks "
             f"{data['ranks']} of world size {data['world_size']}, unit {tr.unit}; padding "
             f"{data['padding_fraction']:.2%}; truncated "
             f"{'not logged' if trunc is None else f'{trunc:,} tokens'}; rank balance "
             f"({data['rank_balance_kind']}): max {data['rank_cost_imbalance']['max']:.3f}")
    logs = ", ".join(html.escape(p) for p in data["logs"])
    page = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>mixbatch run report</title>"
            f"<style>{_CSS}</style></head><body><h1>mixbatch run report</h1>"
            f"<p>{logs}</p><p>{html.escape(facts)}</p>"
            f"<h2>Mixture</h2>{src_table}"
            + "".join(_img(p, k) for k, p in figs[:4] if p is not None)
            + f"<h2>Padding and truncation</h2>{bucket_table}{_img(figs[4][1], figs[4][0])}"
            + f"<h2>Ranks</h2>{rank_table}{_img(figs[5][1], figs[5][0])}"
            + "</body></html>")
    (out / "report.html").write_text(page, encoding="utf-8")
    data["html"] = str(out / "report.html")
    (out / "report.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
    return data
