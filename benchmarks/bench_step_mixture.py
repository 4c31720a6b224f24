"""The mixture at every step boundary, in every packing mode, on real text of this machine.

Corpus: the demo's domains (``mixbatch.demo.build_corpus``): English man pages, Python standard
library files and C headers from ``/usr/include``, byte tokenizer, weights 0.5 / 0.3 / 0.2
(by tokens), ``seq_len`` 512, 8 rows per step (``buckets`` and ``pad_buckets``: a token budget of
8 · 512 per step). For each packing mode a ``MixedLoader`` plans ``--steps`` steps; after every
step the fed tokens per source ``c_i`` are compared with the target integrated over the fed
tokens, ``W_i = Σ_s w_i(s) · U(s)`` (the audit report's definition), and the largest
``|c_i - W_i|`` over all step boundaries is reported per source, in tokens and as a multiple of
``seq_len``. The target of the issue: ``<= 2 · seq_len`` for concat, pad, bfd and pad_buckets,
``<= one step's tokens`` for buckets.

``--demo`` also runs the demo's own config (five domains, a two-stage schedule, concat at
``seq_len`` 1024) for ``--demo-steps`` steps and reports the same figure.

The script imports ``mixbatch`` from wherever Python finds it, so the code before a change can
be measured by putting an older checkout first: ``PYTHONPATH=/tmp/old-main/src``.

Run ``.venv/bin/python benchmarks/bench_step_mixture.py --help``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from _common import header

MODES = {
    "concat": {"packing": "concat"},
    "pad": {"packing": "pad"},
    "bfd": {"packing": "bfd"},
    "pad_buckets": {"packing": "pad_buckets", "token_budget": 4096},
    "buckets": {"packing": "buckets", "token_budget": 4096, "min_len": 64},
}
WEIGHTS = {"man_en": 0.5, "python": 0.3, "c": 0.2}


def corpus(work: Path, max_bytes: int) -> dict[str, dict]:
    from mixbatch.demo import build_corpus

    done = work / "corpus" / "done.json"
    if not done.exists():
        summary = build_corpus(work / "corpus", max_bytes=max_bytes)
        done.write_text(json.dumps({s.name: str(s.path) for s in summary}))
    paths = json.loads(done.read_text())
    return {name: {"path": p, "format": "jsonl"} for name, p in paths.items()}


def step_deviation(loader, steps: int) -> tuple[np.ndarray, int, float, int, float]:
    """Largest |c_i - W_i| per source over every step boundary (tokens; by samples: documents
    started); steps run; seconds; largest step (tokens or documents); the largest imbalance
    of one step by itself, ``max_i |x_i - w_i · |x||`` (any order of the steps has a boundary
    at least half of it off)."""
    samples = loader.cfg.mixture.unit.value == "samples"
    k = len(loader.names)
    c = np.zeros(k)
    target = np.zeros(k)
    worst = np.zeros(k)
    biggest = 0
    skew = 0.0
    n = 0
    t0 = time.perf_counter()
    for step in loader.steps(steps):
        p = step.plan
        unit = ((p.start == 0) & (p.end > p.start)) if samples else p.end - p.start
        tok = np.bincount(p.source, weights=unit, minlength=k)
        c += tok
        w = np.asarray(step.weights, dtype=np.float64)
        target += w * tok.sum()
        skew = max(skew, float(np.abs(tok - w * tok.sum()).max()))
        worst = np.maximum(worst, np.abs(c - target))
        biggest = max(biggest, int(tok.sum()))
        n += 1
    return worst, n, time.perf_counter() - t0, biggest, skew


def run_mode(name: str, sources: dict, work: Path, steps: int, seq_len: int,
             seed: int = 0, unit: str = "tokens") -> dict:
    from mixbatch.config import config_from_dict
    from mixbatch.loader.loader import MixedLoader
    from mixbatch.prepare import prepare

    picked = {n: sources[n] for n in WEIGHTS}
    cfg = config_from_dict({
        "seed": seed, "tokenizer": "byte", "store": str(work / "store"), "sources": picked,
        "mixture": {"unit": unit, "weights": WEIGHTS},
        "batch": {"seq_len": seq_len, **({} if "token_budget" in MODES[name] else
                                         {"batch_size": 8}), **MODES[name]}}, base_dir=work)
    prepare(cfg, workers=1)
    loader = MixedLoader(cfg)
    worst, n, secs, biggest, skew = step_deviation(loader, steps)
    return {"mode": name, "steps": n, "worst": worst.tolist(), "names": loader.names,
            "seconds": secs, "step_tokens": biggest, "step_skew": skew,
            "doc_max": int(max(int(np.max(s.lengths)) for s in loader.stores)),
            "doc_median": float(np.median(np.concatenate([s.lengths for s in loader.stores])))}


def run_demo(sources: dict, work: Path, steps: int) -> dict:
    from mixbatch.config import config_from_dict
    from mixbatch.demo import DomainSummary, demo_config
    from mixbatch.loader.loader import MixedLoader
    from mixbatch.prepare import prepare

    summ = [DomainSummary(n, n, Path(s["path"]), 0, 0, "machine") for n, s in sources.items()]
    data = demo_config(summ, work / "demo-store")
    cfg = config_from_dict(data, base_dir=work)
    prepare(cfg, workers=1)
    loader = MixedLoader(cfg)
    worst, n, secs, biggest, skew = step_deviation(loader, steps)
    return {"mode": "demo (concat, 1024, schedule)", "steps": n, "worst": worst.tolist(),
            "names": loader.names, "seconds": secs, "step_tokens": biggest, "step_skew": skew,
            "seq_len": cfg.batch.seq_len}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/mixbatch-bench-step-mixture"))
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--max-bytes", type=int, default=4 << 20, help="text per domain")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--demo", action="store_true", help="also run the demo's config")
    ap.add_argument("--demo-steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0, help="the loader's seed (reading orders)")
    ap.add_argument("--unit", choices=["tokens", "samples"], default="tokens",
                    help="mix by tokens (deviation in tokens) or by samples (in documents)")
    ap.add_argument("--label", default="", help="a name for this run in the table")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    import mixbatch

    args.work.mkdir(parents=True, exist_ok=True)
    sources = corpus(args.work, args.max_bytes)
    print(header("bench_step_mixture: the mixture at every step boundary", ["numpy"],
                 {"mixbatch imported from": str(Path(mixbatch.__file__).parent),
                  "label": args.label or "-", "seed": str(args.seed), "unit": args.unit}))
    results = [run_mode(m, sources, args.work, args.steps, args.seq_len, args.seed, args.unit)
               for m in args.modes.split(",")]
    if args.demo:
        results.append(run_demo(sources, args.work, args.demo_steps))
    print()
    if args.unit == "samples":  # deviation in documents; no target of the issue applies
        print("| mode | steps | largest step (documents) | " +
              " | ".join(f"max dev {n} (documents)" for n in WEIGHTS) + " | seconds |")
        print("|---|---:|---:|" + "---:|" * len(WEIGHTS) + "---:|")
        for r in results:
            cells = " | ".join(f"{x:,.1f}" for x in r["worst"])
            print(f"| {r['mode']} | {r['steps']} | {r['step_tokens']:,} | {cells} | "
                  f"{r['seconds']:.1f} |")
        return
    print("| mode | steps | largest step tokens | " +
          " | ".join(f"max dev {n} (tokens)" for n in WEIGHTS) +
          " | max dev / seq_len | one step's imbalance / seq_len | target | met | seconds |")
    print("|---|---:|---:|" + "---:|" * len(WEIGHTS) + "---:|---:|---|---|---:|")
    for r in results:
        L = r.get("seq_len", args.seq_len)
        dev = dict(zip(r["names"], r["worst"], strict=True))
        worst = max(r["worst"])
        if r["mode"] == "buckets":
            bound, label = r["step_tokens"], "one step"
        else:
            bound, label = 2 * L, "2·seq_len"
        cells = [f"{dev[n]:,.0f}" if n in dev else "-" for n in WEIGHTS]
        if r["mode"].startswith("demo"):
            cells = [f"(all {len(dev)} sources) {worst:,.0f}"] + [""] * (len(WEIGHTS) - 1)
        print(f"| {r['mode']} | {r['steps']} | {r['step_tokens']:,} | " + " | ".join(cells)
              + f" | {worst / L:.2f} | {r['step_skew'] / L:.2f} | {label} ({bound:,}) | "
              f"{'yes' if worst <= bound else 'no'} | {r['seconds']:.1f} |")
    first = results[0]
    print(f"\ndocuments: median {first.get('doc_median', 0):,.0f} tokens, longest "
          f"{first.get('doc_max', 0):,} tokens")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
