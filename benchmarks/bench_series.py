"""A small forecaster trained on a mixture of public series against single-dataset training.

Series that ship inside statsmodels (``pip install statsmodels`` in the benchmark venv):
``sunspots`` (yearly sunspot activity), ``co2`` (weekly Mauna Loa CO2, its gaps filled by linear
interpolation first), ``nile`` (yearly river flow), ``elnino`` (monthly sea temperature, the
year rows flattened), ``macrodata`` (quarterly ``realgdp``, ``cpi``, ``unemp``, ``infl``, one
dataset of four series). Each dataset's training part (each series' first 80%) is written to
CSV files and declared as a series source (``kind: series``) of a mixbatch config;
``mixbatch.prepare.prepare`` builds the window stores (per-series z-normalisation on those
80%) and :class:`mixbatch.series.loader.SeriesLoader` feeds the training batches, the path
``mixbatch prepare`` / ``stream`` / the torch adapter take. The test windows are the last 20%,
normalised with the training statistics the stores keep. Forecaster: an MLP
``context (24) → 64 → 64 → horizon (6)``, Adam (lr 1e-3), batch 64, ``--steps`` steps, one torch
thread. Runs, each with the same steps:

- ``mixture``: one config of all datasets, ``mixture.weights`` equal (exact per step);
- ``single``: one config per dataset, trained on that dataset only.

Reported per seed and dataset: test MAE and MSE in normalised units (per series, then averaged
over the dataset's series).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header
from mixbatch.config import config_from_dict
from mixbatch.prepare import prepare
from mixbatch.series.loader import SeriesLoader

CONTEXT, HORIZON = 24, 6


def datasets() -> dict[str, dict[str, np.ndarray]]:
    from statsmodels import datasets as d

    co2 = d.co2.load_pandas().data["co2"].interpolate(limit_direction="both").to_numpy()
    elnino = d.elnino.load_pandas().data.drop(columns=["YEAR"]).to_numpy().ravel()
    macro = d.macrodata.load_pandas().data
    return {
        "sunspots": {"sunspots": d.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()},
        "co2": {"co2": co2},
        "nile": {"nile": d.nile.load_pandas().data["volume"].to_numpy()},
        "elnino": {"elnino": elnino},
        "macrodata": {c: macro[c].to_numpy() for c in ("realgdp", "cpi", "unemp", "infl")},
    }


def build(root: Path) -> tuple[dict[str, dict], dict[str, list[np.ndarray]]]:
    """The series source of every dataset (prepared into ``root/store``) and its test windows."""
    sources, tests = {}, {}
    for name, series in datasets().items():
        cut = {k: int(len(v) * 0.8) for k, v in series.items()}
        # one CSV per series (the datasets' series have different lengths)
        paths = []
        for k, v in series.items():
            path = root / f"{name}.{k}.csv"
            path.write_text(f"{k}\n" + "\n".join(f"{float(x)!r}" for x in v[:cut[k]]))
            paths.append(str(path))
        sources[name] = {"kind": "series", "path": paths, "context": CONTEXT,
                         "horizon": HORIZON}
    cfg = config(root, sources, 0)
    prepare(cfg)
    for name, store in zip(cfg.sources, SeriesLoader(cfg).stores, strict=True):
        series = datasets()[name]
        tests[name] = []
        for s in store.meta["series"]:
            k = s["name"].split(":")[-1]  # "file:column" with several files
            cut = int(len(series[k]) * 0.8)
            x = (series[k][cut - CONTEXT:] - s["mean"]) / s["std"]
            tests[name].append(np.lib.stride_tricks.sliding_window_view(x, CONTEXT + HORIZON))
    return sources, tests


def config(root: Path, sources: dict[str, dict], seed: int) -> object:
    return config_from_dict({"seed": seed, "store": str(root / "store"), "sources": sources,
                             "mixture": {"weights": dict.fromkeys(sources, 1.0)},
                             "batch": {"batch_size": 64}})


def train(cfg: object, steps: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(CONTEXT, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, HORIZON))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = SeriesLoader(cfg)
    for step in loader.steps(steps):
        b = loader.batch_of(step)
        loss = torch.nn.functional.mse_loss(model(torch.from_numpy(b["context"])),
                                            torch.from_numpy(b["horizon"]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def evaluate(model: torch.nn.Module, windows: list[np.ndarray]) -> tuple[float, float]:
    mae, mse = [], []
    with torch.no_grad():
        for w in windows:
            w = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
            err = model(w[:, :CONTEXT]) - w[:, CONTEXT:]
            mae.append(float(err.abs().mean()))
            mse.append(float((err ** 2).mean()))
    return float(np.mean(mae)), float(np.mean(mse))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(header("bench_series: mixture of public series vs single-dataset training",
                 ["numpy", "torch", "statsmodels", "pyarrow"],
                 {"settings": f"context {CONTEXT}, horizon {HORIZON}, {args.steps} steps of 64 "
                              "windows, MLP 64x64"}))
    print()
    print("| seed | dataset | single MAE | mixture MAE | single MSE | mixture MSE |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sources, tests = build(root)
        for seed in range(args.seeds):
            mixed = train(config(root, sources, seed), args.steps, seed)
            for name in sources:
                alone = train(config(root, {name: sources[name]}, seed), args.steps, seed)
                s_mae, s_mse = evaluate(alone, tests[name])
                m_mae, m_mse = evaluate(mixed, tests[name])
                print(f"| {seed} | {name} | {s_mae:.3f} | {m_mae:.3f} | {s_mse:.3f} | "
                      f"{m_mse:.3f} |", flush=True)


if __name__ == "__main__":
    main()
