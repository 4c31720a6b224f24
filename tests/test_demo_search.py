"""The demo's search never hands out a mixture without evidence: its verdict."""

from __future__ import annotations

import pytest

from mixbatch.demo.search import TRUST_SPEARMAN, search_verdict


def test_a_good_fit_with_a_clear_gap_is_trusted() -> None:
    v = search_verdict(0.9, [2.90, 2.91], [3.00, 3.02], best_run=2.95, runs=24)
    assert v["trusted"] and v["verdict"].startswith("trustworthy")
    assert v["seed_spread"] == pytest.approx(0.02)


@pytest.mark.parametrize(("cv", "chosen", "prior", "best", "why"), [
    (TRUST_SPEARMAN - 0.01, [2.90, 2.91], [3.00, 3.02], 2.95, "cross-validated Spearman"),
    (float("nan"), [2.90, 2.91], [3.00, 3.02], 2.95, "cross-validated Spearman"),
    # a gap smaller than the seed-to-seed spread is noise, not a better mixture
    (0.9, [2.950, 2.953], [2.951, 2.960], 3.0, "seed-to-seed spread"),
    (0.9, [3.10, 3.10], [3.05, 3.05], 3.0, "do not beat the prior"),
    (0.9, [2.90, 2.90], [3.00, 3.00], 2.80, "lost to the best of the 24 design runs"),
])
def test_weak_evidence_is_not_trusted(cv, chosen, prior, best, why) -> None:
    v = search_verdict(cv, chosen, prior, best_run=best, runs=24)
    assert not v["trusted"]
    assert v["verdict"].startswith("NOT trustworthy at this size")
    assert why in v["verdict"]
