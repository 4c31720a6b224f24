"""Run by test_online_costs.py as two gloo processes: an online run measuring the gradient
noise scale, straight and cut then resumed, in run folders next to OUT."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from dist_common import exit_now
from mixbatch.config import load_config
from mixbatch.online import train_online
from mixbatch.proxy import ProxyConfig


def main() -> None:
    cfg_path, proxy_json, out = sys.argv[1:4]
    dist.init_process_group("gloo")  # rank and world size from the environment
    cfg, proxy = load_config(cfg_path), ProxyConfig.from_dict(json.loads(proxy_json))
    base = Path(out).parent
    train_online(cfg, proxy, "none", run_dir=base / "straight", audit=False)
    train_online(cfg, proxy, "none", run_dir=base / "cut", audit=False, stop_at=proxy.steps // 2)
    train_online(cfg, proxy, "none", run_dir=base / "cut", audit=False, resume=True)
    dist.barrier()
    if dist.get_rank() == 0:
        Path(out).write_text("done")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_now()
