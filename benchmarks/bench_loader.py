"""Loader throughput, mixing accuracy and resume cost: mixbatch against a plain memmap and anchors.

Data: three synthetic JSONL sources (random letters with spaces, log-normal document lengths; each
source writes its own letters, ``a-h``, ``i-p`` and ``q-z``, so that any row of tokens tells which
source it came from) prepared with the byte tokeniser into a mixbatch store. Every loader reads
the same token line per source: each document followed by the end-of-document token, in store
order. Batches are ``--batch`` rows of ``--seq-len`` tokens; mixbatch packs with ``concat`` and
mixes by tokens with weights 0.5/0.3/0.2.

1. Throughput (tokens/s after the first batch; the first batch, which includes worker start-up,
   is reported apart): ``MixbatchDataLoader`` at 0, 1, 2 workers; a plain ``np.memmap`` of the
   three lines read as consecutive (B, L) slices into torch tensors (the ceiling); LitData
   (``optimize`` with ``TokensLoader`` into chunks, ``StreamingDataset``/``StreamingDataLoader``)
   and MosaicML Streaming (MDS shards, ``StreamingDataset``/``StreamingDataLoader``; it runs in its
   own venv ``.venv-streaming``, as a child process of this script); the mixing anchors
   (LitData ``CombinedStreamingDataset(weights=...)``, Streaming ``Stream(proportion=...)``,
   Hugging Face ``interleave_datasets(probabilities=...)``).
2. Mixing: the share of tokens of each source after ``--share-batches`` batches, and the largest
   deviation from the target over every batch prefix, for mixbatch and each mixing anchor.
3. Resume at step 10^3 ... 10^6: construct the loader, load the state, take the first batch
   (time, RSS peak and tracemalloc peak), against a fresh start. mixbatch's states come from a
   fast-forward loader whose batch holds ``--ff-factor`` times more rows (in ``concat`` mode one
   step of N*B rows covers the same token line as N steps of B rows; checked on the small scale).
   The anchors' states are built from their own state format (checked against a real state at
   10^3 steps); their datasets are sized for a run of ``--run-steps`` steps (LitData: chunk files
   hard-linked several times into a larger dataset; Streaming: ``epoch_size``).

Run ``.venv-bench/bin/python benchmarks/bench_loader.py --help`` (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from _common import (
    BACKGROUND,
    REPO,
    Timing,
    background_summary,
    header,
    human,
    log,
    set_wait_budget,
    table,
    timed,
    tree_cpu_seconds,
    wait_until_quiet,
)

PACKAGES = ("mixbatch", "numpy", "torch", "litdata", "datasets", "pyarrow")
#: name, target weight, share of the corpus's tokens, log-normal mu of the document length, letters
SOURCES = (("web", 0.5, 0.5, 6.5, "ah"), ("code", 0.3, 0.3, 7.0, "ip"), ("books", 0.2, 0.2, 8.0, "qz"))
NAMES = [s[0] for s in SOURCES]
WEIGHTS = np.array([s[1] for s in SOURCES])
#: a row's largest letter tells its source: below LETTER_EDGES[0] web, then code, then books
LETTER_EDGES = [ord(SOURCES[1][4][0]), ord(SOURCES[2][4][0])]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", type=Path, default=None,
                   help="where corpus, stores and anchor chunks go (default: a temp folder, removed)")
    p.add_argument("--tokens", type=float, default=60e6, help="tokens of the three sources together")
    p.add_argument("--sigma", type=float, default=1.0, help="log-normal sigma of document lengths")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=8, help="rows per batch")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader workers")
    p.add_argument("--batches", type=int, default=300, help="batches per throughput run")
    p.add_argument("--long-batches", type=int, default=3000,
                   help="batches per run of the workers' steady-state rows (0: none)")
    p.add_argument("--burn-batches", type=int, default=200,
                   help="batches per run with 5 ms of CPU work per batch (workers' speed-up)")
    p.add_argument("--ceiling-batches", type=int, default=6000,
                   help="batches per memmap run (it is fast: more batches, a steadier clock)")
    p.add_argument("--hf-batches", type=int, default=100,
                   help="batches per Hugging Face run (its per-example loop is slow)")
    p.add_argument("--share-batches", type=int, default=500, help="batches of the mixing check")
    p.add_argument("--repeat", type=int, default=3, help="runs per throughput measurement")
    p.add_argument("--resume-steps", type=float, nargs="+", default=[1e3, 1e4, 1e5, 1e6],
                   help="steps to resume at (mixbatch and Streaming, all measured)")
    p.add_argument("--litdata-resume-steps", type=float, nargs="+", default=[1e3, 1e4, 1e5],
                   help="steps LitData resumes at (measured); larger --resume-steps are "
                        "extrapolated when the measured cost is linear")
    p.add_argument("--hf-resume-steps", type=float, nargs="+", default=[1e3],
                   help="steps Hugging Face resumes at; its state is reached by iterating")
    p.add_argument("--run-steps", type=float, default=1e6,
                   help="length of the run the anchors' datasets are sized for")
    p.add_argument("--ff-factor", type=int, default=1000,
                   help="rows of the fast-forward loader's batch, in batches")
    p.add_argument("--resume-repeat", type=int, default=2, help="runs per resume measurement")
    p.add_argument("--profile-top", type=int, default=14,
                   help="functions listed from the profile of MixbatchDataLoader (0: no profile)")
    p.add_argument("--streaming-python", type=Path, default=REPO / ".venv-streaming/bin/python",
                   help="python of the venv that has mosaicml-streaming")
    p.add_argument("--only", choices=["all", "workers"], default="all",
                   help="workers: only mixbatch's worker tables (throughput rows of "
                        "MixbatchDataLoader, 5 ms of work per batch, steady state); no anchors")
    p.add_argument("--skip-litdata", action="store_true")
    p.add_argument("--skip-streaming", action="store_true")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--max-wait", type=float, default=120.0,
                   help="seconds the script may spend, in all, waiting for other processes to "
                        "leave the CPUs idle before timed runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--streaming-child", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------
def _proc_kib(field: str) -> int:
    m = re.search(rf"^{field}:\s+(\d+)", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


def _reset_rss_peak() -> bool:
    """Reset VmHWM (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_batches(make: Callable[[], Iterator[Any]], n: int, count: Callable[[Any], None] | None = None
                ) -> dict[str, float]:
    """Time the first batch (with construction and start-up) and the next ``n - 1`` batches."""
    c0 = tree_cpu_seconds()
    t0 = time.perf_counter()
    it = make()
    first = next(it)
    t1 = time.perf_counter()
    m1 = time.process_time()
    if count:
        count(first)
    k = 1
    for batch in it:
        if count:
            count(batch)
        k += 1
        if k >= n:
            break
    t2 = time.perf_counter()
    main_cpu = time.process_time() - m1
    cpu = tree_cpu_seconds() - c0
    del it
    gc.collect()
    if k < n:
        raise RuntimeError(f"the loader ended after {k} of {n} batches")
    return {"first": t1 - t0, "rest": t2 - t1, "total": t2 - t0, "cpu": cpu, "n": n,
            "main_cpu": main_cpu}


def throughput(make: Callable[[], Iterator[Any]], n: int, repeat: int) -> Timing:
    t = Timing(key="rest")
    for _ in range(repeat):
        bg = wait_until_quiet(interval=0.2)
        t.add(run_batches(make, n), bg)
    return t


def throughput_rounds(makes: list[Callable[[], Iterator[Any]]], n: int, repeat: int) -> list[Timing]:
    """:func:`throughput` of several loaders, run in rounds (one run of each per round), so
    that a change of the machine's load hits every loader alike and their ratios hold."""
    out = [Timing(key="rest") for _ in makes]
    for _ in range(repeat):
        for t, make in zip(out, makes, strict=True):
            bg = wait_until_quiet(interval=0.2)
            t.add(run_batches(make, n), bg)
    return out


def resume_cost(fn: Callable[[], Any], repeat: int) -> dict[str, Any]:
    """Time, RSS peak growth and tracemalloc peak of ``fn()`` (construct, load state, 1st batch)."""
    t = Timing()
    rss = []
    out = None
    for _ in range(repeat):
        gc.collect()
        bg = wait_until_quiet(interval=0.2)
        ok = _reset_rss_peak()
        r0 = _proc_kib("VmRSS")
        seconds, out = timed(fn)
        rss.append((_proc_kib("VmHWM") - r0) / 1024 if ok else float("nan"))
        t.add({"total": seconds}, bg)
        out = None
    gc.collect()
    tracemalloc.start()
    out = fn()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    del out
    return {"timing": t, "rss_mib": min(rss), "traced_mib": peak}


def rows_source(x: Any) -> np.ndarray:
    """Source index of each row of an anchor's batch, from its letters (rows never mix sources)."""
    a = np.asarray(x)
    return np.searchsorted(LETTER_EDGES, np.where(a < 128, a, 0).max(axis=1), side="right")


def share_stats(counts: np.ndarray) -> dict[str, Any]:
    """counts: (batches, K) tokens per source in each batch."""
    c = np.cumsum(counts, axis=0).astype(np.float64)
    total = c.sum(axis=1, keepdims=True)
    dev = np.abs(c - WEIGHTS * total)
    share = c[-1] / total[-1]
    return {"share": share, "final_err": float(np.abs(share - WEIGHTS).max()),
            "final_tok": float(dev[-1].max()), "max_prefix_tok": float(dev.max()),
            "tokens": float(total[-1, 0])}


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def write_source(path: Path, n_tokens: int, mu: float, sigma: float, letters: str, seed: int) -> int:
    """JSONL of random words over ``letters`` (a range, e.g. "ah") with log-normal lengths."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(mu, sigma, int(n_tokens / math.exp(mu)) * 2 + 1000), 1, 1 << 20)
    lengths = lengths.astype(np.int64)
    ends = np.cumsum(lengths)
    k = int(np.searchsorted(ends, n_tokens)) + 1
    lengths = lengths[:k]
    lengths[-1] -= int(ends[k - 1]) - n_tokens
    text = rng.integers(ord(letters[0]), ord(letters[1]) + 1, size=n_tokens, dtype=np.uint8)
    text[rng.random(n_tokens) < 0.15] = ord(" ")
    s = text.tobytes().decode("ascii")
    pos = 0
    with open(path, "w", encoding="ascii") as f:
        for n in lengths.tolist():
            f.write('{"text": "' + s[pos: pos + n] + '"}\n')
            pos += n
    return k


def config(workdir: Path, args: argparse.Namespace, batch_size: int | None = None,
           packing: str = "concat"):
    """The mixbatch config of the benchmark's store; ``packing`` other than concat keeps the
    step's positions (pad_buckets: a token budget of batch x seq_len)."""
    from mixbatch.config import config_from_dict

    batch: dict[str, Any] = {"seq_len": args.seq_len, "packing": packing}
    if packing == "pad_buckets":
        batch["token_budget"] = (batch_size or args.batch) * args.seq_len
    else:
        batch["batch_size"] = batch_size or args.batch
    if batch_size is not None and batch_size > args.batch:
        # the fast-forward loader only plans (no tokens are read): its step estimate is moot
        batch["max_step_bytes"] = "1TiB"
    return config_from_dict({
        "seed": args.seed, "tokenizer": "byte", "store": str(workdir / "store"),
        "sources": {n: {"path": str(workdir / f"{n}.jsonl"), "format": "jsonl"} for n in NAMES},
        "mixture": {"unit": "tokens", "weights": {n: float(w) for n, w in zip(NAMES, WEIGHTS, strict=True)}},
        "batch": batch,
    })


def build_data(workdir: Path, args: argparse.Namespace) -> tuple[Any, dict[str, Path], dict[str, Any]]:
    """Corpus -> mixbatch store; the token line of each source (docs + EOD) as a .npy."""
    from mixbatch.prepare import prepare
    from mixbatch.store import open_store

    for i, (name, _w, frac, mu, letters) in enumerate(SOURCES):
        write_source(workdir / f"{name}.jsonl", int(args.tokens * frac), mu, args.sigma, letters,
                     args.seed + i)
    cfg = config(workdir, args)
    seconds, _report = timed(lambda: prepare(cfg, workers=2, force=True))
    info: dict[str, Any] = {}
    lines: dict[str, Path] = {}
    for name in NAMES:
        (workdir / f"{name}.jsonl").unlink()
        st = open_store(cfg.store_dir / name)
        lens = np.asarray(st.lengths)
        line = np.insert(np.asarray(st.tokens), np.cumsum(lens), np.uint16(st.eod_id))
        lines[name] = workdir / f"{name}.line.npy"
        np.save(lines[name], line)
        info[name] = {"docs": len(st), "tokens": st.num_tokens, "median": float(np.median(lens)),
                      "mean": float(lens.mean()), "max": int(lens.max())}
    log(f"store prepared in {seconds:.1f}s: " + ", ".join(
        f"{n} {v['docs']} docs {v['tokens'] / 1e6:.0f}M tokens" for n, v in info.items()))
    return cfg, lines, info


def line_blocks(path: Path, L: int) -> np.ndarray:
    line = np.load(path, mmap_mode="r")
    n = len(line) // L
    return np.asarray(line[: n * L]).reshape(n, L)


# ---------------------------------------------------------------------------------------------
# mixbatch
# ---------------------------------------------------------------------------------------------
LOADERS: list[Any] = []  # the latest MixbatchDataLoader made (its workers' task counts)


def mixbatch_iter(cfg, workers: int, n: int, **kw: Any) -> Iterator[Any]:
    from mixbatch.torch import MixbatchDataLoader

    dl = MixbatchDataLoader(cfg, num_workers=workers, max_steps=n, **kw)
    LOADERS[:] = [dl]
    return iter(dl)


def inline_share() -> float | None:
    """The share of tasks the latest loader's main process read itself (None: 0 workers)."""
    readers = LOADERS[0]._readers if LOADERS else None
    if readers is None:
        return None
    return readers.inline / max(readers.inline + readers.sent, 1)


def tracked(make: Callable[[], Iterator[Any]], shares: list[float]) -> Callable[[], Iterator[Any]]:
    """``make`` whose runs append the share of tasks the main process read to ``shares``."""
    def run() -> Iterator[Any]:
        try:
            yield from make()
        finally:  # the timed loop stops at its last batch
            share = inline_share()
            if share is not None:
                shares.append(share)
    return run


def long_runs(cfg, args) -> list[tuple[str, int, Any, list[float]]]:
    """Steady state: ``--long-batches`` per run, the pacer on and off, in rounds."""
    cases = [("adaptive", 0, {})]
    cases += [(name, w, {"adaptive": flag}) for w in args.workers if w
              for name, flag in (("adaptive", True), ("adaptive=False", False))]
    shares: list[list[float]] = [[] for _ in cases]
    makes = [tracked(lambda w=w, kw=kw: mixbatch_iter(cfg, w, args.long_batches, **kw), shares[i])
             for i, (_n, w, kw) in enumerate(cases)]
    timings = throughput_rounds(makes, args.long_batches, args.repeat)
    return [(name, w, t, shares[i]) for i, ((name, w, _kw), t) in enumerate(zip(cases, timings,
                                                                               strict=True))]


def plan_only(cfg, n: int) -> Iterator[Any]:
    from mixbatch.loader.loader import MixedLoader

    return iter(MixedLoader(cfg).steps(n))


def plan_materialize(cfg, n: int) -> Iterator[Any]:
    from mixbatch.loader.loader import MixedLoader

    loader = MixedLoader(cfg)
    return (loader.compact_of(s) for s in loader.steps(n))


def burn_5ms(batch: Any) -> Any:
    """5 ms of CPU work per batch, standing in for on-the-fly tokenisation or augmentation."""
    t = time.process_time()
    while time.process_time() - t < 0.005:
        pass
    return batch


def state_diff(a: Any, b: Any, path: str = "") -> str:
    """'identical', or what differs; floats that agree to 1e-12 (relative) are reported as such."""
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        diffs = [state_diff(a[k], b[k], f"{path}.{k}" if path else str(k)) for k in a]
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        diffs = [state_diff(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b, strict=True))]
    elif a == b:
        return "identical"
    elif isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=1e-12):
        return f"identical but for the last bits of the float {path} ({a!r} vs {b!r})"
    else:
        return f"DIFFERENT at {path} ({a!r} vs {b!r})"
    diffs = [d for d in diffs if d != "identical"]
    return "; ".join(diffs) if diffs else "identical"


def fast_forward(cfg_ff, factor: int, targets: list[int]) -> tuple[dict[int, dict], float]:
    """States at each target step (a multiple of ``factor``) from the loader of ``factor``-times
    larger batches: its step j ends where step j * factor of the small loader ends."""
    from mixbatch.loader.loader import MixedLoader

    loader = MixedLoader(cfg_ff)
    states: dict[int, dict] = {}
    t0 = time.perf_counter()
    want = sorted({t // factor for t in targets})
    for _ in loader.steps(want[-1]):
        if loader.step in want:
            s = loader.state_dict(canonical=True)
            s["step"] = loader.step * factor
            states[loader.step * factor] = s
            log(f"  fast-forward: state at step {loader.step * factor:,} "
                f"({time.perf_counter() - t0:.1f}s)")
    return states, time.perf_counter() - t0


def bench_mixbatch(cfg, args, workdir: Path) -> dict[str, Any]:
    import torch

    from mixbatch.loader.loader import MixedLoader

    n, B, L = args.batches, args.batch, args.seq_len
    res: dict[str, Any] = {"throughput": [], "resume": []}
    only_workers = args.only == "workers"
    cases = [] if only_workers else [
        ("MixedLoader.steps (plan only, NumPy)", "", lambda: plan_only(cfg, n)),
        ("MixedLoader.steps + compact_of (NumPy)", "", lambda: plan_materialize(cfg, n))]
    cases += [("MixbatchDataLoader", str(w), (lambda w=w: mixbatch_iter(cfg, w, n)))
              for w in args.workers]
    cases += [] if only_workers else [("MixbatchDataLoader, fields=all", "0",
                                       lambda: mixbatch_iter(cfg, 0, n, fields="all"))]
    cases += [("MixbatchDataLoader, pin_memory=True", str(w),
               (lambda w=w: mixbatch_iter(cfg, w, n, pin_memory=True)))
              for w in (args.workers if only_workers
                        else sorted({args.workers[0], args.workers[-1]}))]
    for packing in () if only_workers else ("bfd", "pad_buckets"):
        pc = config(workdir, args, packing=packing)
        cases += [(f"MixbatchDataLoader, packing={packing}", str(w),
                   (lambda w=w, pc=pc: mixbatch_iter(pc, w, n)))
                  for w in sorted({args.workers[0], args.workers[-1]})]
    cases += [("MixbatchDataLoader, adaptive=False", str(args.workers[-1]),
               lambda: mixbatch_iter(cfg, args.workers[-1], n, adaptive=False))] \
        if args.workers[-1] else []
    log(f"mixbatch: {len(cases)} loaders, {args.repeat} rounds")
    timings = throughput_rounds([make for _n, _w, make in cases], n, args.repeat)
    for (name, workers, _make), t in zip(cases, timings, strict=True):
        res["throughput"].append(("mixbatch", name, workers, "tokens, exact prefix", t))
    # 5 ms of CPU per batch in the workers (on-the-fly work): do workers add speed?
    log(f"mixbatch: transform=5 ms of CPU, workers {args.workers}")
    burn_shares: list[list[float]] = [[] for _ in args.workers]
    burns = throughput_rounds([tracked(lambda w=w: mixbatch_iter(cfg, w, args.burn_batches,
                                                                 transform=burn_5ms), sh)
                               for w, sh in zip(args.workers, burn_shares, strict=True)],
                              args.burn_batches, args.repeat)
    res["burn"] = list(zip(args.workers, burns, strict=True))
    res["burn_shares"] = burn_shares
    if args.long_batches:
        log(f"mixbatch: workers' steady state, {args.long_batches} batches per run")
        res["long"] = long_runs(cfg, args)
    if only_workers:
        return res

    # mixing: tokens per source in each batch, and a check that source_ids match the letters
    log("mixbatch: mixing check")
    counts = []
    for b in mixbatch_iter(cfg, 0, args.share_batches, fields="all"):
        src = b["source_ids"].numpy()
        counts.append(np.bincount(src[src >= 0], minlength=len(NAMES)))
        ids = b["input_ids"].numpy()
        letter = (ids < 128) & (ids != ord(" "))
        if not np.array_equal(np.searchsorted(LETTER_EDGES, ids[letter], side="right"), src[letter]):
            raise SystemExit("mixbatch: source_ids disagree with the tokens' letters")
    res["share"] = share_stats(np.array(counts))

    # profile of the 0-worker DataLoader
    if args.profile_top:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        for _ in mixbatch_iter(cfg, 0, n):
            pass
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(args.profile_top)
        text = buf.getvalue()
        text = text[text.index("ncalls"):] if "ncalls" in text else text
        res["profile"] = re.sub(r"/\S*/(src|site-packages|python3\.\d+)/", "", text).rstrip()
        prof = cProfile.Profile()
        big = MixedLoader(config(workdir, args, B * args.ff_factor))
        prof.enable()
        for _ in big.steps(3):
            pass
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(8)
        text = buf.getvalue()
        text = text[text.index("ncalls"):] if "ncalls" in text else text
        res["profile_ff"] = re.sub(r"/\S*/(src|site-packages|python3\.\d+)/", "", text).rstrip()

    # resume: verify the fast-forward on the small scale, then build the states
    small = MixedLoader(cfg)
    for _ in small.steps(args.ff_factor):
        pass
    real = small.state_dict(canonical=True)
    targets = sorted({int(s) for s in args.resume_steps})
    bad = [t for t in targets if t % args.ff_factor]
    if bad:
        raise SystemExit(f"--resume-steps {bad}: not multiples of --ff-factor {args.ff_factor}")
    log(f"mixbatch: fast-forward to {targets[-1]:,} steps with batches of {B * args.ff_factor} rows")
    cfg_ff = config(workdir, args, B * args.ff_factor)
    states, ff_seconds = fast_forward(cfg_ff, args.ff_factor, sorted(set(targets) | {args.ff_factor}))
    ff1 = states[args.ff_factor]
    same = {k: state_diff(real[k], ff1[k]) for k in ("feed", "shaper")}
    b_real = next(mixbatch_iter(cfg, 0, 1, state=real, fields="all"))
    b_ff = next(mixbatch_iter(cfg, 0, 1, state=ff1, fields="all"))
    same["next batch"] = "identical" if all(
        torch.equal(b_real[k], b_ff[k]) for k in ("input_ids", "source_ids", "doc_ids")) else "DIFFERENT"
    res["ff"] = {"same": same, "seconds": ff_seconds, "steps": targets[-1],
                 "tokens": targets[-1] * B * L, "rows": B * args.ff_factor}
    log(f"  check at step {args.ff_factor}: {same}")

    def resume(state: dict | None) -> Callable[[], Any]:
        return lambda: next(mixbatch_iter(cfg, 0, 1, state=state))

    res["resume"].append(("mixbatch", 0, "fresh start (reference)",
                          resume_cost(resume(None), args.resume_repeat)))
    for t in targets:
        log(f"mixbatch: resume at {t:,}")
        st = states[t]
        size = len(json.dumps(st))
        r = resume_cost(resume(st), args.resume_repeat)
        r["state_bytes"] = size
        res["resume"].append(("mixbatch", t, "measured (state from fast-forward)", r))
    return res


# ---------------------------------------------------------------------------------------------
# LitData
# ---------------------------------------------------------------------------------------------
def _lit_slab(arg: tuple[str, int, int]) -> np.ndarray:
    path, a, b = arg
    return np.array(np.load(path, mmap_mode="r")[a:b])


def lit_optimize(out: Path, lines: list[Path], L: int) -> None:
    import multiprocessing as mp

    import litdata as ld
    from litdata.streaming.item_loader import TokensLoader

    slab = L * 256
    inputs = []
    for p in lines:
        n = len(np.load(p, mmap_mode="r"))
        inputs += [(str(p), a, min(a + slab, n)) for a in range(0, n, slab)]
    # optimize() sets the process-wide start method (to spawn by default): every DataLoader
    # worker started afterwards would re-import torch (seconds per worker). Put it back.
    before = mp.get_start_method(allow_none=True)
    try:
        ld.optimize(fn=_lit_slab, inputs=inputs, output_dir=str(out), chunk_size=L * 1024,
                    item_loader=TokensLoader(), num_workers=2, mode="overwrite", verbose=False,
                    start_method="fork")
    finally:
        mp.set_start_method(before, force=True)


def lit_tile(src: Path, dst: Path, copies: int) -> int:
    """A dataset of ``copies`` copies of ``src``'s chunks (hard links, no disk), for a long run."""
    index = json.loads((src / "index.json").read_text())
    dst.mkdir(parents=True)
    chunks = []
    for c in range(copies):
        for ch in index["chunks"]:
            name = f"t{c}-{ch['filename']}"
            os.link(src / ch["filename"], dst / name)
            chunks.append({**ch, "filename": name})
    (dst / "index.json").write_text(json.dumps({**index, "chunks": chunks}))
    return len(chunks)


def lit_counts(samples: int, seed: int) -> list[int]:
    """Samples per source after ``samples`` draws of CombinedStreamingDataset (its own rule:
    one ``random.Random(seed).choices`` per sample)."""
    rng = random.Random(seed)
    counts = [0] * len(NAMES)
    idx, w = list(range(len(NAMES))), WEIGHTS.tolist()
    for _ in range(samples):
        counts[rng.choices(idx, weights=w, k=1)[0]] += 1
    return counts


def lit_state(template: dict, counts: list[int]) -> dict:
    s = copy.deepcopy(template)
    for i, c in enumerate(counts):
        s["dataset"][str(i)]["num_samples_yielded"] = c
        s["dataset"][str(i)]["sample_in_epoch"] = c
    s["num_samples_yielded"] = {0: list(counts)}
    return s


def bench_litdata(lines: dict[str, Path], args, workdir: Path) -> dict[str, Any]:
    import torch
    from litdata import CombinedStreamingDataset, StreamingDataLoader, StreamingDataset
    from litdata.streaming.item_loader import TokensLoader

    n, B, L = args.batches, args.batch, args.seq_len
    res: dict[str, Any] = {"throughput": [], "resume": []}
    root = workdir / "litdata"
    t0 = time.perf_counter()
    lit_optimize(root / "all", [lines[k] for k in NAMES], L)
    for name in NAMES:
        lit_optimize(root / name, [lines[name]], L)
    res["optimize_s"] = time.perf_counter() - t0
    # sized for the run: each source holds what `run_steps` batches draw from it, +10 %
    copies, n_chunks = {}, 0
    for i, name in enumerate(NAMES):
        per_copy = sum(c["dim"] // L for c in json.loads((root / name / "index.json").read_text())["chunks"])
        copies[name] = math.ceil(args.run_steps * B * WEIGHTS[i] * 1.1 / per_copy)
        n_chunks += lit_tile(root / name, root / f"run-{name}", copies[name])
    res["tiles"] = {"copies": copies, "chunks": n_chunks}
    log(f"litdata: optimize {res['optimize_s']:.1f}s; run-sized dataset {copies} copies, "
        f"{n_chunks} chunk links")

    def ds(path: Path) -> StreamingDataset:
        return StreamingDataset(str(path), item_loader=TokensLoader(block_size=L), shuffle=True,
                                seed=args.seed)

    def combined() -> CombinedStreamingDataset:
        return CombinedStreamingDataset([ds(root / f"run-{k}") for k in NAMES], seed=args.seed,
                                        weights=WEIGHTS.tolist(), iterate_over_all=False)

    for w in args.workers:
        log(f"litdata: StreamingDataLoader {w}")
        res["throughput"].append((
            "LitData", "StreamingDataset(TokensLoader), 3 sources in one dataset", str(w),
            "none (one dataset)",
            throughput(lambda w=w: iter(StreamingDataLoader(ds(root / "all"), batch_size=B,
                                                            num_workers=w)), n, args.repeat)))
    for w in sorted({args.workers[0], args.workers[-1]}):
        log(f"litdata: CombinedStreamingDataset {w}")
        res["throughput"].append((
            "LitData", "CombinedStreamingDataset(weights)", str(w), "samples, i.i.d. draws",
            throughput(lambda w=w: iter(StreamingDataLoader(combined(), batch_size=B,
                                                            num_workers=w)), n, args.repeat)))
    counts = []
    for k, b in enumerate(StreamingDataLoader(combined(), batch_size=B, num_workers=0)):
        counts.append(np.bincount(rows_source(b), minlength=len(NAMES)) * L)
        if k + 1 >= args.share_batches:
            break
    res["share"] = share_stats(np.array(counts))

    # resume: a real state at the first step, then states built from the same RNG replay
    steps = sorted({int(s) for s in args.litdata_resume_steps})
    dl = StreamingDataLoader(combined(), batch_size=B, num_workers=0)
    it = iter(dl)
    for _ in range(3):
        next(it)
    template = copy.deepcopy(dl.state_dict())
    for _ in range(steps[0] - 3):
        next(it)
    real = copy.deepcopy(dl.state_dict())
    expected = next(it)
    del it, dl
    built = lit_state(template, lit_counts(steps[0] * B, args.seed))
    check = {"state": json.dumps(built, sort_keys=True, default=str)
             == json.dumps(real, sort_keys=True, default=str)}

    def resume(state: dict | None) -> Callable[[], Any]:
        def fn() -> Any:
            dl = StreamingDataLoader(combined(), batch_size=B, num_workers=0)
            if state is not None:
                dl.load_state_dict(copy.deepcopy(state))
            return next(iter(dl))
        return fn

    check["next batch"] = bool(torch.equal(resume(built)(), expected))
    res["check"] = check
    log(f"litdata: check at step {steps[0]}: {check}")
    res["resume"].append(("LitData CombinedStreamingDataset", 0, "fresh start (reference)",
                          resume_cost(resume(None), args.resume_repeat)))
    for t in steps:
        log(f"litdata: resume at {t:,}")
        r = resume_cost(resume(lit_state(template, lit_counts(t * B, args.seed))), args.resume_repeat)
        r["state_bytes"] = len(json.dumps(lit_state(template, [0, 0, 0]), default=str))
        res["resume"].append(("LitData CombinedStreamingDataset", t, "measured (state built, see check)", r))
    return res


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets
# ---------------------------------------------------------------------------------------------
def bench_hf(lines: dict[str, Path], args, workdir: Path) -> dict[str, Any]:
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HOME"] = str(workdir / "hf")
    import pyarrow as pa
    import torch
    from datasets import Dataset, interleave_datasets

    B, L = args.batch, args.seq_len
    res: dict[str, Any] = {"throughput": [], "resume": []}
    tables = {}
    for name in NAMES:
        blocks = line_blocks(lines[name], L)
        tables[name] = pa.table({"input_ids": pa.FixedSizeListArray.from_arrays(pa.array(blocks.ravel()), L)})

    def mixed():
        its = [Dataset(tables[k]).to_iterable_dataset(num_shards=16) for k in NAMES]
        return interleave_datasets(its, probabilities=WEIGHTS.tolist(), seed=args.seed).with_format("torch")

    def batches(ds) -> Iterator[Any]:
        it = iter(ds)
        while True:
            yield torch.stack([next(it)["input_ids"] for _ in range(B)])

    log("datasets: interleave_datasets")
    res["throughput"].append(("datasets", "interleave_datasets(probabilities), IterableDataset", "0",
                              "samples, i.i.d. draws",
                              throughput(lambda: batches(mixed()), args.hf_batches, args.repeat)))
    counts = []
    for k, b in enumerate(batches(mixed())):
        counts.append(np.bincount(rows_source(b), minlength=len(NAMES)) * L)
        if k + 1 >= args.hf_batches:
            break
    res["share"] = share_stats(np.array(counts))
    res["share"]["batches"] = args.hf_batches

    def resume(state: dict | None) -> Callable[[], Any]:
        def fn() -> Any:
            ds = mixed()
            if state is not None:
                ds.load_state_dict(copy.deepcopy(state))
            return next(batches(ds))
        return fn

    res["resume"].append(("datasets interleave_datasets", 0, "fresh start (reference)",
                          resume_cost(resume(None), args.resume_repeat)))
    for t in sorted({int(s) for s in args.hf_resume_steps}):
        log(f"datasets: iterate {t:,} steps for a real state")
        ds = mixed()
        it = batches(ds)
        for _ in range(t):
            next(it)
        state = copy.deepcopy(ds.state_dict())
        expected = next(it)
        del it, ds
        r = resume_cost(resume(state), args.resume_repeat)
        r["state_bytes"] = len(json.dumps(state, default=str))
        r["check"] = bool(torch.equal(resume(state)(), expected))
        res["resume"].append(("datasets interleave_datasets", t, "measured (real state)", r))
    return res


# ---------------------------------------------------------------------------------------------
# MosaicML Streaming (in its own venv: this script, run again as a child process)
# ---------------------------------------------------------------------------------------------
def _stub_torchvision() -> None:
    """``streaming`` imports torchvision for ``streaming.vision`` only; PyPI's torchvision links
    the CUDA build of torch, which the CPU venv lacks. Stand-ins keep the import working."""
    import importlib.machinery
    import types

    mods = {m: types.ModuleType(m) for m in ("torchvision", "torchvision.datasets",
                                             "torchvision.transforms",
                                             "torchvision.transforms.functional")}
    for name, m in mods.items():
        m.__spec__ = importlib.machinery.ModuleSpec(name, None)
    mods["torchvision.datasets"].VisionDataset = type("VisionDataset", (), {})
    mods["torchvision.datasets"].CIFAR10 = None
    mods["torchvision.transforms.functional"].to_tensor = None
    mods["torchvision"].datasets = mods["torchvision.datasets"]
    mods["torchvision"].transforms = mods["torchvision.transforms"]
    mods["torchvision.transforms"].functional = mods["torchvision.transforms.functional"]
    sys.modules.update(mods)


def _timing_to_json(t: Timing) -> dict:
    return {"runs": t.runs, "background": t.background, "key": t.key}


def _timing_from_json(d: dict) -> Timing:
    return Timing(runs=d["runs"], background=d["background"], key=d["key"])


def streaming_child(job: Path) -> None:
    """Runs under .venv-streaming: MDS shards, throughput, mixing, resume; writes JSON."""
    spec = json.loads(job.read_text())
    args = parse_args(spec["argv"])
    set_wait_budget(spec["wait_budget"])
    _stub_torchvision()
    import torch
    from streaming import MDSWriter, Stream, StreamingDataLoader, StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    B, L, n = args.batch, args.seq_len, args.batches
    root = Path(spec["root"])
    t0 = time.perf_counter()
    for name in NAMES:
        # 4 MiB shards, as LitData's chunks (the default, 64 MiB, would make one shard a source)
        with MDSWriter(out=str(root / name), columns={"input_ids": f"ndarray:uint16:{L}"},
                       size_limit=1 << 22) as w:
            for row in line_blocks(Path(spec["lines"][name]), L):
                w.write({"input_ids": row})
    out: dict[str, Any] = {"write_s": time.perf_counter() - t0, "throughput": [], "resume": []}
    epoch = int(args.run_steps * B + 1000 * B)

    def dataset(proportion: bool, epoch_size: int | None = None) -> StreamingDataset:
        clean_stale_shared_memory()
        streams = [Stream(local=str(root / k), proportion=float(w) if proportion else None)
                   for k, w in zip(NAMES, WEIGHTS, strict=True)]
        return StreamingDataset(streams=streams, batch_size=B, shuffle=True, shuffle_seed=args.seed,
                                epoch_size=epoch_size)

    def loader(proportion: bool, workers: int, epoch_size: int | None = None) -> StreamingDataLoader:
        return StreamingDataLoader(dataset(proportion, epoch_size), batch_size=B, num_workers=workers)

    def batches(dl: StreamingDataLoader) -> Iterator[Any]:
        return (b["input_ids"] for b in dl)

    for w in args.workers:
        log(f"streaming: StreamingDataset {w}")
        out["throughput"].append(["MosaicML Streaming", "StreamingDataset, 3 streams", str(w),
                                  "none (one epoch of all)",
                                  _timing_to_json(throughput(lambda w=w: batches(loader(False, w)),
                                                             n, args.repeat))])
    for w in sorted({args.workers[0], args.workers[-1]}):
        log(f"streaming: Stream(proportion) {w}")
        out["throughput"].append(["MosaicML Streaming", "Stream(proportion), batching 'random'",
                                  str(w), "samples, exact per epoch",
                                  _timing_to_json(throughput(lambda w=w: batches(loader(True, w)),
                                                             n, args.repeat))])
    counts = []
    for k, b in enumerate(batches(loader(True, 0))):
        counts.append((np.bincount(rows_source(b), minlength=len(NAMES)) * L).tolist())
        if k + 1 >= args.share_batches:
            break
    out["share_counts"] = counts

    # resume: a real state after `first` steps of the run-sized epoch, then states built alike
    first = int(min(args.resume_steps))
    dl = loader(True, 0, epoch)
    it = batches(dl)
    for _ in range(first):
        next(it)
    real = copy.deepcopy(dl.state_dict())
    expected = next(it)
    del it, dl

    def build(step: int) -> dict:
        return {**real, "sample_in_epoch": step * B}

    def resume(state: dict | None) -> Callable[[], Any]:
        def fn() -> Any:
            dl = loader(True, 0, epoch)
            if state is not None:
                dl.load_state_dict(copy.deepcopy(state))
            return next(batches(dl))
        return fn

    out["check"] = {"state": build(first) == real,
                    "next batch": bool(torch.equal(resume(build(first))(), expected))}
    log(f"streaming: check at step {first}: {out['check']}")
    for t in [0, *sorted({int(s) for s in args.resume_steps})]:
        log(f"streaming: resume at {t:,}")
        r = resume_cost(resume(build(t) if t else None), args.resume_repeat)
        r["timing"] = _timing_to_json(r["timing"])
        r["state_bytes"] = len(json.dumps(build(t)))
        how = "fresh start (reference)" if t == 0 else "measured (state built, see check)"
        out["resume"].append(["MosaicML Streaming Stream(proportion)", t, how, r])
    clean_stale_shared_memory()
    from importlib import metadata

    out["versions"] = {p: metadata.version(p) for p in ("mosaicml-streaming", "numpy", "torch")}
    out["background"] = BACKGROUND
    Path(spec["result"]).write_text(json.dumps(out))


def bench_streaming(lines: dict[str, Path], args, workdir: Path) -> dict[str, Any] | str:
    py = args.streaming_python
    if not py.exists():
        return f"skipped: {py} not found (see benchmarks/README.md)"
    from _common import _wait_budget

    job = workdir / "streaming-job.json"
    result = workdir / "streaming-result.json"
    job.write_text(json.dumps({"argv": sys.argv[1:], "root": str(workdir / "mds"), "result": str(result),
                               "lines": {k: str(v) for k, v in lines.items()},
                               "wait_budget": _wait_budget[0]}))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent)}
    proc = subprocess.run([str(py), str(Path(__file__).resolve()), "--streaming-child", str(job)],
                          env=env, stdout=sys.stderr, stderr=sys.stderr, check=False)
    if proc.returncode or not result.exists():
        return f"failed: the child process exited with {proc.returncode} (its output is on stderr)"
    out = json.loads(result.read_text())
    BACKGROUND.extend(out["background"])
    out["throughput"] = [(*r[:4], _timing_from_json(r[4])) for r in out["throughput"]]
    for r in out["resume"]:
        r[3]["timing"] = _timing_from_json(r[3]["timing"])
    out["resume"] = [tuple(r) for r in out["resume"]]
    out["share"] = share_stats(np.array(out["share_counts"]))
    return out


# ---------------------------------------------------------------------------------------------
# the ceiling
# ---------------------------------------------------------------------------------------------
def bench_ceiling(lines: dict[str, Path], args, workdir: Path) -> list:
    import torch

    flat = workdir / "line.bin"
    with open(flat, "wb") as f:
        for name in NAMES:
            f.write(np.load(lines[name], mmap_mode="r").tobytes())
    B, L = args.batch, args.seq_len

    def slices(int64: bool) -> Iterator[Any]:
        mm = np.memmap(flat, dtype=np.uint16, mode="r")
        step, end = B * L, (len(mm) // (B * L)) * B * L
        s = 0
        while True:
            x = mm[s: s + step]
            yield torch.from_numpy(x.astype(np.int64) if int64 else np.array(x)).view(B, L)
            s = (s + step) % end

    rows = []
    for int64, what in ((False, "uint16 copy"), (True, "to int64")):
        log(f"ceiling: memmap {what}")
        rows.append(("np.memmap", f"consecutive ({B}, {L}) slices, {what}", "0", "none",
                     throughput(lambda int64=int64: slices(int64), args.ceiling_batches, args.repeat)))
    return rows


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def fmt_s(x: float) -> str:
    return f"{x * 1e3:.3g} ms" if x < 1 else f"{x:.2f} s"


def _round_ratios(ref: Timing, t: Timing) -> str:
    """Per round (runs interleaved: one of each loader per round), the reference's wall time
    over this one's: a change of the machine's load hits both alike."""
    return " / ".join(f"{a['rest'] / a['n'] / (b['rest'] / b['n']):.2f}"
                      for a, b in zip(ref.runs, t.runs, strict=False))


def worker_tables(args, mb) -> list[str]:
    """The workers' tables: wall and main-process CPU per batch, 5 ms of work per batch, the
    steady state (what ``--only workers`` reports). "per round": the runs are interleaved (one
    of each loader per round), and each round's ratio compares runs made side by side."""
    out: list[str] = []
    wrows = []
    zero: dict[str, Timing] = {}
    plain: dict[str, Timing] = {}
    for _lib, name, workers, _mix, t in mb["throughput"]:
        if not name.startswith("MixbatchDataLoader") or workers == "":
            continue
        per = (t.best["n"] - 1)
        wall = t.best["rest"] / per * 1e6
        main_cpu = min(r["main_cpu"] for r in t.runs) / per * 1e6
        if workers == "0":
            zero[name] = t
        if name == "MixbatchDataLoader":
            plain[workers] = t
        ref = zero.get(name, zero.get("MixbatchDataLoader") if "adaptive" in name else None)
        rw = ref.best["rest"] / (ref.best["n"] - 1) * 1e6 if ref else None
        # pin_memory rows, per round: against the same worker count without it
        same = plain.get(workers) if "pin_memory" in name else None
        rounds = (_round_ratios(ref, t) if ref is not None and workers != "0" else "-") \
            if same is None else "vs unpinned " + _round_ratios(same, t)
        wrows.append([name, workers, f"{wall:.0f}", f"{main_cpu:.0f}",
                      f"{rw / wall:.2f}x" if rw else "-", rounds])
    if wrows:
        out += ["", "## Workers: wall time and the main process's CPU per batch", "",
                table(["loader", "workers", "wall µs / batch (best)",
                       "main-process CPU µs / batch (least)", "speed vs 0 workers (best)",
                       "per round"], wrows, align="llrrrl"),
                "", "With workers the main process plans and hands batches out, and reads a task "
                "itself while the pacer measures that faster (adaptive, the default: in runs this "
                "short, every task after the first pacing period's start); the workers read tokens "
                "and derive the fields. adaptive=False: the workers read every task (against plain "
                "0 workers); on a box with a core free for the workers, the main process's CPU per "
                "batch bounds its wall time per batch. pin_memory=True rows: with no CUDA device "
                "pinning is off, decided once per iteration (the rows differ by noise only)."]
    if mb.get("burn"):
        t0 = next(t for w, t in mb["burn"] if w == 0)
        r0 = (t0.best["n"] - 1) / t0.best["rest"]
        shares = mb.get("burn_shares") or [[] for _ in mb["burn"]]
        brows = [[str(w), f"{(t.best['n'] - 1) / t.best['rest']:.1f}",
                  f"{(t.best['n'] - 1) / t.best['rest'] / r0:.2f}x",
                  "-" if w == 0 else _round_ratios(t0, t),
                  "-" if not sh else " / ".join(f"{x:.2f}" for x in sh),
                  ", ".join(fmt_s(r["rest"]) for r in t.runs) + (" *" if t.noisy() else "")]
                 for (w, t), sh in zip(mb["burn"], shares, strict=True)]
        out += ["", "## Workers with 5 ms of CPU work per batch (`transform=`, run in the workers)",
                "", table(["workers", "batches/s", "vs 0 workers (best)", "per round",
                           "tasks read by the main process (per run)", "runs"], brows,
                          align="lrrlll"),
                "", "Target (issue): 2 workers >= 1.7x 0 workers on the 2-core box. The transform's "
                "CPU time per batch is above the pacer's threshold (1 ms) in its first 2 samples: "
                "the rest of the main process's first task and every task after go to the workers, "
                "cut into tasks of about 10 ms of work (2 steps), unless the main process waited "
                "for a CPU over those batches (every core busy: it keeps reading, and checks "
                "again once per task). The share counts tasks, and the main process's one task "
                "is its first 2 batches."]
    if mb.get("long"):
        t0 = next(t for name, w, t, _s in mb["long"] if w == 0)
        z_wall = t0.best["rest"] / (t0.best["n"] - 1) * 1e6
        lrows = []
        for name, w, t, shares in mb["long"]:
            wall = t.best["rest"] / (t.best["n"] - 1) * 1e6
            lrows.append([str(w), "-" if w == 0 else name, f"{wall:.0f}",
                          f"{z_wall / wall:.2f}x", "-" if w == 0 else _round_ratios(t0, t),
                          "-" if not shares else " / ".join(f"{x:.2f}" for x in shares),
                          ", ".join(fmt_s(r["rest"]) for r in t.runs)
                          + (" *" if t.noisy() else "")])
        out += ["", f"## Workers in the steady state ({args.long_batches} batches per run)", "",
                table(["workers", "pacing", "wall µs / batch (best)", "vs 0 workers (best)",
                       "per round", "tasks read by the main process (per run)", "runs"], lrows,
                      align="llrrlll"),
                "", "adaptive (the default): the main process reads tasks itself while that "
                "measures faster than the workers, probing the workers for a period (>= 0.2 s) "
                "at growing gaps (mixbatch.torch.pacing); adaptive=False: the workers read every "
                "task. The throughput rows above run 300 batches, under one pacing period: their "
                "worker rows are read by the main process."]
    return out


def report(args, info, ceiling, mb, lit, hf, stm) -> str:
    B, L = args.batch, args.seq_len
    tok = B * L
    thr = list(ceiling) + mb["throughput"]
    notes = []
    for name, part in (("LitData", lit), ("datasets", hf), ("MosaicML Streaming", stm)):
        if isinstance(part, dict):
            thr += part["throughput"]
        elif part:
            notes.append(f"- {name}: {part}")
    ceil_rate = (ceiling[0][4].best["n"] - 1) * tok / ceiling[0][4].best["rest"]
    rows = []
    for lib, what, workers, mixing, t in thr:
        best = t.best
        rate = (best["n"] - 1) * tok / best["rest"]
        long = best["total"] > 0.3
        cpu = f"{best['cpu'] / best['total'] * 100:.0f}%" if long else "-"
        cpu_batch = f"{best['cpu'] / best['n'] * 1e3:.2f}" if long else "-"
        rows.append([lib, what, workers, mixing, fmt_s(best["first"]), human(rate),
                     f"{rate / ceil_rate:.3f}", cpu, cpu_batch,
                     ", ".join(fmt_s(r["rest"]) for r in t.runs) + (" *" if t.noisy() else "")])
    out = [
        "", "## Throughput (best of the runs)", "",
        table(["library", "loader", "workers", "mixing", "first batch", "tokens/s", "vs ceiling",
               "CPU / wall", "CPU ms / batch", "runs: time after 1st"], rows, align="llllrrrrrl"),
        "",
        f"tokens/s counts the {B}x{L} positions of each batch after the first, over {args.batches} "
        f"batches ({args.hf_batches} for datasets, {args.ceiling_batches} for the memmap, which wraps "
        f"around the {args.tokens / 1e6:.0f}M tokens). first batch: construction, worker start-up and "
        f"the first batch. CPU / wall: CPU time of the process tree (workers included) over the "
        f"whole run, per wall second (200% = both cores busy), and per batch (the first included): on a "
        f"busy machine CPU per batch moves less than wall time; - for runs under 0.3 s, too short "
        f"for the clock-tick counters). Outputs differ: the anchors and the "
        f"ceiling give one (B, L) uint16 tensor (datasets: int64); MixbatchDataLoader gives, by "
        f"default, three (B, L) int64 tensors (input_ids, labels, position_ids) plus cu_seqlens "
        f"and max_seqlen (fields=all adds source_ids and doc_ids), and keeps the state after "
        f"every batch. The two MixedLoader rows are mixbatch without torch: planning only, and "
        f"planning + reading the tokens into the compact batch (uint16 tokens + sequence table). "
        f"bfd and pad_buckets rows: the same data and seq_len (pad_buckets: token_budget = "
        f"{B}x{L} positions, so steps hold fewer rows of shorter width; tokens/s counts real "
        f"tokens for those rows, below).",
    ]
    lit_mixed = [r for r in thr if r[0] == "LitData" and r[1].startswith("Combined")]
    if lit_mixed:
        lm = {r[2]: r[4].best for r in lit_mixed}
        ref = lm.get("0") or next(iter(lm.values()))
        ref_rate = (ref["n"] - 1) * tok / ref["rest"]
        vrows = []
        for _lib, what, workers, _mixing, t in mb["throughput"]:
            if not what.startswith("MixbatchDataLoader"):
                continue
            b = t.best
            vrows.append([what, workers, human((b["n"] - 1) * tok / b["rest"]),
                          f"{(b['n'] - 1) * tok / b['rest'] / ref_rate:.2f}x"])
        out += ["", "## Against LitData CombinedStreamingDataset(weights), 0 workers, same run", "",
                table(["mixbatch loader", "workers", "positions/s", "vs LitData mixed"], vrows,
                      align="llrr"),
                "", "Targets (issue): concat at 0 workers >= 1.0x; bfd and pad_buckets >= 0.5x. "
                "Positions/s for pad_buckets counts B x seq_len per batch like every other row, "
                "although its batches are budgets of real tokens plus padding of varying shape."]
    out += worker_tables(args, mb)
    # mixing
    srows = []
    parts = [("mixbatch", "MixbatchDataLoader, token-deficit rule", mb["share"], args.share_batches)]
    if isinstance(lit, dict):
        parts.append(("LitData", "CombinedStreamingDataset(weights)", lit["share"], args.share_batches))
    if isinstance(stm, dict):
        parts.append(("MosaicML Streaming", "Stream(proportion)", stm["share"], args.share_batches))
    if isinstance(hf, dict):
        parts.append(("datasets", "interleave_datasets(probabilities)", hf["share"], args.hf_batches))
    for lib, what, s, nb in parts:
        srows.append([lib, what, nb, human(s["tokens"]), " / ".join(f"{x:.4f}" for x in s["share"]),
                      f"{s['final_err']:.4f}", human(s["final_tok"]), human(s["max_prefix_tok"])])
    max_doc = max(v["max"] for v in info.values())
    out += [
        "", f"## Mixing: realised token shares, target {' / '.join(f'{w:.1f}' for w in WEIGHTS)} "
            f"({' / '.join(NAMES)})", "",
        table(["library", "rule", "batches", "tokens", "realised shares", "max |share - w|",
               "max |c_i - w_i n| at end", "same, max over all batch prefixes"], srows,
              align="llrrlrrr"),
        "",
        f"c_i: tokens (positions, end-of-document tokens included) fed from source i; n: all tokens "
        f"fed. An anchor's row is one {L}-token block of one source (source read from its letters); "
        f"mixbatch's rows mix documents of several sources (counted per position from source_ids, "
        f"checked against the letters). mixbatch's planner bound is one piece of at most "
        f"seq_len = {L} tokens (long documents are planned as pieces); documents here are up to "
        f"{human(max_doc)} tokens long (mean "
        + ", ".join(f"{n} {info[n]['mean']:.0f}" for n in NAMES) + ").",
    ]
    # resume
    rrows = []
    allres = list(mb["resume"])
    for part in (lit, stm, hf):
        if isinstance(part, dict):
            allres += part["resume"]
    fresh = {lib: r["timing"].best["total"] for lib, step, how, r in allres if step == 0}
    for lib, step, how, r in allres:
        t = r["timing"]
        over = t.best["total"] - fresh[lib]
        rrows.append([lib, f"{step:,}" if step else "-", how, fmt_s(t.best["total"]),
                      "-" if step == 0 else fmt_s(over) if over >= 0 else f"-{fmt_s(-over)}",
                      f"{r['rss_mib']:.1f}", f"{r['traced_mib']:.1f}",
                      human(r.get("state_bytes", 0)) + " B" if step else "-",
                      ", ".join(fmt_s(x["total"]) for x in t.runs) + (" *" if t.noisy() else "")])
    # LitData: extrapolate linearly when the growth is linear
    extra_lines = []
    if isinstance(lit, dict):
        pts = [(step, r["timing"].best["total"] - fresh["LitData CombinedStreamingDataset"])
               for lib, step, how, r in lit["resume"] if step]
        if len(pts) >= 3:
            x = np.array([p[0] for p in pts], float)
            y = np.array([p[1] for p in pts], float)
            slope, icpt = np.polyfit(x, y, 1)
            pred = slope * x + icpt
            r2 = 1 - ((y - pred) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-30)
            linear = r2 > 0.98 and slope > 0
            beyond = [int(s) for s in args.resume_steps if s > x.max()]
            if linear:
                for s in beyond:
                    rrows.append(["LitData CombinedStreamingDataset", f"{s:,}",
                                  f"EXTRAPOLATED (linear fit of the measured overheads, R^2 {r2:.3f})",
                                  fmt_s(fresh["LitData CombinedStreamingDataset"] + slope * s + icpt),
                                  fmt_s(slope * s + icpt), "-", "-", "-", "-"])
                extra_lines.append(f"LitData's resume overhead grows {slope * 1e6 / B:.3g} ms per "
                                   f"1000 samples yielded (fit over {len(pts)} points, R^2 {r2:.3f}).")
            else:
                extra_lines.append(f"LitData's measured overheads are not clearly linear (R^2 {r2:.3f}); "
                                   "not extrapolated.")
    ff = mb["ff"]
    out += [
        "", "## Resume: construct the loader, load the state, take the first batch (0 workers)", "",
        table(["loader", "at step", "how", "time", "over fresh start", "RSS peak +MiB",
               "tracemalloc peak MiB", "state (JSON)", "runs"], rrows, align="lllrrrrrl"),
        "",
        "RSS peak: growth of the process's peak resident set during the call (VmHWM, reset before "
        "it; file pages mapped and touched count). tracemalloc: peak of Python and NumPy "
        "allocations in a separate run (not torch's own). The anchors' datasets are sized for a "
        f"run of {args.run_steps:,.0f} steps of {B} rows: LitData's sources are "
        + (", ".join(f"{k} x{v}" for k, v in lit['tiles']['copies'].items())
           + f" copies of their chunks ({lit['tiles']['chunks']} chunk files, hard links)"
           if isinstance(lit, dict) else "-")
        + f"; Streaming's epoch_size is {args.run_steps * B + 1000 * B:,.0f} samples. "
        "The fresh start of each loader uses the same dataset as its resumes.",
        "",
        f"mixbatch's states come from a loader with batch.batch_size {ff['rows']} "
        f"({args.ff_factor}x): fast-forwarding to step {ff['steps']:,} ({human(ff['tokens'])} "
        f"tokens planned, no tokens read) took {ff['seconds']:.1f} s. Check on the small scale, "
        f"{args.ff_factor} steps of {B} rows against 1 step of {ff['rows']} rows: "
        + ", ".join(f"`{k}` {v}" for k, v in ff["same"].items()) + ".",
    ]
    if isinstance(lit, dict):
        out.append(f"LitData's states at 10^4 and above are its real state at "
                   f"{int(min(args.litdata_resume_steps)):,} steps with the per-source counters of "
                   f"its own replay (one `random.Random(seed).choices` per sample); at "
                   f"{int(min(args.litdata_resume_steps)):,} steps the built state is "
                   f"{'identical to' if lit['check']['state'] else 'DIFFERENT from'} the real one and "
                   f"its first batch {'equals' if lit['check']['next batch'] else 'DIFFERS from'} the "
                   "uninterrupted run's. " + " ".join(extra_lines))
    if isinstance(stm, dict):
        out.append(f"Streaming's state is (epoch, sample_in_epoch, ...): built states set "
                   f"sample_in_epoch = step x {B}; at {int(min(args.resume_steps)):,} steps the built "
                   f"state is {'identical to' if stm['check']['state'] else 'DIFFERENT from'} the real one "
                   f"and its first batch {'equals' if stm['check']['next batch'] else 'DIFFERS from'} "
                   "the uninterrupted run's.")
    if isinstance(hf, dict):
        checks = [r.get("check") for lib, step, how, r in hf["resume"] if step]
        out.append("datasets' states are real (reached by iterating, which costs its per-example "
                   "loop: larger steps take minutes); first batch after resume "
                   + ("equals" if all(checks) else "DIFFERS from") + " the uninterrupted run's.")
    if "profile" in mb:
        out += ["", f"## Profile: MixbatchDataLoader, 0 workers, {args.batches} batches "
                    "(cProfile, by own time)", "", "```", mb["profile"], "```", "",
                f"Fast-forward loader ({B * args.ff_factor} rows per step), 3 steps:", "", "```",
                mb["profile_ff"], "```"]
    if notes:
        out += ["", "Skipped:", *notes]
    return "\n".join(out)


def main() -> None:
    args = parse_args()
    if args.streaming_child is not None:
        # the child's report goes to a file; anything printed goes to stderr
        os.dup2(2, 1)
        streaming_child(args.streaming_child)
        return
    set_wait_budget(args.max_wait)
    # libraries print progress on stdout (some from their own processes): keep stdout for the report
    report_fd = os.dup(1)
    os.dup2(2, 1)
    own_tmp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="mixbatch-bench-loader-")) if own_tmp else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        log(f"writing {args.tokens:.3g} tokens in 3 sources to {workdir} ...")
        cfg, lines, info = build_data(workdir, args)
        if args.only == "workers":  # the worker tables alone (no anchor libraries needed)
            body = "\n".join(worker_tables(args, bench_mixbatch(cfg, args, workdir)))
        else:
            ceiling = bench_ceiling(lines, args, workdir)
            lit = "skipped (--skip-litdata)" if args.skip_litdata else bench_litdata(lines, args, workdir)
            stm = ("skipped (--skip-streaming)" if args.skip_streaming
                   else bench_streaming(lines, args, workdir))
            hf = "skipped (--skip-hf)" if args.skip_hf else bench_hf(lines, args, workdir)
            mb = bench_mixbatch(cfg, args, workdir)
            body = report(args, info, ceiling, mb, lit, hf, stm)
    finally:
        if own_tmp:
            shutil.rmtree(workdir, ignore_errors=True)
    packages = list(PACKAGES)
    extra = {
        "background load": background_summary(),
        "data": f"3 sources, {args.tokens / 1e6:.0f}M byte tokens (uint16): "
                + "; ".join(f"{n} {info[n]['docs']} docs, {info[n]['tokens'] / 1e6:.0f}M tokens, "
                            f"length log-normal(mu={mu}, sigma={args.sigma}) median "
                            f"{info[n]['median']:.0f}, mean {info[n]['mean']:.0f}"
                            for n, _w, _f, mu, _l in SOURCES)
                + f"; page cache warm; packing concat, seq_len {args.seq_len}, batch {args.batch}",
        "streaming venv": ("not used (--only workers)" if args.only == "workers" else
                           ", ".join(f"{k} {v}" for k, v in stm["versions"].items())
                           if isinstance(stm, dict) else str(stm)),
        "wall time": f"{time.perf_counter() - t0:.0f} s",
    }
    text = header("bench_loader: loader throughput, mixing and resume", packages, extra) + "\n" + body
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with os.fdopen(report_fd, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
