"""Online mixture policies against static mixtures, end to end on the built-in corpus.

The built-in corpus (``mixbatch.demo.build_corpus``: Python sources, C headers, English, German
and French man pages; ``--max-bytes`` of text per domain) is prepared with the byte tokenizer
into a temp folder, 10% of each domain's documents held out (``holdout_max`` 64). One domain is
the *target* (``--target``, default ``man_de``): the objective is the loss on the validation
half of its held-out documents (:mod:`mixbatch.online.splits`; the other half is what targeted
policies may read).

Every run trains the same tiny proxy (``--shape``) for ``--steps`` steps of ``--batch-size`` x
``--seq-len`` tokens (concat packing: every position is a real token, so every run sees the
same number of tokens) with :func:`mixbatch.online.train_online`:

- ``uniform``: the static uniform mixture; ``natural``: the static mixture proportional to each
  domain's tokens;
- ``doremi``, ``odm``, ``skillit``, ``dga``, ``exp3-flad``, ``ucb1-flad`` (and ``dga-full`` when
  asked for: DGA's full-model raw inner product, ``grads: full``, ``normalize_grads: false``):
  the policy with its defaults (and the loop's run-length defaults,
  ``mixbatch.mixture.policies.spec``) in the loop, starting from uniform. DoReMi's reference
  model is the ``uniform`` run of the same seed (the paper's reference: the same model trained
  on the uniform mixture); Skill-It estimates its graph by
  one-domain probe runs (their tokens are listed as extra); DGA, EXP3-FLAD and UCB1-FLAD, and
  Skill-It's evaluation, steer by the target's development documents.

Each configuration runs with ``--seeds`` (seed = data order, held-out split and initialisation).
Reported per configuration, over seeds: the target's validation loss at the end (mean ± sd),
its difference from uniform (paired by seed), the tokens needed to first reach the uniform
run's final target loss (the target curve, evaluated ``--evals`` times per run, interpolated
linearly) and the time-to-result ratio against uniform, as in "Benchmarking Neural Network
Training Algorithms" (Dahl et al. 2023): tokens to reach the target / uniform's tokens to reach
it (< 1 is faster). A run that never gets there is *censored* at its length: its ratio is at
least (its tokens / uniform's tokens to reach), and it is counted at that bound, never left out.
The table gives reached/total, the censored mean (prefixed ``≥`` when a run is censored: the
true mean is at least that) and the Kaplan-Meier median of the ratio (the smallest ratio by
which half the seeds reached the target, censored runs leaving the risk set at their bound;
``> x`` when half never did), so that a method cannot look fast by the seeds it failed on.
Runs go ``--procs`` at a time, one torch thread each. Run with the project venv:
``.venv/bin/python benchmarks/bench_policies.py``.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from _common import header, log, table, tree_cpu_seconds

PACKAGES = ("mixbatch", "torch", "numpy")
POLICIES = ["doremi", "odm", "skillit", "dga", "exp3-flad", "ucb1-flad"]
#: variants run on request (``--policies ... dga-full``): DGA with the paper's score, the raw
#: inner product of full-model gradients (the default ``dga`` row: head gradients, cosine)
VARIANTS = {"dga-full": {"name": "dga", "grads": "full", "normalize_grads": False}}
BASELINES = ["uniform", "natural"]
DOREMI_AVG = "doremi ᾱ rerun"
SHAPES = {
    "tiny": {"n_layer": 2, "d_model": 64, "n_head": 4},
    "micro": {"n_layer": 1, "d_model": 32, "n_head": 2},
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", type=Path, default=None,
                   help="corpus, store and runs (default: a temp folder, removed)")
    p.add_argument("--max-bytes", type=int, default=4 << 20, help="text per domain")
    p.add_argument("--chunk-chars", type=int, default=2048,
                   help="cut documents into pieces of at most this many characters")
    p.add_argument("--target", default="man_de")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shape", choices=list(SHAPES), default="tiny")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--evals", type=int, default=20, help="validation points per run")
    p.add_argument("--eval-tokens", type=int, default=8192, help="validation tokens per domain")
    p.add_argument("--policies", nargs="+", default=POLICIES, choices=[*POLICIES, *VARIANTS])
    p.add_argument("--procs", type=int, default=2, help="runs at a time (one thread each)")
    return p.parse_args()


def chunk_corpus(corpus: list, out: Path, max_chars: int) -> list:
    """Cut every document into pieces of at most ``max_chars`` characters at line boundaries
    (a longer line is cut where it must); returns the corpus entries pointing at the pieces."""
    import gzip
    import json
    from dataclasses import replace

    out.mkdir(parents=True, exist_ok=True)
    chunked = []
    for d in corpus:
        opener = gzip.open if str(d.path).endswith(".gz") else open
        path = out / f"{d.name}.jsonl"
        n = 0
        with opener(d.path, "rt", encoding="utf-8") as src, open(path, "w", encoding="utf-8") as dst:
            for line in src:
                text = json.loads(line)["text"]
                piece = ""
                for ln in text.splitlines(keepends=True):
                    while len(ln) > max_chars:
                        if piece:
                            dst.write(json.dumps({"text": piece}, ensure_ascii=False) + "\n")
                            n += 1
                            piece = ""
                        dst.write(json.dumps({"text": ln[:max_chars]}, ensure_ascii=False) + "\n")
                        n += 1
                        ln = ln[max_chars:]
                    if len(piece) + len(ln) > max_chars:
                        dst.write(json.dumps({"text": piece}, ensure_ascii=False) + "\n")
                        n += 1
                        piece = ""
                    piece += ln
                if piece.strip():
                    dst.write(json.dumps({"text": piece}, ensure_ascii=False) + "\n")
                    n += 1
        chunked.append(replace(d, path=path, documents=n))
    return chunked


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One run in a worker process; returns its summary and wall time."""
    from mixbatch.config import config_from_dict
    from mixbatch.online import train_online
    from mixbatch.proxy import ProxyConfig

    t0 = time.perf_counter()
    cfg = config_from_dict(job["config"])
    r = train_online(cfg, ProxyConfig.from_dict(job["proxy"]), job["policy"],
                     target=job["target"], run_dir=job["run_dir"], audit=False)
    return {"label": job["label"], "seed": job["seed"], "summary": r.summary,
            "wall": time.perf_counter() - t0}


def reach(history: list[dict[str, Any]], target: str, level: float) -> float:
    """Training tokens at which the target's validation loss first gets to ``level`` (linear
    interpolation between evaluations; from the first evaluation on), or ``inf``."""
    prev = None
    for h in history:
        tok, loss = h["tokens"], h["val_loss"][target]
        if loss <= level:
            if prev is None:
                return float(tok)
            t0, l0 = prev
            return t0 + (tok - t0) * (l0 - level) / (l0 - loss) if l0 != loss else float(tok)
        prev = (tok, loss)
    return math.inf


def km_median(times: list[float], reached: list[bool]) -> float:
    """Kaplan-Meier median of times to an event, some of them censored (``reached`` False: the
    event had not happened by that time): the first event time at which the estimated share
    still waiting drops to 1/2 or below; ``inf`` when it never does."""
    order = sorted(range(len(times)), key=lambda i: (times[i], not reached[i]))
    waiting, at_risk = 1.0, len(times)
    for i in order:  # at equal times events come first, as the estimator counts them
        if reached[i]:
            waiting *= (at_risk - 1) / at_risk
            if waiting <= 0.5:
                return times[i]
        at_risk -= 1
    return math.inf


def censored_ratios(ratios: list[float], bounds: list[float]) -> tuple[str, str, str]:
    """``reached k/n``, the mean with every censored run counted at its bound (``≥`` when one
    is), and the Kaplan-Meier median, for time-to-result ratios (``inf``: not reached; its
    bound: the run's length over uniform's tokens to the target)."""
    hit = [math.isfinite(r) for r in ratios]
    values = [r if ok else b for r, b, ok in zip(ratios, bounds, hit, strict=True)]
    mean = mean_sd(values, "{:.2f}")
    med = km_median(values, hit)
    return (f"{sum(hit)}/{len(hit)}", mean if all(hit) else "≥ " + mean,
            f"{med:.2f}" if math.isfinite(med) else f"> {max(values):.2f}")


def mean_sd(xs: list[float], fmt: str = "{:.4f}", signed: bool = False) -> str:
    if not xs:
        return "-"
    m = statistics.fmean(xs)
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{fmt.format(m) if not signed or m < 0 else '+' + fmt.format(m)} ± {fmt.format(sd)}"


def main() -> None:
    args = parse_args()
    own_tmp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="mixbatch-bench-policies-")) if own_tmp else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        report = bench(args, workdir)
    finally:
        if own_tmp:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report)


def bench(args: argparse.Namespace, workdir: Path) -> str:
    import torch

    from mixbatch.config import config_from_dict
    from mixbatch.demo import build_corpus
    from mixbatch.prepare import prepare

    t_all, cpu0 = time.perf_counter(), tree_cpu_seconds()
    corpus = chunk_corpus(build_corpus(workdir / "corpus", max_bytes=args.max_bytes),
                          workdir / "chunks", args.chunk_chars)
    names = [d.name for d in corpus]
    if args.target not in names:
        raise SystemExit(f"--target {args.target!r} is not a domain ({', '.join(names)})")
    base = {"tokenizer": "byte", "store": str(workdir / "store"), "holdout": 0.1,
            "holdout_max": 64,
            "sources": {d.name: {"path": str(d.path), "format": "jsonl"} for d in corpus},
            "batch": {"seq_len": args.seq_len, "batch_size": args.batch_size,
                      "packing": "concat"}}
    mixtures = {"uniform": {"unit": "tokens", "weights": {n: 1.0 for n in names}},
                "natural": {"unit": "tokens"}}
    prepared = prepare(config_from_dict({**base, "seed": 0}), workers=1, progress=False)
    log(f"corpus: {prepared.documents} documents, {prepared.tokens:,} tokens "
        f"({', '.join(f'{d.name} {d.documents}' for d in corpus)})")
    tokens = {n: s.tokens for n, s in prepared.sources.items()}
    natural = {n: tokens[n] / sum(tokens.values()) for n in names}

    proxy = {**SHAPES[args.shape], "steps": args.steps, "lr": args.lr,
             "warmup": max(1, args.steps // 15), "eval_every": max(1, args.steps // args.evals),
             "eval_tokens": args.eval_tokens, "device": "cpu", "threads": 1}

    def job(label: str, seed: int, policy: Any, mix: dict[str, Any] | None = None
            ) -> dict[str, Any]:
        mix = mix or mixtures["natural" if label == "natural" else "uniform"]
        return {"label": label, "seed": seed, "target": args.target, "policy": policy,
                "config": {**base, "seed": seed, "mixture": mix},
                "proxy": {**proxy, "seed": seed},
                "run_dir": str(workdir / "runs" / f"{label.replace(' ', '_')}-s{seed}")}

    first = [job(b, s, "none") for s in args.seeds for b in BASELINES]
    policy_jobs = []
    for s in args.seeds:
        for p in args.policies:
            spec: Any = VARIANTS.get(p, p)
            if p == "doremi":  # the reference: the uniform run of the same seed
                spec = {"name": "doremi",
                        "reference": str(workdir / "runs" / f"uniform-s{s}" / "checkpoint.pt")}
            policy_jobs.append(job(p, s, spec))
    results: dict[tuple[str, int], dict[str, Any]] = {}
    ctx = multiprocessing.get_context("spawn")
    labels = [*BASELINES, *args.policies]

    def rerun_doremi() -> list[dict[str, Any]]:
        """DoReMi's deliverable: a fresh run on the static average mixture ᾱ of its proxy run."""
        if "doremi" not in args.policies:
            return []
        labels.append(DOREMI_AVG)
        return [job(DOREMI_AVG, s, "none", {"unit": "tokens", "weights":
                                            results[("doremi", s)]["summary"]["averaged_weights"]})
                for s in args.seeds]

    with ProcessPoolExecutor(max_workers=args.procs, mp_context=ctx) as pool:
        for phase in (lambda: first, lambda: policy_jobs, rerun_doremi):
            for r in pool.map(run_job, phase()):
                results[(r["label"], r["seed"])] = r
                log(f"{r['label']:>10} seed {r['seed']}: target {args.target} "
                    f"{r['summary']['target_val_loss']:.4f}, {r['wall']:.1f}s")

    rows = []
    tgt = args.target
    for label in labels:
        finals, deltas, reached, ratios, bounds, means, shares, walls = ([] for _ in range(8))
        extra = {"reference": 0, "probes": 0}
        for s in args.seeds:
            r, u = results[(label, s)], results[("uniform", s)]
            sm, um = r["summary"], u["summary"]
            level = um["target_val_loss"]
            finals.append(sm["target_val_loss"])
            deltas.append(sm["target_val_loss"] - level)
            means.append(sm["val_loss_mean"])
            shares.append(sm["tokens_by_source"][tgt] / sm["tokens"])
            walls.append(r["wall"])
            t_policy, t_uniform = reach(sm["history"], tgt, level), reach(um["history"], tgt, level)
            reached.append(t_policy)
            ratios.append(t_policy / t_uniform)
            bounds.append(sm["history"][-1]["tokens"] / t_uniform)  # censored at the run's end
            for k in extra:
                extra[k] += sm["overhead_tokens"].get(k, 0)
        ok = [x for x in reached if math.isfinite(x)]
        hits, ratio, median = censored_ratios(ratios, bounds)
        extra_txt = ", ".join(f"{k} {v / len(args.seeds) / 1e3:.0f}k" for k, v in extra.items() if v)
        if label == "doremi":
            extra_txt = "reference = the uniform run"
        if label == DOREMI_AVG:
            extra_txt = "the doremi run (static ᾱ)"
        rows.append([label, mean_sd(finals), mean_sd(deltas, signed=True),
                     mean_sd([x / 1e3 for x in ok], "{:.0f}k") if ok else "-", hits, ratio, median,
                     mean_sd(means), f"{statistics.fmean(shares):.1%}", extra_txt or "-",
                     f"{statistics.fmean(walls):.0f}"])

    per_seed = [[label, *(f"{results[(label, s)]['summary']['target_val_loss']:.4f}"
                          for s in args.seeds)] for label in labels]
    shares_rows = []
    for label in labels:
        fed = [results[(label, s)]["summary"] for s in args.seeds]
        share = {n: statistics.fmean(f["tokens_by_source"][n] / f["tokens"] for f in fed)
                 for n in names}
        shares_rows.append([label, *(f"{share[n]:.1%}" for n in names)])
    sample = results[("uniform", args.seeds[0])]["summary"]
    run_tokens = sample["tokens"]
    extra_h = {
        "corpus": f"built-in, {args.max_bytes / 2**20:.0f} MiB max per domain, cut into pieces of "
                  f"at most {args.chunk_chars} characters at line boundaries: "
                  + ", ".join(f"{n} {tokens[n] / 1e6:.2f}M tokens ({natural[n]:.1%})" for n in names)
                  + "; byte tokenizer; holdout 10% (max 64 docs), half validation, half development",
        "target": f"{tgt}: validation half of its held-out documents, {args.eval_tokens} tokens",
        "proxy": f"{args.shape} {SHAPES[args.shape]}, {args.steps} steps x {args.batch_size} x "
                 f"{args.seq_len} = {run_tokens:,} tokens per run, AdamW lr {args.lr} cosine, "
                 f"{torch.__version__} CPU, 1 thread per run, {args.procs} runs at a time",
        "seeds": " ".join(map(str, args.seeds)),
        "time": f"{time.perf_counter() - t_all:.0f} s wall, {tree_cpu_seconds() - cpu0:.0f} CPU s "
                "(this process and its workers)",
    }
    lines = [
        header("Online mixture policies vs static mixtures (equal tokens)", PACKAGES, extra_h),
        "",
        table(["mixture", f"{tgt} val loss (end)", "Δ vs uniform", "tokens to uniform's final",
               "reached", "time-to-result ratio", "ratio KM median", "mean val loss (5 domains)",
               f"{tgt} share fed", "extra tokens/run", "run s"], rows, align="llllrlllrll"),
        "",
        "Δ vs uniform: paired by seed (negative is better). Tokens to uniform's final: first "
        f"point where the {tgt} validation loss reaches the uniform run's final value (same "
        "seed), interpolated between evaluations (mean over the seeds that reached it); ratio = "
        "that / uniform's own (< 1: faster). Reached: seeds that got there within the run. A "
        "seed that did not is censored at the run's length: the ratio's mean counts it at "
        "(run tokens / uniform's tokens), a lower bound, and is then marked ≥; KM median: "
        "Kaplan-Meier median of the ratio over the seeds with those censorings (> x: half of "
        "the seeds never reached it).",
        "",
        f"{tgt} validation loss at the end, per seed:",
        "",
        table(["mixture", *(f"seed {s}" for s in args.seeds)], per_seed),
        "",
        "Share of the training tokens fed per domain (mean over seeds):",
        "",
        table(["mixture", *names], shares_rows),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
