"""The figures and the page shared by every run report (text streams, series streams,
objectives): lines over steps against a dashed target, stacked weights, stacked bars, and one
self-contained HTML page (images inlined as data URIs, no script, no server)."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mixbatch.atomic import write_text


def pyplot():
    """matplotlib.pyplot with the Agg backend (no display), imported late."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    pyplot().close(fig)
    return path


def prefix_share(cum: np.ndarray) -> np.ndarray:
    """Each column's share of the row total (``[steps, k]``; 0 where a row sums to 0)."""
    c = np.asarray(cum, dtype=np.float64)
    tot = c.sum(axis=1, keepdims=True)
    return np.divide(c, tot, out=np.zeros_like(c), where=tot > 0)


def plot_shares(steps: np.ndarray, names: Sequence[str],
                panels: Sequence[tuple[str, np.ndarray, np.ndarray | None]], path: Path,
                ylabel: str = "share of the prefix") -> Path:
    """One panel per ``(title, shares [steps, k], target [steps, k] or None)``: the realised
    share of each name after every step, its target dashed in the same colour."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(11, 3.8), sharey=True, squeeze=False)
    for ax, (title, sh, target) in zip(axes[0], panels, strict=True):
        for i, n in enumerate(names):
            (line,) = ax.plot(steps, sh[:, i], label=n)
            if target is not None:
                ax.plot(steps, target[:, i], ls="--", color=line.get_color(), lw=1)
        ax.set_title(title + (" (dashed: target)" if target is not None else ""), fontsize=10)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel(ylabel)
    axes[0][0].legend(fontsize=8)
    return save(fig, path)


def plot_lines(steps: np.ndarray, names: Sequence[str], values: np.ndarray, title: str,
               path: Path, zero: bool = False) -> Path:
    """One line per name over steps (``values [steps, k]``); ``zero``: a line at 0."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 3.3))
    for i, n in enumerate(names):
        ax.plot(steps, values[:, i], label=n)
    if zero:
        ax.axhline(0, color="k", lw=0.5)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_stack(steps: np.ndarray, names: Sequence[str], weights: np.ndarray, title: str,
               path: Path) -> Path:
    """Weights per step stacked to 1."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 3.2))
    ax.stackplot(steps, np.asarray(weights).T, labels=list(names))
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.legend(fontsize=8, loc="upper right")
    return save(fig, path)


def stacked_bars(ax: Any, labels: Sequence[str], names: Sequence[str], matrix: np.ndarray,
                 title: str, xlabel: str) -> None:
    """Bars per label (``matrix [labels, k]``), each stacked by name."""
    bottom = np.zeros(len(labels))
    for i, n in enumerate(names):
        ax.bar(list(labels), matrix[:, i], bottom=bottom, label=n)
        bottom += matrix[:, i]
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def para(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


CSS = ("body{font-family:sans-serif;margin:2em;max-width:1100px}"
       "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
       "padding:3px 8px;text-align:right}th{background:#f3f3f3}img{max-width:100%}")

TITLE = "mixbatch run report"


def write_page(out: Path, body: str, data: dict[str, Any]) -> dict[str, Any]:
    """``report.html`` (``body`` inside the page) and ``report.json`` (``data`` with the page's
    path) into ``out``; returns ``data``."""
    page = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{TITLE}</title><style>{CSS}</style></head><body><h1>{TITLE}</h1>"
            f"{body}</body></html>")
    write_text(out / "report.html", page)
    data["html"] = str(out / "report.html")
    write_text(out / "report.json", json.dumps(data, indent=1))
    return data
