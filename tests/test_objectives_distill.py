"""`objectives.distill`: one source of (input, answer, rationale) records mixed into the answer
and rationale tasks ("Distilling Step-by-Step!") with the planner's exact weights, audited,
resumable, with one clear error per bad record or setting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_PROXY, write_config
from mixbatch.config import config_from_dict, load_config
from mixbatch.errors import ConfigError, DataError, StoreError
from mixbatch.loader.loader import MixedLoader
from mixbatch.prepare import prepare
from mixbatch.shape.materialize import IGNORE_INDEX

RECORDS = [{"q": f"what is {i} plus {i}?", "a": str(2 * i),
            "why": f"{i} and {i} make {2 * i}" + "." * (i % 5)} for i in range(40)]


def _write(tmp: Path, records: list[dict]) -> None:
    (tmp / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _config(tmp: Path, lam: float = 0.5, layout: str = "prefix_lm", records=RECORDS,
            **distill: object):
    _write(tmp, records)
    p = write_config(tmp / "cfg.yaml", {
        "seed": 5, "store": "store", "holdout": 0.1,
        "sources": {"qa": {"path": "qa.jsonl", "text_field": "q"}},
        "batch": {"seq_len": 32, "batch_size": 4, "packing": "pad"},
        "objectives": {"layout": layout, "distill": {
            "rationale_weight": lam, "input_field": "q", "answer_field": "a",
            "rationale_field": "why", **distill}}})
    cfg = load_config(p)
    prepare(cfg)
    return cfg


def _text(ids: np.ndarray) -> str:
    return bytes(int(t) for t in ids if t < 256).decode()


@pytest.mark.parametrize("lam", [0.25, 1.0, 3.0])
def test_tasks_mixed_with_exact_weights(tmp_path: Path, lam: float) -> None:
    cfg = _config(tmp_path, lam)
    loader = MixedLoader(cfg, 0, 1)
    ids = np.concatenate([s.objective.ids for s in loader.steps(20)])
    share = np.cumsum(ids == 1) / np.arange(1, ids.size + 1)  # the rationale task's share
    n = np.arange(1, ids.size + 1)
    assert (np.abs(share * n - lam / (1 + lam) * n) <= 1).all()  # every prefix within one
    assert loader.objectives.names == ("label", "rationale")


@pytest.mark.parametrize("layout", ["prefix_lm", "encoder_decoder"])
def test_examples_are_the_records_tasks(tmp_path: Path, layout: str) -> None:
    cfg = _config(tmp_path, 1.0, layout)
    loader = MixedLoader(cfg, 0, 1)
    by_input = {r["q"]: r for r in RECORDS}
    seen = set()
    for step in loader.steps(6):
        b = loader.batch_of(step)
        for i in range(b["labels"].shape[0]):
            task = step.objective.name(int(step.rows[i]))
            lab = b["labels"][i]
            scored = lab[lab != IGNORE_INDEX]
            assert scored[-1] == 256  # the target ends with the end-of-document token
            target = _text(scored)
            if layout == "prefix_lm":
                p = int(b["prefix_len"][i])
                source = _text(b["input_ids"][i, :p])
            else:
                source = _text(b["input_ids"][i, b["attention_mask"][i] > 0])
            prefix = f"[{task}] "
            assert source.startswith(prefix)
            record = by_input[source[len(prefix):]]
            assert target == (record["a"] if task == "label" else record["why"])
            seen.add(task)
    assert seen == {"label", "rationale"}


def test_audit_and_resume(tmp_path: Path) -> None:
    from mixbatch.audit.stream import run_stream

    cfg = _config(tmp_path, 0.5)
    loader = MixedLoader(cfg, 0, 1)
    steps = list(loader.steps(3))
    state = json.loads(json.dumps(loader.state_dict()))
    rest = [loader.batch_of(s) for s in loader.steps(3)]
    again = MixedLoader(cfg, 0, 1)
    again.load_state_dict(state)
    for a, s in zip(rest, again.steps(3), strict=True):
        b = again.batch_of(s)
        for k in a:
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
    run_stream(cfg, 3, 0, 1, None, None, str(tmp_path / "log.jsonl"), False)
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    expect = [s.objective.name(r) for s in steps for r in s.rows.tolist()]
    assert [r["objective"] for r in rows if "row" in r] == expect


def test_proxy_trains_on_distill_rows(tmp_path: Path) -> None:
    from mixbatch.proxy import ProxyConfig, train_proxy

    cfg = _config(tmp_path, 0.5)
    r = train_proxy(cfg, ProxyConfig(**{**TINY_PROXY, "steps": 3, "seq_len": 32}))
    assert np.isfinite(r.train_losses).all()


@pytest.mark.parametrize(("bad", "needle"), [
    ({"a": None}, "qa.jsonl:8: objectives.distill: field 'a' must be a non-empty string"),
    ({"why": ""}, "qa.jsonl:8: objectives.distill: field 'why' must be a non-empty string"),
])
def test_a_bad_record_is_one_line_naming_it(tmp_path: Path, bad: dict, needle: str) -> None:
    records = [dict(r) for r in RECORDS]
    records[7].update(bad)
    with pytest.raises(DataError) as e:
        MixedLoader(_config(tmp_path, records=records), 0, 1)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_store_of_other_documents_is_refused(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    _write(tmp_path, RECORDS[:-1])  # the records changed after prepare
    with pytest.raises(StoreError, match="does not hold its records' 'q' fields"):
        MixedLoader(cfg, 0, 1)


BASE = {"sources": {"qa": {"path": "qa.jsonl", "text_field": "input"}},
        "batch": {"seq_len": 32, "batch_size": 4, "packing": "pad"}}


@pytest.mark.parametrize(("change", "needle"), [
    ({"objectives": {"distill": {"rationale_weight": -1}}}, "rationale_weight"),
    ({"objectives": {"distill": {}, "preset": "ul2"}}, "give it without preset"),
    ({"objectives": {"distill": {}, "weights": {"R": 1}}}, "give it without weights"),
    ({"objectives": {"distill": {"source": "web"}}}, "distill.source: 'web' is not a source"),
    ({"objectives": {"distill": {"input_field": "q"}}}, "set its text_field: q"),
    ({"objectives": {"distill": {}}, "batch": {"seq_len": 32, "batch_size": 4}},
     "set batch.packing: pad"),
    ({"objectives": {"distill": {}}, "sources": {
        "qa": {"path": "qa.jsonl", "text_field": "input"}, "web": {"path": "w.jsonl"}}},
     "the config has other sources too"),
])
def test_bad_settings_are_one_line(change: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        config_from_dict({**BASE, **change}, "c.yaml")
    assert needle in str(e.value) and "\n" not in str(e.value)
