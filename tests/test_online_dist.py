from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from mixbatch.online import train_online
from test_loader import _cfg
from test_online import _tiny
from test_torch import _free_port

# exp3-flad reduces per-source head gradients and the target gradient over ranks; doremi the
# per-token clipped excess loss against its reference model
POLICIES = ["exp3-flad", "doremi"]


def test_two_process_gloo_same_weights_on_both_ranks(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, holdout=0.2)
    proxy = _tiny(steps=16, eval_every=8)
    out = tmp_path / "gathered.json"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": "2"}
    worker = Path(__file__).with_name("online_dist_worker.py")
    args = [sys.executable, str(worker), str(tmp_path / "c.yaml"), ",".join(POLICIES), "s2",
            json.dumps(proxy.model_dump(mode="json")), str(out)]
    procs = [subprocess.Popen(args, env={**env, "RANK": str(r)}, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    a, b = json.loads(out.read_text())
    assert (a["rank"], b["rank"]) == (0, 1)
    for policy in POLICIES:
        ra, rb = a["runs"][policy], b["runs"][policy]
        assert ra["world"] == 2 and len(ra["updates"]) == 16
        assert ra["updates"] == rb["updates"]  # the same weights on both ranks after every update
        assert ra["weights"] == rb["weights"] and ra["history"] == rb["history"]
        w = np.array(ra["weights"])
        assert not np.allclose(w, w[0])
        # the same run as one process on the whole global batch, up to rounding
        one = train_online(cfg, proxy, policy, target="s2", audit=False)
        assert np.allclose([u[1] for u in ra["updates"]], [u[1] for u in one.updates], atol=1e-4)
        assert np.isclose(ra["history"][-1]["val_loss_mean"], one.history[-1]["val_loss_mean"],
                          rtol=1e-4)
