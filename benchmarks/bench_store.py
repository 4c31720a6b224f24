"""Read throughput of a token store: ``TokenStore`` against a plain ``np.memmap`` (the ceiling).

A synthetic corpus (random lowercase ASCII, log-normal document lengths, ~100M tokens by
default) is prepared with the byte tokeniser into a store with uint16 tokens, through the public
``prepare``. Then, on a warm page cache, each way of reading is timed on the store and on plain
arrays:

- random documents: ``np.array(store[i])`` for random ``i`` (a copy of the tokens);
- random batches: ``store.gather(ids)`` for 64 random documents per batch, against
  ``np.concatenate`` of the 64 slices and against ``gather``'s own algorithm (one vectorised
  fancy index) on the plain memmap;
- sequential documents: ``np.array(store[i])`` for every ``i`` in order;
- sequential tokens: the whole token array copied out in 1M-token slices (``store.tokens``).

Block verification (``--verify-cost``, on by default): each process verifies every 1 MiB block of
``tokens.bin`` (hash + vocabulary check) the first time it reads it. Timed side by side: a fresh
open followed by a first pass over every document in random batches of 64, with and without the
verifier; ``verify_all`` alone on a fresh open; and the loader (``MixedLoader.batch_of``, concat
packing, seq_len 1024 x 8 rows) on the same store, whose rate gives the loader's time for one
pass over the store. The cost is verification time / that loader time (target < 5 %).

The plain readers use ``np.memmap(tokens.bin, uint16)`` (and the same mapping viewed as a plain
``ndarray``) with the offsets loaded into an in-memory int64 array; the fastest of them is the
ceiling. Every reader reads the same document ids.

Run ``make bench`` or ``.venv-bench/bin/python benchmarks/bench_store.py --help``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from _common import (
    Timing,
    background_summary,
    header,
    human,
    log,
    run_in_workdir,
    table,
    timed,
    wait_until_quiet,
    warm_page_cache,
)

PACKAGES = ("mixbatch", "numpy")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the corpus and the store go (default: a temp folder, removed)")
    p.add_argument("--tokens", type=float, default=100e6, help="tokens in the synthetic store")
    p.add_argument("--mu", type=float, default=6.5,
                   help="log-normal mean of the document length (log tokens); median = e^mu")
    p.add_argument("--sigma", type=float, default=1.0, help="log-normal sigma of the length")
    p.add_argument("--random-reads", type=int, default=100_000, help="random documents read")
    p.add_argument("--batches", type=int, default=2_000, help="random batches gathered")
    p.add_argument("--batch-docs", type=int, default=64, help="documents per gathered batch")
    p.add_argument("--slice-tokens", type=int, default=1 << 20, help="tokens per sequential slice")
    p.add_argument("--max-wait", type=float, default=120.0,
                   help="seconds the script may spend, in all, waiting for other processes to "
                        "leave the CPUs idle before timed runs")
    p.add_argument("--passes", type=int, default=10,
                   help="passes over the whole token array per sequential-slices run")
    p.add_argument("--repeat", type=int, default=5, help="runs per measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loader-steps", type=int, default=300,
                   help="loader steps timed for the loader's rate (block verification cost)")
    p.add_argument("--no-verify-cost", dest="verify_cost", action="store_false",
                   help="skip the block verification measurements")
    return p.parse_args()


# ---------------------------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------------------------
def write_corpus(path: Path, n_tokens: int, mu: float, sigma: float, seed: int) -> int:
    """JSONL of random lowercase words with log-normal lengths (bytes = byte tokens)."""
    rng = np.random.default_rng(seed)
    lengths: list[int] = []
    total = 0
    while total < n_tokens:
        draw = np.clip(rng.lognormal(mu, sigma, 100_000).astype(np.int64), 1, 1 << 20)
        for n in draw.tolist():
            n = min(n, n_tokens - total)
            lengths.append(n)
            total += n
            if total >= n_tokens:
                break
    letters = rng.integers(ord("a"), ord("z") + 1, size=total, dtype=np.uint8)
    letters[rng.random(total) < 0.15] = ord(" ")
    text = letters.tobytes().decode("ascii")
    pos = 0
    with open(path, "w", encoding="ascii") as f:
        for n in lengths:
            f.write(json.dumps({"text": text[pos: pos + n]}) + "\n")
            pos += n
    return len(lengths)


def build_store(workdir: Path, args: argparse.Namespace) -> Path:
    from mixbatch.config import config_from_dict
    from mixbatch.prepare import prepare

    corpus = workdir / "corpus.jsonl"
    n_docs = write_corpus(corpus, int(args.tokens), args.mu, args.sigma, args.seed)
    cfg = config_from_dict({
        "tokenizer": "byte", "store": str(workdir / "store"),
        "sources": {"synthetic": {"path": str(corpus), "format": "jsonl"}},
        "mixture": {"unit": "tokens", "weights": {"synthetic": 1.0}},
        "batch": {"seq_len": 1024, "batch_size": 8, "packing": "concat"},
    })
    seconds, report = timed(lambda: prepare(cfg, workers=1, force=True))
    log(f"store: {report.documents} documents ({n_docs} written), {report.tokens} tokens, "
        f"prepared in {seconds:.1f}s")
    corpus.unlink()
    args.cfg = cfg
    return workdir / "store" / "synthetic"


# ---------------------------------------------------------------------------------------------
# readers: every function returns the number of tokens it copied out
# ---------------------------------------------------------------------------------------------
def read_docs_store(store, ids: list[int]) -> int:
    n = 0
    for i in ids:
        n += np.array(store[i]).shape[0]
    return n


def read_docs_plain(tokens: np.ndarray, offsets: np.ndarray, ids: list[int]) -> int:
    n = 0
    for i in ids:
        n += np.array(tokens[offsets[i]: offsets[i + 1]]).shape[0]
    return n


def gather_store(store, batches: list[np.ndarray]) -> int:
    n = 0
    for b in batches:
        toks, _lens = store.gather(b)
        n += toks.shape[0]
    return n


def gather_plain_concat(tokens: np.ndarray, offsets: np.ndarray, batches: list[np.ndarray]) -> int:
    n = 0
    for b in batches:
        _lens = offsets[b + 1] - offsets[b]  # gather returns the lengths too
        toks = np.concatenate([tokens[offsets[i]: offsets[i + 1]] for i in b.tolist()])
        n += toks.shape[0]
    return n


def gather_plain_index(tokens: np.ndarray, offsets: np.ndarray, batches: list[np.ndarray]) -> int:
    """The algorithm of ``TokenStore.gather`` on plain arrays."""
    n = 0
    for b in batches:
        starts = offsets[b]
        lens = offsets[b + 1] - starts
        ends = np.cumsum(lens)
        pos = np.arange(int(ends[-1]), dtype=np.int64) - np.repeat(ends - lens, lens)
        toks = tokens[np.repeat(starts, lens) + pos]
        n += toks.shape[0]
    return n


def sequential_slices(tokens: np.ndarray, step: int, passes: int) -> int:
    n = 0
    for _ in range(passes):
        for s in range(0, tokens.shape[0], step):
            n += np.array(tokens[s: s + step]).shape[0]
    return n


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def main() -> None:
    run_in_workdir(bench, parse_args(), "store")


def bench(args: argparse.Namespace, workdir: Path) -> str:
    from mixbatch.store import OFFSETS, TOKENS

    log(f"writing a synthetic store of {args.tokens:.3g} tokens in {workdir} ...")
    folder = build_store(workdir, args)
    warm_page_cache([folder / TOKENS, folder / OFFSETS])

    open_t, store = measure_open(folder, args.repeat, verify=False)
    verify_t, _ = measure_open(folder, args.repeat, verify=True)
    tokens = np.memmap(folder / TOKENS, dtype=store.tokens.dtype, mode="r")
    offsets = np.load(folder / OFFSETS)  # in memory: the ceiling keeps its index in RAM
    n_docs, n_tok = len(store), int(tokens.shape[0])
    assert offsets[-1] == n_tok and store.tokens.dtype == np.uint16

    rng = np.random.default_rng(args.seed + 1)
    ids = rng.integers(0, n_docs, size=args.random_reads).tolist()
    batches = [rng.integers(0, n_docs, size=args.batch_docs) for _ in range(args.batches)]
    seq_ids = list(range(n_docs))
    checks = [
        np.array_equal(store.gather(batches[0])[0], np.concatenate(
            [tokens[offsets[i]: offsets[i + 1]] for i in batches[0].tolist()])),
        all(np.array_equal(store[i], tokens[offsets[i]: offsets[i + 1]]) for i in ids[:100]),
    ]
    if not all(checks):
        raise SystemExit("the store and the plain memmap disagree; not benchmarking")

    flat = tokens.view(np.ndarray)  # the same mapping, without np.memmap's Python-level indexing
    n_slices = -(-n_tok // args.slice_tokens) * args.passes
    rand, batch = "random documents", f"random batches of {args.batch_docs}"
    seq_docs, seq = "sequential documents", f"sequential {args.slice_tokens:,}-token slices"
    cases: list[tuple[str, str, str, Callable[[], int], int]] = [
        # (operation, reader, unit, fn, operations per run)
        (rand, "TokenStore[i]", "docs", lambda: read_docs_store(store, ids), len(ids)),
        (rand, "np.memmap", "docs", lambda: read_docs_plain(tokens, offsets, ids), len(ids)),
        (rand, "np.memmap viewed as ndarray", "docs",
         lambda: read_docs_plain(flat, offsets, ids), len(ids)),
        (batch, "TokenStore.gather", "batches", lambda: gather_store(store, batches), len(batches)),
        (batch, "np.memmap: gather's fancy index", "batches",
         lambda: gather_plain_index(tokens, offsets, batches), len(batches)),
        (batch, "np.memmap: concatenate slices", "batches",
         lambda: gather_plain_concat(tokens, offsets, batches), len(batches)),
        (batch, "np.memmap viewed as ndarray: concatenate slices", "batches",
         lambda: gather_plain_concat(flat, offsets, batches), len(batches)),
        (seq_docs, "TokenStore[i]", "docs", lambda: read_docs_store(store, seq_ids), n_docs),
        (seq_docs, "np.memmap", "docs", lambda: read_docs_plain(tokens, offsets, seq_ids), n_docs),
        (seq_docs, "np.memmap viewed as ndarray", "docs",
         lambda: read_docs_plain(flat, offsets, seq_ids), n_docs),
        (seq, "TokenStore.tokens", "slices",
         lambda: sequential_slices(store.tokens, args.slice_tokens, args.passes), n_slices),
        (seq, "np.memmap", "slices",
         lambda: sequential_slices(tokens, args.slice_tokens, args.passes), n_slices),
    ]
    # rounds over every case, so that a busy spell of the machine hits all readers alike
    timings = [Timing() for _ in cases]
    counts = [0] * len(cases)
    for r in range(args.repeat):
        for k, (_op, _reader, _unit, fn, _n_ops) in enumerate(cases):
            bg = wait_until_quiet(interval=0.2)
            seconds, counts[k] = timed(fn)
            timings[k].add({"total": seconds}, bg)
        log(f"  round {r + 1}/{args.repeat} done")
    results = [(op, reader, unit, timings[k], counts[k], n_ops)
               for k, (op, reader, unit, _fn, n_ops) in enumerate(cases)]
    ceiling: dict[str, float] = {}
    for op, _reader, _unit, t, _n, _ops in results:  # the fastest plain reader of each operation
        if not _reader.startswith("TokenStore"):
            ceiling[op] = min(ceiling.get(op, float("inf")), t.best["total"])
    rows = []
    for op, reader, unit, t, n, n_ops in results:
        s = t.best["total"]
        rows.append([op, reader, f"{human(n_ops / s)} {unit}/s", human(n / s), f"{n * 2 / s / 1e9:.2f}",
                     f"{ceiling[op] / s:.2f}", t.spread() + (" *" if t.noisy() else "")])

    lengths = np.diff(offsets)
    extra = {
        "background load": background_summary(),
        "store": f"{n_docs} documents, {n_tok} tokens (uint16, {n_tok * 2 / 1e6:.0f} MB), document "
                 f"length log-normal(mu={args.mu}, sigma={args.sigma}): median {np.median(lengths):.0f}, "
                 f"mean {lengths.mean():.0f}, max {lengths.max()} tokens; page cache warm",
        "work": f"{len(ids)} random documents, {len(batches)} random batches of {args.batch_docs}, "
                f"{n_docs} sequential documents, {args.passes} passes over {n_tok} tokens in slices of "
                f"{args.slice_tokens} (per run)",
    }
    out = [
        header("bench_store: token store reads", PACKAGES, extra), "",
        "## Opening the store", "",
        table(["operation", "best s", "runs: s"], [
            ["open_store (sizes + head/tail checksums)", f"{open_t.best['total'] * 1e3:.3g} ms",
             open_t.spread(1e3) + " ms"],
            ["open_store(verify=True) (full blake2b)", f"{verify_t.best['total']:.3f} s",
             verify_t.spread() + " s"],
        ], align="lrl"), "",
        "## Reads (best of the runs; every read copies the tokens out)", "",
        table(["operation", "reader", "rate", "tokens/s", "GB/s", "vs ceiling", "runs: s"], rows,
              align="llrrrrl"),
        "",
        "Plain readers hold the offsets in an in-memory int64 array; \"viewed as ndarray\" is "
        "`np.memmap(...).view(np.ndarray)`, the same mapping without np.memmap's Python-level "
        "`__getitem__`. vs ceiling: the fastest plain reader's time / this reader's time (1.00 = as "
        "fast as the ceiling). A * marks a measurement where another process kept more than 0.3 of a core "
        "busy just before one of its runs.",
    ]
    if args.verify_cost:
        out += ["", *verify_cost(folder, args, n_docs, n_tok)]
    return "\n".join(out)


def first_pass(folder: Path, batches: list[np.ndarray], verify: bool) -> int:
    """A fresh open, then every document once in random batches (the first read of every
    block), with or without block verification."""
    from mixbatch.store import open_store

    store = open_store(folder)
    if not verify:
        store.verifier = None
    return gather_store(store, batches)


def verify_all_fresh(folder: Path) -> int:
    from mixbatch.store import open_store

    store = open_store(folder)
    store.verifier.verify_all()
    return len(store.verifier.digests)


def loader_steps(loader, steps: int) -> int:
    """Tokens the loader builds in its next ``steps`` steps (``batch_of``, what ``stream``
    runs); the loader is built outside the timed runs."""
    n = 0
    for step in loader.steps(steps):
        n += int((loader.batch_of(step)["source_ids"] >= 0).sum())
    return n


def verify_cost(folder: Path, args: argparse.Namespace, n_docs: int, n_tok: int) -> list[str]:
    """Tables of the block verification cost (see the module docstring)."""
    rng = np.random.default_rng(args.seed + 2)
    order = rng.permutation(n_docs)
    batches = [order[i: i + args.batch_docs] for i in range(0, n_docs, args.batch_docs)]
    from mixbatch.loader.loader import MixedLoader

    loader = MixedLoader(args.cfg)
    loader_steps(loader, 2)  # compile the kernels outside the timed runs
    cases = [("first pass, block verification on", lambda: first_pass(folder, batches, True)),
             ("first pass, block verification off", lambda: first_pass(folder, batches, False)),
             ("verify_all on a fresh open (every block)", lambda: verify_all_fresh(folder)),
             (f"loader: {args.loader_steps} steps of batch_of",
              lambda: loader_steps(loader, args.loader_steps))]
    timings = [Timing() for _ in cases]
    counts = [0] * len(cases)
    for _ in range(args.repeat):
        for k, (_name, fn) in enumerate(cases):
            bg = wait_until_quiet(interval=0.2)
            seconds, counts[k] = timed(fn)
            timings[k].add({"total": seconds}, bg)
    best = [t.best["total"] for t in timings]
    loader_rate = counts[3] / best[3]
    loader_pass = n_tok / loader_rate
    rows = [[name, f"{best[k]:.4g} s", timings[k].spread() + (" *" if timings[k].noisy() else "")]
            for k, (name, _fn) in enumerate(cases)]
    from mixbatch.store_blocks import default_hash

    return [
        "## Block verification (first read of every block, per process)", "",
        table(["operation", "best s", "runs: s"], rows, align="lrl"), "",
        f"Hash: {default_hash()}. Loader rate {human(loader_rate)} tokens/s, so one pass of the "
        f"loader over the {n_tok:,} tokens takes {loader_pass:.2f} s. Verification cost: "
        f"verify_all {best[2] / loader_pass:.2%} of it; the first pass by random batches costs "
        f"{max(best[0] - best[1], 0.0) / loader_pass:.2%} of it (on - off). Target: < 5 %.",
    ]


def measure_open(folder: Path, repeat: int, verify: bool):
    from mixbatch.store import open_store

    t = Timing()
    store = None
    for _ in range(repeat):
        bg = wait_until_quiet()
        seconds, store = timed(lambda: open_store(folder, verify=verify))
        t.add({"total": seconds}, bg)
    return t, store


if __name__ == "__main__":
    main()
