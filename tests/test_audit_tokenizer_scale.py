"""Mixture inference at scale: the stop on stable shares, symbol ids from code points."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mixbatch.audit.bpe_files import BPETokenizer
from mixbatch.audit.mixture_lp import solve_mixture
from mixbatch.audit.tokenizer_mix import build_problem
from test_audit_tokenizer import LETTERS, _texts, _train


@pytest.fixture(scope="module")
def problem(tmp_path_factory: pytest.TempPathFactory):
    """A tokenizer trained on other text than the samples (slack needed, many passes)."""
    from mixbatch.audit.bpe_files import load_bpe
    from mixbatch.audit.tokenizer_mix import word_counts

    tmp = tmp_path_factory.mktemp("scale")
    train = [t for i, k in enumerate(LETTERS) for t in _texts(LETTERS[k], 8_000 * (i + 1), 50 + i)]
    tok = _train(train, 120)
    tok.save(str(tmp / "tok.json"))
    bpe = load_bpe(tmp / "tok.json")
    counted = {k: word_counts(_texts(v, 30_000, i), bpe)
               for i, (k, v) in enumerate(LETTERS.items())}
    return build_problem(bpe, counted, 120)[0]


def test_stable_stop_ends_early_near_the_exact_shares(problem) -> None:
    # small passes (20 rows), so that the exact passes are many; rows per merge as by default
    # (with one row per merge and 5 per pass the sweep moves the shares too little to tell:
    # the stop then lands up to 0.1 away; measured, not tested)
    exact = solve_mixture(problem, per_pass=20)
    assert exact.converged and exact.stopped == "converged" and exact.passes > 12
    early = solve_mixture(problem, per_pass=20, stable_passes=3, stable_tol=0.02)
    assert early.stopped == "stable" and not early.converged
    assert early.passes < exact.passes
    # the stop comes after a sweep: a replay to the last merge whose rows were all added and
    # solved (the shares it gave are the answer)
    assert early.reached[-1] == len(problem.off) - 1
    assert sum(early.history) == early.rows_added
    assert np.abs(early.proportions - exact.proportions).max() < 0.01
    assert early.proportions.sum() == pytest.approx(1.0)


def test_stages_reach_the_exact_optimum(problem) -> None:
    exact = solve_mixture(problem, per_step=1, per_pass=5)
    staged = solve_mixture(problem, per_step=1, per_pass=5, stages=(0.25, 0.5))
    assert staged.converged and staged.stopped == "converged"
    assert staged.residual == pytest.approx(exact.residual, rel=1e-6)
    # the replays of the first stage stop at a quarter of the merges
    quarter = round(0.25 * (len(problem.off) - 1))
    assert staged.reached[0] <= quarter and max(staged.reached) == len(problem.off) - 1
    # one stage per fraction, each ended by a pass that found nothing (a replay, no solve)
    assert staged.history.count(0) == 3


def test_symbol_ids_from_code_points_outside_the_basic_plane() -> None:
    # the merges' tokens first, then every character of the samples (astral ones included)
    bpe = BPETokenizer(Path("t"), "vocab+merges", [("a", "b"), ("ab", "𝄞")], str.split)
    words = {"x": (Counter({"ab𝄞": 3, "b𝄞a": 2, "é": 5}), 30),
             "y": (Counter({"𝄞𝄞": 1, "ab": 4}), 10)}
    replay, n = build_problem(bpe, words, None)
    assert n == 2
    # pair counts at t = 0: x holds 3*2 + 2*2 pairs, y 1 + 4
    assert replay.pairs0.tolist() == [10.0, 5.0]
    t0 = slice(replay.off[0], replay.off[1])
    pairs = Counter()
    for c, p, d in zip(replay.cat[t0], replay.pair[t0], replay.delta[t0], strict=True):
        pairs[(int(c), int(p))] += int(d)
    # distinct pairs: ab, b𝄞, 𝄞a, 𝄞𝄞 (x: ab 3, b𝄞 5, 𝄞a 2; y: 𝄞𝄞 1, ab 4)
    assert sorted(pairs.values()) == [1, 2, 3, 4, 5]
    # merge 1 (a, b) and merge 2 (ab, 𝄞) both occur
    assert (replay.merge_pair[1:] >= 0).all()
