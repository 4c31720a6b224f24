"""Run by test_online_dist.py as two processes: online runs under torch.distributed (gloo)."""

from __future__ import annotations

import json
import os
import sys

import torch.distributed as dist

from mixbatch.config import load_config
from mixbatch.online import train_online
from mixbatch.proxy import ProxyConfig


def main() -> None:
    cfg_path, policies, target, proxy_json, out = sys.argv[1:6]
    dist.init_process_group("gloo")  # rank and world size from the environment
    cfg = load_config(cfg_path)
    proxy = ProxyConfig.from_dict(json.loads(proxy_json))
    runs = {}
    for policy in policies.split(","):
        r = train_online(cfg, proxy, policy, target=target, audit=False)
        runs[policy] = {"world": r.summary["world_size"], "updates": r.updates,
                        "weights": r.weights.tolist(), "history": r.history}
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {"rank": dist.get_rank(), "runs": runs})
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    dist.barrier()  # nobody tears the group down while a peer still talks to it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # the results are written and the group is down; skip interpreter teardown, where torch's
    # C++ worker threads at times abort with "terminate called without an active exception"
    # (exit -6) after everything has finished (as tests/training_dist_worker.py does)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
