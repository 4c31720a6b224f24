"""Batch-size sweep on the built-in corpus (``mixbatch.search.batch_sweep``): steps and tokens to
a held-out loss per batch size, several seeds, runs that never reach it censored at their
length (never dropped).

The built-in corpus (``mixbatch.demo.corpus``, byte tokens, 5% held out) with one mixture (the
demo's first-stage weights), concat packing, rows of 256 tokens; the proxy is
``ProxyConfig.demo`` (AdamW, cosine to 0.1x). Every batch size trains on the same ``--tokens``
and is scored every ``--eval-every-tokens``. The report is the command's own table and fit.
Run with the project venv: ``nice -n 10 .venv/bin/python benchmarks/bench_batch_sweep.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

from _common import background_summary, header, log, run_in_workdir, table

PACKAGES = ("mixbatch", "torch", "numpy")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--tokens", type=int, default=80 * 8 * 256, help="training tokens per run")
    p.add_argument("--target", type=float, default=3.0, help="held-out loss target")
    p.add_argument("--eval-every-tokens", type=int, default=8 * 256 * 8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-wait", type=float, default=0.0)
    return p.parse_args()


def config_file(workdir: Path) -> Path:
    import yaml

    from mixbatch.config import load_config
    from mixbatch.demo.corpus import build_corpus, demo_config
    from mixbatch.prepare import prepare

    data = demo_config(build_corpus(workdir / "corpus", max_bytes=1 << 20), workdir / "store")
    data["mixture"] = {"unit": "tokens", "weights": data["mixture"]["schedule"][0]["weights"]}
    data["batch"] = {"seq_len": 256, "batch_size": 8, "packing": "concat"}
    path = workdir / "sweep.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    prepare(load_config(path), workers=1, force=True)
    return path


def bench(args: argparse.Namespace, workdir: Path) -> str:
    from mixbatch.search.batch_sweep import add_sweep_parser

    cfg = config_file(workdir)
    out = workdir / "sweep.json"
    argv = ["sweep", str(cfg), "--batch-sizes", *map(str, args.batch_sizes),
            "--seeds", *map(str, args.seeds), "--tokens", str(args.tokens),
            "--target", str(args.target), "--eval-every-tokens", str(args.eval_every_tokens),
            "--warmup-fraction", "0.125", "--lr", str(args.lr), "--threads", str(args.threads),
            "--device", "cpu", "--out", str(out)]
    parser = argparse.ArgumentParser()
    add_sweep_parser(parser.add_subparsers(dest="cmd"))
    sweep_args = parser.parse_args(argv)
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        sweep_args.func(sweep_args)
    log(shown.getvalue())
    data = json.loads(out.read_text(encoding="utf-8"))
    runs = [[r["batch_size"], r["seed"], r["steps"], r["steps_to_target"],
             f"{r['tokens_to_target']:,}", "yes" if r["censored"] else "no",
             f"{r['best_loss']:.4f}", f"{r['final_loss']:.4f}", f"{r['seconds']:.1f}"]
            for r in data["runs"]]
    per_size = [[r["batch_size"], f"{r['reached']}/{r['runs']}",
                 ("≥ " if r["median_steps_lower_bound"] else "") + f"{r['median_steps']:,.0f}",
                 ("≥ " if r["median_tokens_lower_bound"] else "") + f"{r['median_tokens']:,.0f}",
                 ("≤ " if r["median_steps_lower_bound"] else "") + f"{r['step_speedup']:.2f}",
                 ("≥ " if r["median_tokens_lower_bound"] else "") + f"{r['token_cost']:.2f}"]
                for r in data["by_batch_size"]]
    fit = data["fit"]
    fit_line = (f"S_min {fit['s_min']:,.0f} steps, E_min {fit['e_min']:,.0f} tokens, "
                f"B_crit {fit['b_crit_tokens']:,.0f} tokens" if fit["why"] is None
                else f"no fit: {fit['why']}")
    return "\n".join([
        header(f"Batch-size sweep: steps and tokens to held-out loss {args.target}", PACKAGES,
               {"command": "mixbatch search sweep (mixbatch.search.batch_sweep.run_sweep)",
                "tokens per run": f"{args.tokens:,}", "background load": background_summary()}),
        "",
        table(["rows x 256", "seed", "steps run", "steps to target", "tokens to target",
               "censored", "best val loss", "final val loss", "train+eval s"], runs,
              align="rrrrrlrrr"),
        "",
        table(["rows x 256", "reached", "median steps", "median tokens", "step speed-up",
               "token cost"], per_size, align="rrrrrr"),
        "",
        f"Fit of (S/S_min − 1)(E/E_min − 1) = 1 over the uncensored medians: {fit_line}",
    ])


def main() -> None:
    run_in_workdir(bench, parse_args(), "batch-sweep")


if __name__ == "__main__":
    main()
