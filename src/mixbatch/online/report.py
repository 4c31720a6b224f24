"""The report of an online run folder: weights over time and loss curves (PNG), one HTML page.

:func:`write_report` reads ``weights.csv``, ``losses.csv`` and ``summary.json``
(:mod:`mixbatch.online.runfiles`) and writes, into the run folder unless told otherwise:

- ``weights.png``: the target weight of every source at every step (stacked, so each vertical
  slice is the mixture of that step);
- ``val_loss.png``: validation loss per source against training tokens (the target drawn thick);
- ``train_loss.png``: training loss per source in the batch (moving average over 1/50 of the
  run), against steps;
- ``noise_scale.png``: the gradient noise scale per step, when the run measured it;
- ``report.html``: a self-contained page (the PNGs embedded as data URIs) with the run's
  settings, final numbers, energy (joules, per token, CO2, or why not readable) and noise
  scale.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from mixbatch.errors import DataError
from mixbatch.online.runfiles import LOSSES_FILE, SUMMARY_FILE, WEIGHTS_FILE, read_csv

__all__ = ["write_report"]


def _pyplot():  # matplotlib.pyplot, imported late with the Agg backend
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _columns(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise DataError(f"{path}: not found; is this an online run folder (mixbatch train --out)?")
    header, rows = read_csv(path)
    if not header or not rows:
        raise DataError(f"{path}: no rows yet")
    try:
        data = np.array([[float(x) if x else math.nan for x in r] for r in rows], dtype=np.float64)
    except ValueError as e:
        raise DataError(f"{path}: not a run file ({e})") from None
    if data.shape[1] != len(header):
        raise DataError(f"{path}: rows have {data.shape[1]} fields, the header {len(header)}")
    return {h: data[:, i] for i, h in enumerate(header)}


def _sources(cols: dict[str, np.ndarray], prefix: str) -> list[str]:
    return [h[len(prefix):] for h in cols if h.startswith(prefix)]


def _smooth(y: np.ndarray, width: int) -> np.ndarray:
    if width <= 1:
        return y
    out = np.full_like(y, np.nan)
    ok = np.isfinite(y)
    c = np.cumsum(np.where(ok, y, 0.0))
    n = np.cumsum(ok)
    for i in range(len(y)):
        lo = max(0, i - width + 1)
        cnt = n[i] - (n[lo - 1] if lo else 0)
        if cnt:
            out[i] = (c[i] - (c[lo - 1] if lo else 0.0)) / cnt
    return out


def _title(summary: dict[str, Any]) -> str:
    policy = summary.get("policy") or "static mixture"
    target = summary.get("target")
    return f"{policy}" + (f", target {target}" if target else "") + f", seed {summary.get('seed')}"


def cost_lines(summary: dict[str, Any]) -> dict[str, str]:
    """The energy and noise-scale lines of the page, or why there are none."""
    e, noise = summary.get("energy"), summary.get("noise_scale") or {}
    if not e:
        energy = "not recorded in this summary"
    elif e.get("joules") is None:
        energy = f"not readable: {e.get('unavailable') or 'no counter'}"
    else:
        per = e.get("joules_per_token")
        energy = f"{e['joules']:.1f} J in {e['seconds']:.1f} s" + (
            f", {per:.3g} J per token trained" if per is not None else "")
        co2 = e.get("co2_grams")
        energy += (f"; CO2 {co2:.3g} g at {summary.get('proxy', {}).get('co2_g_per_kwh')} g/kWh"
                   if co2 is not None else f"; CO2 not estimated: {e.get('co2_unavailable')}")
        energy += f" ({e['scope']})" if e.get("scope") else ""
    b = noise.get("last")
    return {"energy": energy, "noise scale": (
        f"not measured: {noise.get('unavailable') or 'not recorded'}" if b is None else
        f"B_simple {b:.4g} tokens (last step's EMA)" if math.isfinite(b) else
        "B_simple not defined at the last step (its smoothed |G|² estimate is not positive)")}


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Draw the plots and write the page; returns ``{"weights": ..., "val_loss": ...,
    "train_loss": ..., "html": ...}`` paths."""
    run = Path(run_dir)
    if not run.is_dir():
        raise DataError(f"{run}: not a folder")
    out = Path(out_dir) if out_dir is not None else run
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    if (run / SUMMARY_FILE).exists():
        try:
            summary = json.loads((run / SUMMARY_FILE).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{run / SUMMARY_FILE}: not JSON ({e.msg})") from None
    weights = _columns(run / WEIGHTS_FILE)
    losses = _columns(run / LOSSES_FILE)
    names = _sources(weights, "weight_")
    target = summary.get("target")
    title = _title(summary) if summary else run.name
    plt = _pyplot()
    paths: dict[str, Path] = {}

    def figure(key: str, title: str, xlabel: str, ylabel: str, draw: Any) -> None:
        fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
        draw(ax)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
        fig.tight_layout()
        paths[key] = out / f"{key}.png"
        fig.savefig(paths[key])
        plt.close(fig)

    def draw_weights(ax: Any) -> None:
        steps = weights["step"]
        ax.stackplot(steps, *[weights[f"weight_{n}"] for n in names], labels=names, alpha=0.85,
                     step="post")
        ax.set_xlim(steps.min(), steps.max() if len(steps) > 1 else steps.min() + 1)
        ax.set_ylim(0, 1)

    def draw_val(ax: Any) -> None:
        evaluated = np.isfinite(losses["val_mean"])
        tok = losses["tokens"][evaluated]
        for n in names:
            thick = n == target
            ax.plot(tok, losses[f"val_{n}"][evaluated], marker="o", ms=3,
                    lw=2.6 if thick else 1.2, label=n + (" (target)" if thick else ""))
        ax.plot(tok, losses["val_mean"][evaluated], color="black", ls="--", lw=1, label="mean")

    width = max(1, len(losses["step"]) // 50)

    def draw_train(ax: Any) -> None:
        for n in names:
            ax.plot(losses["step"], _smooth(losses[f"train_{n}"], width), lw=1.2, label=n)

    figure("weights", f"mixture weights over time ({title})", "step", "target weight",
           draw_weights)
    figure("val_loss", f"per-source validation loss ({title})", "training tokens",
           "validation loss (nats/token)", draw_val)
    figure("train_loss", f"per-source training loss, moving average over {width} steps", "step",
           "training loss in the batch", draw_train)
    if "noise_scale" in losses:  # measured on two or more ranks (proxy.noise_beta)
        figure("noise_scale", "gradient noise scale B_simple (EMA)", "step", "tokens",
               lambda ax: ax.plot(losses["step"], losses["noise_scale"], lw=1.2))

    paths["html"] = out / "report.html"
    paths["html"].write_text(_page(title, summary, names, weights, losses, paths),
                             encoding="utf-8")
    return paths


def _page(title: str, summary: dict[str, Any], names: list[str], weights: dict[str, np.ndarray],
          losses: dict[str, np.ndarray], paths: dict[str, Path]) -> str:
    esc = html.escape
    rows = []
    evaluated = np.flatnonzero(np.isfinite(losses["val_mean"]))
    last_val = {n: losses[f"val_{n}"][evaluated[-1]] for n in names} if len(evaluated) else {}
    total = sum(weights[f"tokens_{n}"].sum() for n in names) or 1.0
    for n in names:
        mark = " (target)" if n == summary.get("target") else ""
        v = last_val.get(n, math.nan)
        rows.append(f"<tr><td>{esc(n)}{mark}</td><td>{weights[f'weight_{n}'][-1]:.4f}</td>"
                    f"<td>{weights[f'tokens_{n}'].sum() / total:.2%}</td><td>{v:.4f}</td></tr>")
    facts = []
    for key in ("policy", "target", "seed", "steps", "tokens", "updates", "settings", "loop",
                "overhead_tokens", "seconds", "device", "world_size"):
        if key in summary:
            value = summary[key]
            text = json.dumps(value) if isinstance(value, dict | list) else str(value)
            facts.append(f"<tr><th>{esc(key)}</th><td><code>{esc(text)}</code></td></tr>")
    facts += [f"<tr><th>{k}</th><td>{esc(v)}</td></tr>" for k, v in cost_lines(summary).items()]
    images = []
    for key in [k for k in ("weights", "val_loss", "train_loss", "noise_scale") if k in paths]:
        data = base64.b64encode(paths[key].read_bytes()).decode("ascii")
        images.append(f'<p><img alt="{key}" src="data:image/png;base64,{data}"></p>')
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mixbatch online run: {esc(title)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;
text-align:left}}code{{font-size:85%;word-break:break-all}}img{{max-width:100%}}</style></head>
<body><h1>online run: {esc(title)}</h1>
<table><tr><th>source</th><th>final weight</th><th>share of tokens fed</th>
<th>final validation loss</th></tr>{''.join(rows)}</table>
{''.join(images)}
<h2>settings</h2><table>{''.join(facts)}</table>
</body></html>
"""
