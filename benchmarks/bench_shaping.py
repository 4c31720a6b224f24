"""Batch shaping: padding, truncation and speed of every ``batch.packing`` mode, against Lhotse's
``DynamicBucketingSampler`` and ``transformers``' ``DataCollatorWithFlattening``.

Two corpora, each prepared with the byte tokeniser through the public ``prepare`` and read for
one epoch (``max_epochs: 1`` on every source, so every mode sees the same documents):

- the built-in demo corpus (``mixbatch.demo.build_corpus``: Python sources, C headers, man pages
  in three languages), mixed by natural token shares (``temperature: 1``);
- a synthetic long tail: ``--docs`` documents of random lowercase text, lengths log-normal with
  median ``--median`` and ``--sigma`` (one source).

For each of ``concat``, ``pad``, ``bfd``, ``buckets`` and ``pad_buckets`` a ``MixedLoader`` (world
size 1, so every row is materialised) plans the whole epoch with ``.steps()`` and reads every
step with ``.batch_of(step)``. Reported from ``loader.stats.summary()``: padding fraction,
truncated fraction, tokens per step; and the time of steps alone and of steps + batches, split
by wrapping the loader's own methods into the feed (mixture interleaving), the shaper's own work
and the rest (rank assignment, stats, materialising). The *shaping overhead* of a mode is its
time per real token over that of ``concat`` (``concat`` scaled to the same number of real
tokens); the shaper's own share of the loader's time is reported next to it. A plain read of the
same number of tokens as contiguous ``(batch_size, seq_len)`` slices of the stores is the floor.

Side by side, on the same document lengths in the same order (the mixbatch feed's epoch):

- Lhotse ``DynamicBucketingSampler`` over ``MonoCut``s whose duration is the row length that
  ``pad_buckets`` gives the document (``min(n + 1, seq_len)``), ``max_duration`` = the same token
  budget, ``num_buckets`` equal to ours. Padding of a batch = max length × batch size − Σ lengths,
  computed the same way for our ``pad_buckets`` batches (our actual padding, which also rounds
  widths up to a multiple of 8 and pads rows to ``row_multiple``, is reported too).
- ``DataCollatorWithFlattening`` (``return_flash_attn_kwargs=True``, NumPy output) building the
  same batches as ``bfd`` and ``pad_buckets`` (one example per segment of the step, read from the
  same stores), against ``batch_of`` on the same planned steps. It has no fixed shape: it returns
  one ``[1, total_tokens]`` row per batch.

Finally the per-rank cost imbalance (max rank cost / mean, per step) of ``bfd`` at world size 8
with ``batch.balance`` true and false.

Run ``.venv-bench/bin/python benchmarks/bench_shaping.py --help``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import pstats
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from _common import (
    Timing,
    background_summary,
    header,
    human,
    log,
    run_in_workdir,
    table,
    wait_until_quiet,
    warm_page_cache,
)

PACKAGES = ("mixbatch", "numpy", "lhotse", "transformers")
MODES = ("concat", "pad", "bfd", "buckets", "pad_buckets")
TARGET_OVERHEAD = 0.05  # shaping should add less than 5 % to the loader's time
TARGET_BFD_PADDING = 0.01  # bfd at 2048: padding below 1 %
TARGET_MAX = 1024  # longest target length of the synthetic corpus (its second length)

#: the clock of every measurement: CPU seconds of this process, which other processes on a
#: shared machine barely move (wall seconds are reported next to the totals)
clock = time.process_time


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", type=Path, default=None,
                   help="where corpora and stores go (default: a temp folder, removed)")
    p.add_argument("--corpora", nargs="+", default=["builtin", "synthetic"],
                   choices=["builtin", "synthetic"])
    p.add_argument("--mb-per-domain", type=float, default=4.0,
                   help="text per domain of the built-in corpus (MB)")
    p.add_argument("--docs", type=int, default=50_000, help="documents of the synthetic corpus")
    p.add_argument("--median", type=float, default=500.0,
                   help="median document length of the synthetic corpus (tokens)")
    p.add_argument("--sigma", type=float, default=1.2, help="log-normal sigma of the length")
    p.add_argument("--seq-len", type=int, default=2048, help="seq_len of every mode")
    p.add_argument("--batch-size", type=int, default=32,
                   help="rows per step of the fixed-shape modes; the token budget of buckets, "
                        "pad_buckets and Lhotse is batch_size * seq_len")
    p.add_argument("--num-buckets", type=int, default=16,
                   help="pad_buckets' and Lhotse's number of buckets")
    p.add_argument("--row-multiple", type=int, default=8,
                   help="batch.row_multiple of buckets and pad_buckets (8 admits world size 8)")
    p.add_argument("--world-size", type=int, default=8, help="world size of the balance runs")
    p.add_argument("--hf-steps", type=int, default=100,
                   help="steps of bfd and pad_buckets rebuilt by DataCollatorWithFlattening")
    p.add_argument("--profile-steps", type=int, default=300,
                   help="steps profiled (cProfile) for a mode that misses the overhead target")
    p.add_argument("--rounds", type=int, default=5,
                   help="rounds over the five modes for the speed table (each mode once per round)")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs per timed measurement of the other tables")
    p.add_argument("--max-wait", type=float, default=60.0,
                   help="seconds the script may spend, in all, waiting for other processes to "
                        "leave the CPUs idle before timed runs")
    p.add_argument("--skip-lhotse", action="store_true")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


# ---------------------------------------------------------------------------------------------
# corpora
# ---------------------------------------------------------------------------------------------
@dataclass
class Corpus:
    name: str
    describe: str
    sources: dict[str, dict[str, Any]]
    mixture: dict[str, Any]
    store: Path
    stores: dict[str, Any] = field(default_factory=dict)

    def lengths(self) -> np.ndarray:
        return np.concatenate([np.asarray(s.lengths) for s in self.stores.values()])


def write_synthetic(path: Path, n_docs: int, median: float, sigma: float, seed: int) -> None:
    """JSONL of random lowercase words, lengths log-normal (bytes = byte tokens), and a
    ``target`` length per record for the 2-D runs: ``n · lognormal(log 0.3, 0.5)``, clipped to
    1..``TARGET_MAX`` (a target about a third of its input, as in translation or speech)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(math.log(median), sigma, n_docs).astype(np.int64), 1, 1 << 20)
    targets = np.clip(np.round(lengths * rng.lognormal(math.log(0.3), 0.5, n_docs)), 1,
                      TARGET_MAX).astype(np.int64)
    total = int(lengths.sum())
    letters = rng.integers(ord("a"), ord("z") + 1, size=total, dtype=np.uint8)
    letters[rng.random(total) < 0.15] = ord(" ")
    text = letters.tobytes().decode("ascii")
    pos = 0
    with open(path, "w", encoding="ascii") as f:
        for n, t in zip(lengths.tolist(), targets.tolist(), strict=True):
            f.write(json.dumps({"text": text[pos: pos + n], "target": t}) + "\n")
            pos += n


def build_corpora(args: argparse.Namespace, workdir: Path) -> list[Corpus]:
    from mixbatch.config import config_from_dict
    from mixbatch.demo import build_corpus
    from mixbatch.prepare import prepare
    from mixbatch.store import OFFSETS, TOKENS, open_store

    out = []
    for name in args.corpora:
        folder = workdir / name
        if name == "builtin":
            domains = build_corpus(folder / "corpus", max_bytes=int(args.mb_per_domain * (1 << 20)),
                                   seed=args.seed)
            sources = {d.name: {"path": str(d.path), "format": "jsonl", "max_epochs": 1}
                       for d in domains}
            origins = ", ".join(f"{d.name} {d.bytes / 1e6:.1f} MB ({d.origin})" for d in domains)
            corpus = Corpus(name, f"built-in demo corpus: {origins}; natural token shares",
                            sources, {"unit": "tokens", "temperature": 1.0}, folder / "store")
        else:
            path = folder / "synthetic.jsonl"
            folder.mkdir(parents=True, exist_ok=True)
            write_synthetic(path, args.docs, args.median, args.sigma, args.seed)
            corpus = Corpus(name, f"synthetic: {args.docs} documents of random lowercase text, "
                                  f"length log-normal(median {args.median:g}, sigma {args.sigma:g})",
                            {"synthetic": {"path": str(path), "format": "jsonl", "max_epochs": 1,
                                           "second_field": "target"}},
                            {"unit": "tokens", "weights": {"synthetic": 1.0}}, folder / "store")
        cfg = config_from_dict({"tokenizer": "byte", "store": str(corpus.store),
                                "sources": corpus.sources, "mixture": corpus.mixture})
        t0 = time.perf_counter()
        report = prepare(cfg, workers=1, force=True, progress=False)
        log(f"{name}: {report.documents} documents, {report.tokens} tokens, prepared in "
            f"{time.perf_counter() - t0:.1f}s")
        corpus.stores = {n: open_store(corpus.store / n) for n in corpus.sources}
        warm_page_cache([corpus.store / n / f for n in corpus.sources for f in (TOKENS, OFFSETS)])
        out.append(corpus)
    return out


def make_config(corpus: Corpus, mode: str, args: argparse.Namespace, balance: bool = False,
                row_multiple: int | None = None, **extra: Any):
    from mixbatch.config import config_from_dict

    L, B = args.seq_len, args.batch_size
    batch: dict[str, Any] = {"seq_len": L, "packing": mode, "balance": balance}
    if mode not in ("buckets", "pad_buckets"):  # a budget mode's step takes no batch size
        batch["batch_size"] = B
    else:
        batch.update(token_budget=B * L,
                     row_multiple=args.row_multiple if row_multiple is None else row_multiple)
    if mode == "pad_buckets":
        batch["num_buckets"] = args.num_buckets
    batch.update(extra)
    return config_from_dict({"seed": args.seed, "tokenizer": "byte", "store": str(corpus.store),
                             "sources": corpus.sources, "mixture": corpus.mixture,
                             "batch": batch})


def loader_for(corpus: Corpus, cfg, world_size: int = 1):
    from mixbatch.loader.loader import MixedLoader

    return MixedLoader(cfg, rank=0, world_size=world_size, stores=corpus.stores)


# ---------------------------------------------------------------------------------------------
# mixbatch runs
# ---------------------------------------------------------------------------------------------
def _wrap(obj: Any, name: str, acc: dict[str, float], key: str) -> None:
    """Replace ``obj.name`` by a wrapper that adds its wall time to ``acc[key]``."""
    fn = getattr(obj, name)

    def timed_call(*a: Any, **kw: Any) -> Any:
        t0 = clock()
        try:
            return fn(*a, **kw)
        finally:
            acc[key] += clock() - t0

    setattr(obj, name, timed_call)


def run_mixbatch(corpus: Corpus, cfg, batches: bool, world_size: int = 1) -> dict[str, Any]:
    """One epoch of steps (and batches) of rank 0: times, split by part; the loader's summary
    and per-step records (padding, positions, real tokens, rank cost ratio, planning time)."""
    loader = loader_for(corpus, cfg, world_size)
    acc = {"feed": 0.0, "plan_step": 0.0, "batch_of": 0.0}
    _wrap(loader.feed, "take", acc, "feed")
    _wrap(loader.feed, "take_covering", acc, "feed")
    _wrap(loader.shaper, "plan_step", acc, "plan_step")
    _wrap(loader, "batch_of", acc, "batch_of")
    per_step: list[tuple[int, int, int, float]] = []
    add = loader.stats.add

    def record(plan: Any, rank_costs: np.ndarray | None = None, *rest: Any) -> Any:
        ratio = 1.0
        if rank_costs is not None and len(rank_costs) and rank_costs.mean() > 0:
            ratio = float(rank_costs.max() / rank_costs.mean())
        per_step.append((int(plan.pad.sum()), plan.rows * plan.seq_len,
                         int((plan.end - plan.start).sum()), ratio))
        return add(plan, rank_costs, *rest)

    loader.stats.add = record  # type: ignore[method-assign]
    next_step = loader.next_step
    plan_times: list[float] = []

    def timed_next() -> Any:
        t0 = clock()
        step = next_step()
        plan_times.append(clock() - t0)
        return step

    loader.next_step = timed_next  # type: ignore[method-assign]
    steps = 0
    t0, w0 = clock(), time.perf_counter()
    for step in loader.steps():
        if batches:
            loader.batch_of(step)
        steps += 1
    total, wall = clock() - t0, time.perf_counter() - w0
    return {"total": total, "wall": wall, "feed": acc["feed"],
            "shaper": acc["plan_step"] - acc["feed"],
            "batch_of": acc["batch_of"],
            "rest": total - acc["plan_step"] - acc["batch_of"],
            "steps": steps, "summary": loader.stats.summary(),
            "per_step": np.array(per_step, dtype=np.float64).reshape(-1, 4),
            "slowest_step": max(plan_times, default=0.0),
            "tokens": int(loader.fed_tokens.sum()), "docs": int(loader.fed_docs.sum())}


def steady(per_step: np.ndarray) -> np.ndarray:
    """Per-step records without the stream's last step (a finite epoch ends in a part-filled
    step, which a run over many epochs never sees)."""
    return per_step[:-1] if len(per_step) > 1 else per_step


def inspect_mode(corpus: Corpus, cfg, mode: str) -> dict[str, Any]:
    """Untimed pass over the plans: the brief's padding formula per batch, and the bfd checks."""
    loader = loader_for(corpus, cfg)
    lens = {i: np.asarray(s.lengths) for i, s in enumerate(corpus.stores.values())}
    formula_pad = formula_pos = over = 0
    segs: list[tuple[np.ndarray, ...]] = []
    for step in loader.steps():
        p = step.plan
        w = (p.end - p.start + p.eod).astype(np.int64)
        if mode == "pad_buckets":  # one document per row: max len x rows - sum of lens
            formula_pad += int(w.max() * len(w) - w.sum())
            formula_pos += int(w.max() * len(w))
            over += int(p.rows * p.seq_len > cfg.batch.token_budget)
        if mode == "bfd":
            segs.append((p.source.astype(np.int64), p.doc, p.start, p.end, p.eod))
    out: dict[str, Any] = {}
    if mode == "pad_buckets":
        out["formula_padding"] = formula_pad / max(formula_pos, 1)
        out["over_budget"] = over
    if mode == "bfd":
        src, doc, start, end, eod = (np.concatenate(x) for x in zip(*segs, strict=True))
        n = np.empty(len(src), np.int64)
        for s, arr in lens.items():
            n[src == s] = arr[doc[src == s]]
        key = src * (1 << 40) + doc
        uniq, counts = np.unique(key, return_counts=True)
        pieces = dict(zip(uniq.tolist(), counts.tolist(), strict=True))
        short = n < cfg.batch.seq_len  # n tokens + end token fit in one row
        whole = (start == 0) & (end == n) & eod
        one_piece = np.array([pieces[k] == 1 for k in key.tolist()])
        out["short_docs"] = len(np.unique(key[short]))
        out["short_docs_cut"] = len(np.unique(key[short & ~(whole & one_piece)]))
        all_docs = sum(len(a) for a in lens.values())
        out["docs_fed"] = len(uniq)
        out["docs_total"] = int(all_docs)
        out["tokens_fed"] = int((end - start).sum())
    return out


def plain_concat(corpus: Corpus, n_tokens: int, B: int, L: int) -> int:
    """The floor: ``n_tokens`` read as contiguous ``(B, L)`` int64 slices of the stores."""
    chunk = B * L
    got = 0
    for store in corpus.stores.values():
        tok = store.tokens
        for s in range(0, tok.shape[0] - chunk + 1, chunk):
            if got >= n_tokens:
                return got
            got += tok[s: s + chunk].astype(np.int64).reshape(B, L).size
    return got


# ---------------------------------------------------------------------------------------------
# Lhotse
# ---------------------------------------------------------------------------------------------
def feed_lengths(corpus: Corpus, cfg) -> np.ndarray:
    """Document lengths of one epoch, in the order the mixbatch feed plans them."""
    loader = loader_for(corpus, cfg)
    loader.feed.set_weights(loader.current_weights())
    parts = []
    while len(docs := loader.feed.take(4096)):
        parts.append(docs.length)
    return np.concatenate(parts)


def lhotse_cuts(row_len: np.ndarray):
    from lhotse import CutSet, MonoCut  # imported (once) before the timed calls

    cuts = [MonoCut(id=f"d{i}", start=0.0, duration=float(n), channel=0)
            for i, n in enumerate(row_len.tolist())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CutSet(cuts)


def run_lhotse(cuts, budget: int, num_buckets: int, seed: int) -> dict[str, Any]:
    from lhotse.dataset import DynamicBucketingSampler

    t0 = clock()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "eagerly read CutSet": we want it in memory
        sampler = DynamicBucketingSampler(cuts, max_duration=budget, num_buckets=num_buckets,
                                          shuffle=True, seed=seed, world_size=1, rank=0)
        pad = pos = over = 0
        per_batch: list[int] = []
        n_cuts = 0
        for batch in sampler:
            d = [int(c.duration) for c in batch]
            m = max(d)
            over += m * len(d) > budget
            pad += m * len(d) - sum(d)
            pos += m * len(d)
            per_batch.append(sum(d))
            n_cuts += len(d)
    total = clock() - t0
    return {"total": total, "padding": pad / max(pos, 1), "steps": len(per_batch),
            "tokens": sum(per_batch), "min": min(per_batch), "max": max(per_batch),
            "cuts": n_cuts, "bins": len(sampler.duration_bins) + 1, "over_budget": over}


# ---------------------------------------------------------------------------------------------
# transformers' DataCollatorWithFlattening
# ---------------------------------------------------------------------------------------------
def planned_steps(corpus: Corpus, cfg, n: int) -> tuple[Any, list[Any]]:
    loader = loader_for(corpus, cfg)
    return loader, list(loader.steps(n))


def hf_batches(collator, stores: list[Any], eod_id: int, steps: list[Any]) -> tuple[int, float]:
    """Rebuild every step with the collator: one example per segment, read from the stores.
    Returns (tokens, seconds spent in the collator alone)."""
    tokens = 0
    in_collator = 0.0
    eod = np.array([eod_id], dtype=np.int64)
    starts = [np.asarray(store.starts) for store in stores]
    for step in steps:
        p = step.plan
        feats = []
        for s, d, a, b, e in zip(p.source.tolist(), p.doc.tolist(), p.start.tolist(),
                                 p.end.tolist(), p.eod.tolist(), strict=True):
            if b <= a and not e:
                continue
            base = int(starts[s][d])
            ids = stores[s].tokens[base + a: base + b].astype(np.int64)
            feats.append({"input_ids": np.concatenate([ids, eod]) if e else ids})
        t0 = clock()
        out = collator(feats, return_tensors="np")
        in_collator += clock() - t0
        tokens += out["input_ids"].size
    return tokens, in_collator


def mixbatch_batches(loader: Any, steps: list[Any]) -> int:
    n = 0
    for step in steps:
        n += loader.batch_of(step)["input_ids"].size
    return n


# ---------------------------------------------------------------------------------------------
# rank balance
# ---------------------------------------------------------------------------------------------
def run_balance(corpus: Corpus, args: argparse.Namespace, balance: bool) -> dict[str, Any]:
    """Rank 0 of ``world_size`` over one epoch of ``bfd``: steps and its own batches."""
    cfg = make_config(corpus, "bfd", args, balance=balance)
    return run_mixbatch(corpus, cfg, batches=True, world_size=args.world_size)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def main() -> None:
    run_in_workdir(bench, parse_args(), "shaping")


def best_of(repeat: int, fn: Callable[[], dict[str, Any]]) -> tuple[Timing, dict[str, Any]]:
    """Run ``fn`` ``repeat`` times after a wait for a quiet machine; keep the fastest result."""
    t = Timing()
    best: dict[str, Any] | None = None
    for _ in range(repeat):
        bg = wait_until_quiet(interval=0.2)
        r = fn()
        t.add({"total": r["total"]}, bg)
        if best is None or r["total"] < best["total"]:
            best = r
    assert best is not None
    return t, best


def pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def pct3(x: float) -> str:
    return f"{100 * x:.3f} %"


def bench(args: argparse.Namespace, workdir: Path) -> str:
    t_start = time.perf_counter()
    log(f"building corpora in {workdir} ...")
    corpora = build_corpora(args, workdir)
    L, B = args.seq_len, args.batch_size
    budget = B * L
    sections: list[str] = []
    corpus_lines: dict[str, str] = {}
    findings: list[str] = []
    for corpus in corpora:
        n = corpus.lengths()
        long = n >= L
        corpus_lines[f"corpus {corpus.name}"] = (
            f"{corpus.describe}; {len(n)} documents, {int(n.sum())} tokens; length median "
            f"{np.median(n):.0f}, mean {n.mean():.0f}, p99 {np.percentile(n, 99):.0f}, max "
            f"{n.max()}; {long.mean():.1%} of documents ({n[long].sum() / n.sum():.1%} of tokens) "
            f"have >= seq_len tokens")
        sections.append(bench_corpus(corpus, args, budget, findings))
        log(f"{corpus.name} done at {time.perf_counter() - t_start:.0f}s")

    extra = {
        "background load": background_summary(),
        **corpus_lines,
        "shapes": f"seq_len {L}; concat/pad/bfd: {B} rows per step ({budget} positions); "
                  f"buckets and pad_buckets: token_budget {budget}, row_multiple "
                  f"{args.row_multiple}; pad_buckets: num_buckets {args.num_buckets}; bfd: "
                  "pack_window 256 (default); every source max_epochs 1: one epoch per run",
        "timing": "CPU seconds of this process (`time.process_time`), best of "
                  f"{args.rounds} rounds (speed table) or {args.repeat} runs (others), so "
                  "that other jobs on a shared machine move the numbers less than they move "
                  "wall time; the runs columns list every run",
        "runtime": f"{time.perf_counter() - t_start:.0f} s in all",
    }
    out = [header("bench_shaping: batch shapes (padding, truncation, speed)", PACKAGES, extra), "",
           *sections]
    if findings:
        out += ["## Targets missed", "", *[f"- {f}" for f in findings], ""]
    else:
        out += ["## Targets", "", "Every target was met (see the tables).", ""]
    return "\n".join(out)


def bench_corpus(corpus: Corpus, args: argparse.Namespace, budget: int,
                 findings: list[str]) -> str:
    L, B = args.seq_len, args.batch_size
    log(f"{corpus.name}: timing {', '.join(MODES)} ...")
    # rounds over every case, so that a busy spell of the machine hits all modes alike
    full_t = {m: Timing() for m in MODES}
    full_r: dict[str, dict[str, Any]] = {}
    per_token: dict[str, list[float]] = {m: [] for m in MODES}  # seconds per real token, by round
    cfgs = {m: make_config(corpus, m, args) for m in MODES}
    for r in range(args.rounds):
        for m in MODES:
            bg = wait_until_quiet(interval=0.2)
            res = run_mixbatch(corpus, cfgs[m], batches=True)
            per_token[m].append(res["total"] / res["tokens"])
            full_t[m].add({"total": res["total"]}, bg)
            if m not in full_r or res["total"] < full_r[m]["total"]:
                full_r[m] = res
        log(f"  round {r + 1}/{args.rounds} done")
    concat_tokens = full_r["concat"]["tokens"]
    floor_t = Timing()
    floor_s = float("inf")
    for _ in range(args.repeat):
        bg = wait_until_quiet(interval=0.2)
        t0 = clock()
        plain_concat(corpus, concat_tokens, B, L)
        s = clock() - t0
        floor_t.add({"total": s}, bg)
        floor_s = min(floor_s, s)

    checks = {m: inspect_mode(corpus, cfgs[m], m) for m in ("bfd", "pad_buckets")}

    # ---- table 1: shapes
    shape_rows = []
    steady_pad: dict[str, float] = {}
    for m in MODES:
        s = full_r[m]["summary"]
        tps = s["tokens_per_step"]
        st = steady(full_r[m]["per_step"])
        steady_pad[m] = st[:, 0].sum() / max(st[:, 1].sum(), 1)
        shape_rows.append([m, full_r[m]["steps"], human(full_r[m]["tokens"]),
                           pct(s["padding_fraction"]), pct(steady_pad[m]),
                           pct(s["truncated_fraction"]), f"{s['pieces_per_document']:.3f}",
                           f"{tps['min']} / {tps['mean']:.0f} / {tps['max']}",
                           f"{st[:, 2].min():.0f}"])
    # ---- table 2: speed
    speed_rows = []
    over: dict[str, float] = {}
    share: dict[str, float] = {}
    for m in MODES:
        f = full_r[m]
        # paired by round (the modes of a round ran back to back), median over the rounds
        ratios = sorted(a / c - 1 for a, c in zip(per_token[m], per_token["concat"], strict=True))
        over[m] = float(np.median(ratios))
        share[m] = f["shaper"] / max(f["total"] - f["shaper"], 1e-12)
        speed_rows.append([
            m, f"{f['total'] - f['batch_of']:.2f}", f"{f['total']:.2f}", f"{f['wall']:.2f}",
            f"{1e3 * f['slowest_step']:.0f}",
            f"{f['steps'] / f['total']:.1f}", human(f["tokens"] / f["total"]),
            f"{f['feed']:.2f} / {f['shaper']:.2f} / {f['batch_of']:.2f} / {f['rest']:.2f}",
            f"{100 * share[m]:+.1f} %",
            f"{100 * over[m]:+.1f} %" + (f" ({100 * ratios[0]:+.0f}…{100 * ratios[-1]:+.0f})"
                                         if len(ratios) > 1 and m != "concat" else ""),
            full_t[m].spread() + (" *" if full_t[m].noisy() else ""),
        ])
    # ---- Lhotse and the HF collator
    cmp_lines: list[str] = []
    if not args.skip_lhotse:
        cmp_lines += lhotse_section(corpus, cfgs["pad_buckets"], args, budget, full_r,
                                    checks, findings)
    if not args.skip_hf:
        cmp_lines += hf_section(corpus, cfgs, args)
    if all(st.second_lengths is not None for st in corpus.stores.values()):
        cmp_lines += two_d_section(corpus, args, budget)
    bal, bal_profiles = balance_section(corpus, args, findings)

    # ---- checks and findings
    bfd = checks["bfd"]
    bfd_pad = steady_pad["bfd"]
    check_line = (f"bfd checks: padding {pct(bfd_pad)} without the epoch's last step, "
                  f"{pct(full_r['bfd']['summary']['padding_fraction'])} with it (target < "
                  f"{pct(TARGET_BFD_PADDING)}); "
                  f"{bfd['short_docs']} documents shorter than seq_len, {bfd['short_docs_cut']} of "
                  f"them cut or truncated (target 0); documents fed {bfd['docs_fed']} of "
                  f"{bfd['docs_total']}, tokens fed {bfd['tokens_fed']} of "
                  f"{int(corpus.lengths().sum())}.")
    if bfd_pad >= TARGET_BFD_PADDING:
        findings.append(f"{corpus.name}: bfd padding {pct(bfd_pad)} (without the epoch's last "
                        f"step) >= {pct(TARGET_BFD_PADDING)}")
    if bfd["short_docs_cut"]:
        findings.append(f"{corpus.name}: bfd cut {bfd['short_docs_cut']} documents shorter than "
                        "seq_len")
    profiles: list[str] = []
    for m in MODES:
        missed = []
        if share[m] >= TARGET_OVERHEAD:
            missed.append(f"its shaper's own work adds {100 * share[m]:+.1f} % to the rest of "
                          "the loader's time")
        if missed:
            findings.append(f"{corpus.name}: `{m}`: " + "; ".join(missed)
                            + " (target < +5 %; profile below)")
        if missed or m == "concat":  # concat: the reference, where the loader's time goes
            profiles.append(profile_mode(corpus, cfgs[m], m, args.profile_steps))

    out = [
        f"## Corpus `{corpus.name}`", "",
        f"### Shapes ({MODES[0]} … {MODES[-1]}: one epoch each, world size 1)", "",
        table(["mode", "steps", "real tokens", "padding", "padding w/o last step", "truncated",
               "pieces/doc", "tokens/step min / mean / max", "min w/o last step"], shape_rows),
        "",
        "padding: padding positions / all positions of the materialised rows (a finite epoch "
        "ends in a part-filled step, which a run over many epochs never sees: the columns "
        "\"w/o last step\" leave it out); real tokens exclude end-of-document tokens; truncated: "
        "tokens dropped / tokens of the epoch (pad, pad_buckets: the part of a document past "
        "seq_len; buckets: tails below min_len and window leftovers); pieces/doc: segments per "
        "document started.", "",
        check_line, "",
        "### Speed (best of the runs; every row of every step materialised)", "",
        table(["mode", "steps s", "steps+batches s", "wall s", "slowest step ms", "batches/s",
               "tokens/s",
               "feed / shaper / batch_of / rest s", "shaper adds", "vs concat per token",
               "runs: s"], speed_rows),
        "",
        "All seconds are CPU seconds of the process (`time.process_time`), best of the runs; "
        "wall s: the wall time of that run. "
        "steps+batches s: `.steps()` and `.batch_of(step)` for every step of the epoch; steps "
        "s: the part outside `batch_of` (planning); slowest step: the longest `.next_step()` "
        "(a windowed shaper plans its whole window in one step). tokens/s counts real tokens "
        "(no padding, no end tokens). The split "
        "wraps the loader's methods: feed = the mixture interleaving (`feed.take*`), shaper = "
        "`shaper.plan_step` less the feed calls inside it, batch_of = materialising, rest = rank "
        "assignment, row costs and stats. shaper adds: shaper / (total − shaper), the shaping "
        "work's share of the loader's time (target < +5 %). vs concat per token: time per real "
        "token over `concat`'s in the same round (shaping and the cost of its padding: a padded "
        "mode materialises its padding too; no target), the median over the rounds (their "
        f"range in brackets). The floor of any loader, the same {human(concat_tokens)} tokens read "
        f"as contiguous ({B}, {L}) int64 slices of the stores (no documents, labels, positions "
        f"or boundaries), takes {floor_s:.3f} s (best of {floor_t.spread()}), "
        f"{full_r['concat']['total'] / floor_s:.0f}x less than `concat`.", "",
        *cmp_lines,
        *bal,
        *profiles,
        *bal_profiles,
    ]
    return "\n".join(out)


def lhotse_section(corpus: Corpus, cfg, args: argparse.Namespace, budget: int,
                   full_r: dict[str, Any], checks: dict[str, Any],
                   findings: list[str]) -> list[str]:
    log(f"{corpus.name}: Lhotse DynamicBucketingSampler ...")
    lengths = feed_lengths(corpus, cfg)
    row_len = np.minimum(lengths + 1, args.seq_len)
    import lhotse.dataset  # noqa: F401  (its import time is not the sampler's)

    t0 = time.perf_counter()
    cuts = lhotse_cuts(row_len)
    cut_s = time.perf_counter() - t0
    timing, lh = best_of(args.repeat, lambda: run_lhotse(cuts, budget, args.num_buckets, args.seed))
    rows = [
        ["Lhotse DynamicBucketingSampler", lh["bins"], pct3(lh["padding"]), "–", lh["steps"],
         lh["over_budget"], f"{lh['min']} / {lh['tokens'] / lh['steps']:.0f} / {lh['max']}",
         pct(lh["tokens"] / lh["steps"] / budget), f"{lh['total']:.2f}",
         human(lh["tokens"] / lh["total"]), timing.spread() + (" *" if timing.noisy() else "")],
    ]
    main = full_r["pad_buckets"]
    pool = cfg.batch.sort_pool
    variants = [(f"mixbatch pad_buckets (defaults: row_multiple {args.row_multiple}, sort_pool "
                 f"{pool})", main, main["total"] - main["batch_of"], checks["pad_buckets"],
                 "see Speed")]
    for rm, sp in ((1, pool), (1, 0)):
        cfg_v = make_config(corpus, "pad_buckets", args, row_multiple=rm, sort_pool=sp)
        t_v, r_v = best_of(args.repeat, lambda c=cfg_v: run_mixbatch(corpus, c, batches=False))
        label = f"mixbatch pad_buckets, row_multiple {rm}, sort_pool {sp}"
        if sp == 0:
            label += " (stream order, as Lhotse)"
        variants.append((label, r_v, r_v["total"], inspect_mode(corpus, cfg_v, "pad_buckets"),
                         t_v.spread() + (" *" if t_v.noisy() else "")))
    for label, res, plan_s, chk, spread in variants:
        filled = res["per_step"][:, 1] - res["per_step"][:, 0]  # tokens + end tokens per step
        rows.append([label, args.num_buckets, pct3(chk["formula_padding"]),
                     pct3(res["summary"]["padding_fraction"]), res["steps"], chk["over_budget"],
                     f"{filled.min():.0f} / {filled.mean():.0f} / {filled.max():.0f}",
                     pct(filled.mean() / budget), f"{plan_s:.2f}",
                     human(filled.sum() / plan_s), spread])
    ours = checks["pad_buckets"]["formula_padding"]
    if ours > lh["padding"]:
        findings.append(f"{corpus.name}: pad_buckets padding {pct3(ours)} (defaults) > Lhotse's "
                        f"{pct3(lh['padding'])} at the same budget "
                        f"({100 * (ours - lh['padding']):+.3f} points)")
    if main["steps"] > 1.05 * lh["steps"]:
        fill = (main["per_step"][:, 1] - main["per_step"][:, 0]).mean() / budget
        findings.append(f"{corpus.name}: pad_buckets needs {main['steps']} steps for the epoch, "
                        f"Lhotse {lh['steps']} ({main['steps'] / lh['steps'] - 1:+.0%}): its "
                        f"batches fill {fill:.1%} of the budget on average, Lhotse's "
                        f"{lh['tokens'] / lh['steps'] / budget:.1%}")
    return [
        "### pad_buckets against Lhotse `DynamicBucketingSampler` (same lengths, same order)", "",
        table(["sampler", "buckets", "padding (max×n − Σ)", "padding as materialised", "batches",
               "over budget", "tokens/batch min / mean / max", "mean fill of budget",
               "sampling s", "tokens/s", "runs: s"], rows),
        "",
        f"Lengths: {len(row_len)} documents in the mixbatch feed's epoch order, row length "
        f"min(n + 1, {args.seq_len}) (what pad_buckets puts in a row: tokens and end token, "
        f"truncated at seq_len). Lhotse: `DynamicBucketingSampler(CutSet(MonoCut(duration=len)), "
        f"max_duration={budget}, num_buckets={args.num_buckets}, shuffle=True)`, bins estimated "
        "from the first 10,000 cuts (its default), buffer 20,000 cuts; it only samples (no "
        f"tokens are read); building the {len(row_len)} cuts took {cut_s:.2f} s (not counted). "
        "mixbatch: planning time (`.steps()`, no tokens read; for row_multiple "
        f"{args.row_multiple} the planning part of the Speed run). Padding by the formula: max "
        "row length × rows − Σ row lengths per batch, for both; as materialised mixbatch also "
        "rounds a step's width up to a multiple of 8 and fills it to a multiple of row_multiple "
        "rows with empty rows. Tokens per batch count row lengths (tokens + end token) for both; "
        "mean fill: their mean over the budget. Over budget: batches whose max row length × "
        "rows exceeds the budget (Lhotse adds the document that breaks the budget before it "
        "closes a batch; mixbatch never does). sort_pool: budgets of a bucket's documents "
        "sorted by length together before they are cut into batches (0: stream order).",
        "",
    ]


def run_two_d(corpus: Corpus, cfg) -> dict[str, Any]:
    """One epoch of planning: both dimensions' padding, and batches over the budget when the
    second length is costed (c(w) + c(w2) per row; for a 1-D run, what its rows really cost)."""
    loader = loader_for(corpus, cfg)
    seconds = [np.asarray(st.second_lengths) for st in corpus.stores.values()]
    budget = cfg.batch.token_budget
    pad = pos = pad2 = pos2 = over = steps = 0
    filled: list[float] = []
    t0 = clock()
    plans = list(loader.steps())
    total = clock() - t0
    for step in plans:
        p = step.plan
        s2 = np.concatenate([seconds[int(k)][p.doc[p.source == k]] for k in np.unique(p.source)])
        e = (p.end - p.start + p.eod).astype(np.int64)
        w2 = int(s2.max())
        pad += int(p.pad.sum())
        pos += p.rows * p.seq_len
        pad2 += p.rows * w2 - int(s2.sum())
        pos2 += p.rows * w2
        cost = p.rows * (p.seq_len + w2)
        over += cost > budget
        filled.append((int(e.sum()) + int(s2.sum())) / budget)
        steps += 1
    return {"steps": steps, "padding": pad / max(pos, 1), "padding2": pad2 / max(pos2, 1),
            "over": over, "fill": float(np.mean(filled)), "total": total,
            "skipped": loader.stats.skipped_docs}


def two_d_section(corpus: Corpus, args: argparse.Namespace, budget: int) -> list[str]:
    log(f"{corpus.name}: 2-D bucketing ...")
    seconds = np.concatenate([np.asarray(st.second_lengths) for st in corpus.stores.values()])
    runs = [("1-D (default pad_buckets; the second length is neither bucketed nor costed)", {}),
            ("2-D, second_buckets 1 (second length costed, not bucketed)", {"second_buckets": 1}),
            ("2-D, second_buckets 4", {"second_buckets": 4}),
            ("2-D, second_buckets 4, sort_pool 0 (stream order)",
             {"second_buckets": 4, "sort_pool": 0})]
    rows = []
    for label, extra in runs:
        cfg = make_config(corpus, "pad_buckets", args, **extra)
        t, r = best_of(args.repeat, lambda c=cfg: run_two_d(corpus, c))
        rows.append([label, r["steps"], pct(r["padding"]), pct(r["padding2"]), r["over"],
                     pct(r["fill"]), f"{r['total']:.2f}",
                     t.spread() + (" *" if t.noisy() else "")])
    return [
        f"### pad_buckets in two dimensions (second length: the `target` field, median "
        f"{np.median(seconds):.0f}, max {seconds.max()})", "",
        table(["run", "steps", "padding", "second-length padding", "over budget (both)",
               "mean fill of budget (both)", "planning s", "runs: s"], rows),
        "",
        f"Token budget {budget} for the cost of both dimensions, c(w) + c(w₂) per row "
        "(second_weight 1, quadratic 0); the 1-D run plans by the first length alone, so its "
        "batches are over the budget once the targets are padded too. Second-length padding: "
        "rows × longest second length − Σ second lengths, per step. Lhotse 1.33 has no 2-D "
        "sampler with a cost budget (NeMo's 2-D bucketing needs explicit per-bucket batch "
        "sizes from its OOMptimizer; NeMo is not in the benchmark environment), so this table "
        "has no anchor.", "",
    ]


def hf_section(corpus: Corpus, cfgs: dict[str, Any], args: argparse.Namespace) -> list[str]:
    from transformers import DataCollatorWithFlattening

    log(f"{corpus.name}: DataCollatorWithFlattening ...")
    collator = DataCollatorWithFlattening(return_flash_attn_kwargs=True)
    rows = []
    for m in ("bfd", "pad_buckets"):
        loader, steps = planned_steps(corpus, cfgs[m], args.hf_steps)
        stores = loader.stores
        real = sum(int((s.plan.end - s.plan.start + s.plan.eod).sum()) for s in steps)
        t_mb, t_hf = Timing(), Timing()
        best_mb = best_hf = best_coll = float("inf")
        tok_hf = 0
        for _ in range(args.repeat):
            bg = wait_until_quiet(interval=0.2)
            t0 = clock()
            mixbatch_batches(loader, steps)
            s = clock() - t0
            t_mb.add({"total": s}, bg)
            best_mb = min(best_mb, s)
            bg = wait_until_quiet(interval=0.2)
            t0 = clock()
            tok_hf, coll = hf_batches(collator, stores, loader.eod_id, steps)
            s = clock() - t0
            t_hf.add({"total": s}, bg)
            if s < best_hf:
                best_hf, best_coll = s, coll
        if tok_hf != real:
            raise SystemExit(f"{m}: the collator built {tok_hf} tokens, the plans hold {real}")
        n = len(steps)
        rows.append([m, n, human(real), "`batch_of`: (rows, width)",
                     f"{best_mb:.3f}", f"{n / best_mb:.0f}", human(real / best_mb),
                     t_mb.spread() + (" *" if t_mb.noisy() else "")])
        rows.append(["", "", "", "`DataCollatorWithFlattening`: (1, tokens)",
                     f"{best_hf:.3f} ({best_coll:.3f} collating)", f"{n / best_hf:.0f}",
                     human(real / best_hf), t_hf.spread() + (" *" if t_hf.noisy() else "")])
    return [
        "### Building the same batches: `batch_of` against `DataCollatorWithFlattening`", "",
        table(["steps of", "steps", "tokens", "builder: output", "seconds", "batches/s",
               "tokens/s", "runs: s"], rows),
        "",
        f"The first {args.hf_steps} planned steps of each mode. `batch_of`: the rows as planned, "
        "padded to the step's width: input_ids, labels, position_ids, source_ids, doc_ids, "
        "cu_seqlens, max_seqlen. Collator: `DataCollatorWithFlattening(return_flash_attn_kwargs="
        "True)(features, return_tensors=\"np\")`, one feature per segment of the step (its "
        "tokens, plus the end token where the plan has one) read from the same stores as int64 "
        "arrays (the read is in the seconds; the part in the collator is in brackets); output "
        "input_ids, labels, position_ids (1, tokens), cu_seq_lens_q/k, max_length_q/k. It has "
        "no fixed shape and no padding, so tokens/s counts the same tokens for both (end "
        "tokens included).",
        "",
    ]


def balance_section(corpus: Corpus, args: argparse.Namespace,
                    findings: list[str]) -> tuple[list[str], list[str]]:
    log(f"{corpus.name}: rank balance at world size {args.world_size} ...")
    rows = []
    res = {}
    for balance in (True, False):
        t, r = best_of(args.repeat, lambda b=balance: run_balance(corpus, args, b))
        res[balance] = r
        ratio = r["per_step"][:, 3]
        st = steady(r["per_step"])[:, 3]
        rows.append([f"balance: {str(balance).lower()}", r["steps"], f"{ratio.max():.4f}",
                     f"{st.max():.4f}", f"{np.percentile(st, 99):.4f}", f"{st.mean():.4f}",
                     f"{1e3 * r['rest'] / r['steps']:.2f}", f"{1e3 * r['total'] / r['steps']:.2f}",
                     t.spread() + (" *" if t.noisy() else "")])
    extra = res[True]["total"] / res[False]["total"] - 1
    profiles = []
    if extra >= TARGET_OVERHEAD:
        findings.append(f"{corpus.name}: `balance: true` makes rank 0's loader (bfd, world size "
                        f"{args.world_size}, steps + its batches) {100 * extra:+.1f} % slower "
                        f"than `balance: false` (target < +5 %; profile below)")
        profiles.append(profile_mode(corpus, make_config(corpus, "bfd", args, balance=True),
                                     "bfd, balance: true", args.profile_steps,
                                     world_size=args.world_size))
    lines = [
        f"### Rank balance: `bfd`, world size {args.world_size}", "",
        table(["assignment", "steps", "imbalance max", "max w/o last step", "p99", "mean",
               "assignment etc. ms/step", "rank 0 ms/step", "runs: s"], rows),
        "",
        f"Imbalance of a step: the largest rank cost over the mean rank cost; cost of a row = Σ "
        f"over its segments of s + s²/(6·d_model), d_model 4096 (default). {args.batch_size} rows "
        f"per step, {args.batch_size // args.world_size} per rank. balance: false deals rows "
        "round-robin by main source; true is LPT under the per-source quotas, then swaps. The "
        "epoch's last step is part-filled (empty rows cost 0), hence the columns without it. "
        "Times: rank 0's loader over the epoch, `.steps()` (every rank plans the whole global "
        "step) and `.batch_of(step)` of its own rows; \"assignment etc.\" is the loader's time "
        "outside the feed, the shaper and `batch_of`: rank assignment (`balance_rows` or the "
        f"round-robin deal), row costs and stats. balance: true costs {100 * extra:+.1f} % of "
        "rank 0's loader time.",
        "",
    ]
    return lines, profiles


def profile_mode(corpus: Corpus, cfg, mode: str, n_steps: int, world_size: int = 1) -> str:
    """cProfile of ``n_steps`` steps + batches (of rank 0): the top functions by own time."""
    log(f"{corpus.name}: profiling {mode} ...")
    loader = loader_for(corpus, cfg, world_size)
    prof = cProfile.Profile()
    prof.enable()
    for step in loader.steps(n_steps):
        loader.batch_of(step)
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime")
    rows = []
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    ranked = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:12]  # type: ignore[attr-defined]
    for (file, line, fn), (_cc, nc, tt, ct, _callers) in ranked:
        where = file.split("/src/")[-1] if "/src/mixbatch/" in file else Path(file).name
        rows.append([f"`{where}:{line} {fn}`", nc, f"{tt:.3f}", f"{100 * tt / total:.1f} %",
                     f"{ct:.3f}"])
    ours = sorted(((k, v) for k, v in stats.stats.items()  # type: ignore[attr-defined]
                   if "/src/mixbatch/" in k[0]), key=lambda kv: -kv[1][3])[:10]
    cum_rows = [[f"`{file.split('/src/')[-1]}:{line} {fn}`", nc, f"{ct:.3f}",
                 f"{100 * ct / total:.1f} %"]
                for (file, line, fn), (_cc, nc, _tt, ct, _callers) in ours]
    return "\n".join([
        f"### Profile: `{corpus.name}`, `{mode}`, first {n_steps} steps with batches"
        + (f" (rank 0 of {world_size})" if world_size > 1 else ""), "",
        table(["function (by own time)", "calls", "own s", "own share", "cumulative s"], rows,
              align="lrrrr"),
        "",
        table(["mixbatch function (by cumulative time)", "calls", "cumulative s", "share"],
              cum_rows, align="lrrr"),
        "",
        f"cProfile (its own overhead inflates Python-level calls); own time of all functions "
        f"{total:.3f} s.", "",
    ])


if __name__ == "__main__":
    main()
