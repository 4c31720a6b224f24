"""Duplicates found on a corpus with planted copies, and throughput against datasketch.

The corpus: paragraphs (blank-line separated blocks of at least 40 words) of the Python standard
library's sources and of English manual pages, with every paragraph that either method finds
similar at Jaccard 0.5 removed first (so that the planted copies are the only duplicates).
Planted: exact copies (the text re-cased and re-spaced, equal after normalisation) and near
copies (a few percent of the words replaced), each copy placed in a second source. Measured,
in one run on the same data:

- mixbatch (``mixbatch.dedup.find_duplicates``: normalise, blake2b, compiled MinHash over word
  5-grams, LSH banding, Jaccard check, components): recall and precision of the planted copies;
- datasketch's reference (``MinHash`` per document over the same normalised 5-gram shingles,
  ``MinHashLSH`` insert + query, same threshold and permutations; exact copies found by the
  same LSH): recall and precision;
- documents per second, end to end from raw text, both.

    .venv-bench/bin/python benchmarks/bench_dedup.py [--docs N] [--seed S]
"""

from __future__ import annotations

import argparse
import gzip
import sysconfig
import time
from pathlib import Path

import numpy as np

from _common import header, log, table


def paragraphs(max_docs: int, seed: int) -> list[str]:
    from mixbatch.dedup import exact_key, normalise

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("**/*.py"))
    files += sorted(Path("/usr/share/man").glob("man[1-8]/*.gz"))
    rng = np.random.default_rng(seed)
    rng.shuffle(files)
    seen: set[bytes] = set()
    out: list[str] = []
    for p in files:
        try:
            raw = p.read_bytes()
            text = (gzip.decompress(raw) if p.suffix == ".gz" else raw).decode("utf-8")
        except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile):
            continue
        for block in text.split("\n\n"):
            if len(block.split()) < 40:
                continue
            k = exact_key(normalise(block))
            if k in seen:
                continue
            seen.add(k)
            out.append(block)
            if len(out) >= max_docs:
                return out
    return out


def clean(base: list[str], num_perm: int) -> list[str]:
    """The base without documents that either method finds similar at Jaccard 0.5 (so that the
    planted copies are the only duplicates at the benchmark's threshold)."""
    flagged = {i for _, i in ours({"x": base}, 0.5, num_perm)[0]}
    flagged |= {i for _, i in datasketch_dups({"x": base}, 0.5, num_perm)[0]}
    return [t for i, t in enumerate(base) if i not in flagged]


def plant(base: list[str], n_exact: int, n_near: int, rate: float, seed: int
          ) -> tuple[dict[str, list[str]], set[tuple[str, int]]]:
    """Sources "a" (the base) and "b" (fresh base documents + planted copies of "a")."""
    rng = np.random.default_rng(seed)
    half = len(base) // 2
    a, b = list(base[:half]), list(base[half:])
    originals = rng.choice(len(a), n_exact + n_near, replace=False)
    planted: set[tuple[str, int]] = set()
    for k, i in enumerate(originals):
        src = a[i]
        if k < n_exact:
            copy = "  " + src.upper().replace(" ", "\n ")
        else:
            w = src.split()
            for j in rng.choice(len(w), max(1, int(rate * len(w))), replace=False):
                w[j] = f"zz{rng.integers(1 << 30)}"
            copy = " ".join(w)
        b.insert(int(rng.integers(0, len(b) + 1)), copy)
    # the planted copies are the texts of b that are not base documents
    base_b = set(base[half:])
    for j, t in enumerate(b):
        if t not in base_b:
            planted.add(("b", j))
    return {"a": a, "b": b}, planted


def shingles(norm: str, n: int = 5) -> list[bytes]:
    w = norm.split()
    if len(w) <= n:
        return [" ".join(w).encode()]
    return [" ".join(w[i:i + n]).encode() for i in range(len(w) - n + 1)]


def datasketch_dups(sources: dict[str, list[str]], threshold: float, num_perm: int
                    ) -> tuple[set[tuple[str, int]], float]:
    from datasketch import MinHash, MinHashLSH

    from mixbatch.dedup import normalise

    t0 = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    dropped: set[tuple[str, int]] = set()
    for name, texts in sources.items():
        for i, t in enumerate(texts):
            m = MinHash(num_perm=num_perm, seed=1)
            m.update_batch(shingles(normalise(t)))
            key = f"{name}/{i}"
            if lsh.query(m):  # a near (or exact) copy of an earlier document: drop it
                dropped.add((name, i))
            else:
                lsh.insert(key, m)
    return dropped, time.perf_counter() - t0


def ours(sources: dict[str, list[str]], threshold: float, num_perm: int
         ) -> tuple[set[tuple[str, int]], float]:
    from mixbatch.dedup import DedupConfig, find_duplicates

    t0 = time.perf_counter()
    d, _ = find_duplicates(sources, DedupConfig(near={"threshold": threshold,
                                                      "num_perm": num_perm}))
    dropped = {(n, i) for n in d.names for i in d.dropped(n)}
    return dropped, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--exact", type=int, default=500)
    ap.add_argument("--near", type=int, default=500)
    ap.add_argument("--rate", type=float, default=0.02, help="share of words changed (near)")
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    rows = []
    ours({"w": ["warm up the compiled kernels " * 10, "and a second one " * 10]}, 0.7, 16)
    for seed in args.seeds:
        raw = paragraphs(args.docs, seed)
        base = clean(raw, args.num_perm)
        log(f"seed {seed}: {len(raw)} paragraphs, {len(raw) - len(base)} removed as similar "
            "(Jaccard >= 0.5 by either method)")
        sources, planted = plant(base, args.exact, args.near, args.rate, seed)
        n_docs = sum(map(len, sources.values()))
        log(f"seed {seed}: {n_docs} documents, {len(planted)} planted copies")
        for name, fn in (("mixbatch", ours), ("datasketch", datasketch_dups)):
            times = []
            for _ in range(args.repeats):
                found, sec = fn(sources, args.threshold, args.num_perm)
                times.append(sec)
            tp = len(found & planted)
            rows.append([seed, name, n_docs, len(planted), len(found), tp,
                         f"{tp / len(planted):.4f}", f"{tp / max(len(found), 1):.4f}",
                         f"{n_docs / min(times):,.0f}", ", ".join(f"{t:.2f}" for t in times)])
            log(f"  {name}: found {len(found)}, recall {tp / len(planted):.4f}, "
                f"best {min(times):.2f}s")
    print("\n".join([
        header("Duplicates: planted copies and throughput (mixbatch vs datasketch)",
               ["numpy", "numba", "datasketch"],
               {"settings": f"threshold {args.threshold}, num_perm {args.num_perm}, word 5-grams, "
                            f"{args.exact} exact + {args.near} near copies ({args.rate:.0%} of "
                            "words changed)",
                "note": "2-core box shared with concurrent jobs; time = best of the repeats"}),
        "", table(["seed", "method", "documents", "planted", "dropped", "planted found",
                   "recall", "precision", "docs/s", "seconds (each repeat)"], rows)]))


if __name__ == "__main__":
    main()
