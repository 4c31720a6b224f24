"""Batch-size schedules in the loader: speed and mixture accuracy against a constant batch size.

Data: the built-in demo corpus (``mixbatch.demo.build_corpus``), mixed by tokens at its natural
shares. For ``concat`` and ``bfd``, each variant plans ``--steps`` steps and reads every row of
every step (world size 1):

- ``constant``: ``--batch`` rows a step (the anchor, in the same run);
- ``ramp by step``: ``batch/4`` until step steps/4, ``batch/2`` until steps/2, then ``batch``;
- ``ramp by tokens``: the same ramp with its bounds in planned tokens (where the step ramp's
  full rows would put them: ``bfd``'s rows carry padding, so its bounds come a little later);
- ``run-time changes``: ``set_batch_size`` every 50 steps, cycling ``batch/2, 2·batch, batch``.

For the token-budget packings (``buckets``, ``pad_buckets``) the same variants change
``batch.token_budget`` instead, in tokens: ``batch · seq_len`` constant, a ramp of
``batch/4, batch/2, batch`` times ``seq_len`` by step and by tokens (bounds as above), and
``set_token_budget`` every 50 steps; a change re-plans the rest of the open window.

Reported: positions per second (plan + read), steps planned per block call (block planning is
cut at every size change), the largest deviation of any source's fed tokens from its target
over every step boundary (tokens; the invariant's bound is ``2·seq_len``; with fixed weights the
row stream is the same for every variant, so only where the step boundaries fall differs), and
the time to resume at the last step (open the loader, load the state, first batch).

Run ``.venv-bench/bin/python benchmarks/bench_batch_schedule.py --help``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import header, log, run_in_workdir, table

PACKAGES = ("mixbatch", "numpy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=400, help="steps per variant")
    p.add_argument("--batch", type=int, default=32, help="rows of the constant anchor")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per row")
    p.add_argument("--mb-per-domain", type=float, default=2.0, help="corpus size per domain")
    p.add_argument("--runs", type=int, default=2, help="timed runs per variant (best kept)")
    p.add_argument("--seed", type=int, default=0, help="corpus and loader seed")
    p.add_argument("--workdir", type=Path, default=None, help="keep the corpus here")
    p.add_argument("--max-wait", type=float, default=10.0, help="seconds to wait for quiet")
    p.add_argument("--packings", default="concat,bfd,buckets,pad_buckets",
                   help="packing modes to run (comma-separated)")
    return p.parse_args(argv)


def variants(args: argparse.Namespace, budget: bool = False) -> dict[str, dict[str, Any]]:
    """The variants as ``batch`` settings; ``budget``: as token budgets (``rows · seq_len``)."""
    b, s, L = args.batch, args.steps, args.seq_len
    key, unit = ("token_budget", L) if budget else ("batch_size", 1)
    ramp = [(b // 4, s // 4), (b // 2, s // 2), (b, None)]
    # the same bounds in planned tokens: the positions of the ramp's steps before each bound
    by_tokens = [(b // 4, s // 4 * b // 4 * L), (b // 2, (s // 4 * b // 4 + s // 4 * b // 2) * L),
                 (b, None)]
    top = "max_token_budget" if budget else "max_batch_size"
    return {
        "constant": {"batch": {key: b * unit}, "changes": {}},
        "ramp by step": {"batch": {key: [
            {key: n * unit, **({"until_step": u} if u else {})} for n, u in ramp]},
            "changes": {}},
        "ramp by tokens": {"batch": {key: [
            {key: n * unit, **({"until_tokens": u} if u else {})} for n, u in by_tokens]},
            "changes": {}},
        "run-time changes": {"batch": {key: b * unit, top: 2 * b * unit},
                             "changes": {k: (b // 2, 2 * b, b)[(k // 50 - 1) % 3] * unit
                                         for k in range(50, s, 50)}},
    }


def run(cfg: Any, steps: int, changes: dict[int, int]) -> dict[str, Any]:
    from mixbatch.loader.loader import MixedLoader

    loader = MixedLoader(cfg)
    calls = 0
    plan_block = loader._plan_block

    def counted() -> Any:
        nonlocal calls
        calls += 1
        return plan_block()

    loader._plan_block = counted  # type: ignore[method-assign]
    worst, positions = 0.0, 0
    t0 = time.perf_counter()
    for _ in range(steps):
        if loader.step in changes:
            if loader.token_budget is None:
                loader.set_batch_size(changes[loader.step])
            else:
                loader.set_token_budget(changes[loader.step])
        step = loader.next_step()
        if step is None:
            break
        batch = loader.compact_of(step)
        positions += step.plan.rows * step.plan.seq_len  # a step's width: its rows' longest
        fed = loader.fed_tokens.astype(np.float64)
        worst = max(worst, float(np.abs(fed - loader.current_weights() * fed.sum()).max()))
        del batch
    seconds = time.perf_counter() - t0
    state = loader.state_dict()
    t1 = time.perf_counter()
    again = MixedLoader(cfg)
    again.load_state_dict(state)
    first = again.next_step()
    if first is not None:
        again.compact_of(first)
    return {"seconds": seconds, "positions": positions, "steps": loader.step, "calls": calls,
            "worst": worst, "resume": time.perf_counter() - t1}


def bench(args: argparse.Namespace, workdir: Path) -> str:
    from mixbatch.config import config_from_dict
    from mixbatch.demo import build_corpus
    from mixbatch.prepare import prepare

    domains = build_corpus(workdir / "corpus", max_bytes=int(args.mb_per_domain * (1 << 20)),
                           seed=args.seed)
    base = {"seed": args.seed, "tokenizer": "byte", "store": str(workdir / "store"),
            "sources": {d.name: {"path": str(d.path), "format": "jsonl"} for d in domains},
            "mixture": {"unit": "tokens", "temperature": 1.0}}
    prepare(config_from_dict({**base, "batch": {"seq_len": args.seq_len}}), workers=1,
            progress=False)
    rows = []
    for packing in args.packings.split(","):
        budget = packing in ("buckets", "pad_buckets")
        for name, v in variants(args, budget).items():
            batch = {"seq_len": args.seq_len, "packing": packing, **v["batch"]}
            if packing == "bfd":
                batch["pack_window"] = 64
            cfg = config_from_dict({**base, "batch": batch})
            best = None
            for k in range(args.runs):
                r = run(cfg, args.steps, v["changes"])
                log(f"{packing} {name} run {k}: {r['positions'] / r['seconds'] / 1e6:.2f} "
                    f"M positions/s, worst {r['worst']:.0f} tokens")
                best = r if best is None or r["seconds"] < best["seconds"] else best
            assert best is not None
            rows.append([packing, name, best["steps"], f"{best['positions'] / 1e6:.1f}",
                         f"{best['positions'] / best['seconds'] / 1e6:.2f}",
                         f"{best['steps'] / best['calls']:.1f}", f"{best['worst']:.0f}",
                         f"{best['resume'] * 1e3:.0f}"])
    head = header("bench_batch_schedule: batch-size and token-budget schedules vs a constant batch", PACKAGES,
                  {"corpus": ", ".join(f"{d.name} {d.bytes / 1e6:.1f} MB" for d in domains),
                   "settings": f"{args.steps} steps, batch {args.batch}, seq_len "
                               f"{args.seq_len}, best of {args.runs} runs"})
    return head + "\n\n" + table(
        ["packing", "variant", "steps", "M positions", "M positions/s (plan + read)",
         "steps per plan call", "max |fed - target| (tokens)", "resume (ms)"], rows, "llrrrrrr")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_in_workdir(bench, args, "batch-schedule")


if __name__ == "__main__":
    main()
