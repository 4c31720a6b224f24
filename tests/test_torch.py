from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from mixbatch.loader.loader import MixedLoader
from mixbatch.torch import MixbatchDataLoader, MixbatchDataset
from test_loader import _cfg


def _ids(batches) -> list[list[int]]:
    return [b["input_ids"].reshape(-1).tolist() for b in batches]


def test_dataset_tensors_match_loader(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    ref = MixedLoader(cfg)
    expect = [ref.batch_of(s) for s in ref.steps(5)]
    got = list(torch.utils.data.DataLoader(MixbatchDataset(cfg, max_steps=5, fields="all"),
                                           batch_size=None))
    assert len(got) == 5
    for e, g in zip(expect, got, strict=True):
        assert g["input_ids"].dtype == torch.int64 and g["cu_seqlens"].dtype == torch.int32
        for k in ("input_ids", "labels", "position_ids", "source_ids", "doc_ids", "cu_seqlens"):
            assert np.array_equal(g[k].numpy(), e[k])
        assert g["max_seqlen"] == e["max_seqlen"]


@pytest.mark.parametrize("workers", [0, 2])
def test_workers_keep_order_and_resume_at_other_worker_counts(tmp_path: Path, workers: int) -> None:
    cfg = _cfg(tmp_path)
    straight = _ids(MixbatchDataLoader(cfg, num_workers=0, max_steps=12))
    dl = MixbatchDataLoader(cfg, num_workers=workers, max_steps=7)
    first = _ids(dl)
    assert first == straight[:7]
    state = json.loads(json.dumps(dl.state_dict()))
    assert state["step"] == 7
    other = 2 - workers or 1  # resume with a different number of workers
    rest = _ids(MixbatchDataLoader(cfg, num_workers=other, state=state, max_steps=5))
    assert first + rest == straight


def test_stateful_dataloader_round_trip(tmp_path: Path) -> None:
    sdl = pytest.importorskip("torchdata.stateful_dataloader")
    cfg = _cfg(tmp_path)
    straight = _ids(torch.utils.data.DataLoader(MixbatchDataset(cfg, max_steps=10),
                                                batch_size=None))
    dl = sdl.StatefulDataLoader(MixbatchDataset(cfg, max_steps=10), batch_size=None,
                                num_workers=2)
    it = iter(dl)
    head = [next(it)["input_ids"].reshape(-1).tolist() for _ in range(4)]
    state = dl.state_dict()
    dl2 = sdl.StatefulDataLoader(MixbatchDataset(cfg, max_steps=10), batch_size=None,
                                 num_workers=2)
    dl2.load_state_dict(state)
    tail = _ids(dl2)
    assert head + tail == straight


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_disjoint_and_exact(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, batch={"batch_size": 8, "packing": "pad"}, mixture={"unit": "samples"})
    cfg_path = tmp_path / "c.yaml"
    out = tmp_path / "gathered.json"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": "2"}
    worker = Path(__file__).with_name("dist_worker.py")
    procs = [subprocess.Popen([sys.executable, str(worker), str(cfg_path), "20", str(out)],
                              env={**env, "RANK": str(r)}, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    gathered = json.loads(out.read_text())
    assert [g["rank"] for g in gathered] == [0, 1] and gathered[0]["world"] == 2
    ref = MixedLoader(cfg, rank=0, world_size=1)
    for k, step in enumerate(ref.steps(20)):
        a, b = gathered[0]["steps"][k], gathered[1]["steps"][k]
        assert not set(a["rows"]) & set(b["rows"])  # ranks never overlap
        segs_a = Counter(map(tuple, a["segments"]))
        segs_b = Counter(map(tuple, b["segments"]))
        p = step.plan
        whole = Counter(zip(p.source.tolist(), p.doc.tolist(), p.start.tolist(), p.end.tolist(),
                            strict=True))
        assert segs_a + segs_b == whole  # union = the exact global batch
        labels = np.array(a["labels"])
        for g in (a, b):
            mine = np.bincount(labels[g["rows"]], minlength=3)
            assert np.all(np.abs(mine - np.bincount(labels, minlength=3) / 2) < 1)
