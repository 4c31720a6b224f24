"""Time-series sources: reading columns (bad columns fail or are counted), the window store
with per-series statistics, and exact, resumable mixing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mixbatch.errors import DataError, StateError
from mixbatch.io.skips import SkipCounter
from mixbatch.series import SeriesMixer, SeriesStore, prepare_series, read_series


def _csv(path: Path) -> Path:
    t = np.arange(50)
    lines = ["t,a,b,label,gap"] + [
        f"{i},{np.sin(i / 3):.6f},{2.0 * i},{'x' if i % 2 else 'y'},{'' if i == 7 else i}"
        for i in t]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_columns_fail_or_are_counted(tmp_path: Path) -> None:
    path = _csv(tmp_path / "s.csv")
    with pytest.raises(DataError, match=r"s.csv: column 'label' is not numeric \(string\)"):
        read_series(path)
    with pytest.raises(DataError, match=r"series 'gap' has 1 missing values"):
        read_series(path, columns=["a", "gap"])
    skips = SkipCounter()
    got = read_series(path, on_error="skip", skips=skips)
    assert sorted(got) == ["a", "b", "t"] and skips.counts == {"not_numeric": 1,
                                                               "missing_values": 1}


def test_groups_and_parquet(tmp_path: Path) -> None:
    table = pa.table({"site": ["p", "q", "p", "q"], "v": [1.0, 10.0, 2.0, 20.0]})
    pq.write_table(table, tmp_path / "g.parquet")
    got = read_series(tmp_path / "g.parquet", group_by="site")
    assert {k: v.tolist() for k, v in got.items()} == {"v[p]": [1.0, 2.0], "v[q]": [10.0, 20.0]}


def test_windows_normalise_per_series_and_round_trip(tmp_path: Path) -> None:
    series = {"a": np.sin(np.arange(40) / 4) * 5 + 3, "b": np.arange(30.0) * 100,
              "short": np.arange(5.0)}
    skips = SkipCounter()
    meta = prepare_series(series, tmp_path / "st", context=8, horizon=4, stride=2, skips=skips)
    assert skips.counts == {"too_short": 1}
    store = SeriesStore(tmp_path / "st")
    assert [s["windows"] for s in meta["series"]] == [15, 10] and len(store) == 25
    assert store.windows.dtype == np.float32
    assert np.isclose(store.mean[1], series["b"].mean()) and np.isclose(store.std[1],
                                                                        series["b"].std())
    back = store.denormalise(np.asarray(store.windows[[0, 16]], dtype=np.float64),
                             np.array([0, 16]))
    assert np.allclose(back[0], series["a"][:12], atol=1e-5)
    assert np.allclose(back[1], series["b"][2:14], rtol=1e-6)


def _mixer(tmp_path: Path) -> SeriesMixer:
    stores = {}
    for name, n in (("x", 30), ("y", 60)):
        path = tmp_path / name
        if not path.exists():
            prepare_series({name: np.arange(n, dtype=np.float64) ** 1.5}, path, 6, 2)
        stores[name] = SeriesStore(path)
    return SeriesMixer(stores, [0.25, 0.75], seed=3)


def test_mixer_is_exact_covers_each_epoch_and_resumes(tmp_path: Path) -> None:
    mix = _mixer(tmp_path)
    batches = [mix.next_batch(16) for _ in range(10)]
    source = np.concatenate([b["source"] for b in batches])
    counts = np.cumsum(np.eye(2)[source], axis=0)
    assert np.abs(counts - np.arange(1, 161)[:, None] * [0.25, 0.75]).max() < 1.0
    x_windows = np.concatenate([b["window"][b["source"] == 0] for b in batches])
    assert sorted(x_windows[:23].tolist()) == list(range(23))  # store x: 23 windows, each once
    assert batches[0]["context"].shape == (16, 6) and batches[0]["horizon"].shape == (16, 2)
    store = mix.stores[0]
    b = batches[0]
    rows = b["source"] == 0
    assert np.array_equal(b["context"][rows], store.windows[b["window"][rows], :6])
    cut = _mixer(tmp_path)
    for _ in range(4):
        cut.next_batch(16)
    saved = cut.state_dict()
    again = _mixer(tmp_path)
    again.load_state_dict(saved)
    rest = [again.next_batch(16) for _ in range(6)]
    for got, want in zip(rest, batches[4:], strict=True):
        assert all(np.array_equal(got[k], want[k]) for k in want)
    with pytest.raises(StateError, match="saved for other sources or seed"):
        SeriesMixer({"x": store}, [1.0], seed=3).load_state_dict(saved)
