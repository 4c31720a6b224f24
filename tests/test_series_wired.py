"""Series sources wired into the config, prepare, the loader, stream and the torch adapter:
exact shares over prefixes, resume, ranks, bad columns counted, one kind per config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import write_config
from mixbatch.config import config_from_dict, load_config
from mixbatch.errors import ConfigError, DataError, StateError
from mixbatch.prepare import prepare
from mixbatch.series.loader import SeriesLoader

SERIES = {"kind": "series", "path": "a.csv", "context": 8, "horizon": 2}


def _write(tmp: Path) -> None:
    t = np.arange(120)
    lines = ["x,y,label,gappy"] + [f"{np.sin(i / 7):.5f},{0.5 * i},k{i % 3},"
                                   f"{'nan' if i == 9 else i}" for i in t]
    (tmp / "a.csv").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    lines = ["g,v"] + [f"{i % 3},{rng.normal():.5f}" for i in range(150)]
    (tmp / "b.csv").write_text("\n".join(lines) + "\n")


def _config(tmp: Path, on_error: str = "skip", weights: dict | None = None,
            batch_size: int = 6) -> object:
    _write(tmp)
    p = write_config(tmp / "cfg.yaml", {
        "seed": 5, "store": "store",
        "sources": {"a": {**SERIES, "on_error": on_error, "stride": 2},
                    "b": {**SERIES, "path": "b.csv", "group_by": "g"}},
        "mixture": {"weights": weights or {"a": 0.25, "b": 0.75}},
        "batch": {"batch_size": batch_size}})
    return load_config(p)


@pytest.mark.parametrize(("data", "needle"), [
    ({"sources": {"a": SERIES, "t": {"path": "t.jsonl"}}},
     "series sources (a) and text sources (t) cannot be mixed"),
    ({"sources": {"a": SERIES, "b": {**SERIES, "horizon": 3}}}, "one (context, horizon)"),
    ({"sources": {"a": {**SERIES, "kind": "serie"}}}, "sources.a: kind: expected 'series'"),
    ({"sources": {"a": {**SERIES, "context": 0}}}, "sources.a.context"),
    ({"sources": {"a": {**SERIES, "colums": ["x"]}}}, "sources.a.colums: unknown key"),
    ({"sources": {"a": SERIES}, "mixture": {"schedule": [{"weights": {"a": 1}}]}},
     "mixture.schedule: not available for series sources"),
    ({"sources": {"a": SERIES}, "objectives": {}}, "objectives: not available"),
    ({"sources": {"a": SERIES}, "batch": {"packing": "buckets", "token_budget": 64}},
     "batch.packing: 'buckets'"),
    ({"sources": {"a": SERIES}, "holdout": 0.1}, "holdout: holds documents out"),
])
def test_bad_configs_are_one_line(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        config_from_dict(data, "c.yaml")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_prepare_counts_bad_columns_and_keeps_statistics(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    report = prepare(cfg)
    a, b = report.sources["a"], report.sources["b"]
    assert a.skipped == {"not_numeric": 1, "missing_values": 1}
    assert a.documents == 2 and b.documents == 3  # x, y; v per group 0, 1, 2
    assert a.tokens == 2 * ((120 - 10) // 2 + 1) and b.tokens == 3 * (50 - 10 + 1)
    meta = json.loads((tmp_path / "store" / "b" / "series.json").read_text())
    assert [s["name"] for s in meta["series"]] == ["v[0]", "v[1]", "v[2]"]
    loader = SeriesLoader(cfg)
    batch = loader.batch_of(loader.next_step())
    back = loader.denormalise(np.concatenate([batch["context"], batch["horizon"]], 1),
                              batch["source_ids"], batch["window_ids"])
    raw = {"a": {"x": np.sin(np.arange(120) / 7), "y": 0.5 * np.arange(120)}}
    for i in np.flatnonzero(batch["source_ids"] == 0):
        store = loader.stores[0]
        name = store.meta["series"][batch["series_ids"][i]]["name"]
        start = 2 * (batch["window_ids"][i] - (0 if name == "x" else (120 - 10) // 2 + 1))
        np.testing.assert_allclose(back[i], raw["a"][name][start:start + 10], atol=1e-4)


def test_prepare_stops_on_a_bad_column(tmp_path: Path) -> None:
    cfg = _config(tmp_path, on_error="fail")
    with pytest.raises(DataError) as e:
        prepare(cfg)
    assert "column 'label' is not numeric" in str(e.value) and "\n" not in str(e.value)


def test_exact_shares_over_every_prefix(tmp_path: Path) -> None:
    cfg = _config(tmp_path, weights={"a": 0.3, "b": 0.7})
    prepare(cfg)
    loader = SeriesLoader(cfg)
    src = np.concatenate([s.source for s in loader.steps(80)])  # past an epoch of a
    counts = np.cumsum(np.eye(2)[src], axis=0)
    n = np.arange(1, src.size + 1)[:, None]
    assert np.abs(counts - n * np.array([0.3, 0.7])).max() <= 1.0
    taken = loader.mixer.taken
    assert taken[0] > len(loader.stores[0])  # a new permutation each epoch, no window twice
    win = np.concatenate([s.window[s.source == 0] for s in SeriesLoader(cfg).steps(80)])
    first = win[:len(loader.stores[0])]
    assert np.unique(first).size == first.size


def _all(loader: SeriesLoader, steps: int) -> list[dict]:
    return [loader.batch_of(s) for s in loader.steps(steps)]


def test_resume_gives_the_same_windows(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    prepare(cfg)
    whole = _all(SeriesLoader(cfg), 20)
    first = SeriesLoader(cfg)
    _all(first, 7)
    resumed = SeriesLoader(cfg)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for x, y in zip(whole[7:], _all(resumed, 13), strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    other = cfg.model_copy(update={"seed": 6})
    with pytest.raises(StateError, match="another configuration"):
        SeriesLoader(other).load_state_dict(first.state_dict())


def test_ranks_are_disjoint_and_cover_the_global_batch(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    prepare(cfg)
    whole = _all(SeriesLoader(cfg), 5)
    parts = [_all(SeriesLoader(cfg, r, 3), 5) for r in range(3)]
    for k, batch in enumerate(whole):
        for key in ("context", "horizon", "source_ids", "window_ids"):
            joined = np.concatenate([p[k][key] for p in parts])
            np.testing.assert_array_equal(joined, batch[key])
    with pytest.raises(ConfigError, match="world size 4"):
        SeriesLoader(cfg, 0, 4)


def test_stream_logs_source_and_window_and_resumes(tmp_path: Path) -> None:
    from mixbatch.cli import main

    cfg_path = str(_config(tmp_path).base_dir / "cfg.yaml")
    assert main(["prepare", cfg_path]) == 0
    log, full = tmp_path / "log.jsonl", tmp_path / "full.jsonl"
    assert main(["stream", cfg_path, "--steps", "9", "--emit", str(full)]) == 0
    state = str(tmp_path / "s.json")
    assert main(["stream", cfg_path, "--steps", "4", "--emit", str(log), "--state-out",
                 state]) == 0
    assert main(["stream", cfg_path, "--steps", "5", "--emit", str(log), "--state-in", state,
                 "--json"]) == 0
    assert log.read_text() == full.read_text()
    rows = [json.loads(x) for x in full.read_text().splitlines()[1:]]
    assert len(rows) == 54 and {r["source"] for r in rows} == {"a", "b"}
    loader = SeriesLoader(load_config(cfg_path))
    steps = list(loader.steps(9))
    assert [r["window"] for r in rows] == [int(w) for s in steps for w in s.window]


def test_text_commands_refuse_series_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture
                                                  ) -> None:
    from mixbatch.cli import main

    cfg_path = str(_config(tmp_path).base_dir / "cfg.yaml")
    assert main(["prepare", cfg_path]) == 0
    capsys.readouterr()
    assert main(["inspect", cfg_path]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixbatch: error: sources: a series source has no") and "\n" not in err


def test_torch_adapter_yields_windows_and_resumes(tmp_path: Path) -> None:
    import torch

    from mixbatch.torch import MixbatchDataLoader

    cfg = _config(tmp_path)
    prepare(cfg)
    dl = MixbatchDataLoader(cfg, rank=1, world_size=2, max_steps=6)
    got = list(dl)
    assert len(got) == 6 and got[0]["context"].shape == (3, 8)
    assert got[0]["horizon"].dtype == torch.float32
    again = MixbatchDataLoader(cfg, rank=1, world_size=2, max_steps=3)
    list(again)
    rest = MixbatchDataLoader(cfg, rank=1, world_size=2, max_steps=3,
                              state=again.state_dict())
    for x, y in zip(got[3:], list(rest), strict=True):
        assert torch.equal(x["context"], y["context"]) and x["step"] == y["step"]
    doubled = list(MixbatchDataLoader(cfg, max_steps=2, transform=lambda b: {
        **b, "context": 2 * b["context"]}))
    plain = next(iter(MixbatchDataLoader(cfg, max_steps=1)))
    assert torch.equal(doubled[0]["context"], 2 * plain["context"])
    with pytest.raises(ConfigError, match="fields / batch_format"):
        MixbatchDataLoader(cfg, fields="all")
    with pytest.raises(ConfigError, match="series sources; the token loader"):
        from mixbatch.loader.loader import MixedLoader

        MixedLoader(cfg, 0, 1)


def test_resume_at_any_cut_and_world_size(tmp_path: Path) -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    cfg = _config(tmp_path)
    prepare(cfg)
    whole = [(s.source.tolist(), s.window.tolist()) for s in SeriesLoader(cfg).steps(25)]

    @settings(max_examples=20, deadline=None)
    @given(st.integers(0, 25), st.sampled_from([1, 2, 3, 6]))
    def check(cut: int, world: int) -> None:
        first = SeriesLoader(cfg, 0, world)
        list(first.steps(cut))
        resumed = SeriesLoader(cfg, world - 1, world)
        resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
        got = [(s.source.tolist(), s.window.tolist()) for s in resumed.steps(25 - cut)]
        assert got == whole[cut:]

    check()
