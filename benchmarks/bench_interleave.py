"""Prefix error and speed of source-selection rules: ours vs Megatron-LM vs i.i.d. draws.

    PYTHONPATH=src python benchmarks/bench_interleave.py [--decisions 1000000] [--megatron 200000]

For K = 3, 30, 300 sources with Dirichlet(1) weights (seed 0) it prints, per rule, the largest
prefix deviation ``max_{n,i} |c_i(n) - w_i n|`` (computed vectorised from each source's
occurrences) and decisions per second:

* ours: :class:`mixbatch.plan.interleave.Interleaver` (Tijdeman's rule), in one call and in
  calls of 1024 decisions (a batch at a time, as a loader would); best of 3 runs;
* Megatron-LM ``build_blending_indices`` (megatron/core/datasets/helpers.cpp), reimplemented
  from its formula ``argmax_i (w_i max(n, 1) - c_i)``, strict ``>``, one decision at a time;
  it is a Python loop, so it runs on ``--megatron`` decisions (default 2e5), said in the table;
* i.i.d. categorical draws (``numpy.random.Generator.choice``): the rule of Hugging Face
  ``interleave_datasets(probabilities=...)`` and ``torchdata.nodes.MultiNodeWeightedSampler``;
  the real ones are timed too when importable, else reported as not installed.

A second table does the same for token mode (documents with log-normal lengths) against
i.i.d. document draws; deviations there are in tokens and as a fraction of the longest one.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import shlex
import sys
import time

import numpy as np

from mixbatch.plan.interleave import Interleaver, max_prefix_deviation

SEED = 0
SIZES = (3, 30, 300)


def megatron_blend(weights: np.ndarray, n: int) -> np.ndarray:
    """Megatron-LM's greedy blend, sequential like the C++ original (helpers.cpp)."""
    w = weights.tolist()
    k = len(w)
    counts = [0] * k
    out = np.empty(n, dtype=np.int64)
    rng_k = range(1, k)
    for i in range(n):
        x = float(max(i, 1))
        best = 0
        best_err = w[0] * x - counts[0]
        for j in rng_k:
            err = w[j] * x - counts[j]
            if err > best_err:
                best, best_err = j, err
        out[i] = best
        counts[best] += 1
    return out


def timed(fn, repeat=1):
    """Result and best wall time of ``repeat`` runs."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def ours_one_call(w, n):
    return Interleaver(len(w)).choose(n, w)


def reference_one_call(w, n):
    """The NumPy + heap form the compiled rule replaced (its test oracle)."""
    return Interleaver(len(w), compiled=False).choose(n, w)


def ours_batches(w, n, batch=1024):
    plan = Interleaver(len(w))
    parts = [plan.choose(min(batch, n - s), w) for s in range(0, n, batch)]
    return np.concatenate(parts)


def hf_interleave(w, n):
    import datasets  # noqa: F401  (only to find out whether it is installed)
    from datasets import Dataset, interleave_datasets

    k = len(w)
    sources = [Dataset.from_dict({"s": np.full(n, i)}) for i in range(k)]
    mixed = interleave_datasets(sources, probabilities=w.tolist(), seed=SEED,
                                stopping_strategy="first_exhausted")
    return np.asarray(mixed[:n]["s"], dtype=np.int64)


def torchdata_mnws(w, n):
    from torchdata.nodes import IterableWrapper, Loader, MultiNodeWeightedSampler

    k = len(w)
    nodes = {str(i): IterableWrapper([i] * n) for i in range(k)}
    sampler = MultiNodeWeightedSampler(nodes, {str(i): float(w[i]) for i in range(k)}, seed=SEED)
    out = np.empty(n, dtype=np.int64)
    for j, x in zip(range(n), Loader(sampler), strict=False):
        out[j] = x
    return out


def optional(fn, w, n):
    try:
        out, dt = timed(lambda: fn(w, n))
    except ImportError:
        return None, None, "not installed"
    except Exception as exc:  # a third-party API change must not kill the benchmark
        return None, None, f"failed: {type(exc).__name__}: {exc}"[:60]
    return out, dt, ""


def print_table(title, columns, rows):
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(f"\n{title}")
        print(" | ".join(columns))
        for row in rows:
            print(" | ".join(row))
        return
    table = Table(title=title)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i < 2 else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=140).print(table)


def sample_mode(args):
    rows = []
    n = args.decisions
    for k in SIZES:
        w = np.random.default_rng(SEED).dirichlet(np.ones(k))
        bound = 1 - 1 / (2 * k - 2)

        def add(rule, out, dt, count, note="", w=w, k=k):
            dev = f"{max_prefix_deviation(out, w):.3f}" if out is not None else "-"
            rate = f"{count / dt:,.0f}" if dt else "-"
            rows.append([str(k), rule, f"{count:,}" if out is not None else "-", dev, rate, note])

        ours_one_call(w, 10_000)  # warm-up (compiles once, then cached)
        out, dt = timed(lambda w=w: ours_one_call(w, n), repeat=3)
        add("ours (Tijdeman, compiled), one call", out, dt, n, f"bound {bound:.3f}")
        ref, dt = timed(lambda w=w: reference_one_call(w, n))
        add("ours, NumPy + heap reference", ref, dt, n,
            "same decisions" if np.array_equal(ref, out) else "DIFFERENT decisions")
        out, dt = timed(lambda w=w: ours_batches(w, n), repeat=3)
        add("ours, calls of 1024", out, dt, n)
        m = args.megatron
        out, dt = timed(lambda w=w, m=m: megatron_blend(w, m))
        add("Megatron-LM greedy (Python loop)", out, dt, m, "fewer decisions: a loop")
        rng = np.random.default_rng(SEED)
        out, dt = timed(lambda w=w, k=k, rng=rng: rng.choice(k, size=n, p=w), repeat=3)
        add("i.i.d. draws (numpy)", out, dt, n, "HF / torchdata rule")
        for name, fn in (("HF interleave_datasets", hf_interleave),
                         ("torchdata MultiNodeWeightedSampler", torchdata_mnws)):
            hn = min(n, args.third_party)
            out, dt, note = optional(fn, w, hn)
            add(name, out, dt, hn, note)
    print_table(
        f"Sample mode: max prefix deviation |c_i(n) - w_i n| (samples) and speed, {n:,} decisions",
        ["K", "rule", "decisions", "max deviation", "decisions/s", "note"],
        rows,
    )


def token_mode(args):
    rows = []
    n = args.documents
    for k in SIZES:
        rng = np.random.default_rng(SEED)
        w = rng.dirichlet(np.ones(k))
        lengths = [
            np.minimum(rng.lognormal(6.0, 1.0, size=int(w[i] * n * 1.3) + 64).astype(np.int64) + 1,
                       8192)
            for i in range(k)
        ]
        longest = max(int(x.max()) for x in lengths)

        def lengths_of(out, lengths=lengths, k=k):
            cursor = np.zeros(k, dtype=np.int64)
            res = np.empty(out.size, dtype=np.int64)
            for j, s in enumerate(out.tolist()):
                res[j] = lengths[s][cursor[s]]
                cursor[s] += 1
            return res

        Interleaver(k, unit="tokens").choose_tokens(w, lengths, 10)  # warm-up (compile)
        out, dt = timed(lambda w=w, k=k, lengths=lengths: Interleaver(
            k, unit="tokens").choose_tokens(w, lengths, n), repeat=3)
        dev = max_prefix_deviation(out, w, lengths_of(out))
        rows.append([str(k), "ours (document EDF, compiled)", f"{out.size:,}", f"{dev:,.0f}",
                     f"{dev / longest:.3f}", f"{out.size / dt:,.0f}"])
        ref, dt = timed(lambda w=w, k=k, lengths=lengths: Interleaver(
            k, unit="tokens", compiled=False).choose_tokens(w, lengths, n))
        rows.append([str(k), "ours, NumPy + heap reference"
                     + ("" if np.array_equal(ref, out) else " (DIFFERENT decisions)"),
                     f"{ref.size:,}", f"{dev:,.0f}", f"{dev / longest:.3f}",
                     f"{ref.size / dt:,.0f}"])
        # i.i.d. document draws by weight: how HF / torchdata mix documents.
        draws = np.random.default_rng(SEED).choice(k, size=n, p=w)
        counts = np.bincount(draws, minlength=k)
        fits = np.array([counts[i] <= lengths[i].size for i in range(k)])
        if fits.all():
            dev = max_prefix_deviation(draws, w, lengths_of(draws))
            rows.append([str(k), "i.i.d. document draws", f"{n:,}", f"{dev:,.0f}",
                         f"{dev / longest:.3f}", "-"])
    print_table(
        f"Token mode: max prefix deviation |c_i(T) - w_i T| in tokens, {n:,} documents, "
        "log-normal lengths (mu 6, sigma 1, capped at 8192)",
        ["K", "rule", "documents", "max deviation", "/ longest doc", "documents/s"],
        rows,
    )


def scheduled_changes(args):
    """Abrupt stage changes (sources dropping to 0 and back) every few hundred decisions: the
    largest |c_i(n) - W_i(n)| against the integrated schedule, when the planner reads the
    stages ahead (WeightPath) and when it is only told the weights at each change."""
    from mixbatch.plan.interleave import WeightPath

    rows = []
    n = min(args.decisions, 200_000)
    for k in (3, 8, 30):
        worst = {"read ahead": 0.0, "told at each change": 0.0}
        for trial in range(5):
            rng = np.random.default_rng(SEED + trial)
            starts = np.concatenate([[0], np.sort(rng.choice(np.arange(1, n), 400, replace=False))])
            w = rng.dirichlet(np.full(k, 0.5), size=starts.size)
            w[rng.random(w.shape) < 0.3] = 0.0
            w[w.sum(axis=1) == 0, 0] = 1.0
            w /= w.sum(axis=1, keepdims=True)
            path = WeightPath(starts, w)
            stage = np.searchsorted(starts, np.arange(n), side="right") - 1
            target = np.cumsum(w[stage], axis=0)
            for how in worst:
                plan = Interleaver(k)
                cuts = np.concatenate([starts, [n]])
                parts = [plan.choose(int(b - a), w[j], path=path if how == "read ahead" else None)
                         for j, (a, b) in enumerate(itertools.pairwise(cuts))]
                c = np.cumsum(np.eye(k)[np.concatenate(parts)], axis=0)
                worst[how] = max(worst[how], float(np.abs(c - target).max()))
        for how, dev in worst.items():
            rows.append([str(k), how, f"{dev:.3f}", f"{1 - 1 / (2 * k - 2):.3f}"])
    print_table(f"Scheduled changes: 400 abrupt stage changes in {n:,} decisions, 5 seeds "
                "(worst over them)", ["K", "planner", "max |c_i - W_i|", "Tijdeman's bound"], rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=1_000_000)
    parser.add_argument("--megatron", type=int, default=200_000,
                        help="decisions for the sequential Megatron-LM loop")
    parser.add_argument("--third-party", type=int, default=100_000,
                        help="decisions for HF datasets / torchdata when installed")
    parser.add_argument("--documents", type=int, default=200_000)
    args = parser.parse_args(argv)
    print("command:", " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
          f"cpus {os.cpu_count()} | Python {platform.python_version()} | numpy {np.__version__}")
    t0 = time.perf_counter()
    sample_mode(args)
    token_mode(args)
    scheduled_changes(args)
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
