"""Run by test_online_dist.py as two processes: online runs under torch.distributed (gloo)."""

from __future__ import annotations

import json
import sys

import torch.distributed as dist

from dist_common import exit_now, gather_to
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
    gather_to(out, {"rank": dist.get_rank(), "runs": runs})


if __name__ == "__main__":
    main()
    exit_now()
