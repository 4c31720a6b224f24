"""The RegMix design generator: simplex, minimum weight, epoch caps, determinism, dedup."""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np
import pytest

from mixbatch.errors import ConfigError
from mixbatch.search.design import (
    DesignSettings,
    design_mixtures,
    epoch_caps,
    token_prior,
    write_design_csv,
)

# sail-sg/regmix:mixture_config/synthesize_mixture.py, get_token_distribution()
PILE = {
    "arxiv": 0.113285273, "freelaw": 0.079608651, "nih_exporter": 0.003913491,
    "pubmed_central": 0.185375901, "wikipedia_en": 0.051081359, "dm_mathematics": 0.015962925,
    "github": 0.101750772, "philpapers": 0.003707518, "stackexchange": 0.066529351,
    "enron_emails": 0.001750772, "gutenberg_pg_19": 0.027085479, "pile_cc": 0.236869207,
    "ubuntu_irc": 0.01184346, "europarl": 0.007929969, "hackernews": 0.008032956,
    "pubmed_abstracts": 0.038825953, "uspto_backgrounds": 0.046446962,
}
NAMES = list(PILE)
TOKENS = np.array(list(PILE.values())) * 1e10


@pytest.fixture(scope="module")
def pile_design():
    return design_mixtures(NAMES, TOKENS, 512)


def test_defaults_are_regmix_constants() -> None:
    s = DesignSettings()
    assert (s.temperature, s.min_strength, s.max_strength, s.n_strengths) == (0.5, 0.1, 5.0, 15)
    assert (s.max_epochs, s.min_weight, s.sample_multiplier) == (15.0, 2e-4, 100)
    np.testing.assert_allclose(s.strengths(), np.logspace(-1, math.log10(5), 15))


def test_rows_are_on_the_simplex_and_the_grid(pile_design) -> None:
    w = pile_design.weights
    assert w.shape == (512, 17)
    assert (w >= 0).all()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    units = w * 5000  # grid of the minimum weight 2e-4
    np.testing.assert_allclose(units, np.round(units), atol=1e-6)
    assert pile_design.draws == 51_200 and pile_design.unique >= 512


def test_minimum_weight_zeroes_small_entries(pile_design) -> None:
    w = pile_design.weights
    assert w[w > 0].min() >= 2e-4 - 1e-12
    assert (w == 0).any(), "small Dirichlet concentrations must produce exact zeros"


def test_epoch_caps_follow_regmix_by_default(pile_design) -> None:
    prior = token_prior(TOKENS)
    np.testing.assert_allclose(epoch_caps(TOKENS), np.minimum(15 * prior, 1.0))
    np.testing.assert_allclose(pile_design.caps, np.minimum(15 * prior, 1.0))
    assert (pile_design.weights <= pile_design.caps + 1e-12).all()
    # enron_emails (0.18% of tokens) may take at most 15 epochs' worth: 2.6%
    assert pile_design.weights[:, NAMES.index("enron_emails")].max() <= 0.0263


def test_caps_for_a_larger_budget_and_per_source_epochs() -> None:
    tokens = [600.0, 300.0, 100.0]
    # a budget of 4000 tokens: a = 600 * 4 / 4000 = 0.6, b = 300 * 4 / 4000 = 0.3,
    # c = 100 * 10 / 4000 = 0.25
    # (few draws fall inside these caps: draw 1000 per mixture instead of 100)
    d = design_mixtures(["a", "b", "c"], tokens, 20, seed=1, train_tokens=4000,
                        max_epochs={"a": 4, "b": 4, "c": 10},
                        settings=DesignSettings(sample_multiplier=1000))
    np.testing.assert_allclose(d.caps, [0.6, 0.3, 0.25])
    assert (d.weights <= d.caps + 1e-12).all()
    assert d.weights[:, 0].max() > 0.5  # the caps bind near their values, not far below
    # with c allowed only 1 epoch (0.025) the caps sum to 0.925: no mixture fits the budget
    with pytest.raises(ConfigError, match=r"cannot fill a budget of 4,000 training tokens.*\(0\.925 of it\)"):
        design_mixtures(["a", "b", "c"], tokens, 5, train_tokens=4000,
                        max_epochs={"a": 4, "b": 4, "c": 1})


def test_deterministic_per_seed(pile_design) -> None:
    again = design_mixtures(NAMES, TOKENS, 512)
    np.testing.assert_array_equal(again.weights, pile_design.weights)
    other = design_mixtures(NAMES, TOKENS, 512, seed=7)
    assert not np.array_equal(other.weights, pile_design.weights)


def test_deduplicated(pile_design) -> None:
    assert len(np.unique(pile_design.weights, axis=0)) == 512
    # two sources on a grid of 0.1 have 11 distinct mixtures: 12 cannot be drawn
    coarse = DesignSettings(min_weight=0.1)
    d = design_mixtures(["x", "y"], [1.0, 1.0], 11, settings=coarse)
    assert len(np.unique(d.weights, axis=0)) == 11
    with pytest.raises(ConfigError, match="only 11 distinct mixtures"):
        design_mixtures(["x", "y"], [1.0, 1.0], 12, settings=coarse)


@pytest.mark.parametrize(("names", "tokens", "n", "match"), [
    (["a", "b"], [10.0, 0.0], 4, "source b has no tokens"),
    (["a"], [10.0], 4, "at least 2 sources"),
    (["a", "a"], [1.0, 1.0], 4, "repeat"),
    (["a", "b"], [1.0, 1.0], 0, "positive integer"),
    (["a", "b"], [1.0, -1.0], 4, "tokens.b"),
])
def test_bad_inputs(names, tokens, n, match) -> None:
    with pytest.raises(ConfigError, match=match):
        design_mixtures(names, tokens, n)


def test_design_csv(tmp_path: Path, pile_design) -> None:
    path = write_design_csv(tmp_path / "design.csv", pile_design)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["index", *NAMES]
    assert [int(r[0]) for r in rows[1:]] == list(range(1, 513))
    back = np.array([[float(x) for x in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(back, pile_design.weights, atol=1e-12)
    assert pile_design.rows()[0]["index"] == 1


def test_cli_design(two_sources: Path, tmp_path: Path) -> None:
    from mixbatch.config import load_config
    from mixbatch.prepare import prepare
    from mixbatch.search.cli import add_search_parsers
    from mixbatch.stats import config_stats

    prepare(load_config(two_sources), workers=1)
    stats = config_stats(load_config(two_sources))
    total = stats["tokens"]
    parser = argparse.ArgumentParser()
    add_search_parsers(parser.add_subparsers())
    out = tmp_path / "design.csv"
    # a budget of 10x the data: web (15 epochs by default) is capped at 1.5 x its share,
    # code (max_epochs: 4 in the config) at 0.4 x its share
    args = parser.parse_args(["search", "design", str(two_sources), "--n", "32", "--out", str(out),
                              "--tokens", str(10 * total)])
    assert args.func(args) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 32 and list(rows[0]) == ["index", "web", "code"]
    code_cap = 4 * stats["sources"]["code"]["tokens"] / (10 * total)
    assert max(float(r["code"]) for r in rows) <= code_cap + 1e-12
    for r in rows:
        assert float(r["web"]) + float(r["code"]) == pytest.approx(1.0, abs=1e-9)
