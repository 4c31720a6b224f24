"""Run by test_torch.py as two processes: a real torch.distributed (gloo) job on loopback."""

from __future__ import annotations

import sys

import torch.distributed as dist

from dist_common import exit_now, gather_to
from mixbatch.config import load_config
from mixbatch.loader.loader import MixedLoader


def main() -> None:
    cfg_path, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    dist.init_process_group("gloo")  # rank and world size from the environment
    loader = MixedLoader(load_config(cfg_path))  # reads rank / world size from torch.distributed
    mine = []
    for step in loader.steps(steps):
        p = step.plan.select_rows(step.rows)
        mine.append({"step": step.index, "segments": list(zip(
            p.source.tolist(), p.doc.tolist(), p.start.tolist(), p.end.tolist(), strict=True)),
            "rows": step.rows.tolist(), "labels": step.plan.row_source(len(loader.names))
            .tolist()})
    gather_to(out, {"rank": loader.rank, "world": loader.world_size, "steps": mine})


if __name__ == "__main__":
    main()
    exit_now()
