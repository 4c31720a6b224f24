"""2-D bucketing end to end: ``second_field`` in prepare, ``batch.second_buckets`` in the
loader, the batch dicts, the stream summary, resume and bad configurations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import write_config
from mixbatch.audit.stream import stream_summary
from mixbatch.config import load_config
from mixbatch.errors import ConfigError
from mixbatch.loader.loader import MixedLoader
from mixbatch.prepare import prepare
from mixbatch.testing import assert_resumes


def _pairs(tmp: Path, sizes=(300, 120), seed=0) -> dict:
    """JSONL of (text, target) pairs; the target is an int in one source, a string in the
    other (its byte tokens are counted), about a third of the text's length."""
    rng = np.random.default_rng(seed)
    sources = {}
    for k, n in enumerate(sizes):
        lens = np.clip(rng.lognormal(4.0, 0.9, size=n).astype(int), 1, 700)
        with open(tmp / f"p{k}.jsonl", "w", encoding="utf-8") as f:
            for i, m in enumerate(lens.tolist()):
                t = max(1, int(m * rng.uniform(0.1, 0.6)))
                target: int | str = t if k == 0 else "y" * t
                f.write(json.dumps({"text": f"{k}:{i}:" + "x" * m, "target": target}) + "\n")
        sources[f"p{k}"] = {"path": f"p{k}.jsonl", "second_field": "target"}
    return sources


def _cfg(tmp: Path, epochs: float | None = None, **batch) -> object:
    sources = _pairs(tmp)
    for src in sources.values():
        src["max_epochs"] = epochs
    data = {"seed": 1, "store": "store", "sources": sources,
            "mixture": {"unit": "tokens", "weights": {"p0": 0.6, "p1": 0.4}},
            "batch": {"seq_len": 256, "packing": "pad_buckets", "token_budget": 8192,
                      "window_tokens": 65536, "num_buckets": 4, "second_buckets": 3,
                      "row_multiple": 4, **batch}}
    cfg = load_config(write_config(tmp / "c.yaml", data))
    prepare(cfg, workers=1)
    return cfg


def test_batches_carry_second_lengths_within_the_budget(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    loader = MixedLoader(cfg, rank=0, world_size=1)
    seconds = [np.asarray(s.second_lengths) for s in loader.stores]
    assert seconds[1].max() > 0 and seconds[0].min() >= 1
    steps = 0
    for step in loader.steps(40):
        b = loader.batch_of(step)
        p = step.plan
        n = len(p.row)
        want = [int(seconds[s][d]) for s, d in zip(p.source.tolist(), p.doc.tolist(),
                                                   strict=True)]
        assert b["second_lengths"].tolist() == want + [0] * (p.rows - n)
        assert b["max_second_len"] == max(want)
        assert p.rows * (p.seq_len + max(want)) <= cfg.batch.token_budget
        steps += 1
    assert steps == 40
    s = stream_summary(loader, 0, steps, 0, 1.0)
    assert 0 <= s["second_padding_fraction"] < 1 and s["skipped_documents"] == 0


@pytest.mark.parametrize("world", [1, 2, 4])
def test_two_d_resumes_at_any_world_size(tmp_path: Path, world: int) -> None:
    cfg = _cfg(tmp_path)
    assert_resumes(lambda: MixedLoader(cfg, rank=world - 1, world_size=world), total=30,
                   cut_points=[0, 7, 29])


def test_second_max_skips_and_counts(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, epochs=1, second_max=40)
    loader = MixedLoader(cfg, rank=0, world_size=1)
    seconds = [np.asarray(s.second_lengths) for s in loader.stores]
    fed = set()
    for step in loader.steps():
        p = step.plan
        assert (p.second <= 40).all()
        fed |= set(zip(p.source.tolist(), p.doc.tolist(), strict=True))
    too_long = sum(int((x > 40).sum()) for x in seconds)
    assert too_long > 0
    # one epoch: everything within second_max fed once, the rest skipped and counted
    assert loader.stats.skipped_docs == too_long
    assert len(fed) == sum(len(x) for x in seconds) - too_long


def test_second_buckets_need_second_lengths_and_pad_buckets(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    data = json.loads(json.dumps(cfg.model_dump(mode="json", exclude={"base_dir"})))
    for src in data["sources"].values():
        src["second_field"] = None
    plain = load_config(write_config(tmp_path / "plain.yaml", data))
    prepare(plain, workers=1)
    with pytest.raises(ConfigError, match=r"second_buckets: source\(s\) p0, p1 have no second"):
        MixedLoader(plain, rank=0, world_size=1)
    data["batch"] = {"seq_len": 256, "packing": "bfd", "second_buckets": 3}
    with pytest.raises(ConfigError, match="batch.second_buckets: not a setting of packing 'bfd' "
                                          r"\(only of 'pad_buckets'\)"):
        load_config(write_config(tmp_path / "bfd.yaml", data))
