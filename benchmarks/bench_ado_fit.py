"""ADO's bounded statistics against the released code's full-history fit, on simulated runs.

A simulated run has three domains whose training loss follows a known power law in the units
trained so far (``L_k(n) = e^{E_k} + e^{A_k} n^{−α_k}``) times log-normal noise (``--noise``),
with ``--batch`` units per step split by the policy's own weights. The ADO policy
(:mod:`mixbatch.mixture.policies.ado`) keeps log-spaced bins; at the end both fits are made on
the same run:

- ``bins``: the policy's fit on its bin means (``3·K·bins`` numbers of state);
- ``full``: the released code's procedure, every step kept, Savitzky–Golay (101, 3) smoothing,
  every 10th point after ``--ignore`` (``2·K·T`` numbers).

Reported per seed: the largest relative difference of the two fitted curves over the fitted
range and up to twice the final ``n``, each fit's error on the exponent ``α``, the largest
difference of the weights the two fits imply at the end, the state sizes and the fit times.
Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_ado_fit.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.signal import savgol_filter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header
from mixbatch.mixture.policies import Feedback, make_policy
from mixbatch.mixture.policies.ado import fit_power_law, power_law

TRUE = np.array([[np.log(30.0), np.log(2.0), 0.3],
                 [np.log(20.0), np.log(3.0), 0.2],
                 [np.log(5.0), np.log(2.5), 0.1]])


def one_seed(seed: int, args: argparse.Namespace) -> dict[str, float]:
    pol = make_policy("ado", 3, refit_every=args.steps, start=args.steps, ignore=args.ignore,
                      bins_per_decade=args.bins)
    rng = np.random.default_rng(seed)
    ns, losses = [], []
    for t in range(1, args.steps + 1):
        counts = np.round(pol.weights() * args.batch)
        n = pol.total + counts.sum()
        loss = power_law(TRUE, n) * np.exp(rng.normal(0.0, args.noise, 3))
        ns.append(n)
        losses.append(loss)
        if t == args.steps:
            start = time.perf_counter()
        pol.observe(Feedback(step=t, counts=counts, train_loss=loss))
    t_bins = time.perf_counter() - start
    binned = pol.laws()
    start = time.perf_counter()
    x = np.log(np.array(ns))[args.ignore::10]
    smooth = savgol_filter(np.array(losses).T, 101, 3, axis=-1)[:, args.ignore::10]
    full = np.stack([fit_power_law(x, np.log(smooth[i])) for i in range(3)])
    t_full = time.perf_counter() - start
    grid = np.geomspace(ns[args.ignore], 2 * ns[-1], 100)
    rel = max(np.abs(power_law(binned[i], grid) / power_law(full[i], grid) - 1).max()
              for i in range(3))
    w = []
    for params in (binned, full):
        pol.params = params
        pol.p, pol.p_avg = pol.prior.copy(), pol.prior.copy()
        pol._mix(args.steps)
        w.append(pol.weights())
    return {"seed": seed, "curve": rel, "alpha_bins": np.abs(binned[:, 2] - TRUE[:, 2]).max(),
            "alpha_full": np.abs(full[:, 2] - TRUE[:, 2]).max(),
            "weights": np.abs(w[0] - w[1]).max(), "state_bins": 3 * pol.bins.count.size,
            "state_full": 2 * 3 * args.steps, "t_bins": t_bins, "t_full": t_full}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--ignore", type=int, default=300)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--bins", type=int, default=20)
    ap.add_argument("--noise", type=float, nargs="+", default=[0.02, 0.05])
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    print(header("bench_ado_fit: bounded bins vs the full-history fit", ["numpy", "scipy"],
                 {"settings": f"steps {args.steps}, ignore {args.ignore}, batch {args.batch}, "
                              f"{args.bins} bins per decade"}))
    print()
    print("| noise | seed | max curve diff | max abs α err (bins) | (full) | max weight diff | "
          "state bins / full | fit s bins / full |")
    print("|---|---|---|---|---|---|---|---|")
    for noise in args.noise:
        args_n = argparse.Namespace(**{**vars(args), "noise": noise})
        for seed in range(args.seeds):
            r = one_seed(seed, args_n)
            print(f"| {noise} | {seed} | {r['curve']:.2%} | {r['alpha_bins']:.3f} | "
                  f"{r['alpha_full']:.3f} | {r['weights']:.4f} | {r['state_bins']} / "
                  f"{r['state_full']} | {r['t_bins']:.2f} / {r['t_full']:.2f} |")


if __name__ == "__main__":
    main()
