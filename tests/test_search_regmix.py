"""RegMix reproduction on its released proxy-run results (real data, shared/data/regmix).

Fit on the 512 training runs, predict the 256 unseen test mixtures, target Pile-CC validation
loss. Published (paper Table 2, x100 Spearman / Pearson): linear 90.08 / 87.78, LightGBM
98.45 / 98.57; the chosen mixture puts 0.87-0.89 on pile_cc (notebook 0.891, shipped
``regmix.yaml`` 0.870). Measured here: LightGBM 0.9897 / 0.9874, linear 0.9018 / 0.8792,
pile_cc 0.88 with 20,000 simulations (0.87 with 100,000).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from mixbatch.search.optimize import evaluate, optimize
from mixbatch.search.regress import fit
from mixbatch.search.results import read_mixtures_and_losses

TARGET = "metric/the_pile_pile_cc_val_loss"

# sail-sg/regmix:mixture_config/synthesize_mixture.py get_token_distribution(): the token prior
PILE_PRIOR = {
    "arxiv": 0.113285273, "freelaw": 0.079608651, "nih_exporter": 0.003913491,
    "pubmed_central": 0.185375901, "wikipedia_en": 0.051081359, "dm_mathematics": 0.015962925,
    "github": 0.101750772, "philpapers": 0.003707518, "stackexchange": 0.066529351,
    "enron_emails": 0.001750772, "gutenberg_pg_19": 0.027085479, "pile_cc": 0.236869207,
    "ubuntu_irc": 0.01184346, "europarl": 0.007929969, "hackernews": 0.008032956,
    "pubmed_abstracts": 0.038825953, "uspto_backgrounds": 0.046446962,
}


def _data_dir() -> Path | None:
    d = Path(__file__).resolve().parents[2] / "shared/data/regmix"
    return d if (d / "train_mixture_1m.csv").is_file() else None


DATA = _data_dir()
pytestmark = pytest.mark.skipif(
    DATA is None, reason="RegMix's released results not found (shared/data/regmix beside the repo)")


@pytest.fixture(scope="module")
def train():
    assert DATA is not None
    return read_mixtures_and_losses(DATA / "train_mixture_1m.csv", DATA / "train_pile_loss_1m.csv")


@pytest.fixture(scope="module")
def test_runs(train):
    assert DATA is not None
    return read_mixtures_and_losses(DATA / "test_mixture_1m.csv", DATA / "test_pile_loss_1m.csv",
                                    sources=train.names)


@pytest.fixture(scope="module")
def lgbm(train):
    x, y, _ = train.xy(TARGET)
    prior = np.array([PILE_PRIOR[n] for n in train.names])
    return fit(x, y, train.names, "lightgbm", TARGET, prior=prior / prior.sum())


def test_released_files_read_as_documented(train, test_runs) -> None:
    assert len(train) == 512 and len(test_runs) == 256
    assert train.names == tuple(PILE_PRIOR)  # train_the_pile_<domain> -> <domain>
    assert len(train.loss_columns) == 13
    # weights were rounded to 0.001: rows are renormalised and counted
    assert any("renormalised" in n and "of 512 rows" in n for n in train.notes)


def test_lightgbm_matches_the_paper(lgbm, test_runs) -> None:
    res = evaluate(lgbm, test_runs.weights, test_runs.losses, TARGET)
    assert res["n"] == 256
    assert res["spearman"] >= 0.98 and res["pearson"] >= 0.98, res  # paper 98.45 / 98.57
    assert res["best_true_rank"] <= 3, res  # measured: 1, the true best test run


def test_linear_matches_the_paper(train, test_runs) -> None:
    """Linear regression ranks about 0.90: it cannot bend.

    The loss falls steeply with the first few percent of a domain and then flattens (returns
    diminish, roughly like log w), so a model linear in the weights overrates mixtures that
    spread thinly and underrates concentrated ones. The paper reports 90.08; above 0.95 would
    mean the data or our reader changed, below 0.85 a broken fit.
    """
    x, y, _ = train.xy(TARGET)
    res = evaluate(fit(x, y, train.names, "linear", TARGET), test_runs.weights, test_runs.losses)
    assert 0.85 <= res["spearman"] <= 0.95, res  # measured 0.9018
    assert 0.83 <= res["pearson"] <= 0.93, res  # measured 0.8792, paper 87.78


def test_optimum_puts_most_weight_on_pile_cc(lgbm) -> None:
    # 20,000 instead of RegMix's 100,000 simulations, to keep the test short (~2 s)
    opt = optimize(lgbm, n_sim=20_000, top_k=128, seed=42)
    w = dict(zip(opt.names, opt.weights, strict=True))
    assert 0.85 <= w["pile_cc"] <= 0.91, w  # measured 0.884; paper notebook 0.891
    assert max(w, key=w.get) == "pile_cc"
    assert opt.predicted < 5.2  # the best released 1M run has a Pile-CC loss of 5.08


def test_cli_fit_and_evaluate_regmix_files(tmp_path: Path, capsys) -> None:
    from mixbatch.search.cli import add_search_parsers

    assert DATA is not None
    parser = argparse.ArgumentParser()
    add_search_parsers(parser.add_subparsers())

    def run(*argv: str) -> int:
        args = parser.parse_args(["search", *argv])
        return args.func(args)

    model = tmp_path / "pile_cc.json"
    prior = ",".join(f"{k}={v}" for k, v in PILE_PRIOR.items())
    assert run("fit", "--mixtures", str(DATA / "train_mixture_1m.csv"),
               "--losses", str(DATA / "train_pile_loss_1m.csv"), "--target", "pile_cc",
               "--folds", "3", "--out", str(model), "--prior", prior) == 0
    saved = json.loads(model.read_text())
    assert saved["target"] == TARGET and saved["cv"]["folds"] == 3
    assert saved["cv"]["spearman"] > 0.97  # cross-validated on the training runs
    capsys.readouterr()
    assert run("evaluate", str(model), "--mixtures", str(DATA / "test_mixture_1m.csv"),
               "--losses", str(DATA / "test_pile_loss_1m.csv"), "--target", TARGET,
               "--json") == 0
    res = json.loads(capsys.readouterr().out)
    assert res["spearman"] >= 0.98 and res["pearson"] >= 0.98 and res["n"] == 256
    assert res["best_true_rank"] <= 3
