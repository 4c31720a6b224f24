"""Reading proxy-run results: both layouts, every validation error, targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mixbatch.errors import ConfigError
from mixbatch.search.results import (
    parse_target,
    read_mixtures_and_losses,
    read_results,
    read_results_csv,
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n", encoding="utf-8")
    return path


RESULTS = """
index,web,code,loss/web,loss/code,tokens,seconds
1,0.5,0.5,3.0,2.0,1000,1.5
2,0.8,0.2,2.5,2.6,1000,1.4
3,0.2,0.9,3.4,1.8,1000,1.6
4,0.3,0.7,,1.9,1000,1.5
"""


def test_read_our_results_csv(tmp_path: Path) -> None:
    t = read_results_csv(_write(tmp_path / "r.csv", RESULTS))
    assert t.names == ("web", "code") and t.loss_columns == ("loss/web", "loss/code")
    np.testing.assert_array_equal(t.index, [1, 2, 3, 4])
    np.testing.assert_allclose(t.weights[2], [0.2 / 1.1, 0.9 / 1.1])
    np.testing.assert_allclose(t.weights.sum(axis=1), 1.0)
    assert t.notes == ("r.csv: renormalised 1 of 4 rows whose weights sum to 1.1..1.1, not 1",)
    np.testing.assert_array_equal(t.tokens, [1000] * 4)
    assert np.isnan(t.losses["loss/web"][3])
    # with the expected sources, in another order, columns are reordered
    r = read_results_csv(tmp_path / "r.csv", sources=["code", "web"])
    np.testing.assert_allclose(r.weights[:, 0], t.weights[:, 1])


def test_nan_target_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    t = read_results_csv(_write(tmp_path / "r.csv", RESULTS))
    x, y, kept = t.xy("loss/web")
    assert x.shape == (3, 2) and y.tolist() == [3.0, 2.5, 3.4]
    assert kept.notes[-1] == "dropped 1 of 4 runs whose target loss/web is NaN (index 4)"
    _, y2, kept2 = t.xy("loss/code")
    assert y2.size == 4 and len(kept2.notes) == 1
    nan = _write(tmp_path / "n.csv", "index,a,b,loss/x\n1,0.5,0.5,nan\n2,0.1,0.9,")
    with pytest.raises(ConfigError, match=r"target loss/x is missing \(NaN\) in all 2 runs"):
        read_results_csv(nan).xy("loss/x")


def test_weighted_target(tmp_path: Path) -> None:
    t = read_results_csv(_write(tmp_path / "r.csv", RESULTS))
    _, y, _ = t.xy("loss/web=0.5,loss/code=0.5")
    np.testing.assert_allclose(y, [2.5, 2.55, 2.6])
    target = parse_target("loss/web=0.5, loss/code")
    assert target.terms == (("loss/web", 0.5), ("loss/code", 1.0))
    # a unique part of a column name is enough
    assert t.resolve_target("code").label == "loss/code"


@pytest.mark.parametrize(("spec", "match"), [
    ("", "expected COL"),
    ("a=0.5,,b", "empty term"),
    ("a=x", "not a number"),
    ("a=0", "nonzero"),
    ("a,a", "appears twice"),
])
def test_bad_target_syntax(spec: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_target(spec)


def test_target_column_errors(tmp_path: Path) -> None:
    t = read_results_csv(_write(tmp_path / "r.csv", RESULTS))
    with pytest.raises(ConfigError, match=r"target column 'loss/books' not found; loss columns: "
                                          r"loss/web, loss/code"):
        t.xy("loss/books")
    with pytest.raises(ConfigError, match="matches several loss columns: loss/web, loss/code"):
        t.xy("loss/")


def test_missing_and_extra_columns_are_named(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.csv", RESULTS)
    with pytest.raises(ConfigError, match=r"missing weight columns: books; unexpected columns: "
                                          r"code \(expected sources: web, books"):
        read_results_csv(path, sources=["web", "books"])
    no_index = _write(tmp_path / "x.csv", "run,web,code,loss/web\n1,0.5,0.5,2")
    with pytest.raises(ConfigError, match=r"x\.csv: missing column 'index'"):
        read_results_csv(no_index)
    no_loss = _write(tmp_path / "y.csv", "index,web,code\n1,0.5,0.5")
    with pytest.raises(ConfigError, match=r"y.csv: no loss columns \(a loss column's name contains"):
        read_results_csv(no_loss)


@pytest.mark.parametrize(("text", "match"), [
    ("index,a,b,loss/x\n1,0.5,oops,2", r"r.csv:2: column 'b': not a number: 'oops'"),
    ("index,a,b,loss/x\n1,0.5,0.5,2\n2,-0.1,1.1,2", r"r.csv:3: weight 'a' is negative"),
    ("index,a,b,loss/x\n1,0,0,2", r"r.csv:2: all weights are 0"),
    ("index,a,b,loss/x\n1,0.5,0.5,2\n1,0.5,0.5,3", r"repeated index values: 1"),
    ("index,a,b,loss/x\n1.5,0.5,0.5,2", r"index must be an integer"),
    ("index,a,b,loss/x\n1,0.5,0.5", r"r.csv:2: 3 fields, the header has 4"),
    ("index,a,a,loss/x\n1,0.5,0.5,1", r"repeated column names: a"),
    ("index,a,b,loss/x", r"no data rows"),
])
def test_bad_cells(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        read_results_csv(_write(tmp_path / "r.csv", text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.csv: file not found"):
        read_results_csv(tmp_path / "nope.csv")


MIX = """
index,train_the_pile_arxiv,train_the_pile_pile_cc,train_the_pile_github
1,0.2,0.7,0.1
2,0.5,0.5,0.0
3,0.001,0.998,0.002
"""
LOSS = """
index,metric/the_pile_arxiv_val_loss,metric/the_pile_pile_cc_val_loss
3,4.0,5.1
1,4.2,5.3
2,3.9,5.6
"""


def test_regmix_layout_joined_on_index(tmp_path: Path) -> None:
    t = read_mixtures_and_losses(_write(tmp_path / "m.csv", MIX), _write(tmp_path / "l.csv", LOSS))
    assert t.names == ("arxiv", "pile_cc", "github")
    _, y, _ = t.xy("metric/the_pile_pile_cc_val_loss")
    assert y.tolist() == [5.3, 5.6, 5.1]  # in the mixtures file's order
    assert any("renormalised 1 of 3 rows" in n for n in t.notes)
    same = read_results(mixtures=tmp_path / "m.csv", losses=tmp_path / "l.csv",
                        sources=["github", "arxiv", "pile_cc"])
    np.testing.assert_allclose(same.weights[:, 0], t.weights[:, 2])


def test_unmatched_indices_between_files(tmp_path: Path) -> None:
    m = _write(tmp_path / "m.csv", MIX + "4,0.1,0.8,0.1\n5,0.1,0.8,0.1")
    lo = _write(tmp_path / "l.csv", LOSS + "9,1,1")
    with pytest.raises(ConfigError, match=r"unmatched runs: 2 index values of m.csv have no row in "
                                          r"l.csv \(4, 5\); 1 index values of l.csv have no row in "
                                          r"m.csv \(9\)"):
        read_mixtures_and_losses(m, lo)


def test_results_or_two_files_not_both(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not both"):
        read_results("r.csv", mixtures="m.csv", losses="l.csv")
    with pytest.raises(ConfigError, match="both --mixtures and --losses"):
        read_results(mixtures="m.csv")
