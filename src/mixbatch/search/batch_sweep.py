"""``mixbatch search sweep``: the same mixture trained on proxies at several batch sizes, and the
steps and tokens each needs to reach a held-out loss (the steps/examples trade-off).

Every run trains the config's mixture on the same number of tokens (``--tokens``), so a batch
of ``B`` rows of ``L`` tokens runs ``ceil(tokens / (B·L))`` steps, warms up over the same share
of them and is scored on the held-out documents every ``--eval-every-tokens`` tokens. Its
*time to result*, in the manner of "Benchmarking Neural Network Training Algorithms" (Dahl et
al. 2023), is the first evaluation at or below ``--target``: steps S and tokens E = S·B·L.
A run that never gets there is *censored*: it counts at its full length, flagged, and is never
dropped; a batch size's median over seeds is then a lower bound ("≥") when the median run is
censored.

"An Empirical Model of Large-Batch Training" (McCandlish et al. 2018, eq. 2.11) relates the
two: ``(S / S_min − 1)(E / E_min − 1) = 1``, i.e. ``1 = S_min / S + E_min / E``, linear in
``S_min`` and ``E_min``; :func:`fit_tradeoff` solves it by least squares over the batch sizes
whose median run reached the target, and ``B_crit = E_min / S_min`` (in tokens) is the batch
beyond which more tokens buy few steps.

The lead command (:func:`add_sweep_parser`, :func:`run_sweep`) prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mixbatch.checks import positive_int
from mixbatch.errors import ConfigError

__all__ = ["SweepRun", "add_sweep_parser", "fit_tradeoff", "run_sweep", "summarize", "sweep"]


@dataclass(frozen=True)
class SweepRun:
    """One proxy run of the sweep: its batch size (rows), seed and length, and its time to the
    target (``censored``: never reached; ``steps_to_target`` / ``tokens_to_target`` are then the
    run's whole length)."""

    batch_size: int
    seed: int
    steps: int
    tokens: int
    steps_to_target: int
    tokens_to_target: int
    censored: bool
    final_loss: float
    best_loss: float
    seconds: float


def _median(values: Sequence[int], censored: Sequence[bool]) -> tuple[float, bool]:
    """The median of values where censored ones are lower bounds (at their run length): the
    value, and whether it is only a lower bound (the lower middle run is censored)."""
    order = np.argsort(np.asarray(values, dtype=np.float64), kind="stable")
    v = np.asarray(values, dtype=np.float64)[order]
    c = np.asarray(censored, dtype=bool)[order]
    n = len(v)
    lo, hi = (n - 1) // 2, n // 2
    return float((v[lo] + v[hi]) / 2), bool(c[lo] or c[hi])


def fit_tradeoff(steps: Sequence[float], tokens: Sequence[float]) -> dict[str, Any]:
    """S_min, E_min and B_crit = E_min / S_min from ``1 = S_min / S + E_min / E`` (module
    docstring) by least squares; ``None`` values and a reason when fewer than two points or no
    positive solution."""
    s = np.asarray(steps, dtype=np.float64)
    e = np.asarray(tokens, dtype=np.float64)
    if len(s) < 2:
        return {"s_min": None, "e_min": None, "b_crit_tokens": None,
                "why": "fewer than two batch sizes reached the target"}
    a = np.stack([1.0 / s, 1.0 / e], axis=1)
    (s_min, e_min), *_ = np.linalg.lstsq(a, np.ones(len(s)), rcond=None)
    if not (s_min > 0 and e_min > 0):
        return {"s_min": None, "e_min": None, "b_crit_tokens": None,
                "why": f"no positive fit (S_min {s_min:.3g}, E_min {e_min:.3g}): the points do "
                       "not follow the trade-off"}
    return {"s_min": float(s_min), "e_min": float(e_min),
            "b_crit_tokens": float(e_min / s_min), "why": None}


def summarize(runs: Sequence[SweepRun]) -> dict[str, Any]:
    """Per batch size (ascending): runs, how many reached the target, the median steps and
    tokens to it (censored runs at their length; ``*_lower_bound`` when the median is
    censored), and against the smallest batch size the step speed-up and the token cost (at
    most and at least these when the median is censored); then the fit of
    :func:`fit_tradeoff` over the batch sizes whose median is not censored."""
    sizes = sorted({r.batch_size for r in runs})
    rows = []
    for b in sizes:
        mine = [r for r in runs if r.batch_size == b]
        cens = [r.censored for r in mine]
        s, s_lb = _median([r.steps_to_target for r in mine], cens)
        e, e_lb = _median([r.tokens_to_target for r in mine], cens)
        rows.append({"batch_size": b, "runs": len(mine),
                     "reached": sum(not c for c in cens),
                     "median_steps": s, "median_steps_lower_bound": s_lb,
                     "median_tokens": e, "median_tokens_lower_bound": e_lb,
                     "median_final_loss": float(np.median([r.final_loss for r in mine]))})
    if rows:
        s0, e0 = rows[0]["median_steps"], rows[0]["median_tokens"]
        for row in rows:
            row["step_speedup"] = s0 / row["median_steps"]
            row["token_cost"] = row["median_tokens"] / e0
    done = [r for r in rows if not r["median_steps_lower_bound"]]
    fit = fit_tradeoff([r["median_steps"] for r in done], [r["median_tokens"] for r in done])
    return {"by_batch_size": rows, "fit": fit}


def sweep(cfg: Any, proxy: Any, batch_sizes: Sequence[int], seeds: Sequence[int], tokens: int,
          target: float, eval_every_tokens: int, warmup_fraction: float = 0.1,
          log: Callable[[str], None] | None = None) -> list[SweepRun]:
    """Train one proxy per (batch size, seed) on ``tokens`` tokens of ``cfg``'s mixture and
    time it to ``target`` (module docstring). ``proxy`` (a
    :class:`~mixbatch.proxy.ProxyConfig`) gives the model and optimiser; its ``batch_size``,
    ``steps``, ``warmup``, ``eval_every`` and ``seed`` are set here per run."""
    from mixbatch.proxy.trainer import Trainer, require_holdout

    require_holdout(cfg, "a batch-size sweep scores held-out documents")
    if not batch_sizes or not seeds:
        raise ConfigError("sweep: give at least one batch size and one seed")
    if not 0 <= warmup_fraction < 1:
        raise ConfigError(f"--warmup-fraction: must be in [0, 1), got {warmup_fraction}")
    seq_len = proxy.seq_len or cfg.batch.seq_len
    out = []
    for b in batch_sizes:
        per_step = b * seq_len
        steps = max(math.ceil(tokens / per_step), 1)
        every = max(eval_every_tokens // per_step, 1)
        for seed in seeds:
            p = proxy.model_copy(update={"batch_size": b, "steps": steps, "seed": seed,
                                         "warmup": int(warmup_fraction * steps),
                                         "eval_every": every})
            t0 = time.perf_counter()
            with Trainer(cfg, p) as t:
                t.eval_rows = t.heldout_rows()
                t.run(eval_every=every)
                history = list(t.history)
            hit = next((h for h in history if h["val_loss_mean"] <= target), None)
            last = history[-1]
            run = SweepRun(b, seed, steps, int(last["tokens"]),
                           int(hit["step"] if hit else last["step"]),
                           int(hit["tokens"] if hit else last["tokens"]), hit is None,
                           float(last["val_loss_mean"]),
                           float(min(h["val_loss_mean"] for h in history)),
                           time.perf_counter() - t0)
            out.append(run)
            if log is not None:
                reached = (f"target at step {run.steps_to_target:,}" if hit else
                           f"target not reached in {steps:,} steps (censored)")
                log(f"batch {b} seed {seed}: {reached}, final {run.final_loss:.4f}")
    return out


# ---- command ------------------------------------------------------------------------------
def add_sweep_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``sweep`` on ``mixbatch search``'s sub-commands."""
    from mixbatch.cli_common import add_common
    from mixbatch.proxy_args import add_proxy_arguments
    from mixbatch.search.cli import PROXY_BASE

    sp = subparsers.add_parser(
        "sweep", help="train the config's mixture at several batch sizes; steps and tokens to a "
                      "held-out loss per batch size")
    sp.add_argument("config", help="config whose sources (prepared, holdout > 0) and mixture "
                                   "the proxies train on")
    sp.add_argument("--batch-sizes", type=positive_int, nargs="+", required=True, metavar="B",
                    help="rows per step to try, e.g. 4 8 16 32")
    sp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="S",
                    help="model seeds per batch size (default 0 1 2)")
    sp.add_argument("--tokens", type=positive_int, required=True,
                    help="training tokens of every run (the same for each batch size)")
    sp.add_argument("--target", type=float, required=True,
                    help="held-out loss (mean over sources) that counts as the result")
    sp.add_argument("--eval-every-tokens", type=positive_int, default=None, metavar="N",
                    help="score the held-out documents every N tokens (default: --tokens / 20)")
    sp.add_argument("--warmup-fraction", type=float, default=0.1,
                    help="share of each run's steps spent warming up (default 0.1)")
    sp.add_argument("--out", metavar="SWEEP.json", help="write every run and the summary here")
    add_common(sp, progress=False)
    add_proxy_arguments(sp, base=PROXY_BASE)
    sp.set_defaults(func=run_sweep)
    return sp


def run_sweep(args: argparse.Namespace) -> int:
    """``mixbatch search sweep``: run :func:`sweep`, print the table, write ``--out``."""
    from rich.console import Console
    from rich.table import Table

    from mixbatch.atomic import write_json
    from mixbatch.config import load_config
    from mixbatch.search.cli import proxy_of_args

    for flag, name in (("--steps", "steps"), ("--batch-size", "batch_size")):
        if getattr(args, name, None) is not None:
            raise ConfigError(f"{flag}: the sweep sets each run's {name} (from --batch-sizes "
                              "and --tokens); leave it out")
    cfg = load_config(args.config)
    proxy = proxy_of_args(args)
    every = args.eval_every_tokens or max(args.tokens // 20, 1)
    err = Console(stderr=True, highlight=False)
    runs = sweep(cfg, proxy, args.batch_sizes, args.seeds, args.tokens, args.target, every,
                 args.warmup_fraction, log=lambda m: err.print(m, markup=False))
    summary = summarize(runs)
    seq_len = proxy.seq_len or cfg.batch.seq_len
    table = Table(title=f"Steps and tokens to held-out loss {args.target} ({args.tokens:,} "
                        f"tokens per run, rows of {seq_len} tokens; ≥: the median run never "
                        "reached it)")
    for name in ("batch", "reached", "median steps", "median tokens", "step speed-up",
                 "token cost", "median final loss"):
        table.add_column(name, justify="right")
    for r in summary["by_batch_size"]:
        ge = "≥ " if r["median_steps_lower_bound"] else ""
        table.add_row(str(r["batch_size"]), f"{r['reached']}/{r['runs']}",
                      f"{ge}{r['median_steps']:,.0f}", f"{ge}{r['median_tokens']:,.0f}",
                      ("≤ " if ge else "") + f"{r['step_speedup']:.2f}",
                      ge + f"{r['token_cost']:.2f}",
                      f"{r['median_final_loss']:.4f}")
    out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    out.print(table)
    fit = summary["fit"]
    out.print("fit (S/S_min - 1)(E/E_min - 1) = 1: " + (
        f"S_min {fit['s_min']:,.0f} steps, E_min {fit['e_min']:,.0f} tokens, B_crit "
        f"{fit['b_crit_tokens']:,.0f} tokens" if fit["why"] is None else fit["why"]),
        markup=False)
    if args.out:
        write_json(args.out, {"target": args.target, "tokens_per_run": args.tokens,
                              "seq_len": seq_len, "eval_every_tokens": every,
                              "warmup_fraction": args.warmup_fraction,
                              "proxy": proxy.model_dump(mode="json"),
                              "runs": [asdict(r) for r in runs], **summary})
    return 0
