"""The loader's state after its machinery moved to :mod:`mixbatch.loader.state`: every name
is still importable from where it was, the loader writes the same state as before, and states
written before load and continue the same stream (also the older formats /1 and /2)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

import mixbatch.loader as package
import mixbatch.loader.loader as loader_module
import mixbatch.loader.state as state_module
from mixbatch.errors import StateError
from mixbatch.loader.loader import MixedLoader
from mixbatch.testing import step_signature
from test_loader import SHAPES, _cfg

MOVED = ["MAX_REPLAY_POSITIONS", "READS_FORMATS", "STATE_FORMAT", "load_state", "save_state"]

#: states written by the loader at commit 76dcfbd (before the split), by :func:`_run_to` on
#: :func:`test_loader._cfg`'s corpus: ``concat_block`` inside a block of planned steps (it
#: carries a replay), ``buckets_window`` inside a window whose token budget changed twice
GOLDEN: dict[str, Any] = json.loads(
    '{"concat_block":{"format":"mixbatch.loader/3","fingerprint":{"seed":3,"unit":"tokens","shuffle":true'
    ',"holdout":[0.0,256],"packing":"concat","sources":[{"name":"s0","documents":300,"tokens":17354,"toke'
    'nizer":"byte-v1","max_epochs":null},{"name":"s1","documents":200,"tokens":11032,"tokenizer":"byte-v1'
    '","max_epochs":null},{"name":"s2","documents":50,"tokens":3035,"tokenizer":"byte-v1","max_epochs":nu'
    'll}]},"step":5,"tokens_planned":1280,"feed":{"planner":{"version":1,"unit":"tokens","num_sources":3,'
    '"counts":[0,0,0],"documents":[0,0,0],"base":[0.0,0.0,0.0],"weights":null,"segment_units":0},"consume'
    'd":[0,0,0],"part":[0,0,0],"ended":false,"max_deviation":0.0},"shaper":{"carry":null},"replay":{"step'
    's":5,"weights":[0.5,0.3,0.2],"rows":4},"weights_override":null,"batch_size_changes":[],"stats":{"k":'
    '3,"tokens":[640,367,250],"docs":[16,6,2],"pieces":51,"padding":0,"positions":1280,"truncated":0,"ste'
    'ps":5,"step_tokens_min":248,"step_tokens_max":255,"imbalance_max":1.0,"imbalance_sum":5.0,"skipped_d'
    'ocs":0,"second_padding":0,"second_positions":0}},"buckets_window":{"format":"mixbatch.loader/3","fin'
    'gerprint":{"seed":3,"unit":"tokens","shuffle":true,"holdout":[0.0,256],"packing":"buckets","sources"'
    ':[{"name":"s0","documents":300,"tokens":17354,"tokenizer":"byte-v1","max_epochs":null},{"name":"s1",'
    '"documents":200,"tokens":11032,"tokenizer":"byte-v1","max_epochs":null},{"name":"s2","documents":50,'
    '"tokens":3035,"tokenizer":"byte-v1","max_epochs":null}]},"step":5,"tokens_planned":2048,"feed":{"pla'
    'nner":{"version":1,"unit":"tokens","num_sources":3,"counts":[1931,1145,776],"documents":[58,31,17],"'
    'base":[0.0,0.0,0.0],"weights":[0.5,0.3,0.2],"segment_units":3852},"consumed":[42,23,8],"part":[0,0,2'
    '],"ended":false,"max_deviation":43.19999999999999},"shaper":{"window_start":{"planner":{"version":1,'
    '"unit":"tokens","num_sources":3,"counts":[0,0,0],"documents":[0,0,0],"base":[0.0,0.0,0.0],"weights":'
    'null,"segment_units":0},"consumed":[0,0,0],"part":[0,0,0],"ended":false,"max_deviation":0.0},"window'
    '_weights":[0.5,0.3,0.2],"settings":"f334469009ef5fd5","emitted":5,"windows":0,"steps":5,"carry_trunc'
    'ated":0,"carry_skipped":0,"budgets":[[0,512],[2,256],[4,512]],"drift":[]},"replay":null,"weights_ove'
    'rride":null,"batch_size_changes":[],"token_budget_changes":[[2,256],[4,512]],"stats":{"k":3,"tokens"'
    ':[1024,624,400],"docs":[19,11,6],"pieces":52,"padding":0,"positions":2048,"truncated":1559,"steps":5'
    ',"step_tokens_min":256,"step_tokens_max":512,"imbalance_max":1.0,"imbalance_sum":5.0,"skipped_docs":'
    '0,"second_padding":0,"second_positions":0}}}'
)


def _batch(which: str) -> dict:
    return {} if which == "concat_block" else {**SHAPES["buckets"], "row_multiple": 2}


def _run_to(loader: MixedLoader, which: str) -> None:
    """The steps the golden states were taken after."""
    for i in range(5):
        if which == "buckets_window" and i in (2, 4):
            loader.set_token_budget(256 if i == 2 else 512)
        assert loader.next_step() is not None


@pytest.fixture(scope="module")
def cfgs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("state")
    return {w: _cfg(tmp / w, batch=_batch(w)) for w in GOLDEN}


def test_every_moved_name_is_importable_from_where_it_was() -> None:
    for name in MOVED:
        assert getattr(loader_module, name) is getattr(state_module, name)
    assert package.load_state is state_module.load_state
    assert package.save_state is state_module.save_state
    assert issubclass(MixedLoader, state_module.LoaderState)
    for name in ("fingerprint", "snapshot", "state_from", "state_dict", "load_state_dict"):
        assert name not in vars(MixedLoader), f"{name}: one place (loader/state.py)"


@pytest.mark.parametrize("which", list(GOLDEN))
def test_the_loader_writes_the_state_it_wrote_before(cfgs: dict, which: str) -> None:
    loader = MixedLoader(cfgs[which])
    _run_to(loader, which)
    want = json.loads(json.dumps(GOLDEN[which]))
    if "token_budget_changes" in want:  # since then only the last run-time change is kept
        want["token_budget_changes"] = want["token_budget_changes"][-1:]
    assert json.loads(json.dumps(loader.state_dict())) == want


@pytest.mark.parametrize("which", list(GOLDEN))
def test_a_state_written_before_resumes_the_same_stream(cfgs: dict, which: str,
                                                        tmp_path: Path) -> None:
    straight = MixedLoader(cfgs[which])
    _run_to(straight, which)
    plain = straight.state_dict(canonical=True)  # a replay is replayed when loaded
    expected = step_signature(straight, 6)
    path = tmp_path / "state.json"
    state_module.save_state(GOLDEN[which], path)
    fresh = MixedLoader(cfgs[which])
    fresh.load_state_dict(state_module.load_state(path))
    assert fresh.state_dict() == plain
    assert step_signature(fresh, 6) == expected


def test_older_formats_resume_the_same_stream(cfgs: dict) -> None:
    """/2 had no batch-size changes (and a replay of one step size), /1 no replay either."""
    cfg = cfgs["concat_block"]
    straight = MixedLoader(cfg)
    _run_to(straight, "concat_block")
    plain = straight.state_dict(canonical=True)
    expected = step_signature(straight, 6)
    two = copy.deepcopy(GOLDEN["concat_block"])
    two["format"] = "mixbatch.loader/2"
    del two["batch_size_changes"], two["replay"]["rows"]
    one = {k: v for k, v in copy.deepcopy(plain).items()
           if k not in ("replay", "batch_size_changes")}
    one["format"] = "mixbatch.loader/1"
    for old in (two, one):
        fresh = MixedLoader(cfg)
        fresh.load_state_dict(old)
        assert step_signature(fresh, 6) == expected
    with pytest.raises(StateError, match="not a mixbatch loader state"):
        MixedLoader(cfg).load_state_dict({**plain, "format": "mixbatch.loader/4"})
